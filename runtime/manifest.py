"""The exported model folder's manifest: what the graphs are, how to feed them, and proof they
are the files that were validated at export (DESIGN §6). Torch-free.

    MODEL_DIR/manifest.json       this record (format_version 2; version 1 is still read)
    MODEL_DIR/<graph>.onnx        one file per graph and precision, listed with its sha256

Reading is strict: unknown or missing keys, a contract that disagrees with the recorded dims,
a listed file that is missing or (with verify) whose sha256 changed all raise ModelFolderError.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rsicrc.errors import ModelFolderError, RsicrcError
from rsicrc.files import MANIFEST_FILE, write_atomic
from rsicrc.runtime.contract import GRAPHS, Dims, GraphSpec, contract, contract_from_dict, contract_to_dict
from rsicrc.runtime.preprocess import PreprocessSpec
from rsicrc.vocab import END, PAD, START, UNK, Vocabulary

FORMAT_VERSION = 2
# Format 2 added the decoder step's `cross_attention` output (attention heatmaps). Format 1 folders
# are read and caption as before; their contract is the one without that output.
READ_VERSIONS: tuple[int, ...] = (1, 2)
ATTENTION_SINCE = 2
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


ENGINE_DIR = "engines"  # MODEL_DIR/engines/<file>: TensorRT engines and the timing cache
ENGINE_PRECISIONS: tuple[str, ...] = ("fp32", "fp16")


@dataclass(frozen=True)
class EngineRecord:
    """One TensorRT engine in MODEL_DIR/engines/ and what it was built for (DESIGN §8)."""

    graph: str  # contract graph name
    precision: str  # one of ENGINE_PRECISIONS
    file: str  # plain file name inside MODEL_DIR/engines/
    sha256: str  # hex digest of the engine file
    key: str  # engine cache key: sha256 over the fields below (rsicrc.runtime.trt_backend.engine_key)
    tensorrt: str  # TensorRT version that built it
    gpu: str  # GPU name it was built on
    compute_capability: str  # "major.minor" of that GPU
    onnx_sha256: str  # sha256 of the fp32 ONNX graph it was built from
    fp16_mode: str  # "none" (fp32), "builder_flag" (TensorRT 10) or "strongly_typed" (fp16 ONNX)
    profile: dict[str, dict[str, list[int]]]  # input -> {"min", "opt", "max"} shapes

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> EngineRecord:
        _keys(d, [f.name for f in fields(cls)], where)
        text = {k: _str(d[k], f"{where}.{k}") for k in ("graph", "precision", "file", "tensorrt", "gpu",
                                                        "compute_capability", "fp16_mode")}
        if text["graph"] not in GRAPHS:
            raise ModelFolderError(f"{where}.graph: unknown graph {text['graph']!r}; "
                                   f"valid: {', '.join(GRAPHS)}")
        if text["precision"] not in ENGINE_PRECISIONS:
            raise ModelFolderError(f"{where}.precision must be one of {', '.join(ENGINE_PRECISIONS)}, "
                                   f"got {text['precision']!r}")
        digests = {k: _hex(d[k], f"{where}.{k}") for k in ("sha256", "key", "onnx_sha256")}
        if text["file"] in ("", ".", "..") or "/" in text["file"] or "\\" in text["file"]:
            raise ModelFolderError(f"{where}.file must be a plain file name, got {text['file']!r}")
        return cls(**text, **digests, profile=_profile(d["profile"], f"{where}.profile"))


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
    # How the int8 graphs were made and how far they are from fp32 (rsicrc.export.quantize);
    # present exactly when graphs["int8"] is. Optional in the file: folders without int8 omit it.
    int8: dict[str, Any] | None = None
    # TensorRT engines built for this folder (rsicrc build-engines), one per graph and precision.
    # Optional in the file: folders without engines omit it.
    engines: tuple[EngineRecord, ...] = ()

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
            **({"int8": self.int8} if self.int8 is not None else {}),
            **({"engines": [e.to_dict() for e in self.engines]} if self.engines else {}),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST_FILE) -> Manifest:
        """Strict parse; every problem is one ModelFolderError line naming `where`."""
        if not isinstance(d, Mapping):
            raise ModelFolderError(f"{where}: expected a JSON object")
        version = d.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version not in READ_VERSIONS:
            raise ModelFolderError(f"{where}: unsupported format_version {version!r}; this rsicrc reads "
                                   f"versions {', '.join(map(str, READ_VERSIONS))}; re-export the model "
                                   "with this version")
        _keys(d, [f.name for f in fields(cls)], where, optional=("int8", "engines"))
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
                int8=dict(_mapping(d["int8"], f"{where}: int8")) if "int8" in d else None,
                engines=_engines(d.get("engines", []), where),
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
        if self.contract != contract(self.dims, attention=self.format_version >= ATTENTION_SINCE):
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
        if ("int8" in self.graphs) != (self.int8 is not None):
            problems.append("int8 graphs and the int8 record must come together")
        if problems:
            raise ModelFolderError(f"{where}: {'; '.join(problems)} (tampered manifest); re-export the model")


def _keys(d: Any, known: list[str], where: str, optional: tuple[str, ...] = ()) -> None:
    if not isinstance(d, Mapping):
        raise ModelFolderError(f"{where}: expected a JSON object")
    unknown = sorted(str(k) for k in d if k not in known)
    missing = [k for k in known if k not in d and k not in optional]
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


def _hex(v: Any, where: str) -> str:
    if not isinstance(v, str) or len(v) != 64 or set(v) - set("0123456789abcdef"):
        raise ModelFolderError(f"{where} must be 64 lower-case hex digits, got {v!r}")
    return v


def _shape(v: Any, where: str) -> list[int]:
    if not isinstance(v, list) or not v:
        raise ModelFolderError(f"{where} must be a non-empty list of integers")
    return [_int(x, where) for x in v]


def _profile(v: Any, where: str) -> dict[str, dict[str, list[int]]]:
    """{input: {"min", "opt", "max"}}: equal-length shapes of ints >= 1 with min <= opt <= max."""
    out: dict[str, dict[str, list[int]]] = {}
    for name, shapes in _mapping(v, where).items():
        _keys(shapes, ["min", "opt", "max"], f"{where}.{name}")
        lo, opt, hi = (_shape(shapes[k], f"{where}.{name}.{k}") for k in ("min", "opt", "max"))
        if len(lo) != len(opt) or len(opt) != len(hi) or not all(
                1 <= a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise ModelFolderError(f"{where}.{name} must be equal-length shapes with 1 <= min <= opt <= max")
        out[name] = {"min": lo, "opt": opt, "max": hi}
    return out


def _engines(v: Any, where: str) -> tuple[EngineRecord, ...]:
    if not isinstance(v, list):
        raise ModelFolderError(f"{where}: engines must be a list")
    records = tuple(EngineRecord.from_dict(e, f"{where}: engines[{i}]") for i, e in enumerate(v))
    seen = [(r.graph, r.precision) for r in records]
    if len(set(seen)) != len(seen):
        raise ModelFolderError(f"{where}: engines list a graph and precision twice (tampered manifest)")
    return records


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
    text = json.dumps(manifest.to_dict(), indent=2, allow_nan=False) + "\n"
    write_atomic(Path(model_dir) / MANIFEST_FILE, text)


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
