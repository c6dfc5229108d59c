"""The retrieval index's files, as data: what index.json says and what a shard's records hold
(DESIGN §7), parsed strictly and written atomically. Torch-free and model-free; the folder as a
whole (loading, searching, appending) is `rsicrc.runtime.index`.

    INDEX_DIR/index.json          what is committed (format_version 1, below)
    INDEX_DIR/shard-NNNNN.npy     embeddings [n, C], float16 or float32, rows L2-normalised
    INDEX_DIR/shard-NNNNN.jsonl   one line per row: {"id", "before", "after", "metadata"}
    INDEX_DIR/.lock               flock'ed by the one writer at a time

index.json: format_version; model (sha256 of the image_encoder and text_encoder graphs of the
precision used: the identity; that precision; the model folder, only a default for search); dim C;
dtype; count; shards [{name, rows, npy_bytes, npy_sha256, jsonl_bytes, jsonl_sha256}] in row order
(row r of the index is the shards' rows concatenated in that order).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rsicrc.checks import is_int
from rsicrc.errors import DataError, IndexFolderError, ModelFolderError
from rsicrc.files import write_atomic
from rsicrc.runtime.contract import IMAGE_ENCODER, TEXT_ENCODER
from rsicrc.runtime.manifest import Manifest

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
STORE_DTYPES: tuple[str, ...] = ("float16", "float32")
DEFAULT_DTYPE = "float16"  # half the memory; scores still accumulate in float32
SHARD_NAME = re.compile(r"shard-\d{5,}")
_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class ModelIdentity:
    """Which exported model made an index: the sha256 of its two retrieval graphs."""

    image_encoder: str  # sha256 of the image-encoder graph that embedded the pairs
    text_encoder: str  # sha256 of the text-encoder graph whose query embeddings match them
    precision: str  # the graphs' precision in the model folder (fp32, int8)
    model_dir: str  # absolute model folder when last written: a default for search, not identity

    def same_model(self, other: ModelIdentity) -> bool:
        return (self.image_encoder, self.text_encoder) == (other.image_encoder, other.text_encoder)

    def describe(self) -> str:
        return (f"image_encoder {self.image_encoder[:12]}, text_encoder {self.text_encoder[:12]} "
                f"({self.precision}, {self.model_dir})")


def model_identity(model_dir: Path, manifest: Manifest, precision: str) -> ModelIdentity:
    """The identity of a model folder's `precision` graphs, from its (verified) manifest."""
    files = manifest.graphs.get(precision, {})
    if IMAGE_ENCODER not in files or TEXT_ENCODER not in files:
        raise ModelFolderError(f"{model_dir} has no {precision} {IMAGE_ENCODER} and {TEXT_ENCODER} "
                               f"graphs; available precisions: {', '.join(sorted(manifest.graphs))}")
    return ModelIdentity(files[IMAGE_ENCODER].sha256, files[TEXT_ENCODER].sha256, precision,
                         str(Path(model_dir).resolve()))


@dataclass(frozen=True)
class ShardInfo:
    """One committed shard, as index.json lists it."""

    name: str  # "shard-NNNNN": the stem of its .npy and .jsonl files
    rows: int  # entries in the shard (>= 1)
    npy_bytes: int  # size of shard-NNNNN.npy
    npy_sha256: str  # hex digest of shard-NNNNN.npy
    jsonl_bytes: int  # size of shard-NNNNN.jsonl
    jsonl_sha256: str  # hex digest of shard-NNNNN.jsonl


@dataclass(frozen=True)
class IndexHeader:
    """index.json: what is committed and which model made it."""

    format_version: int  # FORMAT_VERSION
    model: ModelIdentity  # the model that made every row
    dim: int  # C, the embedding width
    dtype: str  # one of STORE_DTYPES
    count: int  # rows in all shards
    shards: tuple[ShardInfo, ...]  # in row order

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "model": vars(self.model), "dim": self.dim,
                "dtype": self.dtype, "count": self.count, "shards": [vars(s) for s in self.shards]}


@dataclass(frozen=True)
class Entry:
    """One pair's record: what a search hit shows besides its score."""

    id: str  # unique within the index
    before: str  # path of the earlier image (absolute when written by `rsicrc index`)
    after: str  # path of the later image
    metadata: Mapping[str, Any] = field(default_factory=dict)  # JSON object, e.g. split, changeflag


def where(path: Path, why: str) -> IndexFolderError:
    return IndexFolderError(f"{path}: {why}; the index is damaged: delete it and run `rsicrc index` again")


def _fields(d: Any, cls: type, where: str) -> dict[str, Any]:
    known = [f.name for f in fields(cls)]
    if not isinstance(d, Mapping) or set(d) != set(known):
        got = sorted(d) if isinstance(d, Mapping) else type(d).__name__
        raise IndexFolderError(f"{where}: expected the keys {', '.join(known)}; got {got}")
    return dict(d)


def _check(ok: bool, where: str, what: str, value: Any) -> None:
    if not ok:
        raise IndexFolderError(f"{where}: {what}, got {value!r}")


def _count(v: Any, low: int) -> bool:
    return is_int(v) and v >= low


def _digest(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and not set(v) - _HEX


def parse_header(data: Any, where: str) -> IndexHeader:
    """Strict parse of index.json; every problem is one IndexFolderError line naming `where`."""
    version = data.get("format_version") if isinstance(data, Mapping) else None
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise IndexFolderError(f"{where}: unsupported format_version {version!r}; this rsicrc reads version "
                               f"{FORMAT_VERSION}; build the index again with `rsicrc index`")
    d = _fields(data, IndexHeader, where)
    m = _fields(d["model"], ModelIdentity, f"{where}: model")
    for key in ("image_encoder", "text_encoder"):
        _check(_digest(m[key]), where, f"model.{key} must be a sha256 hex digest", m[key])
    for key in ("precision", "model_dir"):
        _check(isinstance(m[key], str), where, f"model.{key} must be a string", m[key])
    _check(_count(d["dim"], 1), where, "dim must be an integer >= 1", d["dim"])
    _check(d["dtype"] in STORE_DTYPES, where, f"dtype must be one of {', '.join(STORE_DTYPES)}", d["dtype"])
    _check(isinstance(d["shards"], list), where, "shards must be a list", type(d["shards"]).__name__)
    shards = []
    for i, entry in enumerate(d["shards"]):
        s = _fields(entry, ShardInfo, f"{where}: shards[{i}]")
        ok = (isinstance(s["name"], str) and bool(SHARD_NAME.fullmatch(s["name"]))
              and _count(s["rows"], 1) and _count(s["npy_bytes"], 0) and _count(s["jsonl_bytes"], 0)
              and _digest(s["npy_sha256"]) and _digest(s["jsonl_sha256"]))
        _check(ok, where, f"shards[{i}] must have a shard-NNNNN name, rows >= 1, sizes and sha256s", s)
        shards.append(ShardInfo(**s))
    names = [s.name for s in shards]
    _check(len(set(names)) == len(names), where, "shard names must be unique", names)
    total = sum(s.rows for s in shards)
    _check(d["count"] == total, where, f"count must equal the shards' rows ({total})", d["count"])
    return IndexHeader(FORMAT_VERSION, ModelIdentity(**m), d["dim"], d["dtype"], total, tuple(shards))


def read_header(folder: Path) -> IndexHeader:
    """INDEX_DIR/index.json, checked; a clear error for a folder that is not an index."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IndexFolderError(f"index folder not found: {folder} (build one with "
                               f"`rsicrc index PAIRS --out {folder}`)")
    path = folder / INDEX_FILE
    if not path.is_file():
        raise IndexFolderError(f"{folder} is not a retrieval index: {INDEX_FILE} is missing (build one with "
                               "`rsicrc index PAIRS --out FOLDER`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFolderError(f"{path}: cannot parse ({e})") from None
    return parse_header(data, str(path))


def parse_record(line: bytes, path: Path, local: int) -> Entry:
    try:
        d = json.loads(line)
        entry = Entry(d["id"], d["before"], d["after"], d["metadata"])
    except (ValueError, KeyError, TypeError):
        raise where(path, f"line {local + 1} is not a valid record") from None
    if not all(isinstance(v, str) for v in (entry.id, entry.before, entry.after)):
        raise where(path, f"line {local + 1} is not a valid record")
    return entry


def write_header(folder: Path, header: IndexHeader) -> None:
    """Replace index.json atomically and durably: the commit point of every change to an index."""
    write_atomic(Path(folder) / INDEX_FILE, json.dumps(header.to_dict(), indent=1, allow_nan=False) + "\n",
                 durable=True)


def record_line(e: Entry) -> bytes:
    if not all(isinstance(v, str) and v for v in (e.id, e.before, e.after)):
        raise DataError(f"id, before and after must be non-empty strings, got {e!r}")
    if not isinstance(e.metadata, Mapping):
        raise DataError(f"metadata of {e.id!r} must be a mapping, got {type(e.metadata).__name__}")
    try:
        text = json.dumps({"id": e.id, "before": e.before, "after": e.after, "metadata": dict(e.metadata)},
                          ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise DataError(f"metadata of {e.id!r} is not JSON: {err}") from None
    return text.encode("utf-8") + b"\n"
