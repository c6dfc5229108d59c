"""`rsicrc export`: checkpoint folder -> model folder (three validated ONNX graphs + manifest).

Everything is written into a hidden staging folder beside `out` and renamed into place at the
very end, so an interrupted or refused export leaves nothing behind (and, with overwrite, the
previous model folder stays intact until the new one is complete).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rsicrc.checkpoint import Checkpoint, load_checkpoint
from rsicrc.checks import finite_number
from rsicrc.errors import ExportError
from rsicrc.export.onnx_export import (
    DEFAULT_OPSET,
    EXPORTER,
    check_graph_file,
    check_opset,
    dims_for,
    export_graph,
)
from rsicrc.export.quantize import QuantizeReport, quantize_model
from rsicrc.export.validate import (
    DEFAULT_TOLERANCE,
    GraphValidator,
    load_validation_inputs,
    synthetic_validation_inputs,
)
from rsicrc.levircc import LevirCC
from rsicrc.runtime.compare import Comparison, GraphInputs
from rsicrc.runtime.contract import GRAPHS, contract
from rsicrc.runtime.manifest import (
    FORMAT_VERSION,
    SPECIAL_IDS,
    GraphFile,
    Manifest,
    sha256_file,
    write_manifest,
)
from rsicrc.runtime.preprocess import PreprocessSpec

log = logging.getLogger(__name__)
PRECISION = "fp32"


@dataclass(frozen=True)
class GraphReport:
    graph: str  # graph name (contract)
    file: str  # file name inside the model folder
    size_bytes: int  # file size
    max_abs_diff: float  # largest |ORT - PyTorch| over its outputs
    ref_max_abs: float  # largest |PyTorch| over its outputs


@dataclass(frozen=True)
class ExportReport:
    out: Path  # the model folder written
    graphs: tuple[GraphReport, ...]  # one per graph, contract order
    export_seconds: float  # torch -> ONNX, including the file checks
    validation_seconds: float  # ONNX Runtime vs PyTorch on real inputs
    exporter: str  # exporter kind
    opset: int  # ONNX opset
    validation_source: str  # where the validation pairs came from
    int8: QuantizeReport | None = None  # the int8 graphs, when asked for

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        return d

    def lines(self) -> list[str]:
        """Human-readable summary for the CLI."""
        rows = [f"exported {self.out} (opset {self.opset}, {self.exporter})"]
        for g in self.graphs:
            rel = g.max_abs_diff / max(1.0, g.ref_max_abs)
            rows.append(f"  {g.file:22} {g.size_bytes / 1e6:9.1f} MB   max|diff| {g.max_abs_diff:.2e} "
                        f"(ref max {g.ref_max_abs:.3g}, relative {rel:.1e})")
        rows.append(f"export {self.export_seconds:.1f} s, validation {self.validation_seconds:.1f} s "
                    f"on {self.validation_source}")
        if self.int8 is not None:
            rows.extend(self.int8.lines())
        return rows


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass --overwrite or choose another --out")


def _versions() -> dict[str, str]:
    """Library versions from the modules themselves (onnxruntime-gpu installs `onnxruntime`)."""
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    try:
        rsicrc_version = metadata.version("rsicrc")
    except metadata.PackageNotFoundError:
        rsicrc_version = "not installed"
    return {"rsicrc": rsicrc_version, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__, "kind": EXPORTER}


def _source(ckpt: Checkpoint) -> dict[str, Any]:
    meta = ckpt.meta
    return {"checkpoint": str(ckpt.path.resolve()), "step": meta.get("step"),
            "epoch": meta.get("epoch"), "best_val_loss": meta.get("best_val_loss")}


def _publish(staging: Path, out: Path) -> None:
    """Rename the finished staging folder to `out`; an old `out` is removed only afterwards."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        out.rename(old / out.name)
    try:
        staging.rename(out)
    except OSError:
        if old is not None:
            (old / out.name).rename(out)  # put the previous model back (if this fails, it stays in `old`)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_model(ckpt_dir: Path, out: Path, opset: int = DEFAULT_OPSET, progress: bool = True,
                 validation_data: Path | None = None, *, overwrite: bool = False,
                 tolerance: float = DEFAULT_TOLERANCE, int8: bool = False,
                 calibration_data: Path | None = None) -> ExportReport:
    """Export a checkpoint to `out`: image_encoder/text_encoder/decoder_step .onnx + manifest.json.

    Every graph is checked (onnx.checker, the contract, dynamic batch, the `step` rule) and then
    validated in ONNX Runtime against PyTorch on real image pairs and captions from
    `validation_data` (a LEVIR-CC layout folder; default: a few synthetic pairs). Raises
    ExportError (and writes nothing) when anything disagrees.

    With `int8`, `<graph>_int8.onnx` graphs are added as well (`rsicrc.export.quantize`), the
    image encoder calibrated on the train pairs of `calibration_data` (default: synthetic pairs)
    and each int8 graph compared with fp32 on the validation inputs; default_precision stays fp32.
    """
    check_opset(opset)
    finite_number(tolerance, "tolerance", minimum=0, error=ExportError)
    out = Path(out)
    _check_out(out, overwrite)
    if int8 and calibration_data is not None:
        LevirCC.open(calibration_data)  # a bad calibration folder fails before the long export
    ckpt = load_checkpoint(ckpt_dir)
    model, mc, vocab = ckpt.model.eval(), ckpt.config.model, ckpt.vocab
    dims = dims_for(mc, len(vocab))
    graphs = contract(dims)
    spec = PreprocessSpec(size=mc.image_size)
    inputs: GraphInputs = (
        load_validation_inputs(Path(validation_data), vocab, spec, mc.max_len) if validation_data is not None
        else synthetic_validation_inputs(vocab, spec, mc.max_len))

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    staging.chmod(0o755)  # mkdtemp makes it private; the model folder is meant to be shared
    try:
        with tqdm(total=len(GRAPHS), desc="export", unit="graph", disable=not progress) as bar:
            validator = GraphValidator(model, dims, graphs, inputs, tolerance)
            modules = validator.reference.modules
            files = {name: staging / graphs[name].file for name in GRAPHS}
            diffs: dict[str, Comparison] = {}
            export_seconds = validation_seconds = 0.0
            for name in GRAPHS:  # validate each graph right away: a bad export fails fast
                bar.set_postfix_str(f"{name}: export")
                started = time.monotonic()
                export_graph(modules[name], graphs[name], dims, files[name], opset)
                check_graph_file(files[name], graphs[name], opset)
                export_seconds += time.monotonic() - started
                bar.set_postfix_str(f"{name}: validate")
                started = time.monotonic()
                diffs[name] = validator.validate(name, files[name])
                validation_seconds += time.monotonic() - started
                bar.update()
        entries = {name: GraphFile(files[name].name, sha256_file(files[name]), diffs[name].max_abs_diff(name),
                                   diffs[name].ref_max_abs(name)) for name in GRAPHS}
        manifest = Manifest(
            format_version=FORMAT_VERSION, model_config=dataclasses.asdict(mc), vocab=vocab.words,
            special_ids=dict(SPECIAL_IDS), max_len=mc.max_len, preprocess=spec, dims=dims,
            contract=graphs, graphs={PRECISION: entries}, default_precision=PRECISION, opset=opset,
            exporter=_versions(), source=_source(ckpt))
        write_manifest(staging, manifest)
        int8_report = quantize_model(staging, calibration_data, validation=inputs) if int8 else None
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for name in GRAPHS:
        entry = entries[name]
        log.info("%s: max|diff| %.2e (ref max %.3g)", name, entry.max_abs_diff, entry.ref_max_abs)
    return ExportReport(
        out=out,
        graphs=tuple(GraphReport(name, entries[name].file, (out / entries[name].file).stat().st_size,
                                 entries[name].max_abs_diff, entries[name].ref_max_abs) for name in GRAPHS),
        export_seconds=export_seconds, validation_seconds=validation_seconds, exporter=EXPORTER,
        opset=opset, validation_source=inputs.source, int8=int8_report)
