"""Loading a model folder fast without losing tamper evidence (runtime/load_cache.py): graphs
verified once per file identity, optimized once and loaded in optimized form with bit-identical
outputs; a changed graph is still refused; `rsicrc verify` always hashes everything."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import open_captioner, random_pairs
from rsicrc.errors import ModelFolderError
from rsicrc.runtime import model_folder as model_folder_module
from rsicrc.runtime.contract import IMAGE_ENCODER
from rsicrc.runtime.decoding import DecodingOptions
from rsicrc.runtime.load_cache import CACHE_NAME, ENV, RECORD_FILE, FolderCache
from rsicrc.runtime.manifest import load_manifest

runner = CliRunner()
OPTIONS = DecodingOptions(beam_size=3)


@pytest.fixture()
def model(tiny_model: Path, tmp_path: Path) -> Path:
    """A fresh copy of the tiny model folder (no cache yet)."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns(CACHE_NAME))
    return folder


def _captions(model: Path) -> tuple[list, np.ndarray]:
    captioner = open_captioner(model, device="cpu", threads=1)
    before, after = random_pairs(3, seed=12)
    results = captioner.caption_arrays(before, after, OPTIONS)
    return [(r.tokens, r.score, r.beams) for r in results], captioner.embed_images(before, after)


class _HashCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files: list[str] = []
        real = model_folder_module.sha256_file

        def counting(path: Path) -> str:
            self.files.append(Path(path).name)
            return real(path)

        monkeypatch.setattr(model_folder_module, "sha256_file", counting)


def test_warm_load_reads_optimized_graphs_and_gives_identical_outputs(
        model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "off")
    plain = _captions(model)  # no cache at all: every graph optimized at load, as before
    monkeypatch.delenv(ENV)
    hashes = _HashCounter(monkeypatch)
    cold = _captions(model)  # builds the cache
    assert sorted(hashes.files) == ["decoder_step.onnx", "image_encoder.onnx"]  # only what captioning opens
    cache = model / CACHE_NAME
    optimized = sorted(p.name for p in cache.glob("*.onnx"))
    assert len(optimized) == 2 and len(list(cache.glob("*.data"))) == 2
    hashes.files.clear()
    warm = _captions(model)
    assert hashes.files == []  # unchanged since verified: not read again
    for got in (cold, warm):
        assert got[0] == plain[0]  # tokens, scores and beams: bit for bit
        np.testing.assert_array_equal(got[1], plain[1])
    assert sorted(p.name for p in cache.glob("*.onnx")) == optimized  # reused, not rebuilt
    assert not list(cache.glob(".staging-*"))


def test_a_changed_graph_is_refused_after_a_warm_load(model: Path) -> None:
    _captions(model)
    graph = model / "image_encoder.onnx"
    stat = graph.stat()
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte, same size, and the mtime put back: the ctime still moves
    graph.write_bytes(bytes(data))
    os.utime(graph, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ModelFolderError, match=r"image_encoder\.onnx: sha256 differs from the manifest"):
        open_captioner(model, device="cpu")


def test_a_changed_cache_file_is_rebuilt_from_the_verified_graph(model: Path) -> None:
    first = _captions(model)
    data_files = sorted((model / CACHE_NAME).glob("*.data"))
    for data in data_files:
        data.write_bytes(b"\0" * data.stat().st_size)  # garbage of the right size
    again = _captions(model)
    assert again[0] == first[0]
    np.testing.assert_array_equal(again[1], first[1])
    assert all(d.read_bytes().strip(b"\0") for d in data_files)  # rewritten by the rebuild


def test_read_only_folder_caches_in_the_user_cache(model: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        # root writes anywhere: an unwritable folder cannot be simulated, so point the cache elsewhere
        monkeypatch.setenv(ENV, str(tmp_path / "elsewhere"))
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))
        model.chmod(0o555)
    try:
        first = _captions(model)
        second = _captions(model)
    finally:
        model.chmod(0o755)
    assert first[0] == second[0]
    assert not (model / CACHE_NAME).exists()
    records = list((tmp_path / "elsewhere").rglob(RECORD_FILE))
    assert len(records) == 1 and len(list(records[0].parent.glob("*.onnx"))) == 2
    assert FolderCache(model).root == records[0].parent


def test_verify_hashes_everything_and_names_what_differs(model: Path) -> None:
    from rsicrc.cli.main import app

    result = runner.invoke(app, ["verify", str(model), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    listed = load_manifest(model).graphs
    assert report["ok"] and len(report["files"]) == sum(len(f) for f in listed.values())
    graph = model / listed["fp32"][IMAGE_ENCODER].file
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    result = runner.invoke(app, ["verify", str(model)])
    assert result.exit_code == 1
    assert "DIFFERS fp32 image_encoder" in result.stdout and "1 differ: re-export the model" in result.stdout
