"""`rsicrc index` and `rsicrc search` through the real typer app: results equal the Retriever's,
--json and --queries forms, the unknown-word warning on stderr, append, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_runtime import tiny_model_dir
from typer.testing import CliRunner

from conftest import assert_one_line_error
from rsicrc.cli.main import app
from rsicrc.runtime.index_format import INDEX_FILE
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.retriever import Retriever

runner = CliRunner()
QUERY = "two houses are built at the top"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rsicrc.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("search_cli") / "data", pairs=16, seed=3, size=64)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, dataset: Path, model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("search_cli_index") / "index"
    result = _invoke("index", dataset, "--out", out, "--model", model_dir, "--split", "train", "--quiet",
                     "--batch-size", "5")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"indexed 11 new pair(s), skipped 0 already indexed; {out} holds 11"
    return out


def _invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args] + (["--device", "cpu"] if args[0] in ("index", "search")
                                                         else []))




def test_search_equals_the_retriever(index_dir: Path, model_dir: Path) -> None:
    expected = Retriever(index_dir, model_dir, RuntimeOptions(device="cpu")).search([QUERY], top_k=4)[0]
    result = _invoke("search", QUERY, "--index", index_dir, "--model", model_dir, "--top-k", "4", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert json.loads(result.stdout) == [h.to_dict() for h in expected]

    table = _invoke("search", QUERY, "--index", index_dir, "--top-k", "4")  # model from the index
    assert table.exit_code == 0, table.output
    header, *rows = table.stdout.strip().splitlines()
    assert header.split() == ["rank", "score", "id", "before", "after"]
    assert [r.split() for r in rows] == [[str(h.rank), f"{h.score:.4f}", h.id, h.before, h.after]
                                         for h in expected]


def test_queries_file_is_one_batch_with_warnings(tmp_path: Path, index_dir: Path, model_dir: Path) -> None:
    queries = [QUERY, "a zebra crossing is built", "the scene is the same as before"]
    (tmp_path / "q.txt").write_text(f"{queries[0]}\n\n{queries[1]}\n  {queries[2]}  \n")
    result = _invoke("search", "--queries", tmp_path / "q.txt", "--index", index_dir, "--model", model_dir,
                     "--top-k", "3", "--json")
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)
    assert [a["query"] for a in answers] == queries
    single = json.loads(_invoke("search", queries[2], "--index", index_dir, "--model", model_dir,
                                "--top-k", "3", "--json").stdout)
    # Batched queries are padded to the longest: the same ranking, scores equal to float32 rounding.
    assert [h["id"] for h in answers[2]["hits"]] == [h["id"] for h in single]
    assert [h["score"] for h in answers[2]["hits"]] == pytest.approx([h["score"] for h in single], abs=1e-6)
    assert result.stderr.strip() == ("warning: query 2 has word(s) not in the model's vocabulary, read as "
                                     "<UNK>: zebra, crossing")
    table = _invoke("search", "--queries", tmp_path / "q.txt", "--index", index_dir, "--top-k", "2")
    assert table.exit_code == 0, table.output
    assert table.stdout.count("query ") == 3 and f"query 1: {QUERY}" in table.stdout
    one = _invoke("search", "zebra", "--index", index_dir, "--top-k", "2")
    assert "warning: the query has word(s) not in the model's vocabulary" in one.stderr


def test_index_again_appends_nothing_then_more(tmp_path: Path, dataset: Path, model_dir: Path) -> None:
    out = tmp_path / "idx"
    first = _invoke("index", dataset, "--out", out, "--model", model_dir, "--split", "val", "--quiet",
                    "--dtype", "float32", "--json")
    assert first.exit_code == 0, first.output
    count = json.loads(first.stdout)["added"]
    again = _invoke("index", dataset, "--out", out, "--model", model_dir, "--split", "val", "--quiet",
                    "--json")
    assert json.loads(again.stdout) == {"added": 0, "skipped": count, "total": count, "index": str(out)}
    more = _invoke("index", dataset, "--out", out, "--model", model_dir, "--quiet", "--json")
    assert more.exit_code == 0, more.output
    assert json.loads(more.stdout)["total"] == 16
    assert json.loads((out / INDEX_FILE).read_text())["dtype"] == "float32"


def test_index_errors_are_one_line(tmp_path: Path, dataset: Path, model_dir: Path, index_dir: Path) -> None:
    assert_one_line_error(_invoke("index", tmp_path / "none", "--out", tmp_path / "i", "--model", model_dir),
                           "pairs source not found")
    assert_one_line_error(_invoke("index", dataset, "--out", tmp_path / "i", "--model", model_dir,
                                   "--dtype", "int8"), "unknown dtype 'int8'", "float16, float32")
    assert_one_line_error(_invoke("index", dataset, "--out", tmp_path / "i", "--model", model_dir,
                                   "--batch-size", "0"), "batch size must be an integer >= 1")
    assert_one_line_error(_invoke("index", dataset, "--out", tmp_path / "i", "--model", model_dir,
                                   "--commit-every", "0"), "commit rows must be an integer >= 1")
    assert_one_line_error(_invoke("index", dataset, "--out", tmp_path / "i", "--model", tmp_path / "none"),
                           "no model at")
    (tmp_path / "file").write_text("x")
    assert_one_line_error(_invoke("index", dataset, "--out", tmp_path / "file", "--model", model_dir),
                           "is a file")
    assert not (tmp_path / "i").exists()


def test_search_errors_are_one_line(tmp_path: Path, index_dir: Path, model_dir: Path) -> None:
    base = ["--model", model_dir]
    assert_one_line_error(_invoke("search", QUERY, "--index", tmp_path / "missing", *base),
                           "index folder not found", "rsicrc index")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(_invoke("search", QUERY, "--index", tmp_path / "empty", *base),
                           "is not a retrieval index")
    for bad in ("0", "-3"):
        assert_one_line_error(_invoke("search", QUERY, "--index", index_dir, "--top-k", bad, *base),
                               "top-k must be an integer >= 1")
    assert_one_line_error(_invoke("search", "--index", index_dir, *base), "give either a QUERY or --queries")
    (tmp_path / "q.txt").write_text("\n \n")
    assert_one_line_error(_invoke("search", QUERY, "--queries", tmp_path / "q.txt", "--index", index_dir,
                                   *base), "not both")
    assert_one_line_error(_invoke("search", "--queries", tmp_path / "q.txt", "--index", index_dir, *base),
                           "holds no queries")
    assert_one_line_error(_invoke("search", "?!", "--index", index_dir, *base), "has no words")
    assert_one_line_error(_invoke("search", QUERY, "--index", index_dir, "--search", "annoy", *base),
                           "unknown search 'annoy'", "exact, quantized, faiss")
    assert_one_line_error(_invoke("search", QUERY, "--index", index_dir, "--engine", "tf", *base),
                           "unknown engine 'tf'", "onnxruntime, trt")
    old = _invoke("search", QUERY, "--index", index_dir, "--backend", "quantized", "--json", *base)
    assert old.exit_code == 0 and json.loads(old.stdout)  # last release's spelling, with a warning
    assert old.stderr.strip() == "warning: --backend is deprecated and will be removed in the next " \
                                 "release; use --search"
    damaged = Path(shutil.copytree(index_dir, tmp_path / "damaged"))
    npy = next(damaged.glob("shard-*.npy"))
    npy.write_bytes(npy.read_bytes()[:-8])
    assert_one_line_error(_invoke("search", QUERY, "--index", damaged, *base), str(npy), "damaged")
    other = Path(shutil.copytree(index_dir, tmp_path / "other"))
    data = json.loads((other / INDEX_FILE).read_text())
    data["model"]["text_encoder"] = "e" * 64
    (other / INDEX_FILE).write_text(json.dumps(data))
    assert_one_line_error(_invoke("search", QUERY, "--index", other, *base), "another model", "eeeeeeeeeeee")
