"""PyTorch evaluation of a checkpoint on a LEVIR-CC split (the reference the runtime is checked against).

Only the PyTorch prediction lives here; scoring and the output files are `rsicrc.report`'s,
shared with the evaluation of exported model folders (`rsicrc.runtime.evaluate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from rsicrc.checkpoint import load_checkpoint
from rsicrc.data import PairDataset, collate, encode_captions
from rsicrc.decode import caption_task, decoding_options
from rsicrc.levircc import LevirCC
from rsicrc.metrics import CaptionScorer
from rsicrc.report import EvalOptions, Predictions, finish, metrics_path
from rsicrc.runtime.preprocess import PreprocessSpec
from rsicrc.train import pick_device

__all__ = ["EvalOptions", "Predictions", "evaluate_checkpoint", "predict_checkpoint"]


@torch.no_grad()
def predict_checkpoint(ckpt_dir: Path, dataset: LevirCC, opts: EvalOptions, device: str = "auto"
                       ) -> Predictions:
    """Caption the split with the PyTorch model (batches of `opts.batch_size` pairs in dataset
    order) and embed each pair's first reference caption with its text encoder."""
    device = pick_device(device)
    ckpt = load_checkpoint(ckpt_dir, device)
    model, vocab, mc = ckpt.model, ckpt.vocab, ckpt.config.model
    records = dataset.split(opts.split)
    ds = PairDataset(dataset.root, records, vocab, mc.max_len, PreprocessSpec(size=mc.image_size),
                     all_captions=False, cache_images=False)
    options = decoding_options(model, opts.beam, length_penalty=opts.length_penalty)
    task = caption_task(model)
    captions: dict[int, str] = {}
    visual, text = [], []
    from tqdm import tqdm

    loader = DataLoader(ds, batch_size=opts.batch_size, collate_fn=collate)
    for batch in tqdm(loader, disable=not opts.progress, desc=f"evaluate {opts.split}", unit="batch"):
        captioned = task.run(batch.before, batch.after, options)
        captions.update((i, vocab.decode(r.best.tokens)) for i, r in zip(batch.imgids, captioned.results,
                                                                       strict=True))
        visual.append(captioned.visual)
    for i in range(0, len(records), opts.batch_size):
        chunk = [r.captions[0] for r in records[i: i + opts.batch_size]]
        tokens, lengths = encode_captions(vocab, chunk, mc.max_len)
        text.append(model.encode_text(tokens.to(device), lengths.to(device)).float().cpu().numpy())
    return Predictions(records, captions, np.concatenate(visual), np.concatenate(text))


def evaluate_checkpoint(ckpt_dir: Path, opts: EvalOptions, device: str = "auto",
                        scorer: CaptionScorer | None = None) -> dict[str, Any]:
    """Predict with the PyTorch model, score, write metrics (and predictions) atomically.

    `scorer` lets a caller reuse one METEOR JVM over several evaluations.
    """
    dataset = LevirCC.open(opts.data)
    preds = predict_checkpoint(ckpt_dir, dataset, opts, device)
    config = {"split": opts.split, "beam": opts.beam, "length_penalty": opts.length_penalty,
              "backend": "pytorch", "precision": "fp32", "checkpoint": str(ckpt_dir)}
    return finish(preds, dataset, metrics_path(opts, Path(ckpt_dir)), config, scorer)
