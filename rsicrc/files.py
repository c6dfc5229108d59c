"""The file names of the folders the toolkit writes, and writing files so that a reader never
sees half of one: a temporary file beside the target, then one rename over it (atomic on POSIX).
Torch-free; every output of the toolkit goes through `write_atomic`.

    CKPT_DIR/model.safetensors + config.json (+ vocab.json, training.json)   rsicrc.checkpoint
    MODEL_DIR/manifest.json + graphs                                          rsicrc.runtime.manifest
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

Writer = Callable[[BinaryIO], None]
CHECKPOINT_WEIGHTS, CHECKPOINT_CONFIG = "model.safetensors", "config.json"  # a checkpoint folder's own
MANIFEST_FILE = "manifest.json"  # an exported model folder's own


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (its directory entry reaches the disk)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str | Writer, *, durable: bool = False, mode: int = 0o644) -> None:
    """Write `path` through a temporary file in its folder, then rename it over `path`.

    `data`: bytes, text (UTF-8) or a function that writes into the open binary file. `durable`
    fsyncs the file before the rename and the folder after it (commit points such as an index
    header). On any failure the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it private; outputs are as readable as their inputs
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    """Indented JSON plus a final newline, written atomically."""
    write_atomic(path, json.dumps(data, indent=indent) + "\n")
