"""The model-folder manifest: round trip, strict parsing and tamper detection (torch-free)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rsicrc.errors import ModelFolderError
from rsicrc.runtime.contract import CROSS_ATTENTION, GRAPHS, Dims, contract
from rsicrc.runtime.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    SPECIAL_IDS,
    GraphFile,
    Manifest,
    default_model_dir,
    load_manifest,
    sha256_file,
    write_manifest,
)
from rsicrc.runtime.preprocess import PreprocessSpec
from rsicrc.vocab import SPECIAL_TOKENS

DIMS = Dims(image_size=64, d_model=32, num_heads=2, max_len=12, visual_tokens=4, vocab_size=7, layers=1)
WORDS = SPECIAL_TOKENS + ("a", "road", "built")


def make_folder(root: Path) -> tuple[Path, Manifest]:
    """A model folder with three small stand-in graph files and a consistent manifest."""
    root.mkdir(parents=True, exist_ok=True)
    graphs = contract(DIMS)
    files = {}
    for i, name in enumerate(GRAPHS):
        path = root / graphs[name].file
        path.write_bytes(bytes([i]) * (1000 + i))
        files[name] = GraphFile(path.name, sha256_file(path), 1e-7 * (i + 1), 2.0 + i)
    manifest = Manifest(
        format_version=FORMAT_VERSION, model_config={"name": "test", "d_model": 32}, vocab=WORDS,
        special_ids=dict(SPECIAL_IDS), max_len=DIMS.max_len, preprocess=PreprocessSpec(size=64), dims=DIMS,
        contract=graphs, graphs={"fp32": files}, default_precision="fp32", opset=18,
        exporter={"rsicrc": "0.1.0", "kind": "test"}, source={"checkpoint": "/x", "step": 3})
    write_manifest(root, manifest)
    return root, manifest


def edit(folder: Path, change: Any) -> None:
    """Apply `change(dict)` to the manifest JSON on disk."""
    path = folder / MANIFEST_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_round_trip(tmp_path: Path) -> None:
    folder, manifest = make_folder(tmp_path / "model")
    loaded = load_manifest(folder)
    assert loaded == manifest
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    assert loaded.vocabulary().words == WORDS
    assert loaded.contract == contract(DIMS)
    assert loaded.graphs["fp32"]["decoder_step"].max_abs_diff == pytest.approx(3e-7)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temp leftovers
    assert (folder / MANIFEST_FILE).stat().st_mode & 0o044 == 0o044  # readable by others


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000  # > 1 MiB block
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_changed_file_is_refused(tmp_path: Path) -> None:
    folder, _ = make_folder(tmp_path / "model")
    target = folder / "decoder_step.onnx"
    target.write_bytes(target.read_bytes()[:-1] + b"\xff")
    with pytest.raises(ModelFolderError, match=r"decoder_step\.onnx: sha256 differs from the manifest"):
        load_manifest(folder)
    assert load_manifest(folder, verify=False).opset == 18  # verify=False skips the digest only


def test_missing_file_is_refused(tmp_path: Path) -> None:
    folder, _ = make_folder(tmp_path / "model")
    (folder / "text_encoder.onnx").unlink()
    with pytest.raises(ModelFolderError, match=r"text_encoder\.onnx: listed in the manifest but missing"):
        load_manifest(folder, verify=False)


def test_missing_folder_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="model folder not found"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="manifest.json is missing"):
        load_manifest(tmp_path / "empty")
    folder, _ = make_folder(tmp_path / "model")
    (folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ModelFolderError, match="cannot parse"):
        load_manifest(folder)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(extra=1), "unknown key.*extra"),
    (lambda d: d.pop("opset"), "missing key.*opset"),
    (lambda d: d["graphs"]["fp32"]["image_encoder"].update(size=3), "unknown key.*size"),
    (lambda d: d.update(format_version=3), "unsupported format_version 3; this rsicrc reads versions 1, 2"),
    (lambda d: d.update(format_version=1), "contract does not match its dims"),  # format 1: no attention
    (lambda d: d.update(format_version="1"), "unsupported format_version '1'"),
    (lambda d: d.pop("format_version"), "unsupported format_version None"),
    (lambda d: d["dims"].update(vocab_size=8), "contract does not match its dims"),
    (lambda d: d["contract"]["decoder_step"]["outputs"][0].update(shape=["batch", 9]),
     "contract does not match its dims"),
    (lambda d: d["contract"]["text_encoder"]["inputs"][0].update(name="ids"),
     "contract does not match its dims"),
    (lambda d: d.update(vocab=d["vocab"][:-1]), "6 vocabulary words but dims.vocab_size 7"),
    (lambda d: d.update(max_len=13), "max_len 13 but dims.max_len 12"),
    (lambda d: d["preprocess"].update(size=96), "preprocess size 96"),
    (lambda d: d["preprocess"].update(resample="cubic"), "unknown resample filter"),
    (lambda d: d.update(vocab=["a", *d["vocab"][1:]]), "must start with"),
    (lambda d: d.update(special_ids={"pad": 1}), "special_ids"),
    (lambda d: d["graphs"]["fp32"].pop("text_encoder"), "must list image_encoder"),
    (lambda d: d.update(default_precision="int8"), "default_precision 'int8' has no graphs"),
    (lambda d: d["graphs"].update(bf16={}), "unknown precision 'bf16'"),
    (lambda d: d["graphs"]["fp32"]["image_encoder"].update(file="../x.onnx"), "plain file name"),
    (lambda d: d["graphs"]["fp32"]["image_encoder"].update(sha256="abc"), "64 lower-case hex"),
    (lambda d: d["graphs"]["fp32"]["image_encoder"].update(max_abs_diff=None), "finite number"),
    (lambda d: d.update(opset="18"), "opset must be an integer"),
])
def test_tampered_manifest_is_refused(tmp_path: Path, change: Any, message: str) -> None:
    folder, _ = make_folder(tmp_path / "model")
    edit(folder, change)
    with pytest.raises(ModelFolderError, match=message) as info:
        load_manifest(folder)
    assert "\n" not in str(info.value)


def test_format_1_is_read_with_its_own_contract(tmp_path: Path) -> None:
    """A format-1 folder (before the decoder step's cross_attention output) still loads; its
    contract is the one without the output, and claiming the new output in format 1 is refused."""
    folder, manifest = make_folder(tmp_path / "model")
    old = Manifest(**{**manifest.__dict__, "format_version": 1, "contract": contract(DIMS, attention=False)})
    write_manifest(folder, old)
    loaded = load_manifest(folder)
    assert loaded.format_version == 1 and loaded == old
    assert CROSS_ATTENTION not in loaded.contract["decoder_step"].output_names()
    assert CROSS_ATTENTION in manifest.contract["decoder_step"].output_names()  # format 2
    assert Manifest.from_dict(old.to_dict()).to_dict()["format_version"] == 1  # rewrites keep it
    edit(folder, lambda d: d.update(format_version=2))  # a format-2 manifest without the output
    with pytest.raises(ModelFolderError, match="contract does not match its dims"):
        load_manifest(folder)


def test_write_replaces_atomically(tmp_path: Path) -> None:
    folder, manifest = make_folder(tmp_path / "model")
    changed = Manifest(**{**manifest.__dict__, "opset": 19})
    write_manifest(folder, changed)
    assert load_manifest(folder).opset == 19
    assert sorted(p.name for p in folder.iterdir()) == sorted([MANIFEST_FILE, *(f"{g}.onnx" for g in GRAPHS)])


def test_default_model_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RSICRC_MODEL", str(tmp_path / "m"))
    assert default_model_dir() == tmp_path / "m"
    monkeypatch.delenv("RSICRC_MODEL")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_model_dir() == tmp_path / "xdg" / "rsicrc" / "model"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_model_dir() == tmp_path / "home" / ".local" / "share" / "rsicrc" / "model"


def test_manifest_module_is_torch_free() -> None:
    code = "import sys, rsicrc.runtime.manifest; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
