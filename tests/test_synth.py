"""The synthetic change dataset: layout, determinism, faithful captions, real pixel changes."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsicrc.errors import ConfigError, DataError
from rsicrc.levircc import (
    NO_CHANGE_SENTENCES,
    SPLITS,
    LevirCC,
    load_annotations,
    vocabulary_from_records,
)
from rsicrc.synth import COUNTS, KINDS, LOCATIONS, Change, split_sizes, synthesize
from rsicrc.synth import dataset as synth_dataset
from rsicrc.synth.captions import MAX_TOKENS, describe, raw_text, template_words
from rsicrc.synth.noise import TextureBank
from rsicrc.synth.png import encode_png
from rsicrc.synth.scene import canvas_for, changes_of, plan_pair, render_pair
from rsicrc.synth.spec import location_of
from rsicrc.vocab import tokenize


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _doc(root: Path) -> dict:
    return json.loads((root / "LevirCCcaptions.json").read_text())


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 small pairs: enough for every kind to show up."""
    return synthesize(tmp_path_factory.mktemp("synth") / "ds", pairs=60, seed=11, size=96)


@pytest.fixture(scope="module")
def real_vocab(levircc_dir: Path):
    return vocabulary_from_records(load_annotations(levircc_dir / "LevirCCcaptions.json"))


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", pairs=8, seed=5, size=64)
    b = synthesize(tmp_path / "b", pairs=8, seed=5, size=64)
    c = synthesize(tmp_path / "c", pairs=8, seed=6, size=64)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert len(da) == 8 * 2 + 1
    assert da == db
    assert da.keys() == dc.keys()
    assert sum(da[k] != dc[k] for k in da) >= len(da) - 2  # nearly every file differs


def test_layout_is_readable_as_levircc(ds: Path) -> None:
    data = LevirCC.open(ds)
    doc = _doc(ds)
    assert doc["dataset"] == "synthetic"
    assert [len(data.split(s)) for s in SPLITS] == list(split_sizes(60, (0.7, 0.1, 0.2)))
    assert [r.imgid for r in data.records] == list(range(60))
    assert [r.split for r in data.records] == sorted((r.split for r in data.records),
                                                     key=SPLITS.index)
    for rec, entry in zip(data.records, doc["images"], strict=True):
        assert entry["filepath"] == rec.split and rec.filename.startswith(rec.split + "_")
        assert entry["sentids"] == [rec.imgid * 5 + k for k in range(5)]
        for k, s in enumerate(entry["sentences"]):
            assert s["imgid"] == rec.imgid and s["sentid"] == rec.imgid * 5 + k
            assert s["raw"] == " " + " ".join(s["tokens"]) + " ."
            assert tokenize(s["raw"]) == s["tokens"]
        for path in rec.image_paths(ds):
            with Image.open(path) as im:
                assert (im.format, im.mode, im.size) == ("PNG", "RGB", (96, 96))
    assert not [p for p in ds.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_unchanged_pairs_carry_the_no_change_sentences(ds: Path) -> None:
    entries = _doc(ds)["images"]
    unchanged = [e for e in entries if e["changeflag"] == 0]
    assert 0.35 * len(entries) <= len(unchanged) <= 0.65 * len(entries)
    for e in unchanged:
        assert [" ".join(s["tokens"]) for s in e["sentences"]] == list(NO_CHANGE_SENTENCES)
        assert e["changes"] == []


def test_changed_pairs_have_valid_changes_and_five_distinct_captions(ds: Path) -> None:
    entries = [e for e in _doc(ds)["images"] if e["changeflag"] == 1]
    kinds: Counter[str] = Counter()
    for e in entries:
        assert 1 <= len(e["changes"]) <= 3
        texts = [" ".join(s["tokens"]) for s in e["sentences"]]
        assert len(set(texts)) == 5 and not set(texts) & set(NO_CHANGE_SENTENCES)
        assert all(len(s["tokens"]) <= MAX_TOKENS for s in e["sentences"])
        for c in e["changes"]:
            kinds[c["kind"]] += 1
            assert c["kind"] in KINDS and c["location"] in LOCATIONS and c["count"] in COUNTS
            x0, y0, x1, y1 = c["bbox"]
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
            # the location word is the 3 x 3 cell of the bbox centre (1 px rounding allowed)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            near = {location_of(cx + dx, cy + dy, 96) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
            assert c["location"] in near
    assert len(kinds) >= 6, kinds


def test_every_caption_word_is_in_the_real_levircc_vocabulary(ds: Path, real_vocab) -> None:
    assert len(real_vocab) == 468
    assert not real_vocab.unknown_words(sorted(template_words()))
    for rec in LevirCC.open(ds).records:
        for caption in rec.captions:
            assert not real_vocab.unknown_words(caption), caption


def test_templates_cover_all_combinations_within_vocabulary_and_length(real_vocab) -> None:
    rng = np.random.default_rng(0)
    details = {"road_built": ("straight", "t_shaped", "curved"),
               "trees_removed": ("bareland", "grass"),
               "houses_demolished": ("foundation", "bareland")}
    counts = {"houses_built": COUNTS, "houses_demolished": ("a", "two", "three", "several",
                                                            "a row of"),
              "trees_removed": ("several", "many", "a row of"), "parking_built": ("a", "two"),
              "pool_built": ("a", "two", "three"), "pond_appeared": ("a", "two")}
    contexts = {"road_built": ("bareland", "grass", "trees")}
    changes = [Change(k, loc, cnt, 1, ctx, det, (0, 0, 1, 1))
               for k in KINDS for loc in LOCATIONS for cnt in counts.get(k, ("a",))
               for ctx in contexts.get(k, ("bareland", "grass"))
               for det in details.get(k, ("",))]
    for i, c in enumerate(changes):
        group = [c, changes[(i * 7) % len(changes)], changes[(i * 13) % len(changes)]][: 1 + i % 3]
        for caption in describe(group, rng):
            assert 3 <= len(caption) <= MAX_TOKENS
            assert not real_vocab.unknown_words(caption), caption
            assert tokenize(raw_text(caption)) == caption


def _aligned_diff(a: np.ndarray, b: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Mean |A - B| inside box after matching B's per-channel mean/std to A's (radiometry)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    b = (b - b.mean((0, 1))) / (b.std((0, 1)) + 1e-6) * a.std((0, 1)) + a.mean((0, 1))
    x0, y0, x1, y1 = box
    return float(np.abs(a[y0:y1, x0:x1] - b[y0:y1, x0:x1]).mean())


@pytest.fixture(scope="module")
def unchanged_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    bank = TextureBank(1, canvas_for(96).side)
    out = []
    for i in range(8):
        rng = np.random.default_rng([99, i])
        out.append(render_pair(plan_pair(rng, False), rng, 96, bank))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_each_change_kind_alters_pixels_in_its_bbox(kind: str, unchanged_pairs) -> None:
    """Inside its bbox a change differs clearly more than unchanged pairs do in that box."""
    bank = TextureBank(1, canvas_for(96).side)
    for i in range(3):
        rng = np.random.default_rng([KINDS.index(kind), i])
        scene = plan_pair(rng, True, [kind])
        a, b = render_pair(scene, rng, 96, bank)
        (change,) = [c for c in changes_of(scene, 96) if c.kind == kind]
        changed = _aligned_diff(a, b, change.bbox)
        typical = float(np.median([_aligned_diff(ua, ub, change.bbox)
                                   for ua, ub in unchanged_pairs]))
        assert changed > 1.2 * typical + 2.0, (kind, i, changed, typical)


def test_existing_non_empty_output_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        synthesize(out, pairs=3, seed=0, size=64)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (synthesize(empty, pairs=3, seed=0, size=64) / "LevirCCcaptions.json").is_file()


def test_a_failure_midway_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real_write = synth_dataset.write_png

    def failing_write(path: Path, rgb: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        real_write(path, rgb)

    monkeypatch.setattr(synth_dataset, "write_png", failing_write)
    with pytest.raises(OSError, match="disk full"):
        synthesize(tmp_path / "out", pairs=6, seed=0, size=64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs", [
    {"pairs": 2}, {"pairs": True}, {"pairs": 4.0}, {"size": 63}, {"seed": -1},
    {"split_fractions": (0.5, 0.3, 0.3)}, {"split_fractions": (0.9, 0.1, 0.0)},
    {"split_fractions": (0.5, 0.5)}, {"split_fractions": "abc"},
])
def test_bad_arguments_raise_config_error(tmp_path: Path, kwargs: dict) -> None:
    args = {"pairs": 6, "seed": 0, "size": 64, **kwargs}
    with pytest.raises(ConfigError) as err:
        synthesize(tmp_path / "out", **args)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_split_sizes_give_every_split_a_pair() -> None:
    assert split_sizes(3, (0.7, 0.1, 0.2)) == (1, 1, 1)
    assert split_sizes(4, (0.98, 0.01, 0.01)) == (2, 1, 1)
    assert split_sizes(5, (0.1, 0.1, 0.8)) == (1, 1, 3)
    assert split_sizes(2000, (0.7, 0.1, 0.2)) == (1400, 200, 400)


def test_full_size_pairs_with_progress(tmp_path: Path, capfd) -> None:
    # Speed is a benchmark's business, not a test's: a timed bound here failed under emulation.
    out = synthesize(tmp_path / "big", pairs=12, seed=2, progress=True)
    assert "synthesize" in capfd.readouterr().err
    for rec in LevirCC.open(out).records:
        for path in rec.image_paths(out):
            with Image.open(path) as im:
                assert (im.mode, im.size) == ("RGB", (256, 256))


def test_png_writer_round_trips() -> None:
    rng = np.random.default_rng(0)
    for shape in ((1, 1, 3), (7, 5, 3), (64, 33, 3)):
        rgb = rng.integers(0, 256, size=shape, dtype=np.uint8)
        back = np.asarray(Image.open(io.BytesIO(encode_png(rgb))))
        assert back.dtype == np.uint8 and np.array_equal(back, rgb)
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), dtype=np.uint8))
