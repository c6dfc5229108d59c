"""What loading a model folder remembers between processes, so that a warm load costs about a
second instead of hashing 1.6 GB and re-optimizing every graph (paper config: 7.6 s of a 9.7 s
`rsicrc caption`). Torch-free.

- Verified files. A graph file whose sha256 matched the manifest is recorded with its identity
  (device, inode, size, mtime_ns, ctime_ns); while the identity is unchanged the file is not read
  again. Any write, copy, move or replacement changes it (ctime cannot be set back by a user), and
  the next load hashes the file again: a tampered graph is still refused. `rsicrc verify` always
  hashes everything.
- Optimized graphs. ONNX Runtime's graph optimizations (fusions, constant folding, the CPU's
  NCHWc layout) run once, when a graph is first loaded on the CPU; the session saves the result
  (the graph plus its initializers in an external data file), and later loads read that with
  optimizations off. Measured on the paper image encoder (fp32): 3.1-6.8 s -> 0.7-1.2 s to create
  the session; outputs bit-identical (tested). The file name carries the source graph's sha256,
  the ONNX Runtime version and a hash of the CPU's SIMD features (the layout depends on them).

Where: MODEL_DIR/.rsicrc-cache/ when that can be written, else $XDG_CACHE_HOME/rsicrc/<folder
hash>/ (~/.cache/rsicrc/...); $RSICRC_CACHE_DIR overrides both, and RSICRC_CACHE_DIR=off turns
the cache off. It costs the graphs' size again on disk. Files are written under temporary names
and renamed; two processes racing to build the same graph both succeed, and a cache that cannot be
written only costs speed (logged), never a failed load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rsicrc.files import write_atomic
from rsicrc.runtime.cpu import cpu_info

CACHE_NAME = ".rsicrc-cache"  # beside the graphs
RECORD_FILE = "verified.json"  # file path -> {identity, sha256}
ENV = "RSICRC_CACHE_DIR"  # a folder, or "off"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileIdentity:
    """What changes when a file's content can have changed."""

    device: int  # st_dev
    inode: int  # st_ino
    size: int  # st_size
    mtime_ns: int  # st_mtime_ns
    ctime_ns: int  # st_ctime_ns: set by the kernel on every change, not settable by users

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        s = os.stat(path)
        return cls(s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-", delete=True)
        probe.close()
        return True
    except OSError:
        return False


def cache_root(model_dir: Path) -> Path | None:
    """The model folder's cache folder (module docstring), None when caching is off or impossible."""
    explicit = os.environ.get(ENV)
    if explicit == "off":
        return None
    model_dir = Path(model_dir).resolve()
    key = hashlib.sha256(str(model_dir).encode()).hexdigest()[:16]
    if explicit:
        candidates = [Path(explicit).expanduser() / key]
    else:
        user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rsicrc" / key
        candidates = [model_dir / CACHE_NAME, user]
    return next((c for c in candidates if _writable(c)), None)


class FolderCache:
    """The verified-file records and optimized graphs of one model folder."""

    def __init__(self, model_dir: Path) -> None:
        self.root = cache_root(model_dir)
        self._records: dict[str, dict[str, Any]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._records is None:
            self._records = {}
            if self.root is not None and (self.root / RECORD_FILE).is_file():
                try:
                    data = json.loads((self.root / RECORD_FILE).read_text())
                    self._records = data if isinstance(data, dict) else {}
                except (OSError, ValueError):
                    self._records = {}  # a damaged record only means hashing again
        return self._records

    def is_verified(self, path: Path, sha256: str) -> bool:
        """True when `path` was verified against `sha256` and has not changed since."""
        record = self._load().get(str(Path(path).resolve()))
        if not record or record.get("sha256") != sha256:
            return False
        try:
            return record.get("identity") == asdict(FileIdentity.of(path))
        except OSError:
            return False

    def mark_verified(self, path: Path, sha256: str) -> None:
        """Remember that `path` (as it is now) has `sha256`; merged with what others recorded."""
        if self.root is None:
            return
        self._records = None  # re-read: another process may have added records
        records = dict(self._load())
        records[str(Path(path).resolve())] = {"sha256": sha256, "identity": asdict(FileIdentity.of(path))}
        try:
            write_atomic(self.root / RECORD_FILE, json.dumps(records, indent=1) + "\n")
            self._records = records
        except OSError as e:
            log.debug("cannot record verified files in %s: %s", self.root, e)

    def optimized_name(self, source_sha256: str, ort_version: str) -> str:
        """File stem of a graph's optimized form: source sha256, ORT version, CPU features."""
        cpu = hashlib.sha256(" ".join(cpu_info().features).encode()).hexdigest()[:8]
        return f"{source_sha256[:16]}.ort{ort_version}.cpu{cpu}"

    def optimized(self, stem: str) -> Path | None:
        """The optimized graph `stem`.onnx when it is complete and unchanged since it was written."""
        if self.root is None:
            return None
        onnx, data = self.root / f"{stem}.onnx", self.root / f"{stem}.data"
        record = self._load().get(f"optimized:{stem}")
        if not (record and onnx.is_file() and data.is_file()):
            return None
        try:
            same = record == {"onnx": asdict(FileIdentity.of(onnx)), "data": asdict(FileIdentity.of(data))}
        except OSError:
            return None
        return onnx if same else None

    def staging(self) -> Path | None:
        """A fresh temporary folder inside the cache for a graph being optimized (None: no cache)."""
        if self.root is None:
            return None
        try:
            return Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        except OSError:
            return None

    def publish(self, staging: Path, stem: str) -> None:
        """Move an optimized graph (`stem`.onnx + `stem`.data) from `staging` into the cache: data
        first, graph last, then record both identities. Failures are logged, never raised."""
        try:
            os.replace(staging / f"{stem}.data", self.root / f"{stem}.data")  # type: ignore[operator]
            os.replace(staging / f"{stem}.onnx", self.root / f"{stem}.onnx")  # type: ignore[operator]
            onnx, data = self.root / f"{stem}.onnx", self.root / f"{stem}.data"  # type: ignore[operator]
            self._records = None
            records = dict(self._load())
            records[f"optimized:{stem}"] = {"onnx": asdict(FileIdentity.of(onnx)),
                                            "data": asdict(FileIdentity.of(data))}
            write_atomic(self.root / RECORD_FILE, json.dumps(records, indent=1) + "\n")  # type: ignore[operator]
            self._records = records
        except OSError as e:
            log.info("could not keep the optimized graph in %s (%s); the next load optimizes again",
                     self.root, e)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
