"""The RSICRC model: image encoder + text decoder, and the losses' raw ingredients."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from rsicrc.config import ModelConfig
from rsicrc.model.decoder import Cache, TextDecoder
from rsicrc.model.encoder import ImageEncoder


@dataclass
class ModelOutput:
    logits: Tensor  # [B, L, V] next-token logits at every position
    visual: Tensor  # [B, C] pooled visual embedding (not normalized)
    text: Tensor  # [B, C] text embedding at END (not normalized)


class RSICRC(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.vocab_size = vocab_size
        self.encoder = ImageEncoder(cfg)
        self.decoder = TextDecoder(cfg, vocab_size)

    def forward(self, before: Tensor, after: Tensor, tokens: Tensor, lengths: Tensor) -> ModelOutput:
        memory, visual = self.encoder(before, after)  # [B, N, C], [B, C]
        logits, text = self.decoder(tokens, lengths, memory)  # [B, L, V], [B, C]
        return ModelOutput(logits, visual, text)

    def encode_images(self, before: Tensor, after: Tensor) -> tuple[Tensor, Tensor, Cache]:
        """-> visual tokens [B, N, C], visual embedding [B, C], cross K/V per multimodal layer."""
        memory, visual = self.encoder(before, after)
        return memory, visual, self.decoder.cross_keys_values(memory)

    def encode_text(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        return self.decoder.text_embedding(tokens, lengths)  # [B, C]

    def decode_step(self, tokens: Tensor, step: Tensor, cache: Cache,
                    cross_kv: Cache) -> tuple[Tensor, Cache, Tensor]:
        """-> logits [B, V], updated cache, cross-attention of the last multimodal layer [B, N]."""
        return self.decoder.step(tokens, step, cache, cross_kv)

    def num_parameters(self) -> int:
        """Distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
