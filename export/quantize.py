"""int8 graphs beside the fp32 ones, and the choice of the default precision (DESIGN §9).

    quantize_model(model_dir, calibration)  -> *_int8.onnx + graphs["int8"] + manifest.int8
    choose_default(model_dir, data_dir)     -> default_precision "int8" only within 2 % of fp32

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
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.errors import (
    ContractError,
    DataError,
    DependencyError,
    ExportError,
    ModelFolderError,
    RsicrcError,
)
from rsicrc.export.validate import ValidationInputs, load_validation_inputs, synthetic_validation_inputs
from rsicrc.levircc import LevirCC
from rsicrc.metrics import CAPTION_METRICS, CaptionScorer
from rsicrc.report import EvalOptions
from rsicrc.runtime.backend import OrtBackend
from rsicrc.runtime.captioner import OrtStepModel
from rsicrc.runtime.contract import (
    ATTENTION_MASK,
    DECODER_STEP,
    GRAPHS,
    IMAGE_ENCODER,
    INPUT_IDS,
    LOGITS,
    STEP,
    TEXT_ENCODER,
    cross_names,
    past_names,
    present_names,
)
from rsicrc.runtime.cpu import cpu_info
from rsicrc.runtime.decoding import DecodingOptions, beam_search
from rsicrc.runtime.evaluate import evaluate_model_folder
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.manifest import GraphFile, Manifest, load_manifest, sha256_file, write_manifest
from rsicrc.runtime.preprocess import PreprocessSpec, preprocess_batch
from rsicrc.vocab import START

INT8, FP32 = "int8", "fp32"
CALIBRATION_PAIRS = 48  # image pairs whose activation ranges calibrate the image encoder
CALIBRATION_BATCH = 8  # pairs per calibration run
SYNTH_CALIBRATION_PAIRS = 32  # pairs synthesized when no calibration dataset is given
CHECK_STEPS = 4  # decoder steps compared (teacher-forced along the fp32 greedy path)
# How the image encoder's MatMuls are treated: "dynamic" (default; MatMulInteger like the other
# transformer graphs), "static" (joins the QDQ calibration, constant weights only) or "fp32".
IMAGE_MATMUL_MODES: tuple[str, ...] = ("fp32", "static", "dynamic")
IMAGE_MATMUL = "dynamic"
DEFAULT_MARGIN = 0.02  # int8 becomes the default only when no gated metric drops more than this
GATED_RETRIEVAL: tuple[str, ...] = ("R@1", "R@5", "R@10")
GATED_SUBSETS: tuple[str, ...] = ("all", "changed")


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
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise ExportError(f"calibration pairs must be an integer >= 1, got {pairs!r}")
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
        self.feeds = [{"before": before[i: i + batch], "after": after[i: i + batch]}
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

def _diff(want: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """(max |got - want|, max |want|) over every output."""
    diff = max(float(np.abs(got[k].astype(np.float64) - want[k]).max(initial=0.0)) for k in want)
    ref = max(float(np.abs(want[k]).max(initial=0.0)) for k in want)
    return diff, ref


def _greedy(backend: OrtBackend, manifest: Manifest, images: Mapping[str, np.ndarray]
            ) -> list[tuple[int, ...]]:
    """Greedy token ids of each pair, all graphs from `backend`."""
    dims = manifest.dims
    out = backend.run(IMAGE_ENCODER, dict(images))
    cross = {name: out[name] for kv in cross_names(dims) for name in kv}
    options = DecodingOptions(beam_size=1, max_tokens=dims.max_len - 1)
    results = beam_search(OrtStepModel(backend, dims, cross, 1), len(images["before"]), options,
                          start=manifest.special_ids["start"], end=manifest.special_ids["end"])
    return [r.best.tokens for r in results]


def check_int8(fp32: OrtBackend, int8: OrtBackend, manifest: Manifest, inputs: ValidationInputs
               ) -> dict[str, Any]:
    """max|int8 - fp32| per graph on the validation inputs (decoder step: a few steps teacher-
    forced along fp32's greedy path, on fp32's cross K/V) and greedy caption agreement."""
    dims = manifest.dims
    images = {"before": inputs.before.astype(np.float32), "after": inputs.after.astype(np.float32)}
    text = {INPUT_IDS: inputs.input_ids.astype(np.int64),
            ATTENTION_MASK: inputs.attention_mask.astype(np.int64)}
    ref_images = fp32.run(IMAGE_ENCODER, images)
    diffs = {IMAGE_ENCODER: _diff(ref_images, int8.run(IMAGE_ENCODER, images)),
             TEXT_ENCODER: _diff(fp32.run(TEXT_ENCODER, text), int8.run(TEXT_ENCODER, text))}
    rows = len(inputs.before)
    cross = {name: ref_images[name] for kv in cross_names(dims) for name in kv}
    past = {name: np.zeros((rows, dims.num_heads, dims.max_len, dims.head_dim), np.float32)
            for kv in past_names(dims) for name in kv}
    tokens = np.full((rows, 1), START, dtype=np.int64)
    step_diff, step_ref = 0.0, 0.0
    for step in range(min(CHECK_STEPS, dims.max_len - 1)):
        feed = {INPUT_IDS: tokens, STEP: np.array([step], dtype=np.int64), **past, **cross}
        ref = fp32.run(DECODER_STEP, feed)
        d, r = _diff(ref, int8.run(DECODER_STEP, feed))
        step_diff, step_ref = max(step_diff, d), max(step_ref, r)
        tokens = ref[LOGITS].argmax(axis=1).astype(np.int64)[:, None]
        past = {p: ref[q] for pkv, qkv in zip(past_names(dims), present_names(dims), strict=True)
                for p, q in zip(pkv, qkv, strict=True)}
    diffs[DECODER_STEP] = (step_diff, step_ref)
    if not all(np.isfinite(v) for pair in diffs.values() for v in pair):
        raise ExportError("an int8 graph gives non-finite outputs on the validation inputs; keep fp32")
    captions = [_greedy(backend, manifest, images) for backend in (fp32, int8)]
    same = [a == b for a, b in zip(*captions, strict=True)]
    return {"source": inputs.source, "pairs": rows, "caption_agreement": float(np.mean(same)),
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


def _staged_backend(work: Path, manifest: Manifest, files: Mapping[str, Path]) -> OrtBackend:
    """ORT sessions over the staged int8 files, each checked against the contract (check_io)."""
    entries = {g: GraphFile(files[g].name, sha256_file(files[g]), 0.0, 0.0) for g in GRAPHS}
    staged = dataclasses.replace(manifest, graphs={INT8: entries})
    backend = OrtBackend(work, staged, INT8, device="cpu")
    for graph in GRAPHS:
        try:
            backend.session(graph)
        except (ModelFolderError, ContractError) as e:
            raise ExportError(f"int8 {graph}: {e}") from None
    return backend


def quantize_model(model_dir: Path, calibration: Path | None = None, *, pairs: int = CALIBRATION_PAIRS,
                   validation: ValidationInputs | None = None, image_matmul: str = IMAGE_MATMUL,
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
        check = check_int8(OrtBackend(model_dir, manifest, FP32, device="cpu"), int8, manifest, validation)
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


# --- the default precision ----------------------------------------------------------------------

def _metric(metrics: Mapping[str, Any], path: Sequence[str], which: str) -> float:
    value: Any = metrics
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            raise DataError(f"{which} metrics lack {'.'.join(path)}")
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise DataError(f"{which} metric {'.'.join(path)} is not a finite number: {value!r}")
    return float(value)


def compare_metrics(fp32: Mapping[str, Any], int8: Mapping[str, Any], margin: float = DEFAULT_MARGIN
                    ) -> dict[str, Any]:
    """Gate int8 on fp32: every captioning metric (CAPTION_METRICS) and retrieval R@1/5/10, on all
    and on changed pairs, must not drop by more than `margin` relative to fp32 (a gain always
    passes; an fp32 value of 0 passes trivially). Pure: metrics dicts in, a JSON-ready table out."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise DataError(f"margin must be a number in [0, 1), got {margin!r}")
    paths = [("captioning", s, m) for s in GATED_SUBSETS for m in CAPTION_METRICS]
    paths += [("retrieval", s, m) for s in GATED_SUBSETS for m in GATED_RETRIEVAL]
    rows: dict[str, dict[str, Any]] = {}
    for path in paths:
        a, b = _metric(fp32, path, FP32), _metric(int8, path, INT8)
        rows[".".join(path)] = {FP32: a, INT8: b, "relative": (b - a) / a if a else 0.0,
                                "ok": b >= a * (1.0 - margin) - 1e-12}
    return {"margin": margin, "passed": all(r["ok"] for r in rows.values()), "metrics": rows}


@dataclass(frozen=True)
class DefaultChoice:
    precision: str  # the default precision now recorded in the manifest
    comparison: dict[str, Any]  # compare_metrics(...) plus split, data, beam, caption agreement
    metrics: dict[str, dict[str, Any]]  # precision -> the full evaluation report

    def to_dict(self) -> dict[str, Any]:
        """The precision chosen and the comparison behind it (the full reports left out)."""
        return {"precision": self.precision, **self.comparison}

    def lines(self) -> list[str]:
        c = self.comparison
        rows = [f"int8 vs fp32 on {c['data']} ({c['split']}, {c['pairs']} pairs, beam {c['beam']}): "
                f"{c['caption_agreement']:.1%} identical captions"]
        for name, r in c["metrics"].items():
            flag = "" if r["ok"] else f"  <- more than {c['margin']:.0%} below fp32"
            rows.append(f"  {name:30} fp32 {r[FP32]:.4f}  int8 {r[INT8]:.4f}  ({r['relative']:+.2%}){flag}")
        rows.append(f"default precision: {self.precision}")
        return rows


def _captions(predictions_file: str) -> dict[int, str]:
    with open(predictions_file) as f:
        return {row["imgid"]: row["caption"] for row in map(json.loads, f)}


def choose_default(model_dir: Path, data_dir: Path, split: str = "test", *, beam: int = 3,
                   batch_size: int = 16, threads: int | None = None, margin: float = DEFAULT_MARGIN,
                   progress: bool = False) -> DefaultChoice:
    """Evaluate fp32 and int8 of a model folder on `split` (ONNX Runtime CPU) and make int8 the
    default precision only if `compare_metrics` passes; the comparison is recorded in the
    manifest (int8.default_choice, atomic rewrite) whatever the outcome."""
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    if INT8 not in manifest.graphs or FP32 not in manifest.graphs:
        raise ModelFolderError(f"{model_dir} needs fp32 and int8 graphs to choose between "
                               f"(has: {', '.join(manifest.graphs)}); export with --int8")
    metrics: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="rsicrc-choose-") as tmp, CaptionScorer() as scorer:
        for precision in (FP32, INT8):
            opts = EvalOptions(data=Path(data_dir), split=split, beam=beam, batch_size=batch_size,
                               device="cpu", out=Path(tmp) / f"{precision}.json", progress=progress,
                               precision=precision, threads=threads)
            metrics[precision] = evaluate_model_folder(model_dir, opts, scorer)
        caps = {p: _captions(metrics[p]["predictions"]) for p in (FP32, INT8)}
    same = [caps[INT8].get(k) == v for k, v in caps[FP32].items()]
    comparison = {"split": split, "data": str(data_dir), "beam": beam, "pairs": len(same),
                  "caption_agreement": float(np.mean(same)),
                  **compare_metrics(metrics[FP32], metrics[INT8], margin)}
    chosen = INT8 if comparison["passed"] else FP32
    current = load_manifest(model_dir)
    record = {**(current.int8 or {}), "default_choice": {**comparison, "chosen": chosen}}
    write_manifest(model_dir, dataclasses.replace(current, default_precision=chosen, int8=record))
    for m in metrics.values():
        m.pop("predictions", None)  # the files were temporary
    return DefaultChoice(chosen, comparison, metrics)
