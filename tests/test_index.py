"""The retrieval index and Retriever: an exported tiny model indexes a synthetic LEVIR-CC dataset
(also as an A/B folder and a CSV); rankings must equal a numpy brute force over the Captioner's
own embeddings (and, once, over the PyTorch model's). Append, resume after a crash, orphan shards,
damaged shards, model mismatch, float16 vs float32 and the FAISS backend are each checked."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_runtime import tiny_model_dir

from conftest import open_captioner, open_text_encoder
from rsicrc.errors import ConfigError, DataError, IndexFolderError, ModelFolderError
from rsicrc.runtime import index as index_module
from rsicrc.runtime.captioner import Captioner
from rsicrc.runtime.encoders import ImageEncoder
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.index import IndexWriter, open_index
from rsicrc.runtime.index_format import INDEX_FILE, Entry, ModelIdentity, read_header
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.pairs import list_pairs
from rsicrc.runtime.retriever import Retriever, exact_search, index_pairs

QUERIES = ["two houses are built at the top", "a road is built", "the scene is the same as before",
           "some trees are removed near the bottom left"]
# Scores of one pair from two batchings: the embedding's float32 rounding differs in the last bits
# and may flip one float16 rounding of a stored value (|q_i x_i| 2^-11 each), BLAS sums in another
# order. Measured: 4e-9 (AVX2 CPU); a flipped float16 rounding stays below 1e-5 for unit vectors.
SCORE_TOLERANCE = 1e-5
CPU1 = RuntimeOptions(device="cpu", threads=1)
FAKE_MODEL = ModelIdentity("a" * 64, "b" * 64, "fp32", "/nowhere/model")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def captioner(model_dir: Path) -> Captioner:
    return open_captioner(model_dir, device="cpu", threads=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rsicrc.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("retrieval") / "data", pairs=20, seed=11, size=64)


@pytest.fixture(scope="module")
def reference(dataset: Path, captioner: Captioner) -> dict[str, np.ndarray]:
    """Every pair's visual embedding straight from Captioner.embed_images, by resolved before path."""
    items = list_pairs(dataset)
    arrays = [read_pair(i.before, i.after) for i in items]
    vectors = captioner.embed_images([a[0] for a in arrays], [a[1] for a in arrays])
    return {str(i.before.resolve()): v for i, v in zip(items, vectors, strict=True)}


@pytest.fixture(scope="module")
def levir_index(tmp_path_factory: pytest.TempPathFactory, dataset: Path, model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("levir_index") / "index"
    report = index_pairs(dataset, out, model_dir, CPU1, batch_size=6, dtype="float32", commit_every=8,
                         progress=False)
    assert (report.added, report.skipped, report.total) == (20, 0, 20)
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _brute_force(queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and row order of a plain float32 product, sorted by (-score, row)."""
    scores = np.asarray(queries, np.float32) @ np.asarray(rows, np.float32).T
    order = np.stack([np.lexsort((np.arange(len(s)), -s))[:k] for s in scores])
    return np.take_along_axis(scores, order, 1), order


def _check_ranking(retriever: Retriever, captioner: Captioner, reference: dict[str, np.ndarray],
                   queries: list[str], k: int) -> None:
    """The retriever's hits equal a float64 brute force of TextEncoder.embed vs embed_images."""
    hits = retriever.search(queries, top_k=k)
    stored = retriever.index.records(range(len(retriever)))
    matrix = _unit(np.stack([reference[e.before] for e in stored]))
    encoder = open_text_encoder(captioner.model.path, device="cpu", threads=1)
    scores = _unit(encoder.embed(queries)) @ matrix.T
    row_of = {e.id: i for i, e in enumerate(stored)}
    for q, found in enumerate(hits):
        # Each hit's score is its pair's brute-force score, and the scores are the brute force's best k
        # in order: the ranking equals the brute force's (two ids may swap only within 2e-6).
        expected = np.sort(scores[q])[::-1][:k]
        assert len(found) == len(expected)
        np.testing.assert_allclose([h.score for h in found], [scores[q][row_of[h.id]] for h in found],
                                   atol=2e-6)
        np.testing.assert_allclose([h.score for h in found], expected, atol=2e-6)
        assert [h.rank for h in found] == list(range(1, len(expected) + 1))
        assert len({h.id for h in found}) == len(found)


def test_levircc_index_ranks_like_brute_force(levir_index: Path, model_dir: Path, captioner: Captioner,
                                              reference: dict[str, np.ndarray], dataset: Path) -> None:
    header = read_header(levir_index)
    assert header.count == 20 and header.dtype == "float32" and header.dim == captioner.dims.d_model
    assert [s.rows for s in header.shards] == [12, 8]  # commits after 8+ rows, then the rest
    retriever = Retriever(levir_index, model_dir, CPU1)
    _check_ranking(retriever, captioner, reference, QUERIES, k=20)
    _check_ranking(retriever, captioner, reference, QUERIES[:1], k=3)
    (hit, *_), *_ = retriever.search(QUERIES[:1], top_k=3)
    assert Path(hit.before).is_absolute() and Path(hit.before).is_file()
    assert set(hit.metadata) == {"split", "changeflag"}
    records = {r["filename"]: r for r in json.loads((dataset / "LevirCCcaptions.json").read_text())["images"]}
    assert hit.metadata == {"split": records[hit.id]["split"], "changeflag": records[hit.id]["changeflag"]}
    stored = np.concatenate([a for _, a in retriever.index.blocks()])
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-6)


def test_ranking_equals_pytorch(levir_index: Path, model_dir: Path, dataset: Path) -> None:
    """Same ranking as the checkpoint's PyTorch model embedding every pair and the queries."""
    import torch

    from rsicrc.checkpoint import load_checkpoint
    from rsicrc.data import encode_captions
    from rsicrc.runtime.preprocess import PreprocessSpec, preprocess_batch
    from rsicrc.vocab import tokenize

    model = load_checkpoint(model_dir.parent / "ckpt").model.eval()
    retriever = Retriever(levir_index, model_dir, CPU1)
    entries = retriever.index.records(range(len(retriever)))
    arrays = [read_pair(Path(e.before), Path(e.after)) for e in entries]
    spec = PreprocessSpec(size=model.cfg.image_size)
    before, after = (torch.from_numpy(preprocess_batch([a[i] for a in arrays], spec)) for i in (0, 1))
    tokens, lengths = encode_captions(retriever.encoder.model.vocab, [tokenize(q) for q in QUERIES],
                                      model.cfg.max_len)
    with torch.no_grad():
        visual = model.encode_images(before, after)[1].numpy()
        text = model.encode_text(tokens, lengths).numpy()
    scores = _unit(text) @ _unit(visual).T
    for q, found in enumerate(retriever.search(QUERIES, top_k=5)):
        order = np.argsort(-scores[q], kind="stable")[:5]
        assert [h.id for h in found] == [entries[i].id for i in order]
        np.testing.assert_allclose([h.score for h in found], scores[q][order], atol=1e-4)


def _subset_folder(dataset: Path, out: Path, count: int) -> list[str]:
    names = sorted(p.name for p in (dataset / "images" / "train" / "A").iterdir())[:count]
    for side in ("A", "B"):
        (out / side).mkdir(parents=True)
        for name in names:
            shutil.copy(dataset / "images" / "train" / side / name, out / side / name)
    return names


def test_folder_and_csv_sources(tmp_path: Path, dataset: Path, model_dir: Path, captioner: Captioner,
                                reference: dict[str, np.ndarray]) -> None:
    names = _subset_folder(dataset, tmp_path / "pairs", 6)
    copied = {str((tmp_path / "pairs" / "A" / n).resolve()): reference[str(
        (dataset / "images" / "train" / "A" / n).resolve())] for n in names}
    index_pairs(tmp_path / "pairs", tmp_path / "folder_index", model_dir, CPU1, batch_size=4, progress=False,
                dtype="float32")
    folder = Retriever(tmp_path / "folder_index", model_dir, CPU1)
    assert sorted(e.id for e in folder.index.records(range(6))) == names
    _check_ranking(folder, captioner, copied, QUERIES, k=6)

    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["before", "after", "id"])
        writer.writerows([f"pairs/A/{n}", f"pairs/B/{n}", f"site-{i}"] for i, n in enumerate(names))
    report = index_pairs(tmp_path / "pairs.csv", tmp_path / "csv_index", model_dir, CPU1, batch_size=4,
                         progress=False, dtype="float32")
    assert report.total == 6
    by_csv = Retriever(tmp_path / "csv_index", model_dir, CPU1)
    assert [e.id for e in by_csv.index.records(range(6))] == [f"site-{i}" for i in range(6)]
    _check_ranking(by_csv, captioner, copied, QUERIES, k=4)


class _Spy:
    """Counts the pairs ImageEncoder.embed (what indexing runs) really embeds; optionally fails on
    call `fail_at`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None,
                 error: type[BaseException] = RuntimeError) -> None:
        self.pairs, self.calls, self.fail_at, self.error = 0, 0, fail_at, error
        real = ImageEncoder.embed

        def embed(encoder: ImageEncoder, before: list, after: list) -> np.ndarray:
            self.calls += 1
            if self.calls == self.fail_at:
                raise self.error("injected failure")
            self.pairs += len(before)
            return real(encoder, before, after)

        monkeypatch.setattr(ImageEncoder, "embed", embed)


def _csv(path: Path, dataset: Path, rows: list[str]) -> Path:
    lines = ["before,after,id"] + [f"{dataset}/images/{r}".replace("/X/", "/A/") + ","
                                   + f"{dataset}/images/{r}".replace("/X/", "/B/") + f",{r}" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _all_rows(dataset: Path) -> list[str]:
    return [f"{i.before.parent.parent.name}/X/{i.before.name}" for i in list_pairs(dataset)]


def _run(source: Path, out: Path, model_dir: Path, **kwargs: object):
    options = {"batch_size": 4, "progress": False, **kwargs}
    return index_pairs(source, out, model_dir, CPU1, **options)  # type: ignore[arg-type]


def test_append_computes_only_new_pairs(tmp_path: Path, dataset: Path, model_dir: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _all_rows(dataset)
    spy = _Spy(monkeypatch)
    first = _run(_csv(tmp_path / "first.csv", dataset, rows[:12]), tmp_path / "idx", model_dir)
    assert (first.added, first.skipped, first.total, spy.pairs) == (12, 0, 12, 12)
    second = _run(_csv(tmp_path / "all.csv", dataset, rows), tmp_path / "idx", model_dir)
    assert (second.added, second.skipped, second.total, spy.pairs) == (8, 12, 20, 20)
    third = _run(tmp_path / "all.csv", tmp_path / "idx", model_dir)
    assert (third.added, third.skipped, spy.pairs) == (0, 20, 20)
    assert read_header(tmp_path / "idx").dtype == "float16"  # the default, kept on append
    monkeypatch.undo()
    retriever = Retriever(tmp_path / "idx", model_dir, CPU1)
    assert [e.id for e in retriever.index.records(range(20))] == rows
    # The same id for other images is refused, not skipped.
    swapped = rows[:2]
    (tmp_path / "bad.csv").write_text(f"before,after,id\n{dataset}/images/{swapped[1].replace('/X/', '/A/')},"
                                      f"{dataset}/images/{swapped[1].replace('/X/', '/B/')},{swapped[0]}\n")
    with pytest.raises(DataError, match="already in the index for other images"):
        _run(tmp_path / "bad.csv", tmp_path / "idx", model_dir)
    with pytest.raises(ConfigError, match="stores float16"):
        _run(tmp_path / "all.csv", tmp_path / "idx", model_dir, dtype="float32")


def test_resume_after_a_crash(tmp_path: Path, dataset: Path, model_dir: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    source = _csv(tmp_path / "all.csv", dataset, _all_rows(dataset))
    spy = _Spy(monkeypatch, fail_at=3)  # batches of 4, a commit after each: 8 pairs survive
    with pytest.raises(RuntimeError, match="injected"):
        _run(source, tmp_path / "idx", model_dir, commit_every=4)
    assert read_header(tmp_path / "idx").count == 8
    # A crash between the shard files and index.json (the process dies: nothing is cleaned up).
    real = index_module.write_header
    calls = []

    def dies_on_commit(folder: Path, header: object) -> None:
        calls.append(header)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands for a kill: the writer must not commit after this
        real(folder, header)

    monkeypatch.setattr(index_module, "write_header", dies_on_commit)
    with pytest.raises(KeyboardInterrupt):
        _run(source, tmp_path / "idx", model_dir, commit_every=4)
    monkeypatch.setattr(index_module, "write_header", real)
    files = sorted(p.name for p in (tmp_path / "idx").glob("shard-*"))
    assert len(files) == 8 and read_header(tmp_path / "idx").count == 12  # 3 shards listed, 1 orphan
    assert len(open_index(tmp_path / "idx")) == 12
    spy.pairs = 0
    report = _run(source, tmp_path / "idx", model_dir, commit_every=4)
    assert (report.added, report.skipped, report.total, spy.pairs) == (8, 12, 20, 8)
    assert len(list((tmp_path / "idx").glob("shard-*"))) == 10  # the orphan was removed
    assert not list((tmp_path / "idx").glob(".*.tmp"))
    monkeypatch.undo()
    fresh = _run(source, tmp_path / "fresh", model_dir, commit_every=100)
    assert fresh.total == 20
    a = Retriever(tmp_path / "idx", model_dir, CPU1).search(QUERIES, top_k=20)
    b = Retriever(tmp_path / "fresh", model_dir, CPU1).search(QUERIES, top_k=20)
    # Same ids in the same order; scores equal up to float rounding: the image encoder ran in
    # batches of 4 for one index and of 8 for the other, and exact search multiplies shards of 4
    # rows vs one of 20 (kernels block, and so round, differently per shape, on some CPUs).
    assert [[h.id for h in q] for q in a] == [[h.id for h in q] for q in b]
    np.testing.assert_allclose([[h.score for h in q] for q in a], [[h.score for h in q] for q in b],
                               rtol=0, atol=SCORE_TOLERANCE)


def test_failure_keeps_buffered_rows(tmp_path: Path, dataset: Path, model_dir: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (or a bad image) after complete batches commits them on the way out."""
    source = _csv(tmp_path / "all.csv", dataset, _all_rows(dataset))
    _Spy(monkeypatch, fail_at=4, error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(source, tmp_path / "idx", model_dir, commit_every=100)
    assert read_header(tmp_path / "idx").count == 12


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _write(folder: Path, vectors: np.ndarray, dtype: str = "float32", commit_rows: int = 1000,
           start: int = 0) -> None:
    with IndexWriter.open(folder, FAKE_MODEL, vectors.shape[1], dtype, commit_rows) as writer:
        entries = [Entry(f"p{start + i}", f"/a/{start + i}.png", f"/b/{start + i}.png", {"n": start + i})
                   for i in range(len(vectors))]
        for a in range(0, len(vectors), 7):  # uneven adds
            writer.add(entries[a: a + 7], vectors[a: a + 7])


def test_exact_search_equals_brute_force_across_chunks_shards_and_ties(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = _vectors(300, 8, seed=1)
    vectors[[10, 50, 120, 260]] = vectors[5]  # exact ties, across chunks and shards
    vectors[200] = 0.0  # a zero row scores 0 everywhere
    for dtype in ("float32", "float16"):
        folder = tmp_path / dtype
        _write(folder, vectors, dtype, commit_rows=64)
        index = open_index(folder)
        assert len(index.header.shards) == 5
        stored = np.concatenate([a for _, a in index.blocks()]).astype(np.float32)
        queries = _unit(np.concatenate([vectors[[5, 7]], _vectors(3, 8, seed=2)])).astype(np.float32)
        monkeypatch.setattr("rsicrc.runtime.retriever.CHUNK_BYTES", 8 * 4 * 40)  # chunks of 40 rows
        for k in (1, 3, 5, 40, 300, 1000):
            scores, rows = exact_search(index, queries, k)
            want_scores, want_rows = _brute_force(queries, stored, k)
            np.testing.assert_array_equal(rows, want_rows)
            np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)
        _, rows = exact_search(index, queries[:1], 5)
        assert rows[0].tolist()[:5] == [5, 10, 50, 120, 260]  # the tied copies, lower row first
        monkeypatch.undo()


def test_exact_search_when_every_chunk_beats_the_last(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores rising with the row: every chunk's rows beat the running top-k (the argpartition path)."""
    angles = np.linspace(1.5, 0.0, 400)
    vectors = np.zeros((400, 4), np.float32)
    vectors[:, 0], vectors[:, 1] = np.cos(angles), np.sin(angles)
    _write(tmp_path / "idx", vectors, commit_rows=150)
    monkeypatch.setattr("rsicrc.runtime.retriever.CHUNK_BYTES", 4 * 4 * 40)
    query = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    scores, rows = exact_search(open_index(tmp_path / "idx"), query, 7)
    assert rows[0].tolist() == list(range(399, 392, -1))
    np.testing.assert_allclose(scores[0], np.cos(angles[399:392:-1]), atol=1e-6)


def test_float16_cast_is_exact() -> None:
    """The ONNX Runtime Cast the search uses equals numpy's cast bit for bit on every finite float16
    (subnormals and -0 included), and its hand-encoded model is a valid ONNX model."""
    from rsicrc.runtime.retriever import cast_model, float16_caster

    halves = np.arange(65536, dtype=np.uint16).view(np.float16)
    halves = halves[np.isfinite(halves)].reshape(-1, 16)
    np.testing.assert_array_equal(float16_caster()(halves).view(np.uint32),
                                  halves.astype(np.float32).view(np.uint32))
    onnx = pytest.importorskip("onnx")
    onnx.checker.check_model(onnx.load_from_string(cast_model()))


def test_float16_and_float32_stores_agree(tmp_path: Path) -> None:
    vectors = _vectors(500, 32, seed=3)
    queries = _unit(vectors[[3, 99, 400]] + 0.3 * _vectors(3, 32, seed=4)).astype(np.float32)
    results = {}
    for dtype in ("float16", "float32"):
        _write(tmp_path / dtype, vectors, dtype)
        results[dtype] = exact_search(open_index(tmp_path / dtype), queries, 5)
    np.testing.assert_array_equal(results["float16"][1], results["float32"][1])
    assert results["float32"][1][:, 0].tolist() == [3, 99, 400]
    np.testing.assert_allclose(results["float16"][0], results["float32"][0], atol=2e-3)
    assert (tmp_path / "float16" / "shard-00000.npy").stat().st_size < 0.6 * (
        tmp_path / "float32" / "shard-00000.npy").stat().st_size


def test_faiss_backend_equals_exact(tmp_path: Path, levir_index: Path, model_dir: Path) -> None:
    pytest.importorskip("faiss")
    from rsicrc.runtime.retriever import FaissSearch

    vectors = _vectors(2000, 16, seed=5)
    _write(tmp_path / "idx", vectors, "float16", commit_rows=512)
    index = open_index(tmp_path / "idx")
    queries = _unit(_vectors(25, 16, seed=6)).astype(np.float32)  # >= 20 queries: FAISS's BLAS path too
    for q in (queries[:3], queries):
        exact_scores, exact_rows = exact_search(index, q, 10)
        scores, rows = FaissSearch(index).search(q, 10)
        np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
        np.testing.assert_array_equal(rows, exact_rows)  # random data: no ties
    exact = Retriever(levir_index, model_dir, CPU1).search(QUERIES, top_k=20)
    faiss = Retriever(levir_index, model_dir, CPU1, search="faiss").search(QUERIES, 20)
    assert [[h.id for h in q] for q in faiss] == [[h.id for h in q] for q in exact]
    np.testing.assert_allclose([[h.score for h in q] for q in faiss], [[h.score for h in q] for q in exact],
                               atol=1e-5)
    with pytest.raises(ConfigError, match="exact, quantized, faiss"):
        Retriever(levir_index, model_dir, CPU1, search="annoy")


def test_quantized_backend_equals_exact(levir_index: Path, model_dir: Path) -> None:
    """Through the Retriever (the model's real embeddings): the same hits, scores within 1e-6."""
    exact = Retriever(levir_index, model_dir, CPU1).search(QUERIES, top_k=20)
    quantized = Retriever(levir_index, model_dir, CPU1, search="quantized")
    for k in (1, 3, 20):
        found = quantized.search(QUERIES, top_k=k)
        assert [[h.id for h in q] for q in found] == [[h.id for h in q[:k]] for q in exact]
        np.testing.assert_allclose([[h.score for h in q] for q in found],
                                   [[h.score for h in q[:k]] for q in exact], rtol=0, atol=1e-6)


def _copy(index: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(index, tmp_path / "copy"))


def test_orphan_shard_is_ignored_then_removed(tmp_path: Path, levir_index: Path, model_dir: Path) -> None:
    folder = _copy(levir_index, tmp_path)
    for suffix in ("npy", "jsonl"):
        shutil.copy(folder / f"shard-00000.{suffix}", folder / f"shard-00002.{suffix}")
    (folder / ".shard-00003.npy.x1y2.tmp").write_bytes(b"partial")
    assert len(open_index(folder)) == 20
    assert len(Retriever(folder, model_dir, CPU1).search(QUERIES[:1], top_k=50)[0]) == 20
    header = read_header(folder)
    with IndexWriter.open(folder, header.model, header.dim) as writer:
        assert writer.count == 20
    assert sorted(p.name for p in folder.iterdir() if p.name != ".lock") == sorted(
        p.name for p in levir_index.iterdir() if p.name != ".lock")


@pytest.mark.parametrize("damage, message", [
    ("flip_npy", "sha256 differs"), ("truncate_npy", "bytes but index.json says"),
    ("edit_jsonl", "sha256 differs"), ("delete_npy", "missing"), ("garble_json", "cannot parse"),
    ("count_json", "count must equal"), ("version_json", "unsupported format_version"),
])
def test_damaged_index_is_a_clear_error(tmp_path: Path, levir_index: Path, damage: str, message: str) -> None:
    folder = _copy(levir_index, tmp_path)
    npy, jsonl, meta = folder / "shard-00001.npy", folder / "shard-00001.jsonl", folder / INDEX_FILE
    data = json.loads(meta.read_text())
    if damage == "flip_npy":
        raw = bytearray(npy.read_bytes())
        raw[-5] ^= 0x40
        npy.write_bytes(bytes(raw))
    elif damage == "truncate_npy":
        npy.write_bytes(npy.read_bytes()[:-16])
    elif damage == "edit_jsonl":
        raw = bytearray(jsonl.read_bytes())
        raw[raw.index(b'"id":"') + 6] ^= 0x20  # same size, one letter's case flipped
        jsonl.write_bytes(bytes(raw))
    elif damage == "delete_npy":
        npy.unlink()
    elif damage == "garble_json":
        meta.write_text(meta.read_text()[:40])
    elif damage == "count_json":
        meta.write_text(json.dumps({**data, "count": 21}))
    else:
        meta.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(IndexFolderError, match=message) as error:
        open_index(folder)
    assert "\n" not in str(error.value)
    if damage in ("flip_npy", "edit_jsonl"):
        assert str(npy if damage == "flip_npy" else jsonl) in str(error.value)
        assert len(open_index(folder, verify=False)) == 20  # the cheap check cannot see a flipped byte


def test_model_mismatch_is_a_clear_error(tmp_path: Path, levir_index: Path, model_dir: Path,
                                         dataset: Path) -> None:
    folder = _copy(levir_index, tmp_path)
    data = json.loads((folder / INDEX_FILE).read_text())
    data["model"]["image_encoder"] = "c" * 64  # as if another model had embedded the pairs
    (folder / INDEX_FILE).write_text(json.dumps(data))
    with pytest.raises(IndexFolderError, match="another model") as error:
        Retriever(folder, model_dir, CPU1)
    assert "cccccccccccc" in str(error.value) and str(model_dir.resolve()) in str(error.value)
    with pytest.raises(IndexFolderError, match="another model"):
        _run(dataset, folder, model_dir)


def test_model_folder_defaults(tmp_path: Path, levir_index: Path, model_dir: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """No --model: the folder recorded in the index, else $RSICRC_MODEL; the sha256 must match."""
    assert Retriever(levir_index, runtime=CPU1).encoder.model.path == model_dir.resolve()
    folder = _copy(levir_index, tmp_path)
    data = json.loads((folder / INDEX_FILE).read_text())
    data["model"]["model_dir"] = str(tmp_path / "moved")
    (folder / INDEX_FILE).write_text(json.dumps(data))
    monkeypatch.setenv("RSICRC_MODEL", str(model_dir))
    assert Retriever(folder, runtime=CPU1).encoder.model.path == model_dir
    monkeypatch.setenv("RSICRC_MODEL", str(tmp_path / "none"))
    with pytest.raises(ModelFolderError, match="no model at"):
        Retriever(folder, runtime=CPU1)


def test_queries_unknown_words_and_bad_arguments(levir_index: Path, model_dir: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    retriever = Retriever(levir_index, model_dir, CPU1)
    assert retriever.unknown_words(["a zebra crossing is built", "a road"]) == [["zebra", "crossing"], []]
    with caplog.at_level(logging.WARNING):
        hits = retriever.search(["a zebra crossing is built"], top_k=3)
    assert "zebra, crossing" in caplog.text and "<UNK>" in caplog.text
    assert len(hits[0]) == 3
    long_query = " ".join(["road"] * 30)
    assert any("more than 12 words" in w for w in retriever.warnings([long_query]))
    with pytest.raises(ConfigError, match="top-k must be an integer >= 1"):
        retriever.search(QUERIES, top_k=0)
    with pytest.raises(ConfigError, match="has no words"):
        retriever.search(["?!"])
    assert retriever.search([], top_k=2) == []
    vectors = retriever.embed(QUERIES)
    assert [[h.id for h in q] for q in retriever.search_vectors(vectors * 3.0, 4)] == [
        [h.id for h in q] for q in retriever.search(QUERIES, 4)]


def test_writer_refuses_bad_input(tmp_path: Path) -> None:
    vectors = _vectors(4, 8, seed=7)
    entries = [Entry(f"p{i}", f"/a/{i}", f"/b/{i}") for i in range(4)]
    with IndexWriter.open(tmp_path / "idx", FAKE_MODEL, 8) as writer:
        with pytest.raises(DataError, match="given twice"):
            writer.add([entries[0], entries[0]], vectors[:2])
        with pytest.raises(DataError, match="NaN"):
            writer.add(entries[:1], np.full((1, 8), np.nan))
        with pytest.raises(DataError, match=r"must be \[2, 8\]"):
            writer.add(entries[:2], vectors[:2, :4])
        with pytest.raises(DataError, match="given twice"):
            writer.pending([entries[1], entries[1]])
        with pytest.raises(IndexFolderError, match="another process is writing"):
            IndexWriter.open(tmp_path / "idx", FAKE_MODEL, 8)
        writer.add(entries, vectors)
        with pytest.raises(DataError, match="already in the index"):
            writer.add(entries[:1], vectors[:1])
    assert len(open_index(tmp_path / "idx")) == 4
    other = ModelIdentity("d" * 64, "b" * 64, "fp32", "/elsewhere")
    with pytest.raises(IndexFolderError, match="another model"):
        IndexWriter.open(tmp_path / "idx", other, 8)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(IndexFolderError, match="neither an index"):
        IndexWriter.open(tmp_path / "busy", FAKE_MODEL, 8)
    with pytest.raises(ConfigError, match="float16, float32"):
        IndexWriter.open(tmp_path / "new", FAKE_MODEL, 8, dtype="int8")
    with pytest.raises(IndexFolderError, match="not found"):
        open_index(tmp_path / "absent")
