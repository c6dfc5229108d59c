"""The one place where scene captioning opens the exported model and calls it.

Everything the tile loop needs from the model goes through `SceneModel`: preprocess tiles,
encode a batch once (visual embeddings for the change gate and `--query`, cross-attention K/V
for the decoder), caption a subset of an encoded batch without encoding it again, embed text.
Today it wraps `rsicrc.runtime.captioner.Captioner`; when the runtime's model API changes, this
file is what changes with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.runtime.captioner import Captioner
from rsicrc.runtime.decoding import DecodingOptions
from rsicrc.runtime.encoders import TextEncoder
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.preprocess import preprocess_batch
from rsicrc.runtime.task import Encoded as TaskEncoded
from rsicrc.vocab import tokenize


@dataclass(frozen=True)
class Encoded:
    """One encoded batch of tiles."""

    embedding: np.ndarray  # [B, C] visual embeddings, L2-normalised
    cross: dict[str, np.ndarray]  # cross-attention K/V of every multimodal layer, [B, H, N, dh] each

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The cross K/V of some rows (int [b]) of the batch, for decoding only those."""
        return {name: np.ascontiguousarray(array[rows]) for name, array in self.cross.items()}


@dataclass(frozen=True)
class TileCaption:
    """The decoded caption of one tile."""

    caption: str  # best caption
    score: float  # its length-normalised log-probability
    beams: tuple[tuple[str, float], ...]  # every finished beam (caption, score), best first


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero); float32."""
    x = np.asarray(x, dtype=np.float32)  # [B, C]
    norm = np.linalg.norm(x, axis=1, keepdims=True)  # [B, 1]
    return x / np.maximum(norm, np.float32(1e-12))


class SceneModel:
    """An exported model folder, loaded once for a whole scene: the Captioner (image encoder and
    decoder step) and the text encoder (the gate's sentences, --query), each graph opened once."""

    def __init__(self, model_dir: Path | None, runtime: RuntimeOptions) -> None:
        self.folder = ModelFolder.open(model_dir)
        self.runtime = runtime
        self._captioner = Captioner(self.folder, runtime)
        self._text: TextEncoder | None = None  # opened on first use: plain captioning needs no text graph

    @property
    def input_size(self) -> int:
        """Side of the model's square input, in pixels."""
        return self.folder.preprocess.size

    def identity(self) -> dict[str, Any]:
        """What to record in outputs: the folder, precision, engine and the sha256 of each graph."""
        c = self._captioner
        return {"model_dir": str(self.folder.path.resolve()), "precision": c.precision,
                "engine": self.runtime.engine, "device": c.device,
                "sha256": {g: f.sha256 for g, f in sorted(self.folder.manifest.graphs[c.precision].items())}}

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 [h, w, 3] tiles -> float32 [B, 3, S, S], the caption preprocessing."""
        return preprocess_batch(images, self.folder.preprocess)

    def encode(self, before: np.ndarray, after: np.ndarray) -> Encoded:
        """Run the image encoder once on preprocessed [B, 3, S, S] batches."""
        encoded = self._captioner.graphs.encode(before, after)
        return Encoded(normalise(encoded.visual), encoded.state)

    def caption(self, cross: dict[str, np.ndarray], options: DecodingOptions) -> list[TileCaption]:
        """Beam-search captions of already encoded tiles (their cross K/V, [b, H, N, dh] each)."""
        rows = next(iter(cross.values())).shape[0]
        if rows == 0:
            return []
        results = self._captioner.task.decode(TaskEncoded(np.zeros((rows, 0), np.float32), cross), options)
        captions = [self._captioner.result(r, {}) for r in results]
        return [TileCaption(c.caption, c.score, c.beams) for c in captions]

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings [n, C] (queries, the gate's reference captions)."""
        if self._text is None:
            self._text = TextEncoder(self.folder, self.runtime)
        return normalise(self._text.embed(texts))

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` the model's vocabulary does not know (read as <UNK>)."""
        return self.folder.vocab.unknown_words(tokenize(text))
