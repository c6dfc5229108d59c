"""The PyTorch reference model behind the runtime's captioning seams: `TorchCaptionModel` is a
CaptionModel (encoder + step-wise decoder), so PyTorch captions through the same CaptionTask and
the same numpy beam search as the exported graphs, and parity tests compare model numerics, not
two search implementations.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rsicrc.model import RSICRC
from rsicrc.model.decoder import Cache
from rsicrc.runtime.decoding import DecodeResult, DecodingOptions
from rsicrc.runtime.task import CaptionTask, Encoded
from rsicrc.vocab import END, START


class TorchStepModel:
    """Implements the `StepModel` seam over B pairs x K beams = R rows."""

    def __init__(self, model: RSICRC, cross_kv: Cache, beams: int) -> None:
        self.model = model
        # Tiled once per beam, never reordered: row r belongs to pair r // K throughout.
        self.cross_kv = [(k.repeat_interleave(beams, 0), v.repeat_interleave(beams, 0))
                         for k, v in cross_kv]  # [R, H, N, dh] each
        rows = cross_kv[0][0].shape[0] * beams
        device, dtype = cross_kv[0][0].device, cross_kv[0][0].dtype
        self.cache = model.decoder.empty_cache(rows, device, dtype)  # [R, H, S, dh] per layer
        self.device = device
        self._attention: Tensor | None = None  # [R, N] of the last step

    @torch.no_grad()
    def logits(self, tokens: np.ndarray, step: int) -> np.ndarray:
        ids = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(self.device)  # [R]
        step_t = torch.tensor(step, dtype=torch.int64, device=self.device)
        logits, self.cache, self._attention = self.model.decode_step(ids, step_t, self.cache, self.cross_kv)
        return logits.float().cpu().numpy()  # [R, V]

    def attention(self) -> np.ndarray | None:
        """The last step's cross-attention, float32 [R, N] (the AttentionStepModel seam)."""
        return None if self._attention is None else self._attention.float().cpu().numpy()

    def reorder(self, source: np.ndarray) -> None:
        idx = torch.from_numpy(np.ascontiguousarray(source, dtype=np.int64)).to(self.device)  # [R]
        self.cache = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self.cache]


class TorchCaptionModel:
    """The PyTorch model as a CaptionModel; its decoder state is the cross K/V per multimodal layer."""

    def __init__(self, model: RSICRC) -> None:
        self.model = model
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def encode(self, before: np.ndarray | Tensor, after: np.ndarray | Tensor) -> Encoded:
        b, a = (torch.as_tensor(x).to(self.device) for x in (before, after))  # [B, 3, S, S]
        _, visual, cross_kv = self.model.encode_images(b, a)
        return Encoded(visual.float().cpu().numpy(), cross_kv)  # visual [B, C]

    def step_model(self, state: Cache, beams: int) -> TorchStepModel:
        return TorchStepModel(self.model, state, beams)


def caption_task(model: RSICRC) -> CaptionTask:
    """The CaptionTask over a PyTorch model (special ids of rsicrc.vocab, the model's max_len)."""
    return CaptionTask(TorchCaptionModel(model), START, END, model.cfg.max_len)


@torch.no_grad()
def generate(model: RSICRC, before: Tensor, after: Tensor,
             options: DecodingOptions) -> tuple[list[DecodeResult], Tensor]:
    """Caption a batch of pairs. before/after [B, 3, S, S] -> results and visual embeddings [B, C]."""
    captioned = caption_task(model).run(before, after, options)
    return captioned.results, torch.from_numpy(captioned.visual)


def decoding_options(model: RSICRC, beam: int, **kwargs: float | int | bool) -> DecodingOptions:
    """Options with the model's own token budget (max_len - 1)."""
    return DecodingOptions(beam_size=beam, max_tokens=model.cfg.max_len - 1, **kwargs)  # type: ignore[arg-type]
