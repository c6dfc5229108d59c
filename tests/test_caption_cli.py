"""`rsicrc caption` through the real typer app: happy paths, and one test per bad input, each
asserting a non-zero exit, ONE error line on stderr (no traceback) and no output file left."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_runtime import random_pairs, tiny_model_dir
from typer.testing import CliRunner

from conftest import assert_one_line_error
from rsicrc.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, Path]:
    """Three good pairs (A/, B/ by name) and a folder of bad files."""
    before, after = random_pairs(3, seed=2, size=48)
    for i in range(3):
        for side, arrays in (("A", before), ("B", after)):
            (tmp_path / side).mkdir(exist_ok=True)
            Image.fromarray(arrays[i]).save(tmp_path / side / f"p{i}.png")
    return {"dir": tmp_path, "before": tmp_path / "A" / "p0.png", "after": tmp_path / "B" / "p0.png"}


def _invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])




def _assert_no_output(folder: Path) -> None:
    left = [p.name for p in folder.iterdir() if p.suffix in (".jsonl", ".tmp") or ".tmp" in p.name]
    assert left == []


def _run_both(images: dict[str, Path], model: Path, bad: Path, *expected: str, side: str = "before") -> None:
    """The bad image as a single pair, then as the middle pair of a --pairs CSV run (batch size 1,
    so the first pair was already written to the temporary file when the bad one fails)."""
    good_b, good_a = images["before"], images["after"]
    pair = (bad, good_a) if side == "before" else (good_b, bad)
    assert_one_line_error(_invoke("caption", *pair, "--model", model, "--device", "cpu"), *expected)
    out_dir = images["dir"] / "out"
    out_dir.mkdir()
    csv_path = images["dir"] / "pairs.csv"
    csv_path.write_text(f"before,after,id\n{good_b},{good_a},good1\n{pair[0]},{pair[1]},bad\n"
                        f"{good_b},{good_a},good2\n")
    result = _invoke("caption", "--pairs", csv_path, "--out", out_dir / "caps.jsonl", "--model", model,
                     "--batch-size", "1", "--quiet", "--device", "cpu")
    assert_one_line_error(result, *expected)
    _assert_no_output(out_dir)


def test_single_pair_prints_the_caption(model_dir: Path, images: dict[str, Path]) -> None:
    result = _invoke("caption", images["before"], images["after"], "--model", model_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    from test_runtime import WORDS

    assert lines[0] and set(lines[0].split()) <= set(WORDS)


def test_single_pair_json_schema(model_dir: Path, images: dict[str, Path]) -> None:
    result = _invoke("caption", images["before"], images["after"], "--model", model_dir, "--json",
                     "--beam", "2", "--threads", "1", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"caption", "score", "tokens", "beams", "timing_ms"}
    assert isinstance(doc["caption"], str) and isinstance(doc["score"], float)
    assert all(isinstance(t, int) and t > 3 for t in doc["tokens"])
    assert len(doc["beams"]) == 2 and all(set(b) == {"caption", "score"} for b in doc["beams"])
    assert doc["beams"][0] == {"caption": doc["caption"], "score": doc["score"]}
    assert doc["beams"][0]["score"] >= doc["beams"][1]["score"]
    assert set(doc["timing_ms"]) >= {"load", "read", "preprocess", "encode", "decode", "total"}
    plain = _invoke("caption", images["before"], images["after"], "--model", model_dir, "--beam", "2")
    assert plain.stdout.strip() == doc["caption"]


def test_pairs_folder_to_jsonl(model_dir: Path, images: dict[str, Path]) -> None:
    out = images["dir"] / "caps.jsonl"
    result = _invoke("caption", "--pairs", images["dir"], "--out", out, "--model", model_dir,
                     "--batch-size", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "wrote 3 captions" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["p0.png", "p1.png", "p2.png"]
    assert all(set(r) == {"id", "before", "after", "caption", "score"} for r in rows)
    assert rows[0]["before"] == str(images["before"]) and rows[0]["after"] == str(images["after"])
    single = _invoke("caption", images["before"], images["after"], "--model", model_dir, "--json")
    assert json.loads(single.stdout)["caption"] == rows[0]["caption"]
    assert "captioning" in result.stderr  # the progress bar goes to stderr
    assert [p for p in images["dir"].iterdir() if p.name.endswith(".tmp")] == []  # renamed, not left


def test_help_explains_options_and_default_model() -> None:
    result = _invoke("caption", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for word in ("--pairs", "--beam", "--engine", "--device", "--bands", "--precision", "--threads", "--json",
                 "--batch-size", "--split", "--out", "RSICRC_MODEL", "rsicrc/model"):
        assert word in text, word
    assert "--backend" not in text  # deprecated: still accepted, no longer shown


def test_missing_file(model_dir: Path, images: dict[str, Path]) -> None:
    _run_both(images, model_dir, images["dir"] / "nowhere.png", "nowhere.png")


def test_non_image_file(model_dir: Path, images: dict[str, Path]) -> None:
    notes = images["dir"] / "notes.png"
    notes.write_text("these are my field notes, not an image\n" * 20)
    _run_both(images, model_dir, notes, "notes.png", "not a readable image")


def test_corrupted_image(model_dir: Path, images: dict[str, Path]) -> None:
    data = images["after"].read_bytes()
    cut = images["dir"] / "truncated.png"
    cut.write_bytes(data[: len(data) // 2])
    _run_both(images, model_dir, cut, "truncated.png", "corrupted or truncated", side="after")


def test_zero_size_image(model_dir: Path, images: dict[str, Path]) -> None:
    empty = images["dir"] / "empty.png"
    empty.write_bytes(b"")
    _run_both(images, model_dir, empty, "empty.png", "0 bytes")


def test_mismatched_sizes(model_dir: Path, images: dict[str, Path]) -> None:
    big = images["dir"] / "big.png"
    Image.fromarray(np.zeros((60, 50, 3), np.uint8)).save(big)
    _run_both(images, model_dir, big, "50x60", "48x48", "same size", side="after")


def test_unsupported_band_layout(model_dir: Path, images: dict[str, Path]) -> None:
    rasterio = pytest.importorskip("rasterio")
    two = images["dir"] / "two_bands.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(two, "w", driver="GTiff", width=48, height=48, count=2, dtype="uint16") as ds:
            ds.write(np.random.default_rng(0).integers(0, 4000, size=(2, 48, 48), dtype=np.uint16))
    _run_both(images, model_dir, two, "two_bands.tif", "2 bands", "--bands")


def _run_model_error(images: dict[str, Path], model: Path, *expected: str) -> None:
    assert_one_line_error(_invoke("caption", images["before"], images["after"], "--model", model), *expected)
    out = images["dir"] / "caps.jsonl"
    result = _invoke("caption", "--pairs", images["dir"], "--out", out, "--model", model, "--quiet")
    assert_one_line_error(result, *expected)
    _assert_no_output(images["dir"])


def test_missing_model_folder(images: dict[str, Path]) -> None:
    missing = images["dir"] / "no-model"
    _run_model_error(images, missing, f"no model at {missing}", "rsicrc export", "--model")


def test_tampered_model_folder(model_dir: Path, images: dict[str, Path], tmp_path_factory) -> None:
    from rsicrc.runtime.manifest import load_manifest

    copy = tmp_path_factory.mktemp("tampered") / "model"
    shutil.copytree(model_dir, copy)
    graph = copy / load_manifest(copy).graphs["fp32"]["decoder_step"].file
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    _run_model_error(images, copy, graph.name)


def test_missing_manifest(model_dir: Path, images: dict[str, Path], tmp_path_factory) -> None:
    copy = tmp_path_factory.mktemp("nomanifest") / "model"
    shutil.copytree(model_dir, copy)
    (copy / "manifest.json").unlink()
    _run_model_error(images, copy, "manifest.json")


def test_usage_errors_are_one_line(model_dir: Path, images: dict[str, Path]) -> None:
    b, a = images["before"], images["after"]
    assert_one_line_error(_invoke("caption", b, "--model", model_dir), "give BEFORE and AFTER")
    assert_one_line_error(_invoke("caption", "--pairs", images["dir"], "--model", model_dir), "--out")
    assert_one_line_error(_invoke("caption", b, a, "--model", model_dir, "--beam", "0"), "beam_size")
    assert_one_line_error(_invoke("caption", b, a, "--model", model_dir, "--device", "tpu"),
                           "auto, cpu, cuda")
    assert_one_line_error(_invoke("caption", b, a, "--model", model_dir, "--bands", "1,2"), "--bands")
    assert_one_line_error(_invoke("caption", b, a, "--model", model_dir, "--precision", "int4"),
                           "available precisions")
    assert_one_line_error(_invoke("caption", "--pairs", images["dir"], "--split", "test", "--out",
                                   images["dir"] / "x.jsonl", "--model", model_dir), "--split")
    _assert_no_output(images["dir"])


def test_last_release_spellings_still_work(images: dict[str, Path], model_dir: Path, tmp_path: Path) -> None:
    """`caption --backend` (now --engine) and `synth --pairs N` (now --count) keep working for one
    release: same result, one warning line on stderr naming the new spelling."""
    pair = [images["before"], images["after"], "--model", model_dir, "--device", "cpu"]
    new = _invoke("caption", *pair, "--engine", "onnxruntime")
    old = _invoke("caption", *pair, "--backend", "onnxruntime")
    assert new.exit_code == old.exit_code == 0 and new.stdout == old.stdout and new.stderr == ""
    warning = "warning: --backend is deprecated and will be removed in the next release; use --engine"
    assert old.stderr.strip() == warning
    synth = _invoke("synth", "--out", tmp_path / "data", "--pairs", "10", "--size", "64", "--quiet")
    assert synth.exit_code == 0 and "wrote 10 pairs" in synth.stdout
    assert "--pairs is deprecated" in synth.stderr and "use --count" in synth.stderr
    assert len(json.loads((tmp_path / "data" / "LevirCCcaptions.json").read_text())["images"]) == 10
    assert_one_line_error(_invoke("synth", "--out", tmp_path / "none"), "--count")


def test_heatmap_png_and_attention_json(model_dir: Path, images: dict[str, Path]) -> None:
    """--heatmap writes the figure of the caption's attention (before | after | sum | one panel per
    word); --json --attention adds the per-token rows it was drawn from."""
    from rsicrc.runtime.heatmap import caption_words, render_heatmap
    from rsicrc.runtime.images import read_pair
    from rsicrc.runtime.manifest import load_manifest
    from rsicrc.vocab import PAD, START

    png = images["dir"] / "heat.png"
    result = _invoke("caption", images["before"], images["after"], "--model", model_dir, "--device", "cpu",
                     "--heatmap", png, "--json", "--attention")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"wrote the heatmap to {png}"
    doc = json.loads(result.stdout)
    manifest = load_manifest(model_dir)
    attention = np.array(doc["attention"], dtype=np.float32)  # [T, N]
    assert attention.shape == (len(doc["tokens"]), manifest.dims.visual_tokens) and len(doc["tokens"]) >= 2
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-5)
    shown = caption_words(doc["tokens"], manifest.vocab, (PAD, START))  # the words the caption prints
    words = [w for _, w in shown]
    assert " ".join(words) == doc["caption"]
    figure = render_heatmap(*read_pair(images["before"], images["after"]), words,
                            attention[[i for i, _ in shown]], doc["caption"])
    assert [p.kind for p in figure.panels] == ["before", "after", "sum"] + ["word"] * len(words)
    np.testing.assert_array_equal(np.asarray(Image.open(png).convert("RGB")), figure.image)
    # without --attention the JSON stays as it was; the caption is the same with or without a heatmap
    plain = _invoke("caption", images["before"], images["after"], "--model", model_dir, "--json")
    assert "attention" not in json.loads(plain.stdout) and json.loads(plain.stdout)["tokens"] == doc["tokens"]
    text = _invoke("caption", images["before"], images["after"], "--model", model_dir, "--heatmap", png)
    assert text.exit_code == 0 and text.stdout.strip() == doc["caption"]
    assert sorted(p.name for p in images["dir"].iterdir() if p.suffix in (".png", ".tmp")) == ["heat.png"]


def test_heatmap_usage_errors(model_dir: Path, format1_model: Path, images: dict[str, Path]) -> None:
    """Bad --heatmap/--attention use and a format-1 model folder: one error line, no file."""
    b, a = images["before"], images["after"]
    out = images["dir"] / "heat.png"
    cases = [
        (("--heatmap", images["dir"] / "heat.jpg"), "ending in .png"),
        (("--heatmap", images["dir"] / "nowhere" / "heat.png"), "does not exist"),
        (("--attention",), "add --json"),
    ]
    for extra, message in cases:
        assert_one_line_error(_invoke("caption", b, a, "--model", model_dir, *extra), message)
    assert_one_line_error(_invoke("caption", "--pairs", images["dir"], "--out", images["dir"] / "x.jsonl",
                                   "--model", model_dir, "--heatmap", out), "for one pair")
    for extra in (("--heatmap", out), ("--json", "--attention")):
        err = assert_one_line_error(_invoke("caption", b, a, "--model", format1_model, *extra),
                                    "predates attention heatmaps", "re-export")
        assert str(format1_model) in err
    assert [p.name for p in images["dir"].iterdir() if p.is_file()] == []  # no figure, no temporary file
    ok = _invoke("caption", b, a, "--model", format1_model)  # the old folder still captions
    assert ok.exit_code == 0 and ok.stdout.strip()
