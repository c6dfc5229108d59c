"""The retrieval index on disk: L2-normalised visual embeddings of an archive of before/after pairs
with their ids, paths and metadata (DESIGN §7). Model-free and torch-free: loading and appending
only (the files' format: `rsicrc.runtime.index_format`); `rsicrc.runtime.retriever` fills an index
with a model and searches it.

    INDEX_DIR/index.json          what is committed (format_version 1, below)
    INDEX_DIR/shard-NNNNN.npy     embeddings [n, C], float16 or float32, rows L2-normalised
    INDEX_DIR/shard-NNNNN.jsonl   one line per row: {"id", "before", "after", "metadata"}
    INDEX_DIR/.lock               flock'ed by the one writer at a time

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

import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from rsicrc.checks import one_of, positive_int
from rsicrc.errors import ConfigError, DataError, IndexFolderError
from rsicrc.files import write_atomic
from rsicrc.runtime.index_format import (
    DEFAULT_DTYPE,
    FORMAT_VERSION,
    INDEX_FILE,
    LOCK_FILE,
    STORE_DTYPES,
    Entry,
    IndexHeader,
    ModelIdentity,
    ShardInfo,
    parse_record,
    read_header,
    record_line,
    where,
    write_header,
)
from rsicrc.runtime.manifest import sha256_file

DEFAULT_COMMIT_ROWS = 1024  # rows per shard when indexing with a model (progress kept on a crash)
_READ_BLOCK = 16 << 20
_SHARD_FILE = re.compile(r"shard-\d{5,}\.(npy|jsonl)")
log = logging.getLogger(__name__)


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
        raise where(path, "the last line is incomplete")
    return (digest.hexdigest() if digest is not None else None), offsets


def _load_shard(folder: Path, header: IndexHeader, shard: ShardInfo, verify: bool
                ) -> tuple[np.ndarray, np.ndarray]:
    npy, jsonl = folder / f"{shard.name}.npy", folder / f"{shard.name}.jsonl"
    for path, size in ((npy, shard.npy_bytes), (jsonl, shard.jsonl_bytes)):
        if not path.is_file():
            raise where(path, f"listed in {INDEX_FILE} but missing")
        actual = path.stat().st_size
        if actual != size:
            raise where(path, f"{actual} bytes but {INDEX_FILE} says {size} (truncated or overwritten)")
    if verify and sha256_file(npy) != shard.npy_sha256:
        raise where(npy, f"sha256 differs from {INDEX_FILE} (the file changed after indexing)")
    digest, offsets = _scan_lines(jsonl, verify)
    if verify and digest != shard.jsonl_sha256:
        raise where(jsonl, f"sha256 differs from {INDEX_FILE} (the file changed after indexing)")
    if len(offsets) - 1 != shard.rows:
        raise where(jsonl, f"{len(offsets) - 1} lines but {INDEX_FILE} says {shard.rows} rows")
    try:
        array = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise where(npy, f"not a readable .npy file ({' '.join(str(e).split())[:120]})") from None
    expected = (np.dtype(header.dtype), (shard.rows, header.dim))
    if (array.dtype, array.shape) != expected or not array.flags.c_contiguous:
        raise where(npy, f"holds {array.dtype} {list(array.shape)}, expected {header.dtype} "
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
                    out[i] = parse_record(f.read(int(offsets[row + 1] - offsets[row])), path, row)
        return out  # type: ignore[return-value]  # every slot was filled above

    def ids(self) -> Iterator[str]:
        """Every stored id in row order (parses every record: for writers, not for search)."""
        for shard in self.header.shards:
            path = self.folder / f"{shard.name}.jsonl"
            with open(path, "rb") as f:
                for local, line in enumerate(f):
                    yield parse_record(line, path, local).id

    def extended(self, shard: ShardInfo, header: IndexHeader) -> StoredIndex:
        """This index plus one new shard that `header` lists last (loaded without the sha256 pass)."""
        array, offsets = _load_shard(self.folder, header, shard, verify=False)
        return StoredIndex(self.folder, header, [*self._vectors, array], [*self._offsets, offsets])


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
        if dtype is not None:
            one_of(dtype, STORE_DTYPES, "dtype")
        positive_int(commit_rows, "commit rows")
        positive_int(dim, "dim")
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
        lines = [record_line(e) for e in entries]
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
        write_atomic(npy, lambda f: np.save(f, array, allow_pickle=False), durable=True)
        write_atomic(jsonl, data, durable=True)
        shard = ShardInfo(name, len(self._lines), npy.stat().st_size, sha256_file(npy),
                          len(data), sha256_file(jsonl))
        header = replace(self.header, model=self._model, count=self.header.count + shard.rows,
                         shards=(*self.header.shards, shard))
        write_header(self.folder, header)
        return header


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
