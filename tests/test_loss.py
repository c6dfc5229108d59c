"""InfoNCE with false-negative elimination/attraction on hand-built batches."""

from __future__ import annotations

import math

import torch

from rsicrc.loss import caption_loss, contrastive_masks, info_nce
from rsicrc.textsim import CaptionMatcher

# pair 0 and 1: changed, different captions; 2 and 3: unchanged (label -1);
# pair 4: changed, same caption text as pair 0 (a false negative of 0), differently punctuated.
LABELS = torch.tensor([10, 11, -1, -1, 14])
CAPTIONS = ["a road is built", "two houses are built", "there is no difference",
            "no change has occurred", "A road is built ."]


def test_masks_with_fna() -> None:
    pos, neg = contrastive_masks(LABELS, CAPTIONS, CaptionMatcher(1.0), fna=True)
    expected_pos = torch.eye(5, dtype=torch.bool)
    expected_pos[2, 3] = expected_pos[3, 2] = True  # no-change pairs are positives of each other
    expected_pos[0, 4] = expected_pos[4, 0] = True  # attracted false negatives
    assert torch.equal(pos, expected_pos)
    assert torch.equal(neg, ~expected_pos)


def test_masks_with_elimination_only() -> None:
    pos, neg = contrastive_masks(LABELS, CAPTIONS, CaptionMatcher(1.0), fna=False)
    assert not pos[0, 4] and not pos[4, 0]  # not positives ...
    assert not neg[0, 4] and not neg[4, 0]  # ... and not negatives either
    assert pos[2, 3] and neg[0, 1] and neg[2, 0]


def direct_loss(visual: torch.Tensor, text: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                tau: float) -> float:
    v = [x / x.norm() for x in visual.double()]
    t = [x / x.norm() for x in text.double()]
    terms = []
    for a in range(len(v)):
        negatives = sum(math.exp(float(v[a] @ t[n]) / tau) for n in range(len(t)) if neg[a, n])
        for p in range(len(t)):
            if pos[a, p]:
                s = math.exp(float(v[a] @ t[p]) / tau)
                terms.append(-math.log(s / (s + negatives)))
    return sum(terms) / len(terms)


def test_loss_matches_direct_computation() -> None:
    torch.manual_seed(0)
    visual, text = torch.randn(5, 8), torch.randn(5, 8)
    for fna in (True, False):
        pos, neg = contrastive_masks(LABELS, CAPTIONS, CaptionMatcher(1.0), fna=fna)
        for tau in (0.07, 1.0):
            got = float(info_nce(visual, text, pos, neg, tau))
            assert math.isclose(got, direct_loss(visual, text, pos, neg, tau), rel_tol=1e-5)


def test_loss_with_small_temperature_is_finite_and_differentiable() -> None:
    torch.manual_seed(1)
    visual = torch.randn(5, 8, requires_grad=True)
    text = torch.randn(5, 8, requires_grad=True)
    pos, neg = contrastive_masks(LABELS, CAPTIONS, CaptionMatcher(1.0), fna=True)
    loss = info_nce(visual, text, pos, neg, 0.01)
    loss.backward()
    assert math.isfinite(loss.item()) and visual.grad is not None and torch.isfinite(visual.grad).all()
    assert math.isclose(loss.item(), direct_loss(visual.detach(), text.detach(), pos, neg, 0.01),
                        rel_tol=1e-4)


def test_caption_loss_ignores_padding() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 9)
    tokens = torch.tensor([[1, 4, 5, 3, 0], [1, 6, 3, 0, 0]])
    got = caption_loss(logits, tokens)
    targets = [(0, 0, 4), (0, 1, 5), (0, 2, 3), (1, 0, 6), (1, 1, 3)]
    want = sum(-torch.log_softmax(logits[b, i], -1)[t] for b, i, t in targets) / len(targets)
    assert torch.isclose(got, want, atol=1e-6)
