"""One graph each, for jobs that need no decoder: embedding image pairs (`rsicrc index`) and
embedding texts (`rsicrc search`, evaluation's reference captions). Torch-free.

Each opens only its own graph: indexing with the paper model never loads the 441 MB decoder
step, a search never loads the 965 MB image encoder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from rsicrc.runtime.captioner import preprocess_pairs
from rsicrc.runtime.contract import ATTENTION_MASK, IMAGE_ENCODER, INPUT_IDS, TEXT_EMBEDDING, TEXT_ENCODER
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.task import GraphModel
from rsicrc.vocab import text_batch, tokenize


class ImageEncoder:
    """The image-encoder graph alone: visual embeddings of before/after pairs."""

    GRAPHS: tuple[str, ...] = (IMAGE_ENCODER,)

    def __init__(self, model: ModelFolder, runtime: RuntimeOptions = RuntimeOptions()) -> None:
        start = time.perf_counter()
        self.model = model
        self.backend = model.backend(runtime, self.GRAPHS)
        self.graphs = GraphModel(self.backend, model.dims)
        self.load_ms = (time.perf_counter() - start) * 1000.0

    @property
    def precision(self) -> str:
        return self.backend.precision

    def embed(self, before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> np.ndarray:
        """Visual embeddings float32 [B, C] of uint8 [H, W, 3] pairs (not normalised)."""
        return self.graphs.encode(*preprocess_pairs(before, after, self.model.preprocess)).visual


class TextEncoder:
    """The text-encoder graph alone: embeddings of queries or captions, tokenized with the model's
    vocabulary exactly as its captions were in training."""

    GRAPHS: tuple[str, ...] = (TEXT_ENCODER,)

    def __init__(self, model: ModelFolder, runtime: RuntimeOptions = RuntimeOptions()) -> None:
        start = time.perf_counter()
        self.model = model
        self.backend = model.backend(runtime, self.GRAPHS)
        self.load_ms = (time.perf_counter() - start) * 1000.0

    @property
    def precision(self) -> str:
        return self.backend.precision

    def embed_tokens(self, captions: Sequence[Sequence[str]]) -> np.ndarray:
        """Text embeddings float32 [B, C] of token lists (not normalised)."""
        if len(captions) == 0:
            return np.zeros((0, self.model.dims.d_model), dtype=np.float32)
        ids, mask = text_batch(self.model.vocab, captions, self.model.max_len)
        return self.backend.run(TEXT_ENCODER, {INPUT_IDS: ids, ATTENTION_MASK: mask})[TEXT_EMBEDDING]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Text embeddings float32 [B, C] of queries or captions (not normalised)."""
        return self.embed_tokens([tokenize(t) for t in texts])
