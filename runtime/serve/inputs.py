"""A caption request's inputs, checked and read: its parameters (beam, bands), its images from
uploaded files or from paths inside the --allow-paths folder, read by `rsicrc.runtime.images`
exactly as `rsicrc caption` reads files, then preprocessed. Torch-free, no web library: the app
hands in plain values and file objects.

Errors: a bad parameter or an unknown field is a ConfigError (HTTP 422), an unreadable image or a
size mismatch an ImageError (400), a path outside the allowed folder an AccessError (403). Image
messages name the field ("before.png: corrupted or truncated image ...") or the path as the client
gave it, never a temporary or server-side folder.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rsicrc.checks import is_int
from rsicrc.errors import AccessError, ConfigError, ImageError
from rsicrc.runtime.captioner import preprocess_pairs
from rsicrc.runtime.decoding import DecodingOptions
from rsicrc.runtime.images import parse_bands, read_pair
from rsicrc.runtime.preprocess import PreprocessSpec

IMAGE_FIELDS: tuple[str, str] = ("before", "after")  # the two images of a pair, in this order
PARAMETER_FIELDS: tuple[str, ...] = ("beam", "bands")  # optional caption parameters
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")  # a file-name suffix kept from an upload's name
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


@dataclass(frozen=True)
class PreparedPair:
    """One request's pair, ready for a batch: the encoder's inputs and how to decode them."""

    before: np.ndarray  # float32 [3, S, S], the image encoder's `before` row
    after: np.ndarray  # float32 [3, S, S]
    options: DecodingOptions  # the search; requests are batched only with equal options
    timing_ms: dict[str, float]  # this request's own read and preprocess times


def check_fields(given: Iterable[str], allowed: Collection[str]) -> None:
    """ConfigError naming the valid fields if `given` holds any other."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(map(repr, unknown))}; valid fields: "
                          f"{', '.join(allowed)}")


def decoding_options(beam: Any, max_beam: int) -> DecodingOptions:
    """The request's decoding options: `beam` (None: the CLI's default; an int, or its text from a
    form field) from 1 to `max_beam`."""
    if beam is None:
        value = DecodingOptions.beam_size
    elif isinstance(beam, str) and re.fullmatch(r"\s*\d{1,6}\s*", beam):
        value = int(beam)
    elif is_int(beam):
        value = int(beam)
    else:
        raise ConfigError(f"beam must be an integer from 1 to {max_beam}, got {beam!r}")
    if not 1 <= value <= max_beam:
        raise ConfigError(f"beam must be an integer from 1 to {max_beam}, got {value}")
    return DecodingOptions(beam_size=value)


def request_bands(bands: Any) -> tuple[int, ...] | None:
    """Band numbers from text such as "4,3,2" (1 or 3 numbers counted from 1), or None."""
    if bands is None:
        return None
    try:
        if not isinstance(bands, str):
            raise ImageError("not text")
        return parse_bands(bands)
    except ImageError:
        raise ConfigError(f"invalid bands {bands!r}: give 1 or 3 comma-separated band numbers counted "
                          "from 1, e.g. \"4,3,2\"") from None


def upload_suffix(filename: str | None, head: bytes) -> str:
    """The suffix a temporary copy gets, which decides the reader as for a file on disk: the
    upload's own (".png", ".tif", ...), else ".tif" for TIFF bytes (rasterio reads them), else none."""
    suffix = Path(filename or "").suffix
    if _SUFFIX.fullmatch(suffix):
        return suffix.lower()
    return ".tif" if head[:4] in _TIFF_MAGIC else ""


def read_uploaded_pair(files: dict[str, tuple[BinaryIO, str | None]], bands: tuple[int, ...] | None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [H, W, 3] before and after from uploaded file objects {field: (file, filename)}, read
    through temporary files so that `read_pair` treats them exactly like files on disk."""
    with tempfile.TemporaryDirectory(prefix="rsicrc-serve-") as tmp:
        paths = []
        for name in IMAGE_FIELDS:
            stream, filename = files[name]
            stream.seek(0)
            suffix = upload_suffix(filename, stream.read(4))
            stream.seek(0)
            path = Path(tmp) / f"{name}{suffix}"
            with open(path, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
            paths.append(path)
        try:
            return read_pair(paths[0], paths[1], bands)
        except ImageError as e:  # name the field, not the temporary folder
            raise ImageError(str(e).replace(f"{tmp}/", "")) from None


def resolve_allowed(root: Path, value: Any, name: str) -> Path:
    """`value` (a path relative to `root`) resolved, symlinks followed; AccessError unless the
    result lies inside `root` (so `..`, absolute paths and symlinks cannot leave it)."""
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ConfigError(f"{name} must be a path relative to the allowed folder, got {value!r}")
    path = (root / value).resolve()
    if not path.is_relative_to(root):
        raise AccessError(f"{name} path {value!r} is outside the folder this server may read")
    return path


def read_allowed_pair(root: Path, before: Any, after: Any, bands: tuple[int, ...] | None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [H, W, 3] before and after from paths inside `root`; messages show the paths relative
    to `root`, as the client gave them."""
    paths = [resolve_allowed(root, value, name) for value, name in zip((before, after), IMAGE_FIELDS,
                                                                       strict=True)]
    try:
        return read_pair(paths[0], paths[1], bands)
    except ImageError as e:
        raise ImageError(str(e).replace(f"{root}/", "")) from None


def prepare(read: Callable[[], tuple[np.ndarray, np.ndarray]], options: DecodingOptions,
            spec: PreprocessSpec) -> PreparedPair:
    """Read a pair (`read()` -> uint8 before, after) and preprocess it for the image encoder."""
    start = time.perf_counter()
    before, after = read()
    mid = time.perf_counter()
    b, a = preprocess_pairs([before], [after], spec)
    end = time.perf_counter()
    timing = {"read": (mid - start) * 1000.0, "preprocess": (end - mid) * 1000.0}
    return PreparedPair(b[0], a[0], options, timing)
