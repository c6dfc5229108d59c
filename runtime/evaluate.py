"""Evaluation of an exported model folder (any precision, any backend) without PyTorch.

Mirrors the PyTorch evaluation (`rsicrc.evaluate`) step for step, so that fp32 gives identical
captions and equal retrieval metrics: the same `read_pair` + preprocessing with the manifest's
PreprocessSpec, the same batches of `batch_size` pairs in dataset order, the same beam search,
and each pair's first reference caption encoded with the manifest vocabulary exactly as
`rsicrc.data.encode_captions` does. Scoring and the output files are `rsicrc.report`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.errors import DataError
from rsicrc.levircc import LevirCC, PairRecord
from rsicrc.metrics import CaptionScorer
from rsicrc.report import EvalOptions, Predictions, finish, metrics_path
from rsicrc.runtime.captioner import Captioner
from rsicrc.runtime.contract import (
    AFTER,
    ATTENTION_MASK,
    BEFORE,
    IMAGE_ENCODER,
    INPUT_IDS,
    TEXT_EMBEDDING,
    TEXT_ENCODER,
    VISUAL_EMBEDDING,
    cross_names,
)
from rsicrc.runtime.decoding import DecodingOptions, beam_search
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.preprocess import preprocess_batch


def encode_token_lists(captioner: Captioner, captions: Sequence[Sequence[str]]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> text-encoder inputs: ids [B, L] ([START, words, END], PAD-padded to the
    longest) and attention mask [B, L] (1 up to and including END); int64."""
    ids = [captioner.vocab.encode(list(c), captioner.manifest.max_len) for c in captions]
    longest = max(len(i) for i in ids)
    tokens = np.full((len(ids), longest), captioner.special["pad"], dtype=np.int64)
    mask = np.zeros((len(ids), longest), dtype=np.int64)
    for row, i in enumerate(ids):
        tokens[row, : len(i)], mask[row, : len(i)] = i, 1
    return tokens, mask


def _caption_batch(captioner: Captioner, records: Sequence[PairRecord], root: Path,
                   options: DecodingOptions) -> tuple[list[str], np.ndarray]:
    """Best captions and visual embeddings [B, C] of a batch of pairs (the encoder runs once)."""
    pairs = [read_pair(*r.image_paths(root)) for r in records]
    spec = captioner.manifest.preprocess
    before = preprocess_batch([b for b, _ in pairs], spec)  # [B, 3, S, S]
    after = preprocess_batch([a for _, a in pairs], spec)
    outputs = captioner.backend.run(IMAGE_ENCODER, {BEFORE: before, AFTER: after})
    cross = {name: outputs[name] for kv in cross_names(captioner.dims) for name in kv}
    options = captioner.options_for_model(options)
    results = beam_search(captioner.step_model(cross, options.beam_size), len(records), options,
                          start=captioner.special["start"], end=captioner.special["end"])
    return [captioner.vocab.decode(r.best.tokens) for r in results], outputs[VISUAL_EMBEDDING]


def predict_model_folder(captioner: Captioner, dataset: LevirCC, opts: EvalOptions) -> Predictions:
    """Captions, visual embeddings and first-caption text embeddings for one split."""
    from tqdm import tqdm

    records = dataset.split(opts.split)
    if not records:
        raise DataError(f"{dataset.root}: split {opts.split!r} has no pairs")
    options = DecodingOptions(beam_size=opts.beam, length_penalty=opts.length_penalty)
    captions: dict[int, str] = {}
    visual, text = [], []
    starts = range(0, len(records), opts.batch_size)
    for start in tqdm(starts, disable=not opts.progress, desc=f"evaluate {opts.split}", unit="batch"):
        chunk = records[start: start + opts.batch_size]
        best, vis = _caption_batch(captioner, chunk, dataset.root, options)
        captions.update((r.imgid, c) for r, c in zip(chunk, best, strict=True))
        visual.append(vis)
    for start in starts:
        chunk = records[start: start + opts.batch_size]
        tokens, mask = encode_token_lists(captioner, [r.captions[0] for r in chunk])
        out = captioner.backend.run(TEXT_ENCODER, {INPUT_IDS: tokens, ATTENTION_MASK: mask})
        text.append(out[TEXT_EMBEDDING])
    return Predictions(records, captions, np.concatenate(visual), np.concatenate(text))


def evaluate_model_folder(model_dir: Path, opts: EvalOptions, scorer: CaptionScorer | None = None
                          ) -> dict[str, Any]:
    """Evaluate an exported model folder on a split: the PyTorch evaluation's metrics and keys.

    The metrics JSON goes to `opts.out`, else MODEL_DIR/metrics_<split>_<precision>.json; the
    predictions JSONL beside it. `scorer` lets a caller reuse one METEOR JVM.
    """
    dataset = LevirCC.open(opts.data)  # a bad dataset fails before the model loads
    kind = opts.backend or "onnxruntime"
    captioner = Captioner(model_dir, device=opts.device, precision=opts.precision, threads=opts.threads,
                          backend=kind)
    preds = predict_model_folder(captioner, dataset, opts)
    config = {"split": opts.split, "beam": opts.beam, "length_penalty": opts.length_penalty,
              "backend": f"{kind}-{captioner.device}", "precision": captioner.precision,
              "model": str(model_dir), "checkpoint": captioner.manifest.source.get("checkpoint"),
              "threads": opts.threads}
    out = metrics_path(opts, captioner.model_dir, f"_{captioner.precision}")
    return finish(preds, dataset, out, config, scorer)
