"""Caption before/after pairs with an exported model folder, without PyTorch (DESIGN §7).

    Captioner(model_dir) -> caption_files / caption_arrays / caption_preprocessed
                          -> embed_images / embed_text (retrieval)

The image encoder runs once per batch of pairs and yields the visual embedding and the
cross-attention K/V of every multimodal layer; the shared numpy beam search
(`rsicrc.runtime.decoding`) then drives the decoder-step graph through the backend's bound
step (`BoundDecoderStep`: IO binding, caches in fixed buffers on the CPU or the GPU).
`OrtStepModel` is the plain seam over any `Backend.run` (host caches; int8 checks, profiles).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from rsicrc.errors import DataError, ModelFolderError
from rsicrc.runtime.backend import Backend
from rsicrc.runtime.contract import (
    AFTER,
    ATTENTION_MASK,
    BEFORE,
    DECODER_STEP,
    IMAGE_ENCODER,
    INPUT_IDS,
    LOGITS,
    STEP,
    TEXT_EMBEDDING,
    TEXT_ENCODER,
    VISUAL_EMBEDDING,
    Dims,
    cross_names,
    past_names,
    present_names,
)
from rsicrc.runtime.decoding import DecodeResult, DecodingOptions, StepModel, beam_search
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.manifest import MANIFEST_FILE, Manifest, default_model_dir, load_manifest
from rsicrc.runtime.preprocess import preprocess_batch
from rsicrc.runtime.trt_backend import make_backend
from rsicrc.vocab import tokenize

T = TypeVar("T")


@dataclass(frozen=True)
class CaptionResult:
    """The caption of one pair, with its alternatives and where the time went."""

    caption: str  # best caption, words joined by single spaces
    score: float  # its length-normalised score: sum of log-probs / length ** alpha
    tokens: tuple[int, ...]  # its token ids, START and END excluded
    beams: tuple[tuple[str, float], ...]  # every finished beam (caption, score), best first
    timing_ms: dict[str, float]  # load, read, preprocess, encode, decode, total; per batch, shared

    def to_dict(self) -> dict[str, Any]:
        """The `rsicrc caption --json` form."""
        return {
            "caption": self.caption,
            "score": self.score,
            "tokens": list(self.tokens),
            "beams": [{"caption": c, "score": s} for c, s in self.beams],
            "timing_ms": dict(self.timing_ms),
        }


class OrtStepModel:
    """The StepModel seam over any Backend's `run`, caches kept as new host arrays each step.

    Rows: B pairs x K beams. Cross K/V are tiled once here and never reordered; each step's
    present_* outputs become the next step's past_* inputs; `reorder` is one np.take per cache.
    """

    def __init__(self, backend: Backend, dims: Dims, cross: Mapping[str, np.ndarray], beams: int) -> None:
        self.backend = backend
        self.cross = {name: np.repeat(array, beams, axis=0) for name, array in cross.items()}  # [R, H, N, dh]
        rows = next(iter(self.cross.values())).shape[0]
        shape = (rows, dims.num_heads, dims.max_len, dims.head_dim)  # [R, H, S, dh]
        past = [n for kv in past_names(dims) for n in kv]
        self.past = {name: np.zeros(shape, np.float32) for name in past}
        self.next_name = dict(zip([n for kv in present_names(dims) for n in kv], past, strict=True))

    def logits(self, tokens: np.ndarray, step: int) -> np.ndarray:
        feed = {
            INPUT_IDS: np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1, 1),  # [R, 1]
            STEP: np.array([step], dtype=np.int64),  # [1]
            **self.past,
            **self.cross,
        }
        out = self.backend.run(DECODER_STEP, feed)
        self.past = {past: out[present] for present, past in self.next_name.items()}
        return out[LOGITS]  # [R, V]

    def reorder(self, source: np.ndarray) -> None:
        index = np.ascontiguousarray(source, dtype=np.int64)  # [R]
        self.past = {name: np.take(array, index, axis=0) for name, array in self.past.items()}


def resolve_model_dir(model_dir: Path | None) -> Path:
    """The model folder to use; a clear error saying how to get one if there is none."""
    path = default_model_dir() if model_dir is None else Path(model_dir)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        raise ModelFolderError(
            f"no model at {path}; export one with `rsicrc export CKPT_DIR --out {path}` or pass --model"
        )
    if not path.is_dir():
        raise ModelFolderError(f"{path} is not a model folder (expected a folder with {MANIFEST_FILE})")
    return path


def _timed(timing: dict[str, float], key: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    out = fn()
    timing[key] = timing.get(key, 0.0) + (time.perf_counter() - start) * 1000.0
    return out


class Captioner:
    """An exported model folder, loaded once, captioning pairs (and embedding them for search)."""

    def __init__(self, model_dir: Path | None = None, device: str = "auto",
                 precision: str | None = None, threads: int | None = None,
                 backend: str = "onnxruntime") -> None:
        start = time.perf_counter()
        self.model_dir = resolve_model_dir(model_dir)
        self.manifest: Manifest = load_manifest(self.model_dir)
        self.vocab = self.manifest.vocabulary()
        self.precision = precision or self.manifest.default_precision
        self.backend: Any = make_backend(backend, self.model_dir, self.manifest, self.precision, device,
                                         threads)  # "onnxruntime" or "trt" (rsicrc.runtime.trt_backend)
        for graph in (IMAGE_ENCODER, DECODER_STEP):  # load and check now: errors and cost up front
            self.backend.session(graph)
        self.special = {k: self._special(k) for k in ("pad", "start", "end")}
        self.load_ms = (time.perf_counter() - start) * 1000.0

    def _special(self, key: str) -> int:
        try:
            return int(self.manifest.special_ids[key])
        except (KeyError, TypeError, ValueError):
            raise ModelFolderError(f"{self.model_dir}/{MANIFEST_FILE}: special_ids lacks {key!r}") from None

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def dims(self) -> Dims:
        return self.manifest.dims

    def options_for_model(self, options: DecodingOptions) -> DecodingOptions:
        """The search always runs to the model's own budget: max_len - 1 tokens after START."""
        return replace(options, max_tokens=self.manifest.max_len - 1)

    def step_model(self, cross: Mapping[str, np.ndarray], beams: int) -> StepModel:
        """The backend's bound decoder step: caches in preallocated buffers, on the GPU under
        CUDA or TensorRT (on the CPU ~10% faster per step than `OrtStepModel` at batch 1, ~20%
        for int8 at batch 16)."""
        tiled = {name: np.repeat(array, beams, axis=0) for name, array in cross.items()}  # [R, H, N, dh]
        return self.backend.bound_decoder(tiled)

    def _encode(self, before: np.ndarray, after: np.ndarray) -> dict[str, np.ndarray]:
        return self.backend.run(IMAGE_ENCODER, {BEFORE: np.ascontiguousarray(before, dtype=np.float32),
                                                AFTER: np.ascontiguousarray(after, dtype=np.float32)})

    def caption_preprocessed(self, before: np.ndarray, after: np.ndarray, options: DecodingOptions,
                             timing: dict[str, float] | None = None) -> list[CaptionResult]:
        """Caption preprocessed float32 [B, 3, S, S] tensors (the encoder graph's inputs)."""
        timing = {} if timing is None else timing
        if before.shape != after.shape:
            raise DataError(f"before and after batches differ in shape: {before.shape} vs {after.shape}")
        if before.shape[0] == 0:
            return []
        outputs = _timed(timing, "encode", lambda: self._encode(before, after))
        cross = {name: outputs[name] for kv in cross_names(self.dims) for name in kv}
        options = self.options_for_model(options)
        model = self.step_model(cross, options.beam_size)
        results = _timed(timing, "decode", lambda: beam_search(
            model, before.shape[0], options, start=self.special["start"], end=self.special["end"]))
        timing["total"] = sum(v for k, v in timing.items() if k != "total")
        shared = {"load": self.load_ms, **timing}
        return [self._result(r, shared) for r in results]

    def _result(self, result: DecodeResult, timing: dict[str, float]) -> CaptionResult:
        best = result.best
        return CaptionResult(
            caption=self.vocab.decode(best.tokens),
            score=float(best.score),
            tokens=tuple(int(t) for t in best.tokens),
            beams=tuple((self.vocab.decode(h.tokens), float(h.score)) for h in result.beams),
            timing_ms=timing,
        )

    def _preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return preprocess_batch(images, self.manifest.preprocess)  # [B, 3, S, S]

    def caption_arrays(self, before: Sequence[np.ndarray], after: Sequence[np.ndarray],
                       options: DecodingOptions, timing: dict[str, float] | None = None
                       ) -> list[CaptionResult]:
        """Caption pairs given as uint8 [H, W, 3] arrays (read_pair's output); one result per pair."""
        if len(before) != len(after):
            raise DataError(f"got {len(before)} before images but {len(after)} after images")
        timing = {} if timing is None else timing
        b, a = _timed(timing, "preprocess", lambda: (self._preprocess(before), self._preprocess(after)))
        return self.caption_preprocessed(b, a, options, timing)

    def caption_files(self, pairs: Sequence[tuple[Path, Path]], options: DecodingOptions,
                      bands: Sequence[int] | None = None) -> list[CaptionResult]:
        """Caption (before, after) image files; `bands` are 1-based band numbers for multiband files."""
        timing: dict[str, float] = {}
        arrays = _timed(timing, "read", lambda: [read_pair(b, a, bands) for b, a in pairs])
        return self.caption_arrays([x[0] for x in arrays], [x[1] for x in arrays], options, timing)

    def embed_images(self, before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> np.ndarray:
        """Visual embeddings float32 [B, C] of uint8 pairs (not normalised)."""
        if len(before) != len(after):
            raise DataError(f"got {len(before)} before images but {len(after)} after images")
        return self._encode(self._preprocess(before), self._preprocess(after))[VISUAL_EMBEDDING]

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Text-encoder inputs: [START, words.., END] ids padded to the longest, and the mask."""
        ids = [self.vocab.encode(tokenize(t), self.manifest.max_len) for t in texts]
        longest = max(len(i) for i in ids)
        tokens = np.full((len(ids), longest), self.special["pad"], dtype=np.int64)  # [B, L]
        mask = np.zeros((len(ids), longest), dtype=np.int64)  # [B, L]
        for row, i in enumerate(ids):
            tokens[row, : len(i)], mask[row, : len(i)] = i, 1
        return tokens, mask

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Text embeddings float32 [B, C] of queries or captions (not normalised)."""
        if len(texts) == 0:
            return np.zeros((0, self.dims.d_model), dtype=np.float32)
        tokens, mask = self.encode_texts(texts)
        return self.backend.run(TEXT_ENCODER, {INPUT_IDS: tokens, ATTENTION_MASK: mask})[TEXT_EMBEDDING]


def caption_pair(before: Path, after: Path, options: DecodingOptions, model_dir: Path | None = None,
                 device: str = "auto", precision: str | None = None, threads: int | None = None,
                 bands: Sequence[int] | None = None, backend: str = "onnxruntime") -> CaptionResult:
    """Load a model folder and caption one pair of image files (the `rsicrc caption` call)."""
    timing: dict[str, float] = {}
    b, a = _timed(timing, "read", lambda: read_pair(before, after, bands))  # bad images fail before loading
    captioner = Captioner(model_dir, device=device, precision=precision, threads=threads, backend=backend)
    return captioner.caption_arrays([b], [a], options, timing)[0]
