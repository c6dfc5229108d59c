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

from rsicrc.checks import one_of
from rsicrc.runtime.captioner import Captioner
from rsicrc.runtime.contract import AFTER, BEFORE, IMAGE_ENCODER, VISUAL_EMBEDDING, cross_names
from rsicrc.runtime.decoding import DecodingOptions, beam_search
from rsicrc.runtime.preprocess import preprocess_batch
from rsicrc.runtime.trt_backend import BACKENDS
from rsicrc.vocab import tokenize

ENGINES = BACKENDS  # --engine choices: onnxruntime, trt


@dataclass(frozen=True)
class ModelOptions:
    """Which model folder to run, and how."""

    model_dir: Path | None = None  # exported model folder; None: the default folder ($RSICRC_MODEL, ...)
    engine: str = "onnxruntime"  # one of ENGINES (TensorRT engines from `rsicrc build-engines`)
    device: str = "auto"  # auto, cpu or cuda
    precision: str | None = None  # fp32, int8, fp16; None: the model folder's default
    threads: int | None = None  # CPU threads per graph; None: ONNX Runtime's choice

    def __post_init__(self) -> None:
        one_of(self.engine, ENGINES, "--engine")


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
    """An exported model folder, loaded once for a whole scene."""

    def __init__(self, options: ModelOptions) -> None:
        self._captioner = Captioner(options.model_dir, device=options.device, precision=options.precision,
                                    threads=options.threads, backend=options.engine)
        self.options = options

    @property
    def input_size(self) -> int:
        """Side of the model's square input, in pixels."""
        return self._captioner.manifest.preprocess.size

    def identity(self) -> dict[str, Any]:
        """What to record in outputs: the folder, precision, engine and the sha256 of each graph."""
        c = self._captioner
        return {"model_dir": str(c.model_dir.resolve()), "precision": c.precision,
                "engine": self.options.engine, "device": c.device,
                "sha256": {g: f.sha256 for g, f in sorted(c.manifest.graphs[c.precision].items())}}

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 [h, w, 3] tiles -> float32 [B, 3, S, S], the caption preprocessing."""
        return preprocess_batch(images, self._captioner.manifest.preprocess)

    def encode(self, before: np.ndarray, after: np.ndarray) -> Encoded:
        """Run the image encoder once on preprocessed [B, 3, S, S] batches."""
        out = self._captioner.backend.run(IMAGE_ENCODER, {BEFORE: before, AFTER: after})
        cross = {name: out[name] for kv in cross_names(self._captioner.dims) for name in kv}
        return Encoded(normalise(out[VISUAL_EMBEDDING]), cross)

    def caption(self, cross: dict[str, np.ndarray], options: DecodingOptions) -> list[TileCaption]:
        """Beam-search captions of already encoded tiles (their cross K/V, [b, H, N, dh] each)."""
        rows = next(iter(cross.values())).shape[0]
        if rows == 0:
            return []
        c = self._captioner
        options = c.options_for_model(options)
        step = c.step_model(cross, options.beam_size)
        results = beam_search(step, rows, options, start=c.special["start"], end=c.special["end"])
        return [TileCaption(c.vocab.decode(r.best.tokens), float(r.best.score),
                            tuple((c.vocab.decode(h.tokens), float(h.score)) for h in r.beams))
                for r in results]

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings [n, C] (queries, the gate's reference captions)."""
        return normalise(self._captioner.embed_text(texts))

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` the model's vocabulary does not know (read as <UNK>)."""
        return self._captioner.vocab.unknown_words(tokenize(text))
