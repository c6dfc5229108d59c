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
                tau: float, average: str = "positives") -> float:
    v = [x / x.norm() for x in visual.double()]
    t = [x / x.norm() for x in text.double()]
    terms: list[list[float]] = []  # per anchor
    for a in range(len(v)):
        negatives = sum(math.exp(float(v[a] @ t[n]) / tau) for n in range(len(t)) if neg[a, n])
        row = []
        for p in range(len(t)):
            if pos[a, p]:
                s = math.exp(float(v[a] @ t[p]) / tau)
                row.append(-math.log(s / (s + negatives)))
        if row:
            terms.append(row)
    if average == "anchors":
        return sum(sum(row) / len(row) for row in terms) / len(terms)
    return sum(sum(row) for row in terms) / sum(len(row) for row in terms)


def test_loss_matches_direct_computation() -> None:
    torch.manual_seed(0)
    visual, text = torch.randn(5, 8), torch.randn(5, 8)
    for fna in (True, False):
        pos, neg = contrastive_masks(LABELS, CAPTIONS, CaptionMatcher(1.0), fna=fna)
        for tau in (0.07, 1.0):
            for average in ("positives", "anchors"):
                got = float(info_nce(visual, text, pos, neg, tau, average))
                want = direct_loss(visual, text, pos, neg, tau, average)
                assert math.isclose(got, want, rel_tol=1e-5)


def test_anchor_average_keeps_a_changed_pair_s_weight_when_no_change_pairs_grow() -> None:
    """With the paper's mean over positives, k no-change pairs bring k*k terms and drown the
    changed pairs (the demo's batch 32 holds ~16); the per-anchor mean gives each pair one vote."""
    torch.manual_seed(3)
    for k in (2, 8):
        labels = torch.tensor([10, 11] + [-1] * k)
        captions = ["a road appears", "a house is built"] + ["the scene is the same as before"] * k
        pos, neg = contrastive_masks(labels, captions, CaptionMatcher(1.0), fna=True)
        visual = torch.randn(len(labels), 8, requires_grad=True)
        text = torch.randn(len(labels), 8)
        for average, share in (("positives", 2 / (2 + k * k)), ("anchors", 2 / (2 + k))):
            visual.grad = None
            info_nce(visual, text, pos, neg, 0.1, average).backward()
            # the changed anchors' terms are the only ones that reach their visual rows, and each
            # weighs `share` of the loss: compare with the loss of the changed anchors alone
            only = torch.zeros_like(pos)
            only[:2] = pos[:2]
            v2 = visual.detach().clone().requires_grad_(True)
            info_nce(v2, text, only, neg, 0.1, "positives").backward()
            assert torch.allclose(visual.grad[:2], share * v2.grad[:2], atol=1e-6)


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
