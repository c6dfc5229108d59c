"""Text side: token embeddings (tied LM head by default), unimodal (text-embedding) stack,
multimodal (captioning) stack.

Two ways through the same weights: `forward` over whole sequences (training, text
embeddings) and `step` over one token with fixed-capacity caches (decoding, export).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsicrc.config import ModelConfig
from rsicrc.model.attention import DecoderAttention


def sinusoid_table(length: int, width: int) -> Tensor:
    """Classic sin/cos positions: [length, width]."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # [L, 1]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


class DecoderLayer(nn.Module):
    """Causal self-attention [-> cross-attention] -> GELU feed-forward, each a residual sub-block.

    Post-norm (the paper): x = norm(x + f(x)). With `cfg.prenorm`: x = x + f(norm(x)), the cross
    keys/values still taken from the un-normalised memory (as the original code does).
    """

    def __init__(self, cfg: ModelConfig, cross: bool) -> None:
        super().__init__()
        c = cfg.d_model
        self.prenorm = cfg.prenorm
        self.self_attn = DecoderAttention(c, cfg.num_heads, cfg.dropout)
        self.sa_norm = nn.LayerNorm(c)
        self.cross_attn = DecoderAttention(c, cfg.num_heads, cfg.dropout) if cross else None
        self.mha_norm = nn.LayerNorm(c) if cross else None
        self.ff_linear1 = nn.Linear(c, 4 * c)
        self.ff_linear2 = nn.Linear(4 * c, c)
        self.ff_norm = nn.LayerNorm(c)
        self.drop = nn.Dropout(cfg.dropout)

    def block_input(self, x: Tensor, norm: nn.Module) -> Tensor:
        """What a sub-block reads: x itself (post-norm) or norm(x) (prenorm)."""
        return norm(x) if self.prenorm else x

    def residual(self, x: Tensor, out: Tensor, norm: nn.Module) -> Tensor:
        """x plus a sub-block's output, normalised after the sum unless prenorm."""
        return x + out if self.prenorm else norm(x + out)

    def feed_forward(self, x: Tensor) -> Tensor:
        h = self.drop(F.gelu(self.ff_linear1(self.block_input(x, self.ff_norm))))  # [B, L, 4C]
        return self.residual(x, self.drop(self.ff_linear2(h)), self.ff_norm)  # [B, L, C]

    def self_attention(self, x: Tensor) -> Tensor:
        sa = self.self_attn(self.block_input(x, self.sa_norm), causal=True)  # [B, L, C]
        return self.residual(x, self.drop(sa), self.sa_norm)

    def forward(self, x: Tensor, memory: Tensor | None = None) -> Tensor:
        x = self.self_attention(x)  # [B, L, C]
        if self.cross_attn is not None and self.mha_norm is not None:
            ca = self.cross_attn(self.block_input(x, self.mha_norm), memory=memory)  # [B, L, C]
            x = self.residual(x, self.drop(ca), self.mha_norm)
        return self.feed_forward(x)

    def step(self, x: Tensor, onehot: Tensor, valid: Tensor, k_cache: Tensor, v_cache: Tensor,
             cross_kv: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """x [B, 1, C]; caches [B, H, S, dh]; cross_kv [B, H, N, dh] x2 for multimodal layers.
        Returns x, the caches and (multimodal layers) the cross-attention, mean over heads [B, N]."""
        sa, k_cache, v_cache = self.self_attn.step_self(self.block_input(x, self.sa_norm), onehot, valid,
                                                        k_cache, v_cache)
        x = self.residual(x, sa, self.sa_norm)  # [B, 1, C]
        attention = None
        if self.cross_attn is not None and self.mha_norm is not None and cross_kv is not None:
            ca, attention = self.cross_attn.step_cross(self.block_input(x, self.mha_norm), *cross_kv)
            x = self.residual(x, ca, self.mha_norm)  # [B, 1, C]; attention [B, N]
        return self.feed_forward(x), k_cache, v_cache, attention

    def cross_weights(self, x: Tensor, memory: Tensor) -> Tensor:
        """Teacher-forced cross-attention weights of this (multimodal) layer: x [B, L, C] is the
        layer's input, memory [B, N, C] -> [B, H, L, N]."""
        if self.cross_attn is None or self.mha_norm is None:
            raise ValueError("a unimodal layer has no cross-attention")
        x = self.self_attention(x)  # [B, L, C]
        return self.cross_attn.cross_weights(self.block_input(x, self.mha_norm), memory)  # [B, H, L, N]


Cache = list[tuple[Tensor, Tensor]]


class TextDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokens_embed = nn.Embedding(vocab_size, cfg.d_model)
        nn.init.uniform_(self.tokens_embed.weight, -0.1, 0.1)
        self.head: nn.Linear | None = None  # an untied LM head (cfg.tie_embeddings off)
        if not cfg.tie_embeddings:
            self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
            nn.init.uniform_(self.head.weight, -0.1, 0.1)
        self.pe: Tensor  # [max_len, C] positions: a fixed sin/cos buffer, or learned
        if cfg.learned_positions:
            self.pe = nn.Parameter(torch.randn(cfg.max_len, cfg.d_model))  # nn.Embedding's init
        else:
            self.register_buffer("pe", sinusoid_table(cfg.max_len, cfg.d_model), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.uni = nn.ModuleList(DecoderLayer(cfg, cross=False) for _ in range(cfg.decoder_layers))
        self.cross = nn.ModuleList(DecoderLayer(cfg, cross=True) for _ in range(cfg.decoder_layers))

    @property
    def layers(self) -> list[DecoderLayer]:
        """All layers in cache order: unimodal first, then multimodal."""
        return [*self.uni, *self.cross]

    def lm_head(self, x: Tensor) -> Tensor:
        weight = self.tokens_embed.weight if self.head is None else self.head.weight  # [V, C]
        return x @ weight.t()  # no bias: [.., V]

    def embed(self, tokens: Tensor) -> Tensor:
        """tokens [B, L] -> [B, L, C] (L <= max_len)."""
        return self.drop(self.tokens_embed(tokens) + self.pe[: tokens.shape[1]])

    def unimodal(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)  # [B, L, C]
        for layer in self.uni:
            x = layer(x)  # [B, L, C]
        return x

    def text_embedding(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Hidden state of the unimodal stack at the END token (index lengths-1): [B, C]."""
        hidden = self.unimodal(tokens)  # [B, L, C]
        idx = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return hidden.gather(1, idx).squeeze(1)  # [B, C]

    def forward(self, tokens: Tensor, lengths: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        """tokens [B, L], memory [B, N, C] -> logits [B, L, V], text embedding [B, C]."""
        x = self.unimodal(tokens)  # [B, L, C]
        idx = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, x.shape[-1])
        text = x.gather(1, idx).squeeze(1)  # [B, C]
        for layer in self.cross:
            x = layer(x, memory)  # [B, L, C]
        return self.lm_head(x), text

    def cross_attention(self, tokens: Tensor, memory: Tensor) -> Tensor:
        """Where the last multimodal layer looks for each position of a given (teacher-forced)
        sequence: tokens [B, L] (START first), memory [B, N, C] -> weights averaged over heads
        [B, L, N]; row t is the attention while predicting token t + 1, as `step` gives it."""
        x = self.unimodal(tokens)  # [B, L, C]
        for layer in self.cross[:-1]:
            x = layer(x, memory)  # [B, L, C]
        return self.cross[-1].cross_weights(x, memory).mean(dim=1)  # [B, L, N]

    def cross_keys_values(self, memory: Tensor) -> Cache:
        """Cross-attention K/V of every multimodal layer, once per pair: [B, H, N, dh] each."""
        return [layer.cross_attn.keys_values(memory) for layer in self.cross]  # type: ignore[union-attr]

    def empty_cache(self, batch: int, device: torch.device | None = None,
                    dtype: torch.dtype = torch.float32) -> Cache:
        shape = (batch, self.cfg.num_heads, self.cfg.max_len, self.cfg.head_dim)
        return [(torch.zeros(shape, device=device, dtype=dtype),
                 torch.zeros(shape, device=device, dtype=dtype)) for _ in self.layers]

    def step(self, tokens: Tensor, step: Tensor, cache: Cache,
             cross_kv: Cache) -> tuple[Tensor, Cache, Tensor]:
        """One decoding step. tokens int64 [B]; step int64 [] (position of `tokens`);
        cache: (K, V) [B, H, S, dh] per layer (uni then multimodal); cross_kv: per multimodal layer.
        Returns logits [B, V], the updated cache and the last multimodal layer's cross-attention
        averaged over heads [B, N] (the heatmaps' source). `step` only enters elementwise ops."""
        slots = torch.arange(self.cfg.max_len, device=tokens.device)  # [S]
        onehot = (slots == step).to(self.pe.dtype)  # [S]
        valid = slots <= step  # [S]
        pos = (onehot @ self.pe).view(1, 1, -1)  # [1, 1, C]
        x = self.tokens_embed(tokens).unsqueeze(1) + pos  # [B, 1, C]
        new_cache: Cache = []
        layers = self.layers
        n_uni = len(self.uni)
        attention: Tensor | None = None
        for i, layer in enumerate(layers):
            kv = cross_kv[i - n_uni] if i >= n_uni else None
            x, k, v, layer_attention = layer.step(x, onehot, valid, cache[i][0], cache[i][1], kv)
            attention = layer_attention if layer_attention is not None else attention
            new_cache.append((k, v))
        if attention is None:
            raise ValueError("the decoder has no multimodal layer")
        return self.lm_head(x[:, 0]), new_cache, attention  # [B, V], .., [B, N]
