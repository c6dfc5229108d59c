"""Beam search (rsicrc.runtime.decoding) against brute force, greedy loops and batch splits.

The toy models are numpy: each row's logits are a deterministic function of the row's WHOLE
prefix (START included), and the per-row prefixes are the toy's "cache". A search that feeds
the wrong token, passes the wrong step or reorders rows wrongly therefore gets different
logits and different results (`test_wrong_reorder_is_detected` shows the checks notice).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from rsicrc.errors import ConfigError
from rsicrc.runtime.decoding import (
    DecodeResult,
    DecodingOptions,
    Hypothesis,
    beam_search,
    greedy,
    top_candidates,
)
from rsicrc.vocab import END, START


@functools.cache
def toy_logits(seed: int, prefix: tuple[int, ...], vocab: int, end_bias: float) -> np.ndarray:
    """float32 [V] logits of the next token after `prefix` (START first) for one pair."""
    rng = np.random.default_rng([seed, len(prefix), *prefix])
    x = rng.normal(size=vocab) * 1.5
    x[END] += end_bias + 0.4 * len(prefix)  # END gets likelier as the caption grows
    return x.astype(np.float32)


def toy_logprobs(seed: int, prefix: tuple[int, ...], vocab: int, end_bias: float) -> np.ndarray:
    """float64 log-probs recomputed independently of the search's own log_softmax."""
    x = toy_logits(seed, prefix, vocab, end_bias).astype(np.float64)
    return x - math.log(math.fsum(math.exp(v) for v in x))


class ToyModel:
    """A StepModel for len(pairs) pairs x `beams` rows; pair = (seed, end_bias)."""

    def __init__(self, pairs: list[tuple[int, float]], beams: int, vocab: int) -> None:
        self.pairs, self.beams, self.vocab = pairs, beams, vocab
        self.prefixes: list[list[int]] = [[] for _ in range(len(pairs) * beams)]  # the cache
        self.calls = 0
        self.reorders: list[np.ndarray] = []

    def logits(self, tokens: np.ndarray, step: int) -> np.ndarray:
        assert tokens.dtype == np.int64 and tokens.shape == (len(self.prefixes),)
        assert step == self.calls
        if step == 0:
            assert (tokens == START).all()
        self.calls += 1
        out = []
        for row, prefix in enumerate(self.prefixes):
            assert len(prefix) == step
            prefix.append(int(tokens[row]))
            seed, bias = self.pairs[row // self.beams]
            out.append(toy_logits(seed, tuple(prefix), self.vocab, bias))
        return np.stack(out)

    def reorder(self, source: np.ndarray) -> None:
        assert source.dtype == np.int64 and source.shape == (len(self.prefixes),)
        # rows never leave their pair
        assert (source // self.beams == np.arange(len(source)) // self.beams).all()
        self.reorders.append(source.copy())
        self.prefixes = [list(self.prefixes[s]) for s in source]


class NoReorderModel(ToyModel):
    """A backend with a broken reorder (ignores it): the tests must catch this."""

    def reorder(self, source: np.ndarray) -> None:
        self.reorders.append(source.copy())


def brute_force(
    pair: tuple[int, float], vocab: int, max_tokens: int, alpha: float
) -> list[tuple[tuple[int, ...], float, float]]:
    """Every possible hypothesis (tokens, score, logprob), best first."""
    seed, bias = pair
    words = [w for w in range(vocab) if w != END]
    out = []
    for n in range(1, max_tokens + 1):
        for body in itertools.product(words, repeat=n - 1):
            steps = [toy_logprobs(seed, (START, *body[:i]), vocab, bias) for i in range(n)]
            head = sum(lp[w] for lp, w in zip(steps, body, strict=False))
            ended = head + steps[-1][END]
            out.append((body, ended / n**alpha, ended))
            if n == max_tokens:  # truncated without END
                for w in words:
                    total = head + steps[-1][w]
                    out.append(((*body, w), total / n**alpha, total))
    return sorted(out, key=lambda h: -h[1])


def recomputed_logprob(
    hyp: Hypothesis, pair: tuple[int, float], vocab: int, max_tokens: int
) -> tuple[float, int]:
    """(sum of the toy's log-probs along the hypothesis, its length for normalisation)."""
    seed, bias = pair
    ended = len(hyp.tokens) < max_tokens  # END counts towards max_tokens
    seq = (*hyp.tokens, END) if ended else hyp.tokens
    total = sum(
        toy_logprobs(seed, (START, *seq[:i]), vocab, bias)[tok] for i, tok in enumerate(seq)
    )
    return total, len(seq)


def decode(
    pairs: list[tuple[int, float]], vocab: int, options: DecodingOptions
) -> tuple[list[DecodeResult], ToyModel]:
    model = ToyModel(pairs, options.beam_size, vocab)
    return beam_search(model, len(pairs), options), model


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, 2.0])
def test_exhaustive_beam_equals_brute_force(alpha: float) -> None:
    # 3 words + END, 4 tokens: 40 hypotheses end in END, 81 are truncated. K = 110 keeps every
    # prefix alive, considers every END candidate and returns the best 110 of all 121.
    vocab, max_tokens, beams = 4, 4, 110
    pair = (7, -0.5)
    options = DecodingOptions(beam_size=beams, max_tokens=max_tokens, length_penalty=alpha)
    (result,), model = decode([pair], vocab, options)
    expected = brute_force(pair, vocab, max_tokens, alpha)
    assert len(expected) == 121
    assert len(result.beams) == beams
    assert result.best == result.beams[0]
    assert [h.tokens for h in result.beams] == [e[0] for e in expected[:beams]]
    np.testing.assert_allclose([h.score for h in result.beams], [e[1] for e in expected[:beams]],
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose([h.logprob for h in result.beams],
                               [e[2] for e in expected[:beams]], rtol=0, atol=1e-6)
    assert model.calls == max_tokens and model.reorders


def test_wrong_reorder_is_detected() -> None:
    vocab, max_tokens, beams, pair = 4, 4, 110, (7, -0.5)
    options = DecodingOptions(beam_size=beams, max_tokens=max_tokens)
    model = NoReorderModel([pair], beams, vocab)
    (result,) = beam_search(model, 1, options)
    expected = brute_force(pair, vocab, max_tokens, 1.0)
    assert [h.tokens for h in result.beams] != [e[0] for e in expected[:beams]]


def hand_greedy(pair: tuple[int, float], vocab: int, max_tokens: int) -> tuple[int, ...]:
    seed, bias = pair
    prefix = [START]
    for _ in range(max_tokens):
        token = int(np.argmax(toy_logits(seed, tuple(prefix), vocab, bias)))
        if token == END:
            break
        prefix.append(token)
    return tuple(prefix[1:])


def test_greedy_equals_argmax_loop() -> None:
    vocab, max_tokens = 9, 15
    biases = [-4.0, -2.0, -1.0, 0.0, -6.0, -3.0]
    pairs = [(s, b) for s, b in zip(range(100, 106), biases, strict=True)]
    results, model = decode(pairs, vocab, DecodingOptions(beam_size=1, max_tokens=max_tokens))
    lengths = set()
    for pair, result in zip(pairs, results, strict=True):
        assert len(result.beams) == 1
        assert result.best.tokens == hand_greedy(pair, vocab, max_tokens)
        total, length = recomputed_logprob(result.best, pair, vocab, max_tokens)
        assert result.best.logprob == pytest.approx(total, abs=1e-5)
        assert result.best.score == pytest.approx(total / length, abs=1e-5)
        lengths.add(len(result.best.tokens))
    assert len(lengths) > 2  # some stop early, at different steps
    assert model.reorders == []  # greedy never needs a reorder (K = 1: always the identity)
    # `greedy` is the same search with K forced to 1
    again = greedy(ToyModel(pairs, 1, vocab), len(pairs),
                   DecodingOptions(beam_size=5, max_tokens=max_tokens))
    assert again == results


class ConstantModel:
    """Every token equally likely: exercises tie-breaking (lowest id, lowest beam first)."""

    def __init__(self, rows: int, vocab: int) -> None:
        self.rows, self.vocab = rows, vocab
        self.reorders: list[np.ndarray] = []

    def logits(self, tokens: np.ndarray, step: int) -> np.ndarray:
        return np.zeros((self.rows, self.vocab), dtype=np.float32)

    def reorder(self, source: np.ndarray) -> None:
        self.reorders.append(source.copy())


def test_ties_go_to_the_lowest_id() -> None:
    (one,) = greedy(ConstantModel(1, 6), 1, DecodingOptions(max_tokens=5))
    assert one.best.tokens == (0, 0, 0, 0, 0)
    two = DecodingOptions(beam_size=2, max_tokens=3)
    # END (3) ranks after tokens 0 and 1 of beam 0, so it is never reached: truncated beams
    (result,) = beam_search(ConstantModel(2, 6), 1, two)
    assert [h.tokens for h in result.beams] == [(0, 0, 0), (0, 0, 1)]
    # END = 0 ranks first: () finishes at step 0, (1,) at step 1; equal scores (alpha 1) keep
    # finishing order
    (result,) = beam_search(ConstantModel(2, 6), 1, two, end=0)
    assert [h.tokens for h in result.beams] == [(), (1,)]
    assert result.beams[0].score == pytest.approx(result.beams[1].score)


def test_top_candidates_ties_at_the_cut() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [-np.inf, 0.0, -np.inf, -1.0, -np.inf]])
    index, values = top_candidates(scores, 2)
    assert index.tolist() == [[1, 2], [1, 3]] and values.tolist() == [[3, 3], [0, -1]]
    index, _ = top_candidates(scores, 4)
    assert index.tolist() == [[1, 2, 4, 3], [1, 3, 0, 2]]
    index, _ = top_candidates(scores, 5)
    assert index.tolist() == [[1, 2, 4, 3, 0], [1, 3, 0, 2, 4]]
    # many ties (long rows: an unstable sort would shuffle them)
    scores = np.repeat([[2.0, 1.0, 2.0, 0.0]], 60, axis=0).reshape(2, 120)
    index, _ = top_candidates(scores, 80)
    expected = np.concatenate([np.arange(0, 120, 2), np.arange(1, 120, 4)[:20]])
    assert (index == expected).all()


def reference_search(
    pair: tuple[int, float], vocab: int, options: DecodingOptions
) -> list[tuple[tuple[int, ...], float]]:
    """The documented rules written plainly, one pair, float64: (tokens, score), best first."""
    seed, bias = pair
    beams, alpha = options.beam_size, options.length_penalty
    needed = max(1, round(beams * options.patience))
    live: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    finished: list[tuple[tuple[int, ...], float]] = []
    for step in range(options.max_tokens):
        cands = []
        for k, (tokens, total) in enumerate(live):
            logp = toy_logprobs(seed, (START, *tokens), vocab, bias)
            cands += [(total + logp[w], k, w) for w in range(vocab)]
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        norm = (step + 1) ** alpha
        extended: list[tuple[tuple[int, ...], float]] = []
        for total, k, w in cands[: 2 * beams]:
            if w == END:
                if len(finished) < needed:
                    finished.append((live[k][0], total / norm))
            else:
                extended.append(((*live[k][0], w), total))
                if len(extended) == beams:
                    break  # END candidates ranked below the K-th live beam are not considered
        if len(finished) >= needed:
            break
        if step + 1 == options.max_tokens:
            finished += [(tokens, total / norm) for tokens, total in extended]
        live = extended
    return sorted(finished, key=lambda h: -h[1])[:beams]


@pytest.mark.parametrize("beams", [2, 3])
@pytest.mark.parametrize(("alpha", "patience"), [(0.0, 1.0), (1.0, 1.0), (0.7, 2.0)])
def test_beam_matches_plain_reference(beams: int, alpha: float, patience: float) -> None:
    vocab, pairs = 8, [(s, -3.0) for s in range(600, 612)]
    options = DecodingOptions(beam_size=beams, max_tokens=10, length_penalty=alpha,
                              patience=patience)
    results, model = decode(pairs, vocab, options)
    assert model.reorders and all(
        not np.array_equal(s, np.arange(len(s))) for s in model.reorders
    )
    for pair, result in zip(pairs, results, strict=True):
        expected = reference_search(pair, vocab, options)
        assert [h.tokens for h in result.beams] == [e[0] for e in expected]
        np.testing.assert_allclose([h.score for h in result.beams], [e[1] for e in expected],
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("beams", [2, 3])
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_beats_greedy_and_logprobs_are_exact(beams: int, alpha: float) -> None:
    vocab, max_tokens = 8, 12
    pairs = [(s, -3.0) for s in range(200, 240)]
    options = DecodingOptions(beam_size=beams, max_tokens=max_tokens, length_penalty=alpha)
    results, _ = decode(pairs, vocab, options)
    plain, _ = decode(pairs, vocab, replace(options, beam_size=1))
    for pair, result in zip(pairs, results, strict=True):
        assert len(result.beams) == beams
        assert len({h.tokens for h in result.beams}) == beams  # no duplicates
        assert [h.score for h in result.beams] == sorted(
            (h.score for h in result.beams), reverse=True
        )
        for hyp in result.beams:
            assert END not in hyp.tokens and len(hyp.tokens) <= max_tokens
            total, length = recomputed_logprob(hyp, pair, vocab, max_tokens)
            assert hyp.logprob == pytest.approx(total, abs=1e-5)
            assert hyp.score == pytest.approx(total / length**alpha, abs=1e-5)
    # Beam search is not guaranteed to beat greedy on every pair: greedy's prefix can be
    # pruned, and with alpha > 0 short hypotheses that finish first can end the search (here
    # 1-8 of 40 toy pairs score lower than greedy), so the claim is checked in aggregate.
    gain = np.array([r.best.score - g.best.score for r, g in zip(results, plain, strict=True)])
    assert (gain > 1e-9).sum() > 2 * (gain < -1e-9).sum()
    assert gain.mean() > 0


@pytest.mark.parametrize("beams", [1, 3])
def test_batch_equals_pairs_alone(beams: int) -> None:
    vocab = 7
    pairs = [(300, -1.0), (301, -5.0), (302, 1.0), (303, -3.0), (304, -8.0)]
    options = DecodingOptions(beam_size=beams, max_tokens=14, length_penalty=0.8)
    together, _ = decode(pairs, vocab, options)
    steps = set()
    for pair, result in zip(pairs, together, strict=True):
        (alone,), model = decode([pair], vocab, options)
        assert alone == result
        steps.add(model.calls)
    assert len(steps) > 2  # pairs finish at different steps


@pytest.mark.parametrize("beams", [1, 3])
def test_ignore_eos_generates_max_tokens(beams: int) -> None:
    vocab, max_tokens = 6, 9
    pairs = [(400, 2.0), (401, 3.0)]  # END would win almost at once
    normal, _ = decode(pairs, vocab, DecodingOptions(beam_size=beams, max_tokens=max_tokens))
    assert all(len(r.best.tokens) < max_tokens for r in normal)
    options = DecodingOptions(beam_size=beams, max_tokens=max_tokens, ignore_eos=True)
    results, model = decode(pairs, vocab, options)
    assert model.calls == max_tokens
    for pair, result in zip(pairs, results, strict=True):
        assert len(result.beams) == beams
        for hyp in result.beams:
            assert len(hyp.tokens) == max_tokens and END not in hyp.tokens
            total, _ = recomputed_logprob(hyp, pair, vocab, max_tokens)
            assert hyp.logprob == pytest.approx(total, abs=1e-5)  # the model's own log-probs


def test_patience_waits_for_more_finished() -> None:
    vocab, pairs = 8, [(500, -2.0)]
    base = DecodingOptions(beam_size=2, max_tokens=20)
    (short,), m1 = decode(pairs, vocab, base)
    (long,), m2 = decode(pairs, vocab, DecodingOptions(beam_size=2, max_tokens=20, patience=3.0))
    assert m2.calls > m1.calls
    assert long.best.score >= short.best.score


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"beam_size": 0}, "beam_size"),
        ({"beam_size": 2.5}, "beam_size"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"patience": 0.0}, "patience"),
        ({"patience": float("nan")}, "patience"),
        ({"length_penalty": -0.5}, "length_penalty"),
    ],
)
def test_invalid_options(kwargs: dict, word: str) -> None:
    with pytest.raises(ConfigError, match=word) as info:
        DecodingOptions(**kwargs)
    assert "\n" not in str(info.value)


def test_invalid_call() -> None:
    with pytest.raises(ConfigError, match="batch"):
        beam_search(ConstantModel(1, 5), 0, DecodingOptions())
    with pytest.raises(ConfigError, match="end id"):
        beam_search(ConstantModel(1, 3), 1, DecodingOptions(beam_size=1))


# --- attention history (DecodingOptions.attention) ------------------------------------------------

TOKENS_N = 5  # the toy's "visual tokens"


@functools.cache
def toy_attention(seed: int, prefix: tuple[int, ...]) -> np.ndarray:
    """float32 [N] weights (summing to 1) of a row whose fed prefix is `prefix` (START first)."""
    rng = np.random.default_rng([seed, 99, len(prefix), *prefix])
    x = np.exp(rng.normal(size=TOKENS_N) * 2.0)
    return (x / x.sum()).astype(np.float32)


class AttentionToyModel(ToyModel):
    """ToyModel that also says where each row looked: a function of the row's whole prefix, so
    attention kept for the wrong row (a missing or wrong reorder of the history) is noticed."""

    def __init__(self, pairs: list[tuple[int, float]], beams: int, vocab: int) -> None:
        super().__init__(pairs, beams, vocab)
        self.reads = 0
        self._last: np.ndarray | None = None

    def logits(self, tokens: np.ndarray, step: int) -> np.ndarray:
        out = super().logits(tokens, step)
        self._last = np.stack([toy_attention(self.pairs[r // self.beams][0], tuple(p))
                               for r, p in enumerate(self.prefixes)])  # [R, N]
        return out

    def attention(self) -> np.ndarray | None:
        self.reads += 1
        return self._last


@pytest.mark.parametrize(("beams", "ignore_eos"), [(1, False), (3, False), (3, True)])
def test_attention_history_follows_the_beams(beams: int, ignore_eos: bool) -> None:
    vocab, max_tokens = 8, 9
    pairs = [(s, -2.0) for s in range(700, 712)]
    options = DecodingOptions(beam_size=beams, max_tokens=max_tokens, ignore_eos=ignore_eos, attention=True)
    model = AttentionToyModel(pairs, beams, vocab)
    results = beam_search(model, len(pairs), options)
    plain, _ = decode(pairs, vocab, replace(options, attention=False))
    assert results == plain  # same tokens and scores: attention only rides along
    if beams > 1:
        assert model.reorders
    lengths = set()
    for (seed, _), result in zip(pairs, results, strict=True):
        for hyp in result.beams:
            assert hyp.attention is not None and hyp.attention.dtype == np.float32
            assert hyp.attention.shape == (len(hyp.tokens), TOKENS_N)
            # row i: where the row looked while choosing token i, i.e. after being fed START, tokens[:i]
            want = [toy_attention(seed, (START, *hyp.tokens[:i])) for i in range(len(hyp.tokens))]
            np.testing.assert_array_equal(hyp.attention, np.array(want).reshape(-1, TOKENS_N))
            np.testing.assert_allclose(hyp.attention.sum(axis=1), 1.0, atol=1e-6)
            lengths.add(len(hyp.tokens))
    assert len(lengths) > 1 or ignore_eos
    assert all(h.attention is None for r in plain for h in r.beams)


def test_attention_is_read_only_when_asked() -> None:
    pairs = [(800, -2.0), (801, -2.0)]
    model = AttentionToyModel(pairs, 2, 6)
    results = beam_search(model, 2, DecodingOptions(beam_size=2, max_tokens=6))
    assert model.reads == 0 and all(h.attention is None for r in results for h in r.beams)
    model = AttentionToyModel(pairs, 2, 6)
    beam_search(model, 2, DecodingOptions(beam_size=2, max_tokens=6, attention=True))
    assert model.reads == model.calls > 0  # once per step


class NoAttentionModel(AttentionToyModel):
    def attention(self) -> np.ndarray | None:
        return None


class BadAttentionModel(AttentionToyModel):
    def attention(self) -> np.ndarray | None:
        return np.zeros((1, TOKENS_N), np.float32)  # one row for every row


def test_attention_needs_a_model_that_gives_it() -> None:
    options = DecodingOptions(beam_size=2, max_tokens=4, attention=True)
    for model in (ToyModel([(1, 0.0)], 2, 5), NoAttentionModel([(1, 0.0)], 2, 5)):
        with pytest.raises(ConfigError, match="gives no cross-attention"):
            beam_search(model, 1, options)
    with pytest.raises(ValueError, match=r"attention returned shape \(1, 5\) at step 0; expected \[2, N\]"):
        beam_search(BadAttentionModel([(1, 0.0)], 2, 5), 1, options)
