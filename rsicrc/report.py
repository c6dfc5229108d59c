"""Torch-free evaluation plumbing shared by every backend (DESIGN §5).

A backend (PyTorch in `rsicrc.evaluate`, an exported model folder in `rsicrc.runtime.evaluate`)
only produces `Predictions` for a split; scoring, the predictions JSONL and the metrics JSON are
done here, once, so both report the same keys computed the same way.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.errors import ConfigError, ModelFolderError
from rsicrc.levircc import SPLITS, LevirCC, PairRecord
from rsicrc.metrics import CaptionScorer, evaluation_report
from rsicrc.runtime.manifest import MANIFEST_FILE
from rsicrc.textsim import CaptionMatcher

# rsicrc.checkpoint's WEIGHTS and CONFIG (that module imports torch, so the names are repeated here).
CHECKPOINT_FILES: tuple[str, ...] = ("model.safetensors", "config.json")
BASELINE_CANDIDATES = 40  # most frequent training captions tried as the constant baseline


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate a checkpoint folder (PyTorch) or an exported model folder (runtime)."""

    data: Path  # LEVIR-CC layout folder
    split: str = "test"  # train | val | test
    beam: int = 3  # beam size; 1 = greedy
    length_penalty: float = 1.0  # alpha in score = logprob / length ** alpha
    batch_size: int = 16  # pairs per forward pass (also the text-embedding chunk)
    device: str = "auto"  # auto | cpu | cuda
    out: Path | None = None  # metrics JSON; predictions go beside it (<stem>.predictions.jsonl)
    progress: bool = True  # show a progress bar
    precision: str | None = None  # model folders only: fp32 | int8 (None = the manifest's default)
    threads: int | None = None  # model folders only: ONNX Runtime intra-op threads (None = ORT's choice)
    backend: str | None = None  # model folders only: onnxruntime | trt (None = onnxruntime)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"unknown split {self.split!r}; choose one of: {', '.join(SPLITS)}")
        for name in ("beam", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        lp = self.length_penalty
        if isinstance(lp, bool) or not isinstance(lp, (int, float)) or not (math.isfinite(lp) and lp >= 0):
            raise ConfigError(f"length_penalty must be a finite number >= 0, got {lp!r}")


@dataclass(frozen=True)
class Predictions:
    """What a backend produced for a split: the inputs of `evaluation_report`."""

    records: list[PairRecord]  # the split's pairs, in dataset order
    captions: dict[int, str]  # imgid -> best caption
    visual: np.ndarray  # [N, C] visual embeddings, row i = records[i]
    text: np.ndarray  # [N, C] embeddings of each pair's first reference caption


def baseline_candidates(records: Sequence[PairRecord], n: int = BASELINE_CANDIDATES) -> list[str]:
    """The most frequent captions of the training split (constant-caption baseline)."""
    counts = Counter(t for r in records if r.split == "train" for t in r.texts)
    return [c for c, _ in counts.most_common(n)] or [t for r in records for t in r.texts][:n]


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, then rename: never a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; metrics are as readable as any output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Indented JSON, written atomically."""
    _write_atomic(path, json.dumps(data, indent=2) + "\n")


def write_predictions(path: Path, preds: Predictions) -> None:
    """One JSON line per pair: imgid, filename, changed, caption, references. Atomic."""
    lines = [json.dumps({"imgid": r.imgid, "filename": r.filename, "changed": r.changed,
                         "caption": preds.captions[r.imgid], "references": list(r.texts)})
             for r in preds.records]
    _write_atomic(path, "".join(line + "\n" for line in lines))


def report(preds: Predictions, all_records: Sequence[PairRecord], predictions_file: Path,
           scorer: CaptionScorer | None = None) -> dict[str, Any]:
    """Metrics for any backend's predictions (same keys for PyTorch and exported models).

    Pass a `scorer` to reuse one METEOR JVM across several reports (its start costs seconds).
    """
    if scorer is None:
        with CaptionScorer() as own:
            return report(preds, all_records, predictions_file, own)
    return evaluation_report(preds.records, preds.captions, preds.visual, preds.text, scorer,
                             CaptionMatcher(1.0), baseline_candidates(all_records), str(predictions_file))


def metrics_path(opts: EvalOptions, default_dir: Path, suffix: str = "") -> Path:
    """Where the metrics JSON goes: `opts.out`, else DEFAULT_DIR/metrics_<split><suffix>.json."""
    if opts.out is not None:
        return Path(opts.out)
    return Path(default_dir) / f"metrics_{opts.split}{suffix}.json"


def folder_kind(path: Path) -> str:
    """"model" for an exported model folder, "checkpoint" for a checkpoint folder, told apart by
    their files alone (so a model folder never needs torch). Raises ModelFolderError otherwise."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        return "model"
    if all((path / name).is_file() for name in CHECKPOINT_FILES):
        return "checkpoint"
    raise ModelFolderError(
        f"{path} is neither an exported model folder ({MANIFEST_FILE} + .onnx graphs, from `rsicrc export`) "
        f"nor a checkpoint folder ({' + '.join(CHECKPOINT_FILES)}, from rsicrc-train)")


def finish(preds: Predictions, dataset: LevirCC, out: Path, config: dict[str, Any],
           scorer: CaptionScorer | None = None) -> dict[str, Any]:
    """Write the predictions JSONL beside `out`, score, add `config`, write the metrics JSON."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pred_file = out.with_name(f"{out.stem}.predictions.jsonl")
    write_predictions(pred_file, preds)
    metrics = report(preds, dataset.records, pred_file, scorer)
    metrics["config"] = dict(config)
    write_json_atomic(out, metrics)
    return metrics
