"""The change gate: decide cheaply which tiles are worth decoding.

Decoding costs a beam search of up to max_len steps per tile; the image encoder's pooled visual
embedding comes for free with the encoder pass that every tile needs anyway. The model was
trained (InfoNCE with false-negative attraction) to put every no-change pair's embedding near
the text embeddings of the five fixed no-change sentences, and changed pairs near their change
captions. So the gate embeds, once per scene, the five no-change sentences and a few generic
change sentences (one per common LEVIR-CC change kind) with the model's own text encoder, and
calls a tile unchanged when its embedding is closer (cosine) to the nearest no-change sentence
than to the nearest change sentence by more than `margin`. It needs no calibration data; how
often it disagrees with full decoding is measured by benchmarks/scene_gate.py.

Full decoding's own verdict is `is_no_change`: the caption is one of the no-change sentences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rsicrc.levircc import NO_CHANGE_SENTENCES
from rsicrc.vocab import normalize_caption

# Generic change sentences in LEVIR-CC words (each word occurs > 5 times in its captions).
CHANGE_SENTENCES: tuple[str, ...] = (
    "some houses are built",
    "many buildings are built on the bareland",
    "a road is built",
    "some trees are removed",
    "the houses are demolished",
    "a parking lot is built",
    "a swimming pool is built",
    "a pond appears",
    "the lake disappears",
)
# Unchanged iff sim(no change) - sim(change) > margin. Chosen on the synthetic val split with the
# tiny model (benchmarks/scene.py gate): 0.04 was the smallest margin that missed no change that
# full decoding found; 0.05 leaves headroom for other models (a miss costs a change, a wasted
# decode only time).
DEFAULT_MARGIN = 0.05
_NO_CHANGE = frozenset(normalize_caption(s) for s in NO_CHANGE_SENTENCES)


def is_no_change(caption: str) -> bool:
    """Full decoding's verdict: the caption is one of the fixed no-change sentences."""
    return normalize_caption(caption) in _NO_CHANGE


@dataclass(frozen=True)
class ChangeGate:
    """Reference text embeddings, embedded once per scene, and the decision margin."""

    no_change: np.ndarray  # [5, C] L2-normalised embeddings of NO_CHANGE_SENTENCES
    change: np.ndarray  # [m, C] L2-normalised embeddings of CHANGE_SENTENCES
    margin: float = DEFAULT_MARGIN  # how much closer to "no change" a tile must be to skip decoding

    def scores(self, embedding: np.ndarray) -> np.ndarray:
        """float32 [B]: max cos to a no-change sentence minus max cos to a change sentence, for
        L2-normalised visual embeddings [B, C]; above `margin` means unchanged."""
        still = (embedding @ self.no_change.T).max(axis=1)  # [B]
        moved = (embedding @ self.change.T).max(axis=1)  # [B]
        return (still - moved).astype(np.float32)

    def changed(self, embedding: np.ndarray) -> np.ndarray:
        """bool [B]: the tiles the gate sends to the decoder."""
        return self.scores(embedding) <= self.margin


def build_gate(embed_text: Callable[[list[str]], np.ndarray], margin: float = DEFAULT_MARGIN) -> ChangeGate:
    """Embed the reference sentences with `embed_text` (texts -> L2-normalised [n, C])."""
    no_change = embed_text(list(NO_CHANGE_SENTENCES))  # [5, C]
    change = embed_text(list(CHANGE_SENTENCES))  # [m, C]
    return ChangeGate(np.asarray(no_change, np.float32), np.asarray(change, np.float32), float(margin))
