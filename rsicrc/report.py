"""Torch-free evaluation plumbing shared by every backend (DESIGN §5).

A backend (PyTorch in `rsicrc.evaluate`, an exported model folder in `rsicrc.runtime.evaluate`)
only produces `Predictions` for a split; scoring, the predictions JSONL and the metrics JSON are
done here, once, so both report the same keys computed the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.checks import finite_number, one_of, positive_int
from rsicrc.files import write_atomic, write_json_atomic
from rsicrc.levircc import SPLITS, LevirCC, PairRecord
from rsicrc.metrics import CaptionScorer, evaluation_report
from rsicrc.textsim import CaptionMatcher

BASELINE_CANDIDATES = 40  # most frequent training captions tried as the constant baseline


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how to decode; the same for a checkpoint (PyTorch) and an exported model
    folder (the runtime, whose engine, device, precision and threads are its RuntimeOptions)."""

    data: Path  # LEVIR-CC layout folder
    split: str = "test"  # train | val | test
    beam: int = 3  # beam size; 1 = greedy
    length_penalty: float = 1.0  # alpha in score = logprob / length ** alpha
    batch_size: int = 16  # pairs per forward pass (also the text-embedding chunk)
    out: Path | None = None  # metrics JSON; predictions go beside it (<stem>.predictions.jsonl)
    progress: bool = True  # show a progress bar

    def __post_init__(self) -> None:
        one_of(self.split, SPLITS, "split")
        positive_int(self.beam, "beam")
        positive_int(self.batch_size, "batch_size")
        finite_number(self.length_penalty, "length_penalty", minimum=0)


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


def write_predictions(path: Path, preds: Predictions) -> None:
    """One JSON line per pair: imgid, filename, changed, caption, references. Atomic."""
    lines = [json.dumps({"imgid": r.imgid, "filename": r.filename, "changed": r.changed,
                         "caption": preds.captions[r.imgid], "references": list(r.texts)})
             for r in preds.records]
    write_atomic(path, "".join(line + "\n" for line in lines))


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
