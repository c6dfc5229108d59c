"""The one captioning pipeline: encode a batch of pairs once, then beam-search the decoder over
the cross-attention K/V the encoder gave (DESIGN §6, §7). Torch-free.

    task = CaptionTask(model, special_ids, max_len)
    captioned = task.run(before, after, options)   # -> results per pair + visual embeddings

The task talks to a model through `CaptionModel` only: `encode` (pairs -> visual embeddings and
an opaque decoder state) and `step_model` (that state, tiled over beams, as the search's StepModel
seam). The exported graphs (`GraphModel`: any Backend, ONNX Runtime or TensorRT), the PyTorch
model (`rsicrc.decode.TorchCaptionModel`) and the benchmarks' reference loop implement it, so
the captioner, the model-folder evaluation, the int8 check, the PyTorch evaluation and the
benchmarks all decode through this one object and the one beam search.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from rsicrc.runtime.contract import (
    AFTER,
    BEFORE,
    CROSS_ATTENTION,
    DECODER_STEP,
    IMAGE_ENCODER,
    INPUT_IDS,
    LOGITS,
    STEP,
    VISUAL_EMBEDDING,
    Dims,
    cross_names,
    past_names,
    present_names,
)
from rsicrc.runtime.decoding import DecodeResult, DecodingOptions, StepModel, beam_search


@dataclass(frozen=True)
class Encoded:
    """What the image encoder gives for a batch of B pairs."""

    visual: np.ndarray  # float32 [B, C] visual embeddings (not normalised)
    state: Any  # what the model's decoder needs per pair (e.g. cross K/V by name); opaque to the task

    @property
    def pairs(self) -> int:
        return len(self.visual)


class CaptionModel(Protocol):
    """What captioning needs from a model: the image encoder and a step-wise decoder."""

    def encode(self, before: np.ndarray, after: np.ndarray) -> Encoded:
        """Preprocessed float32 [B, 3, S, S] pairs -> embeddings and the decoder's state."""
        ...

    def step_model(self, state: Any, beams: int) -> StepModel:
        """A decoder over B x beams rows (pair b on rows b*beams .. b*beams+beams-1)."""
        ...


@dataclass(frozen=True)
class Captioned:
    """A batch's captions (token ids) and the visual embeddings of the same encoder run."""

    results: list[DecodeResult]  # one per pair, best first within each
    visual: np.ndarray  # float32 [B, C]


class CaptionTask:
    """Encode -> decode for any CaptionModel, with the model's special ids and token budget."""

    def __init__(self, model: CaptionModel, start: int, end: int, max_len: int) -> None:
        self.model, self.start, self.end, self.max_len = model, start, end, max_len

    def options(self, options: DecodingOptions) -> DecodingOptions:
        """The search never runs past the model's budget: max_len - 1 tokens after START."""
        return replace(options, max_tokens=min(options.max_tokens, self.max_len - 1))

    def decode(self, encoded: Encoded, options: DecodingOptions) -> list[DecodeResult]:
        """Beam search over an encoded batch (the state is tiled over beams once, never reordered)."""
        options = self.options(options)
        model = self.model.step_model(encoded.state, options.beam_size)
        return beam_search(model, encoded.pairs, options, start=self.start, end=self.end)

    def run(self, before: np.ndarray, after: np.ndarray, options: DecodingOptions) -> Captioned:
        """Caption preprocessed float32 [B, 3, S, S] pairs: one encoder run, one search."""
        encoded = self.model.encode(before, after)
        return Captioned(self.decode(encoded, options), encoded.visual)


def tile_rows(arrays: Mapping[str, np.ndarray], beams: int) -> dict[str, np.ndarray]:
    """Per-pair arrays [B, ...] -> per-row arrays [B * beams, ...] (pair b on rows b*beams..)."""
    return {name: np.repeat(array, beams, axis=0) for name, array in arrays.items()}


class GraphModel:
    """The exported graphs as a CaptionModel: any Backend (ONNX Runtime, TensorRT) runs them;
    the decoder state is the cross-attention K/V by name, [B, H, N, dh] each."""

    def __init__(self, backend: Any, dims: Dims) -> None:
        self.backend, self.dims = backend, dims  # backend: rsicrc.runtime.backend.Backend

    def encode(self, before: np.ndarray, after: np.ndarray) -> Encoded:
        out = self.backend.run(IMAGE_ENCODER, {BEFORE: np.ascontiguousarray(before, dtype=np.float32),
                                               AFTER: np.ascontiguousarray(after, dtype=np.float32)})
        cross = {name: out[name] for kv in cross_names(self.dims) for name in kv}
        return Encoded(out[VISUAL_EMBEDDING], cross)

    def step_model(self, state: Mapping[str, np.ndarray], beams: int) -> StepModel:
        """The backend's bound decoder step: caches in preallocated buffers, on the GPU under CUDA
        or TensorRT (on the CPU ~10% faster per step than `HostStepModel` at batch 1)."""
        return self.backend.bound_decoder(tile_rows(state, beams))


class HostStepModel:
    """The StepModel seam over any `run(graph, feed)`, caches kept as new host arrays each step:
    for runners without IO binding (profiling sessions). Rows: pairs x beams, cross K/V already
    tiled by the caller and never reordered; each step's present_* become the next past_*."""

    def __init__(self, run: Any, dims: Dims, cross: Mapping[str, np.ndarray]) -> None:
        self._run = run  # (graph, feed) -> outputs by name
        self.cross = dict(cross)  # [R, H, N, dh] each
        rows = next(iter(self.cross.values())).shape[0]
        shape = (rows, dims.num_heads, dims.max_len, dims.head_dim)  # [R, H, S, dh]
        past = [n for kv in past_names(dims) for n in kv]
        self.past = {name: np.zeros(shape, np.float32) for name in past}
        self.next_name = dict(zip([n for kv in present_names(dims) for n in kv], past, strict=True))
        self._attention: np.ndarray | None = None  # [R, N] of the last step, where the graph gives it

    def logits(self, tokens: np.ndarray, step: int) -> np.ndarray:
        feed = {
            INPUT_IDS: np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1, 1),  # [R, 1]
            STEP: np.array([step], dtype=np.int64),  # [1]
            **self.past,
            **self.cross,
        }
        out = self._run(DECODER_STEP, feed)
        self.past = {past: out[present] for present, past in self.next_name.items()}
        self._attention = out.get(CROSS_ATTENTION)
        return out[LOGITS]  # [R, V]

    def attention(self) -> np.ndarray | None:
        """The last step's cross-attention [R, N]; None for a graph without it (format 1)."""
        return self._attention

    def reorder(self, source: np.ndarray) -> None:
        index = np.ascontiguousarray(source, dtype=np.int64)  # [R]
        self.past = {name: np.take(array, index, axis=0) for name, array in self.past.items()}
