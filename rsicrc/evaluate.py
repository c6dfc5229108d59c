"""PyTorch evaluation of a checkpoint on a LEVIR-CC split (the reference the runtime is checked against)."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from rsicrc.checkpoint import load_checkpoint, write_json_atomic
from rsicrc.data import PairDataset, collate, encode_captions
from rsicrc.decode import decoding_options, generate
from rsicrc.levircc import LevirCC, PairRecord
from rsicrc.metrics import CaptionScorer, evaluation_report
from rsicrc.runtime.preprocess import PreprocessSpec
from rsicrc.textsim import CaptionMatcher
from rsicrc.train import pick_device

BASELINE_CANDIDATES = 40  # most frequent training captions tried as the constant baseline


@dataclass(frozen=True)
class EvalOptions:
    data: Path  # LEVIR-CC layout folder
    split: str = "test"  # train | val | test
    beam: int = 3  # beam size; 1 = greedy
    length_penalty: float = 1.0  # alpha in score = logprob / length ** alpha
    batch_size: int = 16  # pairs per forward pass
    device: str = "auto"  # auto | cpu | cuda
    out: Path | None = None  # metrics JSON; predictions go beside it (<stem>.predictions.jsonl)
    progress: bool = True  # show a progress bar


@dataclass(frozen=True)
class Predictions:
    """What a backend produced for a split: the inputs of `evaluation_report`."""

    records: list[PairRecord]
    captions: dict[int, str]  # imgid -> best caption
    visual: np.ndarray  # [N, C] visual embeddings
    text: np.ndarray  # [N, C] embeddings of each pair's first reference caption


def baseline_candidates(records: Sequence[PairRecord], n: int = BASELINE_CANDIDATES) -> list[str]:
    """The most frequent captions of the training split (constant-caption baseline)."""
    counts = Counter(t for r in records if r.split == "train" for t in r.texts)
    return [c for c, _ in counts.most_common(n)] or [t for r in records for t in r.texts][:n]


@torch.no_grad()
def predict_checkpoint(ckpt_dir: Path, dataset: LevirCC, opts: EvalOptions) -> Predictions:
    device = pick_device(opts.device)
    ckpt = load_checkpoint(ckpt_dir, device)
    model, vocab, mc = ckpt.model, ckpt.vocab, ckpt.config.model
    records = dataset.split(opts.split)
    ds = PairDataset(dataset.root, records, vocab, mc.max_len, PreprocessSpec(size=mc.image_size),
                     all_captions=False, cache_images=False)
    options = decoding_options(model, opts.beam, length_penalty=opts.length_penalty)
    captions: dict[int, str] = {}
    visual, text = [], []
    from tqdm import tqdm

    loader = DataLoader(ds, batch_size=opts.batch_size, collate_fn=collate)
    for batch in tqdm(loader, disable=not opts.progress, desc=f"evaluate {opts.split}", unit="batch"):
        results, vis = generate(model, batch.before.to(device), batch.after.to(device), options)
        captions.update((i, vocab.decode(r.best.tokens)) for i, r in zip(batch.imgids, results, strict=True))
        visual.append(vis.float().cpu().numpy())
    for i in range(0, len(records), opts.batch_size):
        chunk = [r.captions[0] for r in records[i: i + opts.batch_size]]
        tokens, lengths = encode_captions(vocab, chunk, mc.max_len)
        text.append(model.encode_text(tokens.to(device), lengths.to(device)).float().cpu().numpy())
    return Predictions(records, captions, np.concatenate(visual), np.concatenate(text))


def write_predictions(path: Path, preds: Predictions) -> None:
    """One JSON line per pair: imgid, filename, changed, caption, references. Atomic."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        for r in preds.records:
            f.write(json.dumps({"imgid": r.imgid, "filename": r.filename, "changed": r.changed,
                                "caption": preds.captions[r.imgid], "references": list(r.texts)}) + "\n")
    os.replace(tmp, path)


def report(preds: Predictions, all_records: Sequence[PairRecord], predictions_file: Path) -> dict[str, Any]:
    """Metrics for any backend's predictions (same keys for PyTorch and exported models)."""
    with CaptionScorer() as scorer:
        return evaluation_report(preds.records, preds.captions, preds.visual, preds.text, scorer,
                                 CaptionMatcher(1.0), baseline_candidates(all_records), str(predictions_file))


def evaluate_checkpoint(ckpt_dir: Path, opts: EvalOptions) -> dict[str, Any]:
    """Predict with the PyTorch model, score, write metrics (and predictions) atomically."""
    dataset = LevirCC.open(opts.data)
    preds = predict_checkpoint(ckpt_dir, dataset, opts)
    out = opts.out or Path(ckpt_dir) / f"metrics_{opts.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    pred_file = out.with_name(f"{out.stem}.predictions.jsonl")
    write_predictions(pred_file, preds)
    metrics = report(preds, dataset.records, pred_file)
    metrics["config"] = {"split": opts.split, "beam": opts.beam, "length_penalty": opts.length_penalty,
                         "backend": "pytorch", "checkpoint": str(ckpt_dir)}
    write_json_atomic(out, metrics)
    return metrics
