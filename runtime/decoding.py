"""Beam search over a step-wise caption decoder, in numpy and backend-agnostic (DESIGN §7).

The search talks to the model through `StepModel` only: one call per step that turns the
current token of every row into next-token logits, and one call that permutes the model's
self-attention caches when beams are re-ranked. The PyTorch reference decoder and the ONNX
Runtime / TensorRT backends all implement that seam, so they share this one search and give
the same tokens for the same logits.

Rows: with B pairs and K beams there are R = B * K rows; row r belongs to pair r // K for
the whole search, so per-pair data (cross-attention K/V) is tiled once by the caller and never
reordered. Only the rows' own caches move, through `StepModel.reorder`.

Precisely, at step t (the model is fed the token at position t; START at t = 0):
1. log-probs = log_softmax(logits) in float32 (max subtracted first); with `ignore_eos` the
   END column is set to -inf afterwards (not renormalised, so reported log-probs stay the
   model's). Running sums are kept in float64.
2. Candidate score = running sum of the row + log-prob, over the K * V candidates of a pair.
   At t = 0 only beam 0 of each pair is live (the others start at -inf), so the K copies of
   START never yield duplicate hypotheses. Dead beams, and every row of a finished pair,
   offer only -inf candidates.
3. The top min(2K, K*V) candidates per pair are taken, best first, equal scores ordered by
   lower flat index (beam * V + token) first; -inf candidates are never taken.
4. They are walked in that order until K live beams are collected: a candidate whose token is
   END becomes a finished hypothesis (length t + 1, END counted) while the pair has fewer
   than `needed` = max(1, round(K * patience)) finished hypotheses, and is dropped otherwise;
   any other candidate becomes the next live beam. END candidates ranked below the K-th live
   beam are not considered. At most K candidates end in END, so 2K always suffice.
5. A pair is done once it holds `needed` finished hypotheses. A pair that reaches
   `max_tokens` without that finishes its live beams as they are (no END; length
   `max_tokens`) and adds them to its finished ones (so does a pair left without any live
   beam, which only degenerate logits with -inf everywhere but END can cause). Either way
   the pair's answer is its finished hypotheses ranked by score (equal scores: the one
   finished first), the best K.
6. The next rows are gathered from the previous ones with ONE `model.reorder(source)` call,
   skipped when `source` is the identity. Rows of done pairs keep their place and are fed END
   (ignored); slots without a live beam likewise. The loop ends when every pair is done.

With `options.attention` the model must also be an `AttentionStepModel`: after each `logits`
call the search reads the step's cross-attention [R, N] into a per-row history [R, T, N],
gathered with the rows (one gather per step, like the token history), and every hypothesis
carries the attention of its own tokens: row i is where the decoder looked while choosing
token i (END excluded). Without the option the attention is never read.

Greedy decoding is `beam_search` with K = 1 (see `greedy`): the argmax chain of the float32
log-probs, ties to the lowest token id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from rsicrc.checks import positive_int
from rsicrc.errors import ConfigError
from rsicrc.vocab import END, START


class StepModel(Protocol):
    """What the search needs from a decoder: one step of logits, and a cache permutation."""

    def logits(self, tokens: np.ndarray, step: int) -> np.ndarray:
        """tokens: int64 [R] (one token per row), the tokens at position `step` (START at
        step 0). Returns float32 [R, V] next-token logits; the model keeps its own
        self-attention caches per row."""
        ...

    def reorder(self, source: np.ndarray) -> None:
        """Permute/duplicate cache rows: new row r takes old row source[r] (int64 [R]).
        Called only when source is not the identity."""
        ...


class AttentionStepModel(StepModel, Protocol):
    """A StepModel that can also say where it looked (read only with DecodingOptions.attention)."""

    def attention(self) -> np.ndarray | None:
        """float32 [R, N]: the cross-attention of the last `logits` call (last multimodal layer,
        mean over heads; each row sums to 1), or None when this decoder gives none (a model
        folder exported before attention)."""
        ...


@dataclass(frozen=True)
class DecodingOptions:
    """How to search. Invalid values raise ConfigError when the options are built."""

    beam_size: int = 3  # K, beams kept per pair; 1 = greedy
    max_tokens: int = 40  # most tokens generated after START (max_len - 1), END included
    length_penalty: float = 1.0  # alpha: finished score = sum log-prob / length ** alpha
    patience: float = 1.0  # a pair stops once max(1, round(K * patience)) hypotheses finished
    ignore_eos: bool = False  # benchmarks: never emit END, always generate exactly max_tokens
    attention: bool = False  # keep each beam's cross-attention history (needs an AttentionStepModel)

    def __post_init__(self) -> None:
        positive_int(self.beam_size, "beam_size (1 = greedy)")
        positive_int(self.max_tokens, "max_tokens")
        if not (math.isfinite(self.patience) and self.patience > 0):
            raise ConfigError(f"patience must be a finite number > 0, got {self.patience}")
        if not (math.isfinite(self.length_penalty) and self.length_penalty >= 0):
            raise ConfigError(
                f"length_penalty must be a finite number >= 0 (0 = none), "
                f"got {self.length_penalty}"
            )

    @property
    def finished_needed(self) -> int:
        """Finished hypotheses after which a pair stops: max(1, round(K * patience))."""
        return max(1, round(self.beam_size * self.patience))


@dataclass(frozen=True)
class Hypothesis:
    """One finished caption of a pair."""

    tokens: tuple[int, ...]  # generated ids, START excluded, END excluded
    score: float  # length-normalised score used for ranking: logprob / length ** alpha
    logprob: float  # sum of token log-probs (END included when it ended with END)
    # float32 [len(tokens), N]: the cross-attention while choosing each token (DecodingOptions.attention);
    # None without it. Not part of equality: hypotheses compare by tokens and scores.
    attention: np.ndarray | None = field(default=None, compare=False)


@dataclass(frozen=True)
class DecodeResult:
    """The search's answer for one pair."""

    best: Hypothesis  # beams[0]
    beams: tuple[Hypothesis, ...]  # up to K finished hypotheses, best first


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32, max subtracted first so large logits cannot overflow."""
    x = np.asarray(logits, dtype=np.float32)  # [R, V]
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def top_candidates(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n best entries of each row, best first; equal values ordered by lower index.

    scores: float [P, M], 1 <= n <= M. Returns (indices int64 [P, n], values [P, n]). Which of
    several equal values at the cut get in is decided by index too (an argpartition alone
    would pick arbitrarily), so the result is fully determined by the scores.
    """
    rows, width = scores.shape
    if n < width:
        index = np.argpartition(-scores, n - 1, axis=1)[:, :n]  # [P, n] some n best
        kth = np.take_along_axis(scores, index, axis=1).min(axis=1)  # [P] the n-th largest
        if (scores >= kth[:, None]).sum(axis=1).max() == n:  # usual case: no tie at the cut
            index = np.sort(index, axis=1)  # ascending index, for the stable sort below
        else:
            above = scores > kth[:, None]  # [P, M] all of these are taken
            tied = scores == kth[:, None]  # [P, M] the lowest-index ones fill up to n
            wanted = (n - above.sum(axis=1))[:, None]  # [P, 1]
            keep = above | (tied & (np.cumsum(tied, axis=1) <= wanted))
            index = np.nonzero(keep)[1].reshape(rows, n)  # [P, n] ascending index per row
    else:
        index = np.broadcast_to(np.arange(width), (rows, width))
    values = np.take_along_axis(scores, index, axis=1)  # [P, n]
    order = np.argsort(-values, axis=1, kind="stable")  # stable: ties keep index order
    return (
        np.take_along_axis(index, order, axis=1).astype(np.int64),
        np.take_along_axis(values, order, axis=1),
    )


def _step_logprobs(
    logits: np.ndarray, rows: int, end: int, ignore_eos: bool, step: int
) -> np.ndarray:
    """Check the model's logits and turn them into float32 log-probs [R, V]."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] != rows or logits.shape[1] < 1:
        raise ValueError(
            f"model.logits returned shape {logits.shape} at step {step}; expected [{rows}, V]"
        )
    vocab = logits.shape[1]
    if not 0 <= end < vocab:
        raise ConfigError(f"end id {end} is outside the model's vocabulary (0..{vocab - 1})")
    logp = log_softmax(logits)  # [R, V]
    if ignore_eos:
        logp[:, end] = -np.inf
    return logp


def _attention_step(
    model: StepModel, history: np.ndarray | None, rows: int, max_tokens: int, step: int
) -> np.ndarray:
    """Read the step's attention [R, N] into the history [R, T, N] (made at step 0)."""
    read = getattr(model, "attention", None)
    weights = read() if callable(read) else None
    if weights is None:
        raise ConfigError("this decoder gives no cross-attention; decode without attention "
                          "(or use a model that outputs it)")
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 2 or weights.shape[0] != rows:
        raise ValueError(
            f"model.attention returned shape {weights.shape} at step {step}; expected [{rows}, N]"
        )
    if history is None:
        history = np.zeros((rows, max_tokens, weights.shape[1]), dtype=np.float32)  # [R, T, N]
    history[:, step] = weights
    return history


def _attention_of(history: np.ndarray | None, row: int, length: int) -> np.ndarray | None:
    """A hypothesis' own attention rows [length, N] (a copy: the history keeps moving)."""
    return None if history is None else history[row, :length].copy()


def beam_search(
    model: StepModel,
    batch: int,
    options: DecodingOptions,
    start: int = START,
    end: int = END,
) -> list[DecodeResult]:
    """Decode `batch` pairs with K = options.beam_size beams each; one result per pair.

    The model must already hold batch * K rows (pair b's inputs tiled on rows b*K .. b*K+K-1).
    The algorithm is spelt out in the module docstring.
    """
    positive_int(batch, "batch")
    beams = options.beam_size
    max_tokens = options.max_tokens
    needed = options.finished_needed
    alpha = options.length_penalty
    n_rows = batch * beams
    identity = np.arange(n_rows, dtype=np.int64)  # [R]

    tokens = np.full(n_rows, start, dtype=np.int64)  # [R] input at the current position
    sums = np.full((batch, beams), -np.inf)  # [B, K] float64 running log-prob per beam
    sums[:, 0] = 0.0  # step 0: only beam 0 is live, so the K copies of START never duplicate
    sums = sums.reshape(n_rows)  # [R]
    history = np.zeros((n_rows, max_tokens), dtype=np.int64)  # [R, T] tokens generated so far
    attention: np.ndarray | None = None  # float32 [R, T, N] with options.attention
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = np.zeros(batch, dtype=bool)  # [B]

    for step in range(max_tokens):
        logp = _step_logprobs(model.logits(tokens, step), n_rows, end, options.ignore_eos, step)
        if options.attention:  # row r's attention while choosing its token of this step
            attention = _attention_step(model, attention, n_rows, max_tokens, step)
        vocab = logp.shape[1]
        live = np.isfinite(sums) & ~np.repeat(done, beams)  # [R]
        if np.isnan(logp[live]).any():
            raise ValueError(f"model.logits returned NaN or +inf logits at step {step}")
        cand = np.where(live[:, None], sums[:, None] + logp, -np.inf)  # [R, V] float64
        flat, scores = top_candidates(
            cand.reshape(batch, beams * vocab), min(2 * beams, beams * vocab)
        )  # [B, n] each; flat index = beam * V + token
        length = step + 1  # tokens generated once this step's token is appended
        norm = float(length) ** alpha
        last = length == max_tokens

        source = identity.copy()  # [R] next row r continues old row source[r]
        next_tokens = np.full(n_rows, end, dtype=np.int64)  # [R] fed at the next step
        next_sums = np.full(n_rows, -np.inf)  # [R]
        for b in np.flatnonzero(~done).tolist():
            base = b * beams
            chosen: list[tuple[int, int, float]] = []  # (old row, token, score), best first
            for score, index in zip(scores[b].tolist(), flat[b].tolist(), strict=True):
                if score == -np.inf:
                    break  # sorted: everything after is -inf too
                row, token = base + index // vocab, index % vocab
                if token == end:
                    if len(finished[b]) < needed:
                        prefix = tuple(history[row, :step].tolist())
                        finished[b].append(Hypothesis(prefix, score / norm, score,
                                                      _attention_of(attention, row, step)))
                    continue
                chosen.append((row, token, score))
                if len(chosen) == beams:
                    break
            if len(finished[b]) >= needed:
                done[b] = True
            elif last or not chosen:  # out of room, or (degenerate logits) nothing to extend
                for row, token, score in chosen:
                    prefix = (*history[row, :step].tolist(), token)
                    finished[b].append(Hypothesis(prefix, score / norm, score,
                                                  _attention_of(attention, row, length)))
                done[b] = True
            else:
                for slot, (row, token, score) in enumerate(chosen, start=base):
                    source[slot], next_tokens[slot], next_sums[slot] = row, token, score
        if done.all():
            break
        if not np.array_equal(source, identity):
            model.reorder(source)
            history = history[source]
            if attention is not None:
                attention = attention[source]  # [R, T, N], moved with the rows
        history[:, step] = next_tokens
        tokens, sums = next_tokens, next_sums

    return [_result(hypotheses, beams, b) for b, hypotheses in enumerate(finished)]


def _result(hypotheses: list[Hypothesis], beams: int, pair: int) -> DecodeResult:
    """Rank a pair's finished hypotheses (stable: equal scores keep finishing order)."""
    ranked = sorted(hypotheses, key=lambda h: -h.score)[:beams]
    if not ranked:
        raise ValueError(
            f"pair {pair}: no hypothesis with a finite log-probability (degenerate logits)"
        )
    return DecodeResult(best=ranked[0], beams=tuple(ranked))


def greedy(
    model: StepModel,
    batch: int,
    options: DecodingOptions | None = None,
    start: int = START,
    end: int = END,
) -> list[DecodeResult]:
    """Greedy decoding: `beam_search` with beam_size 1 (other options kept)."""
    options = DecodingOptions(beam_size=1) if options is None else replace(options, beam_size=1)
    return beam_search(model, batch, options, start=start, end=end)
