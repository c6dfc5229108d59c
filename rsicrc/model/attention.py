"""Explicit attention modules (no nn.MultiheadAttention: it has no cache and exports badly)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, L, H*dh] -> [B, H, L, dh]"""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def token_heads(x: Tensor, heads: int) -> Tensor:
    """[B, 1, H*dh] -> [B, H, 1, dh] for one token: a pure reshape (same memory order as
    split_heads), so the exported step has no Transpose for ONNX Runtime to push into the
    full-size cache blend (it did, adding two cache-sized transposes per step)."""
    b, _, d = x.shape
    return x.view(b, heads, 1, d // heads)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, L, dh] -> [B, L, H*dh]"""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


def masked_min(dtype: torch.dtype) -> float:
    """The dtype's lowest finite value: masks use it, never -inf (DESIGN §6)."""
    return torch.finfo(dtype).min


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(dh)): q [B,H,Lq,dh], k [B,H,Lk,dh], mask bool [..,Lq,Lk] True=keep
    -> [B, H, Lq, Lk], each row summing to 1."""
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5)  # [B, H, Lq, Lk]
    if mask is not None:
        scores = scores.masked_fill(~mask, masked_min(scores.dtype))
    return F.softmax(scores, dim=-1)  # [B, H, Lq, Lk]


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
           dropout: nn.Module | None = None) -> Tensor:
    """softmax(q k^T / sqrt(dh)) v. q [B,H,Lq,dh], k/v [B,H,Lk,dh], mask bool [..,Lq,Lk] True=keep."""
    weights = attention_weights(q, k, mask)  # [B, H, Lq, Lk]
    if dropout is not None:
        weights = dropout(weights)
    return weights @ v  # [B, H, Lq, dh]


class EncoderAttention(nn.Module):
    """Bi-temporal encoder attention: bias-free q/k/v into a_dim, output a_dim -> width with bias.

    `value_from_key` reproduces the original research code, which computed V with to_k.
    """

    def __init__(self, width: int, a_dim: int, heads: int, dropout: float,
                 value_from_key: bool = False) -> None:
        super().__init__()
        self.heads, self.value_from_key = heads, value_from_key
        self.to_q = nn.Linear(width, a_dim, bias=False)
        self.to_k = nn.Linear(width, a_dim, bias=False)
        self.to_v = nn.Linear(width, a_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(a_dim, width), nn.Dropout(dropout))
        self.attn_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        q = split_heads(self.to_q(x), self.heads)  # [B, H, N, a/H]
        k = split_heads(self.to_k(x), self.heads)  # [B, H, N, a/H]
        v = split_heads((self.to_k if self.value_from_key else self.to_v)(x), self.heads)
        return self.to_out(merge_heads(attend(q, k, v, dropout=self.attn_drop)))  # [B, N, width]


class DecoderAttention(nn.Module):
    """Decoder attention with biases (q, k, v, out: C -> C). Self- or cross-attention.

    Self-attention over a fixed-capacity cache: `step_self` writes the new key/value at slot
    `step` with a one-hot blend and masks slots > step, so one graph with constant shapes
    serves every step (DESIGN §6).
    """

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        self.attn_drop = nn.Dropout(dropout)

    def keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory [B, N, C] -> K, V [B, H, N, dh] (cross-attention: computed once per pair)."""
        return split_heads(self.k_proj(memory), self.heads), split_heads(self.v_proj(memory), self.heads)

    def forward(self, x: Tensor, memory: Tensor | None = None, causal: bool = False) -> Tensor:
        """Full-sequence attention. x [B, L, C]; memory [B, N, C] for cross-attention."""
        k, v = self.keys_values(x if memory is None else memory)  # [B, H, Lk, dh]
        q = split_heads(self.q_proj(x), self.heads)  # [B, H, L, dh]
        mask = None
        if causal:
            n = x.shape[1]
            mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()  # [L, L]
        return self.out_proj(merge_heads(attend(q, k, v, mask, self.attn_drop)))  # [B, L, C]

    def step_self(self, x: Tensor, onehot: Tensor, valid: Tensor, k_cache: Tensor,
                  v_cache: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One cached self-attention step.

        x [B, 1, C]; onehot f32 [S] (1 at slot `step`); valid bool [S] (slots <= step);
        k_cache/v_cache [B, H, S, dh]. Returns output [B, 1, C] and the updated caches.
        """
        k_new = token_heads(self.k_proj(x), self.heads)  # [B, H, 1, dh]
        v_new = token_heads(self.v_proj(x), self.heads)  # [B, H, 1, dh]
        w = onehot.view(1, 1, -1, 1)  # [1, 1, S, 1]
        k_cache = k_cache * (1.0 - w) + k_new * w  # [B, H, S, dh]
        v_cache = v_cache * (1.0 - w) + v_new * w  # [B, H, S, dh]
        q = token_heads(self.q_proj(x), self.heads)  # [B, H, 1, dh]
        out = attend(q, k_cache, v_cache, valid.view(1, 1, 1, -1))  # [B, H, 1, dh]
        return self.out_proj(out.reshape(x.shape)), k_cache, v_cache  # [B, 1, C]

    def step_cross(self, x: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, 1, C]; k/v [B, H, N, dh] precomputed -> output [B, 1, C] and the attention
        weights averaged over heads [B, N] (where this token looked; rows sum to 1)."""
        q = token_heads(self.q_proj(x), self.heads)  # [B, H, 1, dh]
        weights = attention_weights(q, k)  # [B, H, 1, N]
        out = self.out_proj((weights @ v).reshape(x.shape))  # [B, 1, C]
        return out, weights.mean(dim=(1, 2))  # [B, N] (Lq = 1: one ReduceMean, no Squeeze node)

    def cross_weights(self, x: Tensor, memory: Tensor) -> Tensor:
        """Full-sequence cross-attention weights: x [B, L, C], memory [B, N, C] -> [B, H, L, N]."""
        q = split_heads(self.q_proj(x), self.heads)  # [B, H, L, dh]
        return attention_weights(q, split_heads(self.k_proj(memory), self.heads))  # [B, H, L, N]


class QueryPool(nn.Module):
    """One learnable query attends over the visual tokens (MHA with biases), then LayerNorm.

    Parameters keep nn.MultiheadAttention's packed layout (in_proj_weight = [q; k; v]) so that
    original checkpoints map one to one; the arithmetic is written out for clean export.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.randn(1, width) * width**-0.5)  # [1, C]
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # [3C, C]
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))  # [3C]
        self.out_proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [B, N, C] -> pooled embedding [B, C]."""
        wq, wk, wv = self.in_proj_weight.chunk(3)  # [C, C] each
        bq, bk, bv = self.in_proj_bias.chunk(3)  # [C] each
        b = tokens.shape[0]
        q = split_heads(F.linear(self.query, wq, bq).expand(b, 1, -1), self.heads)  # [B, H, 1, dh]
        k = split_heads(F.linear(tokens, wk, bk), self.heads)  # [B, H, N, dh]
        v = split_heads(F.linear(tokens, wv, bv), self.heads)  # [B, H, N, dh]
        pooled = self.out_proj(merge_heads(attend(q, k, v)))  # [B, 1, C]
        return self.norm(pooled[:, 0])  # [B, C]
