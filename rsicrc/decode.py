"""The PyTorch reference decoder: the model behind the shared beam search's step seam.

The search loop itself lives in `rsicrc.runtime.decoding` (numpy) and is the same one the
ONNX Runtime / TensorRT backends drive, so parity tests compare model numerics, not two
search implementations.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rsicrc.model import RSICRC
from rsicrc.model.decoder import Cache
from rsicrc.runtime.decoding import DecodeResult, DecodingOptions, beam_search


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

    @torch.no_grad()
    def logits(self, tokens: np.ndarray, step: int) -> np.ndarray:
        ids = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(self.device)  # [R]
        step_t = torch.tensor(step, dtype=torch.int64, device=self.device)
        logits, self.cache = self.model.decode_step(ids, step_t, self.cache, self.cross_kv)
        return logits.float().cpu().numpy()  # [R, V]

    def reorder(self, source: np.ndarray) -> None:
        idx = torch.from_numpy(np.ascontiguousarray(source, dtype=np.int64)).to(self.device)  # [R]
        self.cache = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self.cache]


@torch.no_grad()
def generate(model: RSICRC, before: Tensor, after: Tensor,
             options: DecodingOptions) -> tuple[list[DecodeResult], Tensor]:
    """Caption a batch of pairs. before/after [B, 3, S, S] -> results and visual embeddings [B, C]."""
    _, visual, cross_kv = model.encode_images(before, after)
    seam = TorchStepModel(model, cross_kv, options.beam_size)
    return beam_search(seam, before.shape[0], options), visual


def decoding_options(model: RSICRC, beam: int, **kwargs: float | int | bool) -> DecodingOptions:
    """Options with the model's own token budget (max_len - 1)."""
    return DecodingOptions(beam_size=beam, max_tokens=model.cfg.max_len - 1, **kwargs)  # type: ignore[arg-type]
