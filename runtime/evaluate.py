"""Evaluation of an exported model folder (any precision, any engine) without PyTorch.

Mirrors the PyTorch evaluation (`rsicrc.evaluate`) step for step, so that fp32 gives identical
captions and equal retrieval metrics: the same `read_pair` + preprocessing with the manifest's
PreprocessSpec, the same batches of `batch_size` pairs in dataset order, the same CaptionTask
(one encoder run per batch, the same beam search), and each pair's first reference caption
embedded by the text encoder with the manifest vocabulary (`rsicrc.vocab.text_batch`, as in
training). Scoring and the output files are `rsicrc.report`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.errors import DataError
from rsicrc.levircc import LevirCC
from rsicrc.metrics import CaptionScorer
from rsicrc.report import EvalOptions, Predictions, finish, metrics_path
from rsicrc.runtime.captioner import Captioner, preprocess_pairs
from rsicrc.runtime.decoding import DecodingOptions
from rsicrc.runtime.encoders import TextEncoder
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.options import RuntimeOptions


def predict_model_folder(captioner: Captioner, text: TextEncoder, dataset: LevirCC, opts: EvalOptions
                         ) -> Predictions:
    """Captions, visual embeddings and first-caption text embeddings for one split."""
    from tqdm import tqdm

    records = dataset.split(opts.split)
    if not records:
        raise DataError(f"{dataset.root}: split {opts.split!r} has no pairs")
    options = DecodingOptions(beam_size=opts.beam, length_penalty=opts.length_penalty)
    vocab, spec = captioner.model.vocab, captioner.model.preprocess
    captions: dict[int, str] = {}
    visual, texts = [], []
    batches = [records[i: i + opts.batch_size] for i in range(0, len(records), opts.batch_size)]
    for chunk in tqdm(batches, disable=not opts.progress, desc=f"evaluate {opts.split}", unit="batch"):
        pairs = [read_pair(*r.image_paths(dataset.root)) for r in chunk]
        captioned = captioner.task.run(*preprocess_pairs([b for b, _ in pairs], [a for _, a in pairs], spec),
                                       options)
        captions.update((r.imgid, vocab.decode(c.best.tokens))
                        for r, c in zip(chunk, captioned.results, strict=True))
        visual.append(captioned.visual)
    for chunk in batches:
        texts.append(text.embed_tokens([r.captions[0] for r in chunk]))
    return Predictions(records, captions, np.concatenate(visual), np.concatenate(texts))


def evaluate_model_folder(model_dir: Path, opts: EvalOptions, runtime: RuntimeOptions = RuntimeOptions(),
                          scorer: CaptionScorer | None = None) -> dict[str, Any]:
    """Evaluate an exported model folder on a split: the PyTorch evaluation's metrics and keys.

    The metrics JSON goes to `opts.out`, else MODEL_DIR/metrics_<split>_<precision>.json; the
    predictions JSONL beside it. `scorer` lets a caller reuse one METEOR JVM.
    """
    dataset = LevirCC.open(opts.data)  # a bad dataset fails before the model loads
    folder = ModelFolder.open(model_dir)
    captioner = Captioner(folder, runtime)
    preds = predict_model_folder(captioner, TextEncoder(folder, runtime), dataset, opts)
    config = {"split": opts.split, "beam": opts.beam, "length_penalty": opts.length_penalty,
              "backend": f"{runtime.engine}-{captioner.device}", "precision": captioner.precision,
              "model": str(model_dir), "checkpoint": folder.manifest.source.get("checkpoint"),
              "threads": runtime.threads}
    out = metrics_path(opts, folder.path, f"_{captioner.precision}")
    return finish(preds, dataset, out, config, scorer)
