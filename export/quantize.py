"""int8 graphs beside the fp32 ones, checked against them (DESIGN §9).

    quantize_model(model_dir, calibration)  -> *_int8.onnx + graphs["int8"] + manifest.int8
    (the default precision: rsicrc.export.default_precision.choose_default)

- text_encoder, decoder_step: dynamic quantization of MatMul only (uint8 weights per tensor, the
  activations quantized to uint8 at run time: DynamicQuantizeLinear -> MatMulInteger, U8U8). Only
  MatMuls with a constant weight are touched; attention scores stay fp32. The fp32 graphs arrive
  with attention's q/k/v weights fused (`rsicrc.export.fuse`), so one scale covers the three and
  the activation is quantized once; demo-model quality was unchanged by the fusion.
- image_encoder: its CNN trunk by static QDQ: BatchNorm is folded into the convolutions first
  (quant_pre_process), then every Conv gets per-channel int8 weights in the reduced range -64..64
  and uint8 activations whose ranges are calibrated (MinMax) on preprocessed real pairs of a
  dataset's train split. Convolutions are never quantized dynamically (ConvInteger is 3-4x slower
  than fp32 here). Its bi-temporal transformer is a transformer part like the others: dynamic
  U8U8 MatMul on top of the QDQ graph (IMAGE_MATMUL; the alternatives in IMAGE_MATMUL_MODES).

Why these formats (issue: int8 on AVX2-only CPUs). ONNX Runtime's u8 x s8 kernels on x86-64
without VNNI (AVX2, AVX-512 before Cascade Lake / Zen 4) add pairs of products in int16 with
saturation (vpmaddubsw): 2 x 255 x 127 overflows it. With full-range int8 weights a tiny demo
model's int8 image embedding fell to cosine 0.92 of fp32 and no greedy caption survived on such a
CPU, while the VNNI machine that exported it measured the graphs close to fp32. Both choices here
make saturation impossible on every x86-64 and give bit-identical outputs on both kinds (checked
under an emulated AVX2-only EPYC): weights of -64..64 (2 x 255 x 64 fits int16) keep the u8 x s8
kernels that VNNI runs fastest for the compute-bound convolutions; the memory-bound MatMuls keep
8-bit weights as uint8 (U8U8 has no pair-saturating path), which is as fast per decoder step.
Measured on the VNNI machine, paper config, random weights (encoder / decoder step, batch 1):
full-range u8s8 165 ms / 7.6 ms, this format 138 ms / 6.6 ms, everything U8U8 278 ms / 5.9 ms
(busy machine, one interleaved run; the README's benchmark figures are the reference).
- the demo-size model (width-16 trunk, d_model 128, 128 px) gains nothing: its graphs are so small
  that the quantize/dequantize work costs what the int8 arithmetic saves.
The int8 check records the CPU (model, SIMD features) it ran on: `manifest.int8.check.cpu`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.checks import positive_int
from rsicrc.errors import (
    ContractError,
    DataError,
    DependencyError,
    ExportError,
    ModelFolderError,
    RsicrcError,
)
from rsicrc.export.validate import load_validation_inputs, synthetic_validation_inputs
from rsicrc.levircc import LevirCC
from rsicrc.runtime.backend import Backend
from rsicrc.runtime.compare import GraphInputs, compare_graphs
from rsicrc.runtime.contract import AFTER, BEFORE, DECODER_STEP, GRAPHS, IMAGE_ENCODER, TEXT_ENCODER
from rsicrc.runtime.cpu import cpu_info
from rsicrc.runtime.decoding import DecodingOptions
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.manifest import GraphFile, Manifest, load_manifest, sha256_file, write_manifest
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.preprocess import PreprocessSpec, preprocess_batch
from rsicrc.runtime.task import CaptionTask, GraphModel

INT8, FP32 = "int8", "fp32"
CALIBRATION_PAIRS = 48  # image pairs whose activation ranges calibrate the image encoder
CALIBRATION_BATCH = 8  # pairs per calibration run
SYNTH_CALIBRATION_PAIRS = 32  # pairs synthesized when no calibration dataset is given
CHECK_STEPS = 4  # decoder steps compared (teacher-forced along the fp32 greedy path)
# How the image encoder's MatMuls are treated: "dynamic" (default; MatMulInteger like the other
# transformer graphs), "static" (joins the QDQ calibration, constant weights only) or "fp32".
IMAGE_MATMUL_MODES: tuple[str, ...] = ("fp32", "static", "dynamic")
IMAGE_MATMUL = "dynamic"


@dataclass(frozen=True)
class QuantizedGraph:
    graph: str  # graph name (contract)
    file: str  # int8 file name inside the model folder
    size_bytes: int  # its size
    max_abs_diff: float  # largest |int8 - fp32| over its outputs on the validation inputs
    ref_max_abs: float  # largest |fp32| over the same outputs


@dataclass(frozen=True)
class QuantizeReport:
    graphs: tuple[QuantizedGraph, ...]  # one per graph, contract order
    caption_agreement: float  # share of validation pairs whose greedy int8 caption equals fp32's
    check_pairs: int  # validation pairs behind the numbers above
    calibration_source: str  # where the calibration pairs came from
    seconds: float  # pre-processing + calibration + quantization + checks

    def lines(self) -> list[str]:
        """Human-readable summary for the CLI."""
        rows = [f"int8 graphs (image encoder calibrated on {self.calibration_source}):"]
        for g in self.graphs:
            rows.append(f"  {g.file:27} {g.size_bytes / 1e6:9.1f} MB   max|int8 - fp32| {g.max_abs_diff:.2e} "
                        f"(fp32 max {g.ref_max_abs:.3g})")
        rows.append(f"  greedy captions equal to fp32 on {self.caption_agreement:.0%} of {self.check_pairs} "
                    f"validation pairs; quantized in {self.seconds:.1f} s")
        return rows


def _ort_quantization() -> Any:
    try:
        from onnxruntime import quantization
        from onnxruntime.quantization import shape_inference  # noqa: F401 - quant_pre_process
    except ImportError:
        raise DependencyError("int8 quantization needs ONNX Runtime and onnx; "
                              "install with: pip install 'rsicrc[cpu,train]'") from None
    return quantization


def int8_file(graph: str) -> str:
    return f"{graph}_int8.onnx"


# --- calibration --------------------------------------------------------------------------------

def calibration_pairs(data: Path | None, spec: PreprocessSpec, pairs: int = CALIBRATION_PAIRS
                      ) -> tuple[np.ndarray, np.ndarray, str]:
    """Preprocessed (before, after) float32 [P, 3, S, S] from the first `pairs` pairs of a
    dataset's train split (all splits if it has no train pairs), or from synthetic pairs."""
    positive_int(pairs, "calibration pairs", error=ExportError)
    if data is None:
        from rsicrc.synth import synthesize

        count = min(pairs, SYNTH_CALIBRATION_PAIRS)
        with tempfile.TemporaryDirectory(prefix="rsicrc-calibration-") as tmp:
            root = synthesize(Path(tmp) / "data", pairs=count, seed=1, size=max(64, spec.size),
                              progress=False)
            before, after, _ = calibration_pairs(Path(root), spec, count)
        return before, after, f"synthetic (seed 1, {count} pairs)"
    dataset = LevirCC.open(data)
    records = dataset.split("train") or list(dataset.records)
    chosen = records[:pairs]
    if not chosen:
        raise DataError(f"{data}: no pairs to calibrate the int8 image encoder with")
    images = [read_pair(*r.image_paths(dataset.root)) for r in chosen]
    split = "train" if chosen[0].split == "train" else "all splits"
    return (preprocess_batch([b for b, _ in images], spec), preprocess_batch([a for _, a in images], spec),
            f"{dataset.root} ({split}, {len(chosen)} pairs)")


class _Reader:
    """onnxruntime CalibrationDataReader (duck-typed): batches of preprocessed pairs."""

    def __init__(self, before: np.ndarray, after: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self.feeds = [{BEFORE: before[i: i + batch], AFTER: after[i: i + batch]}
                      for i in range(0, len(before), batch)]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.feeds):
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


# --- quantization -------------------------------------------------------------------------------

@contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs warnings on the root logger (e.g. "Please check if the model
    is already quantized" when dynamic MatMul goes on top of the QDQ graph): hide them."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _pre_process(src: Path, dst: Path) -> None:
    """Shape inference + ORT basic optimizations: folds BatchNorm into Conv, and without it the
    decoder's tied LM head stays fp32 (measured). Symbolic shape inference fails on these graphs,
    so ONNX's own is used."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def quantize_transformer(src: Path, dst: Path, work: Path) -> None:
    """Dynamic int8 of the constant-weight MatMuls (text encoder, decoder step)."""
    q = _ort_quantization()
    pre = work / f"pre_{src.name}"
    _pre_process(src, pre)
    with _quiet():
        q.quantize_dynamic(str(pre), str(dst), op_types_to_quantize=["MatMul"],
                           weight_type=q.QuantType.QUInt8, per_channel=False,
                           extra_options={"MatMulConstBOnly": True})


def quantize_image_encoder(src: Path, dst: Path, work: Path, before: np.ndarray, after: np.ndarray,
                           image_matmul: str = IMAGE_MATMUL) -> None:
    """Static QDQ of the convolutions; the MatMuls as `image_matmul` says (IMAGE_MATMUL_MODES)."""
    if image_matmul not in IMAGE_MATMUL_MODES:
        raise ExportError(f"unknown image_matmul {image_matmul!r}; "
                          f"choose one of: {', '.join(IMAGE_MATMUL_MODES)}")
    q = _ort_quantization()
    pre = work / f"pre_{src.name}"
    _pre_process(src, pre)
    ops = ["Conv", "MatMul"] if image_matmul == "static" else ["Conv"]
    static = work / f"static_{src.name}" if image_matmul == "dynamic" else dst
    with _quiet():
        q.quantize_static(str(pre), str(static), _Reader(before, after), quant_format=q.QuantFormat.QDQ,
                          op_types_to_quantize=ops, per_channel=True, reduce_range=True,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=q.CalibrationMethod.MinMax,
                          extra_options={"MatMulConstBOnly": True})
        if image_matmul == "dynamic":
            q.quantize_dynamic(str(static), str(dst), op_types_to_quantize=["MatMul"],
                               weight_type=q.QuantType.QUInt8, extra_options={"MatMulConstBOnly": True})


# --- checks against fp32 ------------------------------------------------------------------------

def check_int8(fp32: Backend, int8: Backend, folder: ModelFolder, inputs: GraphInputs) -> dict[str, Any]:
    """max|int8 - fp32| per graph on the validation inputs (decoder step: a few steps teacher-
    forced along fp32's greedy path, on fp32's cross K/V), greedy caption agreement, and the CPU
    the check ran on (int8 kernels differ between CPUs)."""
    comparison = compare_graphs(fp32.run, int8.run, folder.manifest.contract, folder.dims, inputs,
                                steps=range(min(CHECK_STEPS, folder.max_len - 1)), labels=(FP32, INT8))
    diffs = {g: (comparison.max_abs_diff(g), comparison.ref_max_abs(g)) for g in GRAPHS}
    if not all(np.isfinite(v) for pair in diffs.values() for v in pair):
        raise ExportError("an int8 graph gives non-finite outputs on the validation inputs; keep fp32")
    greedy = DecodingOptions(beam_size=1)
    captions = [[r.best.tokens for r in CaptionTask(GraphModel(backend, folder.dims), folder.special["start"],
                                                    folder.special["end"], folder.max_len)
                 .run(inputs.before, inputs.after, greedy).results] for backend in (fp32, int8)]
    same = [a == b for a, b in zip(*captions, strict=True)]
    return {"source": inputs.source, "pairs": len(inputs.before), "caption_agreement": float(np.mean(same)),
            "max_abs_diff": {g: diffs[g][0] for g in GRAPHS}, "ref_max_abs": {g: diffs[g][1] for g in GRAPHS},
            "cpu": cpu_info().to_dict()}


def _methods(image_matmul: str) -> dict[str, str]:
    transformer = ("dynamic: constant-weight MatMul only, uint8 weights per tensor, "
                   "uint8 activations at run time (U8U8)")
    matmul = {"fp32": "MatMul fp32", "static": "constant-weight MatMul in the same QDQ calibration",
              "dynamic": "constant-weight MatMul dynamic U8U8"}[image_matmul]
    return {IMAGE_ENCODER: "static QDQ: Conv (BatchNorm folded) with per-channel int8 weights in -64..64 "
                           f"(reduce_range) and MinMax-calibrated uint8 activations; {matmul}",
            TEXT_ENCODER: transformer, DECODER_STEP: transformer}


def _staged_backend(work: Path, manifest: Manifest, files: Mapping[str, Path]) -> Backend:
    """ORT sessions over the staged int8 files, each checked against the contract (check_io)."""
    entries = {g: GraphFile(files[g].name, sha256_file(files[g]), 0.0, 0.0) for g in GRAPHS}
    staged = ModelFolder(work, dataclasses.replace(manifest, graphs={INT8: entries}))
    try:
        return staged.backend(RuntimeOptions(device="cpu", precision=INT8), GRAPHS)
    except (ModelFolderError, ContractError) as e:
        raise ExportError(f"int8: {e}") from None


def quantize_model(model_dir: Path, calibration: Path | None = None, *, pairs: int = CALIBRATION_PAIRS,
                   validation: GraphInputs | None = None, image_matmul: str = IMAGE_MATMUL,
                   overwrite: bool = False) -> QuantizeReport:
    """Add `<graph>_int8.onnx` for every graph of an exported model folder, graphs["int8"] (with
    sha256) and the `int8` record to its manifest; default_precision becomes/stays "fp32".

    `calibration`: a LEVIR-CC layout folder whose train pairs calibrate the image encoder (None:
    synthetic pairs). `validation`: the inputs the int8 graphs are compared with fp32 on (None:
    a few pairs of `calibration`, else synthetic ones). The graphs are made and checked in a
    hidden folder; the model folder is changed only once all passed, and its manifest never
    lists a file that is not there. Raises ExportError.
    """
    started = time.monotonic()
    if image_matmul not in IMAGE_MATMUL_MODES:
        raise ExportError(f"unknown image_matmul {image_matmul!r}; "
                          f"choose one of: {', '.join(IMAGE_MATMUL_MODES)}")
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    if FP32 not in manifest.graphs:
        raise ModelFolderError(f"{model_dir}: int8 graphs are made from the fp32 ones, and it has none")
    if INT8 in manifest.graphs and not overwrite:
        raise ExportError(f"{model_dir} already has int8 graphs; pass overwrite to replace them")
    _ort_quantization()
    spec, vocab = manifest.preprocess, manifest.vocabulary()
    before, after, source = calibration_pairs(None if calibration is None else Path(calibration), spec, pairs)
    if validation is None:
        validation = (synthetic_validation_inputs(vocab, spec, manifest.max_len) if calibration is None
                      else load_validation_inputs(Path(calibration), vocab, spec, manifest.max_len))
    work = Path(tempfile.mkdtemp(dir=model_dir, prefix=".int8-"))
    try:
        fp32_files = manifest.graphs[FP32]
        files = {g: work / int8_file(g) for g in GRAPHS}
        for graph in GRAPHS:
            src = model_dir / fp32_files[graph].file
            try:
                if graph == IMAGE_ENCODER:
                    quantize_image_encoder(src, files[graph], work, before, after, image_matmul)
                else:
                    quantize_transformer(src, files[graph], work)
            except RsicrcError:
                raise
            except Exception as e:  # noqa: BLE001 - onnxruntime.quantization raises many types
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ExportError(f"int8 {graph}: quantization failed: {first}") from e
        int8 = _staged_backend(work, manifest, files)
        folder = ModelFolder(model_dir, manifest)
        fp32 = folder.backend(RuntimeOptions(device="cpu", precision=FP32))
        check = check_int8(fp32, int8, folder, validation)
        entries = {g: GraphFile(int8_file(g), sha256_file(files[g]), check["max_abs_diff"][g],
                                check["ref_max_abs"][g]) for g in GRAPHS}
        record = {"methods": _methods(image_matmul), "calibration": {"source": source, "pairs": len(before)},
                  "check": check, "default_choice": None}
        without = {p: f for p, f in manifest.graphs.items() if p != INT8}
        if INT8 in manifest.graphs:  # the old int8 files are about to change: unlist them first
            write_manifest(model_dir, dataclasses.replace(manifest, graphs=without, default_precision=FP32,
                                                          int8=None))
        for graph in GRAPHS:
            files[graph].replace(model_dir / int8_file(graph))
        write_manifest(model_dir, dataclasses.replace(manifest, graphs={**without, INT8: entries},
                                                      default_precision=FP32, int8=record))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return QuantizeReport(
        graphs=tuple(QuantizedGraph(g, entries[g].file, (model_dir / entries[g].file).stat().st_size,
                                    entries[g].max_abs_diff, entries[g].ref_max_abs) for g in GRAPHS),
        caption_agreement=check["caption_agreement"], check_pairs=check["pairs"], calibration_source=source,
        seconds=time.monotonic() - started)
