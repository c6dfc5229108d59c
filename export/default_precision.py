"""The default precision of a model folder with fp32 and int8 graphs (DESIGN §9):

    choose_default(model_dir, data_dir)  -> default_precision "int8" only within 2 % of fp32

Both precisions are evaluated on a split (ONNX Runtime, CPU, beam 3) and int8 becomes the default
only if no gated metric drops more than DEFAULT_MARGIN (relative) below fp32; the comparison is
kept in manifest.int8.default_choice whatever the outcome.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.errors import DataError, ModelFolderError
from rsicrc.export.quantize import FP32, INT8
from rsicrc.metrics import CAPTION_METRICS, CaptionScorer
from rsicrc.report import EvalOptions
from rsicrc.runtime.evaluate import evaluate_model_folder
from rsicrc.runtime.manifest import load_manifest, write_manifest
from rsicrc.runtime.options import RuntimeOptions

DEFAULT_MARGIN = 0.02  # int8 becomes the default only when no gated metric drops more than this
GATED_RETRIEVAL: tuple[str, ...] = ("R@1", "R@5", "R@10")
GATED_SUBSETS: tuple[str, ...] = ("all", "changed")


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
                               out=Path(tmp) / f"{precision}.json", progress=progress)
            runtime = RuntimeOptions(device="cpu", precision=precision, threads=threads)
            metrics[precision] = evaluate_model_folder(model_dir, opts, runtime, scorer)
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
