"""LEVIR-CC reading, the vocabulary rule, labels and batching, on the real reference data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rsicrc.data import PairDataset, collate
from rsicrc.errors import DataError, VocabularyError
from rsicrc.levircc import NO_CHANGE_LABEL, NO_CHANGE_SENTENCES, LevirCC, load_annotations
from rsicrc.runtime.preprocess import PreprocessSpec
from rsicrc.vocab import END, PAD, START, UNK, Vocabulary, normalize_caption, tokenize


def test_real_levircc_vocabulary(levircc_dir: Path) -> None:
    records = load_annotations(levircc_dir / "LevirCCcaptions.json")
    assert len(records) == 10077
    assert [sum(r.split == s for r in records) for s in ("train", "val", "test")] == [6815, 1333, 1929]
    vocab = LevirCC(levircc_dir, tuple(records)).build_vocabulary()
    assert len(vocab) == 468
    assert vocab.words[:4] == ("<NULL>", "<START>", "<UNK>", "<END>")
    assert (PAD, START, UNK, END) == (0, 1, 2, 3)
    assert vocab.id("road") > 3 and vocab.id("zzzz") == UNK


def test_labels_and_no_change(levircc_dir: Path) -> None:
    records = load_annotations(levircc_dir / "LevirCCcaptions.json")
    unchanged = [r for r in records if not r.changed]
    assert len(unchanged) == 5039
    assert all(r.label == NO_CHANGE_LABEL for r in unchanged)
    assert all(set(r.texts) == set(NO_CHANGE_SENTENCES) for r in unchanged[:50])
    changed = next(r for r in records if r.changed)
    assert changed.label == changed.imgid


def test_vocabulary_encode_decode_and_json(tmp_path: Path) -> None:
    vocab = Vocabulary.build([["a", "b"]] * 6 + [["c"]] * 5)
    assert vocab.words[4:] == ("a", "b")  # c occurs 5 times: not > 5
    ids = vocab.encode(["a", "c", "b"], max_len=10)
    assert ids == [START, 4, UNK, 5, END]
    assert vocab.decode(ids + [PAD, 4]) == "a <UNK> b"
    assert vocab.encode(["a"] * 20, max_len=5) == [START, 4, 4, 4, END]
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json") == vocab
    (tmp_path / "bad.json").write_text('{"a": 0}')
    with pytest.raises(VocabularyError):
        Vocabulary.load(tmp_path / "bad.json")


def test_tokenize_and_normalize() -> None:
    assert tokenize(" Two houses, are built .") == ["two", "houses", "are", "built"]
    assert normalize_caption("A road is built.") == normalize_caption(" a road  is built ")


def test_dataset_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        LevirCC.open(tmp_path / "missing")
    with pytest.raises(DataError, match="LevirCCcaptions.json"):
        LevirCC.open(tmp_path)
    (tmp_path / "LevirCCcaptions.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        LevirCC.open(tmp_path)


def test_real_sample_pairs_batch(levircc_dir: Path, tmp_path: Path) -> None:
    """The three real sample pairs go through the training pipeline (preprocessing, batching)."""
    records = load_annotations(levircc_dir / "LevirCCcaptions.json")
    names = sorted(p.name for p in (levircc_dir / "samples" / "A").glob("*.png"))
    picked = [r for r in records if r.filename in names]
    assert len(picked) == 3 and all(r.split == "train" for r in picked)
    for side in ("A", "B"):  # lay the samples out as a LEVIR-CC folder
        (tmp_path / "images" / "train" / side).mkdir(parents=True)
        for name in names:
            (tmp_path / "images" / "train" / side / name).symlink_to(levircc_dir / "samples" / side / name)
    vocab = LevirCC(levircc_dir, tuple(records)).build_vocabulary()
    ds = PairDataset(tmp_path, picked, vocab, 41, PreprocessSpec(), all_captions=True)
    assert len(ds) == 15  # 3 pairs x 5 captions
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch.before.shape == (15, 3, 224, 224) and batch.before.dtype == torch.float32
    assert not torch.equal(batch.before, batch.after)
    assert batch.tokens[:, 0].eq(START).all()
    assert (batch.tokens.gather(1, (batch.lengths - 1).view(-1, 1)) == END).all()
    assert batch.labels.tolist() == [r.label for r in picked for _ in range(5)]
