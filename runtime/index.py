"""The retrieval index on disk: L2-normalised visual embeddings of an archive of before/after pairs
with their ids, paths and metadata (DESIGN §7). Model-free and torch-free: writing and loading
only; `rsicrc.runtime.retriever` fills an index with a model and searches it.

    INDEX_DIR/index.json          what is committed (format_version 1, below)
    INDEX_DIR/shard-NNNNN.npy     embeddings [n, C], float16 or float32, rows L2-normalised
    INDEX_DIR/shard-NNNNN.jsonl   one line per row: {"id", "before", "after", "metadata"}
    INDEX_DIR/.lock               flock'ed by the one writer at a time

index.json: format_version; model (sha256 of the image_encoder and text_encoder graphs of the
precision used: the identity; that precision; the model folder, only a default for search); dim C;
dtype; count; shards [{name, rows, npy_bytes, npy_sha256, jsonl_bytes, jsonl_sha256}] in row order
(row r of the index is the shards' rows concatenated in that order).

Commit protocol. A commit writes the two shard files under temporary names, fsyncs and renames
them, and only then replaces index.json (temporary file, fsync, os.replace, fsync of the folder).
index.json is the single source of truth: a crash before its replace leaves shard files it does
not list (orphans), which readers never open and the next writer deletes. Appending only adds
shards, so a reader that loaded index.json earlier still finds every file it lists. The writer
commits every `commit_rows` rows, so an interrupted run loses at most its last partial commit;
`IndexWriter.pending` then skips the committed ids (an id committed with other paths is an error).

Loading checks every listed shard: both file sizes, the .npy header (dtype, [rows, C]) and the
line count always, the sha256 of both files unless verify=False (one read of the index, which
also warms the page cache for the first search). Problems raise IndexFolderError naming the file.
The .npy files are memory-mapped; the .jsonl files are only indexed by line offsets and a hit's
record is read when asked for (1,000,000 entries cost 8 MB of offsets, not a million dicts).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rsicrc.errors import ConfigError, DataError, IndexFolderError, ModelFolderError
from rsicrc.runtime.contract import IMAGE_ENCODER, TEXT_ENCODER
from rsicrc.runtime.manifest import Manifest, sha256_file

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
STORE_DTYPES: tuple[str, ...] = ("float16", "float32")
DEFAULT_DTYPE = "float16"  # half the memory; scores still accumulate in float32
DEFAULT_COMMIT_ROWS = 1024  # rows per shard when indexing with a model (progress kept on a crash)
_READ_BLOCK = 16 << 20
_SHARD_FILE = re.compile(r"shard-\d{5,}\.(npy|jsonl)")
_HEX = set("0123456789abcdef")
log = logging.getLogger(__name__)


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


def _where(path: Path, why: str) -> IndexFolderError:
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
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


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
        ok = (isinstance(s["name"], str) and bool(re.fullmatch(r"shard-\d{5,}", s["name"]))
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


def _scan_lines(path: Path, verify: bool) -> tuple[str | None, np.ndarray]:
    """(sha256 if verify, line start offsets [n + 1]) of a JSON Lines file, in one read."""
    import hashlib

    digest = hashlib.sha256() if verify else None
    ends, position = [np.zeros(1, np.int64)], 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_READ_BLOCK), b""):
            if digest is not None:
                digest.update(block)
            ends.append(np.flatnonzero(np.frombuffer(block, np.uint8) == 10).astype(np.int64) + position + 1)
            position += len(block)
    offsets = np.concatenate(ends)
    if offsets[-1] != position:
        raise _where(path, "the last line is incomplete")
    return (digest.hexdigest() if digest is not None else None), offsets


def _load_shard(folder: Path, header: IndexHeader, shard: ShardInfo, verify: bool
                ) -> tuple[np.ndarray, np.ndarray]:
    npy, jsonl = folder / f"{shard.name}.npy", folder / f"{shard.name}.jsonl"
    for path, size in ((npy, shard.npy_bytes), (jsonl, shard.jsonl_bytes)):
        if not path.is_file():
            raise _where(path, f"listed in {INDEX_FILE} but missing")
        actual = path.stat().st_size
        if actual != size:
            raise _where(path, f"{actual} bytes but {INDEX_FILE} says {size} (truncated or overwritten)")
    if verify and sha256_file(npy) != shard.npy_sha256:
        raise _where(npy, f"sha256 differs from {INDEX_FILE} (the file changed after indexing)")
    digest, offsets = _scan_lines(jsonl, verify)
    if verify and digest != shard.jsonl_sha256:
        raise _where(jsonl, f"sha256 differs from {INDEX_FILE} (the file changed after indexing)")
    if len(offsets) - 1 != shard.rows:
        raise _where(jsonl, f"{len(offsets) - 1} lines but {INDEX_FILE} says {shard.rows} rows")
    try:
        array = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _where(npy, f"not a readable .npy file ({' '.join(str(e).split())[:120]})") from None
    expected = (np.dtype(header.dtype), (shard.rows, header.dim))
    if (array.dtype, array.shape) != expected or not array.flags.c_contiguous:
        raise _where(npy, f"holds {array.dtype} {list(array.shape)}, expected {header.dtype} "
                          f"{[shard.rows, header.dim]}")
    return array, offsets


class StoredIndex:
    """A loaded index: memory-mapped embeddings, record offsets, exact search. See `open_index`."""

    def __init__(self, folder: Path, header: IndexHeader, vectors: list[np.ndarray],
                 offsets: list[np.ndarray]) -> None:
        self.folder = Path(folder)
        self.header = header
        self._vectors = vectors  # per shard, [rows, C] memory maps
        self._offsets = offsets  # per shard, [rows + 1] line starts in its .jsonl
        self._starts = np.cumsum([0] + [s.rows for s in header.shards])  # [S + 1] first row of each

    def __len__(self) -> int:
        return self.header.count

    @property
    def dim(self) -> int:
        return self.header.dim

    @property
    def model(self) -> ModelIdentity:
        return self.header.model

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, stored [rows, C] array) of each shard, in row order."""
        yield from zip((int(s) for s in self._starts), self._vectors, strict=False)

    def _by_shard(self, rows: Sequence[int] | np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(shard, positions in `rows`, rows local to the shard) of global rows, shard by shard."""
        rows = np.asarray(rows, dtype=np.int64)  # [r]
        if len(rows) and (rows.min() < 0 or rows.max() >= self.header.count):
            raise DataError(f"row out of range 0..{self.header.count - 1}: {rows.tolist()}")
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1  # [r]
        for s in np.unique(shard_of):
            at = np.flatnonzero(shard_of == s)  # [r_s]
            yield int(s), at, rows[at] - self._starts[s]

    def vectors(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored embeddings [len(rows), C] (stored dtype) of global rows, in the order given."""
        out = np.empty((len(rows), self.dim), dtype=self.header.dtype)
        for s, at, local in self._by_shard(rows):
            out[at] = self._vectors[s][local]
        return out

    def records(self, rows: Sequence[int] | np.ndarray) -> list[Entry]:
        """The stored records of global rows, in the order given."""
        out: list[Entry | None] = [None] * len(rows)
        for s, at, local in self._by_shard(rows):
            path = self.folder / f"{self.header.shards[s].name}.jsonl"
            offsets = self._offsets[s]
            with open(path, "rb") as f:
                for i, row in zip(at.tolist(), local.tolist(), strict=True):
                    f.seek(int(offsets[row]))
                    out[i] = _parse_record(f.read(int(offsets[row + 1] - offsets[row])), path, row)
        return out  # type: ignore[return-value]  # every slot was filled above

    def ids(self) -> Iterator[str]:
        """Every stored id in row order (parses every record: for writers, not for search)."""
        for shard in self.header.shards:
            path = self.folder / f"{shard.name}.jsonl"
            with open(path, "rb") as f:
                for local, line in enumerate(f):
                    yield _parse_record(line, path, local).id

    def extended(self, shard: ShardInfo, header: IndexHeader) -> StoredIndex:
        """This index plus one new shard that `header` lists last (loaded without the sha256 pass)."""
        array, offsets = _load_shard(self.folder, header, shard, verify=False)
        return StoredIndex(self.folder, header, [*self._vectors, array], [*self._offsets, offsets])


def _parse_record(line: bytes, path: Path, local: int) -> Entry:
    try:
        d = json.loads(line)
        entry = Entry(d["id"], d["before"], d["after"], d["metadata"])
    except (ValueError, KeyError, TypeError):
        raise _where(path, f"line {local + 1} is not a valid record") from None
    if not all(isinstance(v, str) for v in (entry.id, entry.before, entry.after)):
        raise _where(path, f"line {local + 1} is not a valid record")
    return entry


def open_index(folder: Path, verify: bool = True) -> StoredIndex:
    """Load an index folder for search (see the module docstring for what is checked)."""
    folder = Path(folder)
    header = read_header(folder)
    loaded = [_load_shard(folder, header, shard, verify) for shard in header.shards]
    return StoredIndex(folder, header, [v for v, _ in loaded], [o for _, o in loaded])


def normalize_rows(embeddings: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (an all-zero row stays zero)."""
    v = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through a temporary file in its folder: fsync, then rename over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an index is as readable as its images
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_header(folder: Path, header: IndexHeader) -> None:
    """Replace index.json atomically: the commit point of every change to an index."""
    text = json.dumps(header.to_dict(), indent=1, allow_nan=False) + "\n"
    write_atomic(Path(folder) / INDEX_FILE, lambda f: f.write(text.encode("utf-8")))
    _fsync_dir(Path(folder))


def remove_orphans(folder: Path, header: IndexHeader) -> list[str]:
    """Delete shard files index.json does not list and temporary files of interrupted writes."""
    listed = {s.name for s in header.shards}
    removed = []
    for path in Path(folder).iterdir():
        orphan = bool(_SHARD_FILE.fullmatch(path.name)) and path.stem not in listed
        partial = path.name.endswith(".tmp") and path.name.startswith((".shard-", f".{INDEX_FILE}."))
        if (orphan or partial) and path.is_file():
            path.unlink()
            removed.append(path.name)
    if removed:
        log.info("removed %d file(s) of an interrupted write from %s", len(removed), folder)
    return removed


def _lock(folder: Path) -> int | None:
    """An exclusive flock on INDEX_DIR/.lock (None where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise IndexFolderError(f"{folder}: another process is writing to this index; wait for it to "
                               "finish") from None
    return fd


class IndexWriter:
    """Appends embeddings to an index folder, one shard per commit (see the module docstring).

    Use `IndexWriter.open(...)` as a context manager: it commits what is buffered on exit, also
    when the block fails (the buffered rows are complete), and releases the folder's lock.
    """

    def __init__(self, folder: Path, header: IndexHeader, stored: StoredIndex, lock: int | None,
                 model: ModelIdentity, commit_rows: int) -> None:
        self.folder, self.header, self.commit_rows = folder, header, commit_rows
        self._stored, self._lock, self._model = stored, lock, model
        self._rows = {ident: row for row, ident in enumerate(stored.ids())}  # id -> global row
        self._vectors: list[np.ndarray] = []  # buffered rows, already normalised and cast
        self._lines: list[bytes] = []  # their records
        self._failed = False

    @classmethod
    def open(cls, folder: Path, model: ModelIdentity, dim: int, dtype: str | None = None,
             commit_rows: int = DEFAULT_COMMIT_ROWS, verify: bool = True) -> IndexWriter:
        """Create an index folder (new or empty) or open one to append; `dtype` None keeps the
        existing one (DEFAULT_DTYPE for a new index). The model must be the index's model."""
        if dtype is not None and dtype not in STORE_DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; choose one of: {', '.join(STORE_DTYPES)}")
        for name, value in (("commit rows", commit_rows), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        folder = Path(folder)
        _check_new_or_index(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise IndexFolderError(f"cannot create the index folder {folder}: {e}") from None
        lock = _lock(folder)
        try:
            if not (folder / INDEX_FILE).is_file():  # decided under the lock: never two creators
                _check_new_or_index(folder)
                header = IndexHeader(FORMAT_VERSION, model, dim, dtype or DEFAULT_DTYPE, 0, ())
                write_header(folder, header)
            else:
                header = read_header(folder)
                _check_same(folder, header, model, dim, dtype)
            remove_orphans(folder, header)
            stored = open_index(folder, verify)
            return cls(folder, header, stored, lock, model, commit_rows)
        except BaseException:
            _unlock(lock)
            raise

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if kind is None or not self._failed:
                self.commit()
        finally:
            self.close()

    def close(self) -> None:
        """Release the lock; what was not committed is dropped."""
        _unlock(self._lock)
        self._lock = None

    @property
    def count(self) -> int:
        """Committed and buffered rows."""
        return len(self._rows)

    def pending(self, entries: Sequence[Entry]) -> list[Entry]:
        """The entries whose id is not in the index yet. Raises DataError for an id given twice, or
        one already in the index with other paths (ids must stay unique across appends)."""
        seen: set[str] = set()
        for e in entries:
            if e.id in seen:
                raise DataError(f"id {e.id!r} is given twice; each pair needs its own id")
            seen.add(e.id)
        done = [(e, self._rows[e.id]) for e in entries if e.id in self._rows]
        stored = [(e, row) for e, row in done if row < self.header.count]  # committed, not buffered
        records = self._stored.records([row for _, row in stored])
        for (e, _), old in zip(stored, records, strict=True):
            if (old.before, old.after) != (e.before, e.after):
                raise DataError(f"id {e.id!r} is already in the index for other images ({old.before}, "
                                f"{old.after}); ids must be unique across appends (use a CSV with an id "
                                "column)")
        return [e for e in entries if e.id not in self._rows]

    def add(self, entries: Sequence[Entry], embeddings: np.ndarray) -> None:
        """Buffer rows (normalised here) and commit once `commit_rows` are buffered."""
        v = np.asarray(embeddings)
        if v.ndim != 2 or v.shape != (len(entries), self.header.dim):
            raise DataError(f"embeddings must be [{len(entries)}, {self.header.dim}], got {list(v.shape)}")
        if not np.isfinite(v).all():
            bad = [entries[i].id for i in np.flatnonzero(~np.isfinite(v).all(axis=1))]
            raise DataError(f"the embeddings of {', '.join(bad[:3])} contain NaN or infinity")
        ids = [e.id for e in entries]
        if len(set(ids)) != len(ids) or any(i in self._rows for i in ids):
            again = sorted({i for i in ids if ids.count(i) > 1 or i in self._rows})
            raise DataError(f"id(s) already in the index or given twice: {', '.join(again[:3])}")
        lines = [_record_line(e) for e in entries]
        self._vectors.append(normalize_rows(v).astype(self.header.dtype))
        self._lines.extend(lines)
        for ident in ids:
            self._rows[ident] = len(self._rows)
        if len(self._lines) >= self.commit_rows:
            self.commit()

    def commit(self) -> None:
        """Write the buffered rows as one shard, then index.json (no-op when nothing is buffered)."""
        if not self._lines:
            return
        if self._lock is None:
            raise IndexFolderError(f"{self.folder}: this writer is closed")
        try:
            header = self._commit()
        except BaseException:
            self._failed = True
            raise
        self.header = header
        self._stored = self._stored.extended(header.shards[-1], header)
        self._vectors, self._lines = [], []

    def _commit(self) -> IndexHeader:
        numbers = [int(s.name.split("-")[1]) for s in self.header.shards]
        name = f"shard-{max(numbers, default=-1) + 1:05d}"
        array = np.concatenate(self._vectors)
        data = b"".join(self._lines)
        npy, jsonl = self.folder / f"{name}.npy", self.folder / f"{name}.jsonl"
        write_atomic(npy, lambda f: np.save(f, array, allow_pickle=False))
        write_atomic(jsonl, lambda f: f.write(data))
        shard = ShardInfo(name, len(self._lines), npy.stat().st_size, sha256_file(npy),
                          len(data), sha256_file(jsonl))
        header = replace(self.header, model=self._model, count=self.header.count + shard.rows,
                         shards=(*self.header.shards, shard))
        write_header(self.folder, header)
        return header


def _record_line(e: Entry) -> bytes:
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


def _check_new_or_index(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise IndexFolderError(f"{folder} is a file; give a folder for the index")
    if (folder.is_dir() and not (folder / INDEX_FILE).is_file()
            and any(not p.name.startswith(".") for p in folder.iterdir())):
        raise IndexFolderError(f"{folder} is neither an index ({INDEX_FILE} is missing) nor empty; "
                               "give a new or empty folder")


def _check_same(folder: Path, header: IndexHeader, model: ModelIdentity, dim: int, dtype: str | None) -> None:
    if not header.model.same_model(model):
        raise IndexFolderError(f"{folder} was made with another model ({header.model.describe()}), not "
                               f"{model.describe()}; use that model or a new index folder")
    if header.dim != dim:
        raise IndexFolderError(f"{folder} holds {header.dim}-wide embeddings, not {dim}")
    if dtype is not None and dtype != header.dtype:
        raise ConfigError(f"{folder} stores {header.dtype}; appending {dtype} is not possible (leave "
                          "--dtype out, or use a new index folder)")


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor drops its flock
