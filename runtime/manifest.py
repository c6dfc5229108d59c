"""The exported model folder's manifest: what the graphs are, how to feed them, and proof they
are the files that were validated at export (DESIGN §6). Torch-free.

    MODEL_DIR/manifest.json       this record (format_version 1)
    MODEL_DIR/<graph>.onnx        one file per graph and precision, listed with its sha256

Reading is strict: unknown or missing keys, a contract that disagrees with the recorded dims,
a listed file that is missing or (with verify) whose sha256 changed all raise ModelFolderError.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rsicrc.errors import ModelFolderError, RsicrcError
from rsicrc.runtime.contract import GRAPHS, Dims, GraphSpec, contract, contract_from_dict, contract_to_dict
from rsicrc.runtime.preprocess import PreprocessSpec
from rsicrc.vocab import END, PAD, START, UNK, Vocabulary

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SPECIAL_IDS: dict[str, int] = {"pad": PAD, "start": START, "unk": UNK, "end": END}
PRECISIONS: tuple[str, ...] = ("fp32", "int8", "fp16")


@dataclass(frozen=True)
class GraphFile:
    file: str  # file name inside the model folder
    sha256: str  # hex digest of the file
    max_abs_diff: float  # largest |ORT - PyTorch| over its outputs at export
    ref_max_abs: float  # largest |PyTorch reference value| over its outputs

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "max_abs_diff": self.max_abs_diff,
                "ref_max_abs": self.ref_max_abs}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> GraphFile:
        _keys(d, [f.name for f in fields(cls)], where)
        name, digest = d["file"], d["sha256"]
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ModelFolderError(f"{where}.file must be a plain file name, got {name!r}")
        if not isinstance(digest, str) or len(digest) != 64 or set(digest) - set("0123456789abcdef"):
            raise ModelFolderError(f"{where}.sha256 must be 64 lower-case hex digits, got {digest!r}")
        return cls(name, digest, _number(d["max_abs_diff"], f"{where}.max_abs_diff"),
                   _number(d["ref_max_abs"], f"{where}.ref_max_abs"))


@dataclass(frozen=True)
class Manifest:
    format_version: int  # FORMAT_VERSION at write time
    model_config: dict[str, Any]  # rsicrc.config.ModelConfig as a dict (dataclasses.asdict)
    vocab: tuple[str, ...]  # words by id
    special_ids: dict[str, int]  # {"pad": 0, "start": 1, "unk": 2, "end": 3}
    max_len: int  # token positions incl. START and END (= self-attention cache slots)
    preprocess: PreprocessSpec  # image -> model input
    dims: Dims  # the sizes the graph contract depends on
    contract: dict[str, GraphSpec]  # contract(dims), recorded so a reader can check the files
    graphs: dict[str, dict[str, GraphFile]]  # precision -> graph name -> file
    default_precision: str  # "fp32"
    opset: int  # ONNX opset of the graphs
    exporter: dict[str, str]  # versions: rsicrc, torch, onnx, onnxruntime, exporter kind
    source: dict[str, Any]  # checkpoint path, training step / validation loss

    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.vocab)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model_config": self.model_config,
            "vocab": list(self.vocab),
            "special_ids": dict(self.special_ids),
            "max_len": self.max_len,
            "preprocess": self.preprocess.to_dict(),
            "dims": self.dims.to_dict(),
            "contract": contract_to_dict(self.contract),
            "graphs": {p: {g: f.to_dict() for g, f in files.items()} for p, files in self.graphs.items()},
            "default_precision": self.default_precision,
            "opset": self.opset,
            "exporter": dict(self.exporter),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST_FILE) -> Manifest:
        """Strict parse; every problem is one ModelFolderError line naming `where`."""
        if not isinstance(d, Mapping):
            raise ModelFolderError(f"{where}: expected a JSON object")
        version = d.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
            raise ModelFolderError(f"{where}: unsupported format_version {version!r}; this rsicrc reads "
                                   f"version {FORMAT_VERSION}; re-export the model with this version")
        _keys(d, [f.name for f in fields(cls)], where)
        try:
            manifest = cls(
                format_version=version,
                model_config=_mapping(d["model_config"], f"{where}: model_config"),
                vocab=tuple(_str_list(d["vocab"], f"{where}: vocab")),
                special_ids=_special_ids(d["special_ids"], where),
                max_len=_int(d["max_len"], f"{where}: max_len"),
                preprocess=PreprocessSpec.from_dict(_mapping(d["preprocess"], f"{where}: preprocess")),
                dims=Dims.from_dict(_mapping(d["dims"], f"{where}: dims")),
                contract=contract_from_dict(_mapping(d["contract"], f"{where}: contract")),
                graphs=_graphs(d["graphs"], where),
                default_precision=_str(d["default_precision"], f"{where}: default_precision"),
                opset=_int(d["opset"], f"{where}: opset"),
                exporter={k: _str(v, f"{where}: exporter.{k}")
                          for k, v in _mapping(d["exporter"], f"{where}: exporter").items()},
                source=dict(_mapping(d["source"], f"{where}: source")),
            )
        except ModelFolderError:
            raise
        except RsicrcError as e:  # ConfigError, VocabularyError from the nested parsers
            raise ModelFolderError(f"{where}: {e}") from None
        manifest.check_consistent(where)
        return manifest

    def check_consistent(self, where: str = MANIFEST_FILE) -> None:
        """Cross-field checks: a manifest whose parts disagree has been edited by hand."""
        try:
            vocab = self.vocabulary()
        except RsicrcError as e:
            raise ModelFolderError(f"{where}: {e}") from None
        problems = []
        if self.contract != contract(self.dims):
            problems.append("the graph contract does not match its dims")
        if len(vocab) != self.dims.vocab_size:
            problems.append(f"{len(vocab)} vocabulary words but dims.vocab_size {self.dims.vocab_size}")
        if self.max_len != self.dims.max_len:
            problems.append(f"max_len {self.max_len} but dims.max_len {self.dims.max_len}")
        if self.preprocess.size != self.dims.image_size:
            problems.append(f"preprocess size {self.preprocess.size} but dims.image_size "
                            f"{self.dims.image_size}")
        if self.default_precision not in self.graphs:
            problems.append(f"default_precision {self.default_precision!r} has no graphs "
                            f"(listed: {', '.join(self.graphs) or 'none'})")
        elif set(self.graphs[self.default_precision]) != set(GRAPHS):
            problems.append(f"default precision {self.default_precision!r} must list {', '.join(GRAPHS)}")
        if problems:
            raise ModelFolderError(f"{where}: {'; '.join(problems)} (tampered manifest); re-export the model")


def _keys(d: Any, known: list[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise ModelFolderError(f"{where}: expected a JSON object")
    unknown = sorted(str(k) for k in d if k not in known)
    missing = [k for k in known if k not in d]
    if unknown or missing:
        raise ModelFolderError(f"{where}: unknown key(s) {', '.join(unknown) or 'none'}; missing key(s) "
                               f"{', '.join(missing) or 'none'}; valid keys: {', '.join(known)}")


def _mapping(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise ModelFolderError(f"{where} must be a JSON object")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise ModelFolderError(f"{where} must be a string, got {v!r}")
    return v


def _str_list(v: Any, where: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ModelFolderError(f"{where} must be a list of strings")
    return v


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ModelFolderError(f"{where} must be an integer, got {v!r}")
    return v


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ModelFolderError(f"{where} must be a finite number >= 0, got {v!r}")
    return float(v)


def _special_ids(v: Any, where: str) -> dict[str, int]:
    if v != SPECIAL_IDS:
        raise ModelFolderError(f"{where}: special_ids must be {SPECIAL_IDS}, got {v!r}")
    return dict(SPECIAL_IDS)


def _graphs(v: Any, where: str) -> dict[str, dict[str, GraphFile]]:
    out: dict[str, dict[str, GraphFile]] = {}
    for precision, files in _mapping(v, f"{where}: graphs").items():
        if precision not in PRECISIONS:
            raise ModelFolderError(f"{where}: unknown precision {precision!r}; "
                                   f"valid: {', '.join(PRECISIONS)}")
        out[precision] = {}
        for graph, entry in _mapping(files, f"{where}: graphs.{precision}").items():
            if graph not in GRAPHS:
                raise ModelFolderError(f"{where}: unknown graph {graph!r}; valid: {', '.join(GRAPHS)}")
            out[precision][graph] = GraphFile.from_dict(entry, f"{where}: graphs.{precision}.{graph}")
    return out


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(model_dir: Path, manifest: Manifest) -> None:
    """Write MODEL_DIR/manifest.json atomically (temp file in the folder, then rename)."""
    model_dir = Path(model_dir)
    text = json.dumps(manifest.to_dict(), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=f".{MANIFEST_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the manifest is as readable as the graphs
        os.replace(tmp, model_dir / MANIFEST_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_manifest(model_dir: Path, verify: bool = True) -> Manifest:
    """Read and check an exported model folder's manifest; with `verify`, also every listed
    file's sha256 (the files are the ones validated at export). Raises ModelFolderError."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFolderError(f"model folder not found: {model_dir} (create one with `rsicrc export`)")
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        raise ModelFolderError(f"{model_dir} is not an exported model folder: {MANIFEST_FILE} is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path}: cannot parse ({e})") from None
    manifest = Manifest.from_dict(data, str(path))
    for files in manifest.graphs.values():
        for entry in files.values():
            file = model_dir / entry.file
            if not file.is_file():
                raise ModelFolderError(f"{file}: listed in the manifest but missing; re-export the model")
            if verify and sha256_file(file) != entry.sha256:
                raise ModelFolderError(f"{file}: sha256 differs from the manifest (file changed after "
                                       "export); re-export the model")
    return manifest


def default_model_dir() -> Path:
    """$RSICRC_MODEL if set, else $XDG_DATA_HOME/rsicrc/model (default ~/.local/share/rsicrc/model)."""
    explicit = os.environ.get("RSICRC_MODEL")
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "rsicrc" / "model"
