"""Tests for rsicrc.metrics: retrieval metrics by hand, relevance, no-change accuracy, and the
pycocoevalcap scorer (Java) on tiny caption sets, up to the full evaluation report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from rsicrc.errors import ConfigError, DataError
from rsicrc.levircc import NO_CHANGE_SENTENCES, PairRecord
from rsicrc.metrics import (
    CAPTION_METRICS,
    CaptionScorer,
    best_constant_caption,
    evaluation_report,
    no_change_accuracy,
    relevance,
    retrieval_metrics,
)
from rsicrc.textsim import CaptionMatcher


def pair(imgid: int, changed: bool, *captions: str) -> PairRecord:
    if not changed:
        captions = NO_CHANGE_SENTENCES
    return PairRecord(imgid=imgid, split="test", filename=f"test_{imgid:06d}.png",
                      changed=changed, captions=tuple(tuple(c.split()) for c in captions))


# ---------------------------------------------------------------- retrieval metrics


def test_retrieval_metrics_by_hand_with_ties_and_k_beyond_n() -> None:
    sim = np.array([[0.2, 0.9, 0.5, 0.5],     # ranks 1,2,3,0 -> relevant at ranks 3 and 4
                    [0.5, 0.5, 0.5, 0.5]])    # all tied -> order 0,1,2,3 -> relevant at rank 2
    rel = np.array([[True, False, False, True],
                    [False, True, False, False]])
    got = retrieval_metrics(sim, rel, ks=(1, 3, 5))
    want = {
        "P@1": 0.0, "R@1": 0.0, "MRR@1": 0.0,
        "P@3": (1 / 3 + 1 / 3) / 2, "R@3": (1 / 2 + 1) / 2, "MRR@3": (1 / 3 + 1 / 2) / 2,
        "P@5": (2 / 5 + 1 / 5) / 2, "R@5": 1.0, "MRR@5": (1 / 3 + 1 / 2) / 2,
    }
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert all(type(v) is float for v in got.values())


def test_retrieval_metrics_default_keys_and_perfect_ranking() -> None:
    n = 12
    got = retrieval_metrics(np.eye(n), np.eye(n, dtype=bool))
    assert list(got) == [f"{m}@{k}" for k in (1, 3, 5, 10) for m in ("P", "R", "MRR")]
    assert got["P@1"] == got["R@1"] == got["MRR@1"] == got["MRR@10"] == 1.0
    assert got["P@3"] == pytest.approx(1 / 3)
    assert got["P@10"] == pytest.approx(0.1)
    assert got["R@10"] == 1.0


def test_retrieval_metrics_multiple_relevant() -> None:
    sim = np.array([[0.9, 0.8, 0.7, 0.1, 0.0]])
    rel = np.array([[False, True, True, True, False]])
    got = retrieval_metrics(sim, rel, ks=(1, 3))
    assert got == pytest.approx({"P@1": 0.0, "R@1": 0.0, "MRR@1": 0.0,
                                 "P@3": 2 / 3, "R@3": 2 / 3, "MRR@3": 0.5})


def test_retrieval_metrics_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="no relevant"):
        retrieval_metrics(np.zeros((2, 3)), np.array([[1, 0, 0], [0, 0, 0]], dtype=bool))
    with pytest.raises(DataError, match="same"):
        retrieval_metrics(np.zeros((2, 3)), np.ones((3, 2), dtype=bool))
    with pytest.raises(DataError, match="NaN"):
        retrieval_metrics(np.full((1, 2), np.nan), np.ones((1, 2), dtype=bool))
    with pytest.raises(ConfigError, match="positive"):
        retrieval_metrics(np.zeros((1, 2)), np.ones((1, 2), dtype=bool), ks=(0, 1))
    empty = retrieval_metrics(np.zeros((0, 3)), np.zeros((0, 3), dtype=bool), ks=(1,))
    assert empty == {"P@1": 0.0, "R@1": 0.0, "MRR@1": 0.0}


# ---------------------------------------------------------------- relevance, no-change accuracy


def test_relevance_shares_no_change_label_and_matches_any_caption() -> None:
    records = [
        pair(10, True, "a road is built", "a new road appears"),
        pair(11, True, "many houses are built", "a road is built"),  # 2nd caption = query 0
        pair(12, False),
        pair(13, False),
        pair(14, True, "trees are removed", "the forest is cut"),
    ]
    queries = ["A road is built.", "many houses are built", "there is no difference",
               "almost nothing has changed", "trees are removed"]
    got = relevance(records, queries, CaptionMatcher(1.0))
    want = np.array([
        [1, 1, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1],
    ], dtype=bool)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, want)
    with pytest.raises(DataError, match="one each"):
        relevance(records, queries[:2], CaptionMatcher(1.0))


def test_no_change_accuracy() -> None:
    predictions = ["there is no difference", "The scene is the same as before.",
                   "a road is built", "no change has occurred"]
    assert no_change_accuracy(predictions, [False, False, True, True]) == 0.75
    assert no_change_accuracy(["a house"], [False]) == 0.0
    with pytest.raises(DataError):
        no_change_accuracy(predictions, [True])


def test_metrics_and_textsim_import_without_torch_or_coco() -> None:
    code = ("import sys, rsicrc.metrics, rsicrc.textsim; "
            "bad = {'torch', 'pycocoevalcap', 'sentence_transformers'} & set(sys.modules); "
            "sys.exit(sorted(bad) if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- Java scorer

needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                reason="captioning metrics need Java (PTB tokenizer, METEOR)")
REFS = {
    "1": ["a road is built across the green field"],
    "2": ["many new houses appear at the top of the scene"],
    "3": ["the trees near the river are removed completely"],
    "4": ["a large parking lot replaces the bare land"],
}


@pytest.fixture(scope="module")
def scorer() -> Iterator[CaptionScorer]:
    pytest.importorskip("pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("captioning metrics need Java (PTB tokenizer, METEOR)")
    with CaptionScorer() as s:
        yield s


@needs_java
def test_scorer_identical_beats_unrelated_and_is_reusable(scorer: CaptionScorer) -> None:
    same = scorer.score(REFS, {k: v[0].upper() + "." for k, v in REFS.items()})
    assert list(same) == list(CAPTION_METRICS)
    assert same["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert same["METEOR"] > 0.9 and same["ROUGE_L"] == pytest.approx(1.0)
    assert same["CIDEr"] > 0
    unrelated = scorer.score(REFS, {"1": "there is no difference", "2": "a road is built",
                                    "3": "many houses appear", "4": "trees are removed"})
    for name in CAPTION_METRICS:
        assert unrelated[name] < same[name], name
    again = scorer.score(REFS, {k: v[0] for k, v in REFS.items()})
    assert again == same  # case and final full stop vanish in PTB tokenization
    assert all(type(v) is float for v in again.values())


@needs_java
def test_scorer_tokenizes_and_handles_empty_input(scorer: CaptionScorer) -> None:
    assert scorer.tokenize(["A road, is built.", "", "Houses!"]) == ["a road is built", "",
                                                                     "houses"]
    assert scorer.score({}, {}) == dict.fromkeys(CAPTION_METRICS, 0.0)
    with_empty = scorer.score(REFS, {"1": "", "2": "", "3": "x", "4": "a large parking lot"})
    assert 0 <= with_empty["METEOR"] < 1
    with pytest.raises(DataError, match="same keys"):
        scorer.score(REFS, {"1": "a road"})


@needs_java
def test_best_constant_caption_picks_the_obvious_candidate(scorer: CaptionScorer) -> None:
    refs = {
        "1": ["a road is built near the houses", "a new road is built near the houses"],
        "2": ["a road is built near the houses", "a road appears near the houses"],
        "3": ["a road is built near the trees", "a road is built beside the houses"],
        "4": list(NO_CHANGE_SENTENCES),
    }
    candidates = ["there is no difference", "a road is built near the houses", "trees"]
    best, scores = best_constant_caption(scorer, refs, ["1", "2", "3"], candidates)
    assert best == "a road is built near the houses"
    assert set(scores) == {"all", "changed"}
    assert list(scores["changed"]) == list(CAPTION_METRICS)
    assert scores["changed"]["Bleu_4"] > scores["all"]["Bleu_4"]
    with pytest.raises(DataError, match="candidate"):
        best_constant_caption(scorer, refs, ["1"], [])


@needs_java
def test_evaluation_report_has_exactly_the_agreed_shape(scorer: CaptionScorer) -> None:
    records = [
        pair(1, True, "a road is built across the field", "a new road appears"),
        pair(2, True, "many houses appear at the top", "houses are built"),
        pair(3, True, "the trees are removed", "the forest is cut down"),
        pair(4, False), pair(5, False), pair(6, False),
    ]
    predictions = {1: "a road is built across the field", 2: "there is no difference",
                   3: "trees are removed", 4: "there is no difference",
                   5: "the scene is the same as before", 6: "a house is built"}
    rng = np.random.default_rng(0)
    visual = rng.normal(size=(6, 8))
    text = 3.0 * visual  # same directions: every changed query finds its own pair first
    candidates = ["a road is built", "there is no difference"]
    report = evaluation_report(records, predictions, visual, text, scorer,
                               CaptionMatcher(1.0), candidates, "out/predictions.json")
    metric_keys = [f"{m}@{k}" for k in (1, 3, 5, 10) for m in ("P", "R", "MRR")]
    assert list(report) == ["captioning", "retrieval", "no_change_accuracy", "baseline",
                            "predictions", "chance", "pairs"]
    for part in ("captioning", "retrieval"):
        assert list(report[part]) == ["all", "changed"]
    for subset in ("all", "changed"):
        assert list(report["captioning"][subset]) == list(CAPTION_METRICS)
        assert list(report["retrieval"][subset]) == metric_keys
        assert list(report["baseline"]["captioning"][subset]) == list(CAPTION_METRICS)
    assert list(report["baseline"]) == ["constant_caption", "captioning"]
    assert report["baseline"]["constant_caption"] in candidates
    assert report["predictions"] == "out/predictions.json"
    assert report["chance"] == pytest.approx({"R@1": 1 / 6, "R@3": 0.5, "R@5": 5 / 6,
                                              "R@10": 1.0})
    assert report["pairs"] == {"all": 6, "changed": 3}
    assert report["no_change_accuracy"] == pytest.approx(4 / 6)
    assert report["retrieval"]["changed"]["P@1"] == 1.0
    assert report["retrieval"]["changed"]["MRR@10"] == 1.0
    assert json.loads(json.dumps(report)) == report
    with pytest.raises(DataError, match="no prediction"):
        evaluation_report(records, {1: "x"}, visual, text, scorer, CaptionMatcher(1.0),
                          candidates, "p.json")


@needs_java
def test_close_ends_the_meteor_process() -> None:
    pytest.importorskip("pycocoevalcap")
    with CaptionScorer() as s:
        proc = s._meteor._proc
        assert proc is not None and proc.poll() is None
    assert proc.wait(timeout=10) is not None
    s.close()  # idempotent
