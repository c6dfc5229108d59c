"""Caption before/after pairs with an exported model folder, without PyTorch (DESIGN §7).

    captioner = Captioner(ModelFolder.open(path), RuntimeOptions(device="cpu"))
    captioner.caption_files / caption_arrays / caption_preprocessed -> CaptionResult per pair

Only the image encoder and the decoder step are opened. The image encoder runs once per batch of
pairs and yields the visual embedding and the cross-attention K/V of every multimodal layer; the
shared numpy beam search (`rsicrc.runtime.decoding`) then drives the decoder-step graph through
the backend's bound step (IO binding, caches in fixed buffers on the CPU or the GPU). Both steps
are the `CaptionTask` every other captioning path uses too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from rsicrc.errors import DataError, ModelFolderError
from rsicrc.runtime.contract import CROSS_ATTENTION, DECODER_STEP, IMAGE_ENCODER, Dims
from rsicrc.runtime.decoding import DecodeResult, DecodingOptions
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.manifest import Manifest
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.preprocess import PreprocessSpec, preprocess_batch
from rsicrc.runtime.task import CaptionTask, GraphModel

T = TypeVar("T")


@dataclass(frozen=True)
class CaptionResult:
    """The caption of one pair, with its alternatives and where the time went."""

    caption: str  # best caption, words joined by single spaces
    score: float  # its length-normalised score: sum of log-probs / length ** alpha
    tokens: tuple[int, ...]  # its token ids, START and END excluded
    beams: tuple[tuple[str, float], ...]  # every finished beam (caption, score), best first
    timing_ms: dict[str, float]  # load, read, preprocess, encode, decode, total; per batch, shared
    # float32 [len(tokens), N]: where the decoder looked (N visual tokens, row-major grid) while
    # choosing each token; only with DecodingOptions(attention=True). Not part of equality.
    attention: np.ndarray | None = field(default=None, compare=False)

    def to_dict(self, attention: bool = False) -> dict[str, Any]:
        """The `rsicrc caption --json` form; `attention` adds the per-token attention rows."""
        out = {
            "caption": self.caption,
            "score": self.score,
            "tokens": list(self.tokens),
            "beams": [{"caption": c, "score": s} for c, s in self.beams],
            "timing_ms": dict(self.timing_ms),
        }
        if attention and self.attention is not None:
            out["attention"] = [[float(v) for v in row] for row in self.attention]  # [T][N]
        return out


def timed(timing: dict[str, float], key: str, fn: Callable[[], T]) -> T:
    """Run `fn`, adding its wall time in ms to timing[key]."""
    start = time.perf_counter()
    out = fn()
    timing[key] = timing.get(key, 0.0) + (time.perf_counter() - start) * 1000.0
    return out


def preprocess_pairs(before: Sequence[np.ndarray], after: Sequence[np.ndarray], spec: PreprocessSpec
                     ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [H, W, 3] pairs (read_pair's output) -> the image encoder's float32 [B, 3, S, S] inputs."""
    if len(before) != len(after):
        raise DataError(f"got {len(before)} before images but {len(after)} after images")
    return preprocess_batch(before, spec), preprocess_batch(after, spec)


class Captioner:
    """An exported model folder's image encoder and decoder step, loaded once, captioning pairs."""

    GRAPHS: tuple[str, ...] = (IMAGE_ENCODER, DECODER_STEP)  # opened (and checked) up front

    def __init__(self, model: ModelFolder, runtime: RuntimeOptions = RuntimeOptions()) -> None:
        start = time.perf_counter()
        self.model = model
        self.backend = model.backend(runtime, self.GRAPHS)
        self.graphs = GraphModel(self.backend, model.dims)
        self.task = CaptionTask(self.graphs, model.special["start"], model.special["end"], model.max_len)
        self.load_ms = (time.perf_counter() - start) * 1000.0

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def precision(self) -> str:
        return self.backend.precision

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    @property
    def dims(self) -> Dims:
        return self.model.dims

    @property
    def has_attention(self) -> bool:
        """Whether the decoder step outputs its cross-attention (model folders of format 2 on)."""
        return CROSS_ATTENTION in self.manifest.contract[DECODER_STEP].output_names()

    def require_attention(self) -> None:
        """One clear error for a model folder exported before attention heatmaps existed."""
        if not self.has_attention:
            raise ModelFolderError(
                f"{self.model.path} predates attention heatmaps (manifest format "
                f"{self.manifest.format_version}: its decoder step has no {CROSS_ATTENTION} output); "
                "re-export the model with `rsicrc export CKPT_DIR --out MODEL_DIR` to get heatmaps "
                "and attention")

    def caption_preprocessed(self, before: np.ndarray, after: np.ndarray, options: DecodingOptions,
                             timing: dict[str, float] | None = None) -> list[CaptionResult]:
        """Caption preprocessed float32 [B, 3, S, S] tensors (the encoder graph's inputs)."""
        timing = {} if timing is None else timing
        if before.shape != after.shape:
            raise DataError(f"before and after batches differ in shape: {before.shape} vs {after.shape}")
        if options.attention:
            self.require_attention()
        if before.shape[0] == 0:
            return []
        encoded = timed(timing, "encode", lambda: self.graphs.encode(before, after))
        results = timed(timing, "decode", lambda: self.task.decode(encoded, options))
        timing["total"] = sum(v for k, v in timing.items() if k != "total")
        shared = {"load": self.load_ms, **timing}
        return [self.result(r, shared) for r in results]

    def result(self, result: DecodeResult, timing: dict[str, float]) -> CaptionResult:
        """A search result in words."""
        vocab = self.model.vocab
        best = result.best
        return CaptionResult(
            caption=vocab.decode(best.tokens),
            score=float(best.score),
            tokens=tuple(int(t) for t in best.tokens),
            beams=tuple((vocab.decode(h.tokens), float(h.score)) for h in result.beams),
            timing_ms=timing,
            attention=best.attention,
        )

    def caption_arrays(self, before: Sequence[np.ndarray], after: Sequence[np.ndarray],
                       options: DecodingOptions, timing: dict[str, float] | None = None
                       ) -> list[CaptionResult]:
        """Caption pairs given as uint8 [H, W, 3] arrays (read_pair's output); one result per pair."""
        timing = {} if timing is None else timing
        b, a = timed(timing, "preprocess", lambda: preprocess_pairs(before, after, self.model.preprocess))
        return self.caption_preprocessed(b, a, options, timing)

    def caption_files(self, pairs: Sequence[tuple[Path, Path]], options: DecodingOptions,
                      bands: Sequence[int] | None = None) -> list[CaptionResult]:
        """Caption (before, after) image files; `bands` are 1-based band numbers for multiband files."""
        timing: dict[str, float] = {}
        arrays = timed(timing, "read", lambda: [read_pair(b, a, bands) for b, a in pairs])
        return self.caption_arrays([x[0] for x in arrays], [x[1] for x in arrays], options, timing)

    def embed_images(self, before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> np.ndarray:
        """Visual embeddings float32 [B, C] of uint8 pairs (not normalised)."""
        return self.graphs.encode(*preprocess_pairs(before, after, self.model.preprocess)).visual


def caption_pair(before: Path, after: Path, options: DecodingOptions, model_dir: Path | None = None,
                 runtime: RuntimeOptions = RuntimeOptions(), bands: Sequence[int] | None = None
                 ) -> CaptionResult:
    """Load a model folder and caption one pair of image files (the `rsicrc caption` call)."""
    timing: dict[str, float] = {}
    b, a = timed(timing, "read", lambda: read_pair(before, after, bands))  # bad images fail before loading
    captioner = Captioner(ModelFolder.open(model_dir), runtime)
    return captioner.caption_arrays([b], [a], options, timing)[0]
