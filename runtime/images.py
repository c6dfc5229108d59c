"""Reading before/after images into uint8 RGB arrays [H, W, 3] for preprocessing.

PNG/JPEG and other 8-bit formats go through Pillow. TIFF/GeoTIFF (and 16-bit PNG) go through
rasterio, because Pillow truncates 16-bit multiband TIFF and cannot open 4-band uint16.
Deeper-than-8-bit data is brought to 8 bits by a 2..98 percentile stretch per band that
ignores nodata; for a pair the limits are computed jointly over both dates, so the stretch
does not invent (or hide) a radiometric difference between them. Every failure is an
ImageError with a one-line message that starts with the file name.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from rsicrc.checks import is_int
from rsicrc.errors import DataError, DependencyError, ImageError

TIFF_SUFFIXES = frozenset({".tif", ".tiff"})  # always read with rasterio
STRETCH_PERCENTILES = (2.0, 98.0)  # lower/upper stretch limits, percent of valid pixels
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})  # Pillow, 1 band
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_MESSAGE = 300


@dataclass(frozen=True)
class _Raw:
    """One image after band selection, before conversion to 8 bits."""

    data: np.ndarray  # [H, W, k] selected bands in the file's dtype, k in (1, 3)
    valid: np.ndarray  # [H, W] bool, False at nodata pixels
    path: str  # the path as the caller gave it, for messages

    @property
    def size_text(self) -> str:
        return f"{self.data.shape[1]}x{self.data.shape[0]}"


class _Unidentified(Exception):
    """Pillow does not recognize the file (internal: triggers the rasterio fallback)."""


def image_error(path: str, reason: object) -> ImageError:
    """An ImageError whose message is one line naming the file."""
    text = " ".join(f"{path}: {reason}".split())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return ImageError(text)


def parse_bands(text: str) -> tuple[int, ...]:
    """'4,3,2' -> (4, 3, 2): one or three band numbers counted from 1, as in GDAL."""
    try:
        bands = tuple(int(part.strip()) for part in str(text).split(","))
    except ValueError:
        bands = ()
    if len(bands) not in (1, 3) or any(b < 1 for b in bands):
        raise ImageError(
            f"invalid --bands {text!r}: give 1 or 3 comma-separated band numbers counted "
            "from 1, e.g. 4,3,2"
        )
    return bands


def check_bands(bands: Sequence[int] | None, shown: str) -> tuple[int, ...] | None:
    if bands is None:
        return None
    out = tuple(bands)
    ok = len(out) in (1, 3) and all(
        is_int(b) and b >= 1 for b in out
    )
    if not ok:
        raise image_error(shown, f"bands must name 1 or 3 band numbers counted from 1, got {out!r}")
    return tuple(int(b) for b in out)


def select_bands(count: int, bands: tuple[int, ...] | None, shown: str) -> list[int]:
    """0-based band indices to read: the first three by default, or 1 band for gray."""
    if bands is None:
        if count == 1:
            return [0]
        if count == 2:
            raise image_error(shown, "unsupported band layout: 2 bands; pass --bands to choose three")
        return [0, 1, 2]
    for b in bands:
        if b > count:
            word = "band" if count == 1 else "bands"
            raise image_error(shown, f"band {b} is out of range: the image has {count} {word} "
                               f"(valid: 1..{count})")
    return [b - 1 for b in bands]


def check_file(path: Path, shown: str) -> None:
    if not path.exists():
        raise image_error(shown, "image not found")
    if path.is_dir():
        raise image_error(shown, "is a directory, not an image file")
    if path.stat().st_size == 0:
        raise image_error(shown, "empty file (0 bytes), not an image")


def _png_header(path: Path) -> tuple[int, int, int] | None:
    """(width, height, bit depth) from a PNG's IHDR chunk, or None if it is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) < 25 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height, depth = struct.unpack(">IIB", head[16:25])
    return width, height, depth


def import_rasterio(shown: str, required: bool = True) -> Any:
    """rasterio, imported lazily (it is slow to import); None if missing and not required."""
    try:
        import rasterio
        import rasterio.errors
    except ImportError:
        if not required:
            return None
        raise DependencyError(
            f"reading {shown} needs rasterio (TIFF/GeoTIFF support); "
            "install it with: pip install rasterio"
        ) from None
    return rasterio


def rasterio_errors(rio: Any) -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [rio.errors.RasterioError]
    try:  # GDAL errors that rasterio does not wrap; private module, so optional
        from rasterio._err import CPLE_BaseError

        errors.append(CPLE_BaseError)
    except ImportError:
        pass
    return tuple(errors)


def gdal_reason(error: BaseException, path: Path) -> str:
    """GDAL's own words for a failure, without the path (the message already starts with it)."""
    cause = error.__cause__ if error.__cause__ is not None else error
    text = str(cause)
    for form in (f"'{path}'", str(path), f"'{path.name}'"):
        text = text.replace(form, "")
    return text.strip(" ,:.")


def _read_rasterio(path: Path, shown: str, bands: tuple[int, ...] | None,
                   fallback: bool = False) -> _Raw:
    rio = import_rasterio(shown)
    errors = rasterio_errors(rio)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
        try:
            ds = rio.open(path)
        except errors as e:
            if fallback:
                raise image_error(shown, "not a readable image (neither Pillow nor GDAL recognizes "
                                   "the format)") from None
            raise image_error(shown, f"not a readable image ({gdal_reason(e, path)})") from None
        with ds:
            if ds.width == 0 or ds.height == 0 or ds.count == 0:
                raise image_error(shown, f"image has zero size ({ds.width}x{ds.height} pixels, "
                                   f"{ds.count} bands)")
            indexes = [i + 1 for i in select_bands(ds.count, bands, shown)]
            for dtype in {ds.dtypes[i - 1] for i in indexes}:
                if dtype not in SUPPORTED_DTYPES:
                    raise image_error(shown, f"unsupported data type {dtype} "
                                       f"(supported: {', '.join(SUPPORTED_DTYPES)})")
            try:
                data = ds.read(indexes)  # [k, H, W]
                masks = ds.read_masks(indexes)  # 0 where GDAL says nodata
            except errors as e:
                raise image_error(shown, f"corrupted or truncated image ({gdal_reason(e, path)})"
                            ) from None
    valid = np.all(masks != 0, axis=0)
    if data.dtype.kind == "f":
        valid &= np.all(np.isfinite(data), axis=0)
    return _Raw(np.moveaxis(data, 0, -1), valid, shown)


def _pillow_array(img: Image.Image, bands: tuple[int, ...] | None) -> np.ndarray:
    """The image's bands as [H, W, k]: RGB by default, the natural band layout with `bands`."""
    if img.mode in _HIGH_BIT_MODES:
        return np.asarray(img)[..., None]
    if bands is None:
        return np.asarray(img.convert("RGB"))
    if img.mode in ("L", "LA", "RGB", "RGBA"):
        natural = img.mode
    elif img.mode == "1":
        natural = "L"
    elif img.mode in ("P", "PA"):
        natural = "RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB"
    else:  # CMYK, YCbCr, LAB, HSV, ...: their bands are not what a user means by 1..N
        natural = "RGB"
    array = np.asarray(img if natural == img.mode else img.convert(natural))
    return array[..., None] if array.ndim == 2 else array


def _read_pillow(path: Path, shown: str, bands: tuple[int, ...] | None) -> _Raw:
    try:
        with Image.open(path) as img:
            if img.width == 0 or img.height == 0:
                raise image_error(shown, f"image has zero size ({img.width}x{img.height} pixels)")
            img.load()
            array = _pillow_array(img, bands)
    except UnidentifiedImageError:
        raise _Unidentified() from None
    except Image.DecompressionBombError as e:
        raise image_error(shown, f"image is too large to open safely ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise image_error(shown, f"corrupted or truncated image ({e})") from None
    data = array[..., select_bands(array.shape[2], bands, shown)]
    return _Raw(data, np.ones(data.shape[:2], dtype=bool), shown)


def _load_raw(path: str | Path, bands: Sequence[int] | None) -> _Raw:
    shown = str(path)
    wanted = check_bands(bands, shown)
    p = Path(path)
    check_file(p, shown)
    if p.suffix.lower() in TIFF_SUFFIXES:
        return _read_rasterio(p, shown, wanted)
    try:
        png = _png_header(p)
    except OSError as e:
        raise image_error(shown, f"cannot read file ({e.strerror or e})") from None
    if png is not None and (png[0] == 0 or png[1] == 0):
        raise image_error(shown, f"image has zero size ({png[0]}x{png[1]} pixels)")
    if png is not None and png[2] == 16 and import_rasterio(shown, required=False):
        return _read_rasterio(p, shown, wanted)  # Pillow would drop 16-bit RGB to 8 bits
    try:
        return _read_pillow(p, shown, wanted)
    except _Unidentified:
        if import_rasterio(shown, required=False) is None:
            raise image_error(shown, "not a readable image (Pillow does not recognize the format)"
                        ) from None
    return _read_rasterio(p, shown, wanted, fallback=True)


def _limits(values: np.ndarray) -> tuple[float, float]:
    """Stretch limits: the 2nd and 98th percentiles, or min/max where those coincide."""
    lo, hi = np.percentile(values, STRETCH_PERCENTILES)
    if not hi > lo:
        lo, hi = values.min(), values.max()
    return float(lo), float(hi)


def _stretch(band: np.ndarray, valid: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map lo..hi to 0..255 (clipped, rounded half up); nodata and constant bands give 0."""
    x = np.where(valid, band, lo).astype(np.float64)
    y = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
    y = np.floor(np.clip(y, 0.0, 255.0) + 0.5)
    y[~valid] = 0.0
    return y.astype(np.uint8)


@dataclass(frozen=True)
class Stretch:
    """How selected bands become 8 bits: per-band limits shared by every image they were fitted on."""

    limits: tuple[tuple[float, float], ...] | None  # (lo, hi) per band; None: 8-bit data, copied as is

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (recorded in outputs so a reader knows how pixels were scaled)."""
        return {"percentiles": list(STRETCH_PERCENTILES) if self.limits is not None else None,
                "limits": [list(pair) for pair in self.limits] if self.limits is not None else None}


def joint_stretch(data: Sequence[np.ndarray], valid: Sequence[np.ndarray]) -> Stretch:
    """Limits fitted jointly over images of one dtype and band count ([H, W, k] each, with their
    [H, W] validity): 8-bit data is never stretched, anything else between the 2nd and 98th
    percentile of all valid pixels of each band. At least one pixel must be valid."""
    if data[0].dtype == np.uint8:
        return Stretch(None)
    limits = []
    for b in range(data[0].shape[2]):
        values = np.concatenate([d[..., b][v] for d, v in zip(data, valid, strict=True)])  # [n]
        if values.size == 0:
            raise DataError("every pixel is nodata; there is nothing to stretch")
        limits.append(_limits(values))
    return Stretch(tuple(limits))


def apply_stretch(data: np.ndarray, valid: np.ndarray, stretch: Stretch) -> np.ndarray:
    """[H, W, k] bands (k in 1, 3) and their [H, W] validity -> uint8 [H, W, 3]; nodata gives 0."""
    out = np.zeros(data.shape, dtype=np.uint8)  # [H, W, k]
    for b in range(data.shape[2]):
        if stretch.limits is None:
            out[..., b] = np.where(valid, data[..., b], 0)
        else:
            lo, hi = stretch.limits[b]
            out[..., b] = _stretch(data[..., b], valid, lo, hi)
    return np.ascontiguousarray(np.repeat(out, 3, axis=2)) if out.shape[2] == 1 else out


def _to_uint8(raws: Sequence[_Raw]) -> list[np.ndarray]:
    """8-bit RGB for each image; images of one dtype and band count share stretch limits."""
    for raw in raws:
        if not raw.valid.any():
            raise image_error(raw.path, "every pixel is nodata; there is nothing to read")
    outs: list[np.ndarray] = [np.empty(0, np.uint8)] * len(raws)
    groups: dict[tuple[str, int, int], list[int]] = {}
    for i, raw in enumerate(raws):
        key = (raw.data.dtype.kind, raw.data.dtype.itemsize, raw.data.shape[2])
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        stretch = joint_stretch([raws[i].data for i in members], [raws[i].valid for i in members])
        for i in members:
            outs[i] = apply_stretch(raws[i].data, raws[i].valid, stretch)
    return outs


def read_image(path: str | Path, bands: Sequence[int] | None = None) -> np.ndarray:
    """Read one image as uint8 [H, W, 3]; `bands` are 1-based band numbers (1 or 3 of them)."""
    return _to_uint8([_load_raw(path, bands)])[0]


def read_pair(
    before: str | Path, after: str | Path, bands: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a before/after pair as two uint8 [H, W, 3] arrays with a joint percentile stretch."""
    raw_before = _load_raw(before, bands)
    raw_after = _load_raw(after, bands)
    if raw_before.data.shape[:2] != raw_after.data.shape[:2]:
        raise ImageError(
            f"before is {raw_before.size_text} but after is {raw_after.size_text}; both must be "
            f"the same size (before: {before}, after: {after})"
        )
    out_before, out_after = _to_uint8([raw_before, raw_after])
    return out_before, out_after
