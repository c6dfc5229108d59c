"""Captioning cross-entropy + InfoNCE with false-negative elimination / attraction (DESIGN §3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rsicrc.textsim import CaptionMatcher
from rsicrc.vocab import PAD


def contrastive_masks(labels: Tensor, captions: Sequence[str], matcher: CaptionMatcher,
                      fna: bool) -> tuple[Tensor, Tensor]:
    """Which (visual anchor a, text p) pairs are positives and which are negatives.

    Positives: same label (a changed pair is its own class; every no-change pair shares -1).
    False negatives: different label but captions similar >= threshold. FNE drops them from the
    negatives; FNA also makes them positives. Returns bool [B, B] positive, negative masks.
    """
    same = labels.view(-1, 1) == labels.view(1, -1)  # [B, B]
    similar = torch.from_numpy(matcher.match(list(captions), list(captions))).to(labels.device)
    false_neg = similar & ~same  # [B, B]
    positive = same | false_neg if fna else same
    negative = ~same & ~false_neg
    return positive, negative


def info_nce(visual: Tensor, text: Tensor, positive: Tensor, negative: Tensor,
             temperature: float, average: str = "positives") -> Tensor:
    """-log(e^{s_ap/t} / (e^{s_ap/t} + sum_n e^{s_an/t})) averaged over the positives (a, p).

    `average="positives"` (the paper's) takes the plain mean over all positive entries, so a
    batch with k no-change pairs gives them k*k terms against one term per changed pair;
    `"anchors"` first averages each anchor's positives, then the anchors, so every pair weighs
    the same whatever the batch's no-change share (DESIGN §3).
    """
    sim = F.normalize(visual.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t()  # [B, B]
    logits = sim / temperature  # [B, B]
    lowest = torch.finfo(logits.dtype).min
    neg_lse = torch.logsumexp(logits.masked_fill(~negative, lowest), dim=1, keepdim=True)  # [B, 1]
    neg_lse = torch.where(negative.any(dim=1, keepdim=True), neg_lse, torch.full_like(neg_lse, lowest))
    per_pair = F.softplus(neg_lse - logits)  # [B, B]: -log(e^s / (e^s + e^neg))
    if average == "positives":
        return per_pair[positive].mean()
    counts = positive.sum(dim=1)  # [B]
    has = counts > 0  # [B]: anchors with at least one positive
    per_anchor = (per_pair * positive).sum(dim=1)[has] / counts[has]  # [A]
    return per_anchor.mean()


def caption_loss(logits: Tensor, tokens: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Next-token cross-entropy: logits [B, L, V] at positions 0..L-2 predict tokens 1..L-1."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(),
                           ignore_index=PAD, label_smoothing=label_smoothing)
