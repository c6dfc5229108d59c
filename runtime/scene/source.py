"""Two dates of one place as a source of tiles: both rasters open, read window by window on the
before image's pixel grid (DESIGN §12).

When the dates differ in CRS, resolution or extent, the after image is read through a rasterio
`WarpedVRT` onto the before grid (bilinear for data; its validity through a second, nearest
neighbour VRT with an alpha band, so no invented pixel counts as valid), and only the
intersection of the two footprints is processed. Images without georeferencing (PNG, JPEG,
plain TIFF) are read in pixel coordinates and must be the same size. Every failure is one line.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.errors import DataError, ImageError
from rsicrc.runtime.images import (
    SUPPORTED_DTYPES,
    check_bands,
    check_file,
    gdal_reason,
    image_error,
    import_rasterio,
    rasterio_errors,
    select_bands,
)
from rsicrc.runtime.scene.grid import PixelWindow

GDAL_CACHE_BYTES = 16 * 2**20  # GDAL block cache while a scene is open: bounded, not growing with the scene
_EDGE = 1e-6  # pixel fraction below which a footprint edge counts as on a pixel boundary


@dataclass(frozen=True)
class Alignment:
    """How the after date was put onto the before date's grid, and what part of it is processed."""

    georeferenced: bool  # both dates have a CRS and a geotransform; False: pixel coordinates
    warped: bool  # the after date is read through a WarpedVRT onto the before grid
    differences: tuple[str, ...]  # what differed between the dates: CRS, resolution, extent
    window: PixelWindow  # the processed area: both footprints' intersection on the before grid

    def describe(self) -> str:
        """One log line: what was done."""
        w = self.window
        where = f"{w.width}x{w.height} px at column {w.col_off}, row {w.row_off} of the before grid"
        if not self.georeferenced:
            return f"images without georeferencing: pixel coordinates, {where}"
        if not self.warped:
            return f"both dates share one grid: {where}"
        return (f"after date warped onto the before grid (bilinear, nearest for masks; differed in "
                f"{', '.join(self.differences)}); processing the intersection, {where}")

    def to_dict(self) -> dict[str, Any]:
        return {"georeferenced": self.georeferenced, "warped": self.warped,
                "differences": list(self.differences), "window": self.window.to_dict()}


@dataclass(frozen=True)
class WindowPixels:
    """The selected bands of both dates over one window, before conversion to 8 bits."""

    before: np.ndarray  # [h, w, k] in the before file's dtype, k in (1, 3)
    after: np.ndarray  # [h, w, k] in the after file's dtype
    valid: np.ndarray  # [h, w] bool: a pixel with data in both dates


def _open(rio: Any, path: Path, shown: str) -> Any:
    check_file(path, shown)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
            ds = rio.open(path)
    except rasterio_errors(rio) as e:
        raise image_error(shown, f"not a readable raster ({gdal_reason(e, path)})") from None
    if ds.width == 0 or ds.height == 0 or ds.count == 0:
        ds.close()
        raise image_error(shown, f"image has zero size ({ds.width}x{ds.height} pixels, {ds.count} bands)")
    return ds


def _georeferenced(ds: Any) -> bool:
    return ds.crs is not None and not ds.transform.is_identity


def _indexes(ds: Any, bands: tuple[int, ...] | None, shown: str) -> list[int]:
    """1-based band indexes to read, in one supported dtype."""
    indexes = [i + 1 for i in select_bands(ds.count, bands, shown)]
    dtypes = {ds.dtypes[i - 1] for i in indexes}
    bad = sorted(dtypes - set(SUPPORTED_DTYPES))
    if bad:
        raise image_error(shown, f"unsupported data type {bad[0]} (supported: {', '.join(SUPPORTED_DTYPES)})")
    if len(dtypes) > 1:
        raise image_error(shown, f"the chosen bands mix data types {', '.join(sorted(dtypes))}; pick bands "
                                 "of one type with --bands")
    return indexes


def _differences(before: Any, after: Any) -> tuple[str, ...]:
    out = []
    if before.crs != after.crs:
        out.append(f"CRS ({before.crs.to_string()} vs {after.crs.to_string()})")
    if not np.allclose(before.res, after.res, rtol=1e-9, atol=0.0):
        out.append(f"resolution ({before.res[0]:g} vs {after.res[0]:g})")
    if before.transform != after.transform or before.shape != after.shape:
        out.append("extent")
    return tuple(out)


def _intersection(before: Any, after: Any) -> PixelWindow | None:
    """The after footprint on the before grid, clipped to the before image, rounded inwards."""
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds(after.crs, before.crs, *after.bounds, densify_pts=21)
    i = ~before.transform  # applied by hand: affine's `*` is deprecated, its `@` too new for rasterio 1.3
    corners = [(x, y) for x in (left, right) for y in (bottom, top)]
    cols = [i.a * x + i.b * y + i.c for x, y in corners]
    rows = [i.d * x + i.e * y + i.f for x, y in corners]
    c0 = max(0, math.ceil(min(cols) - _EDGE))
    r0 = max(0, math.ceil(min(rows) - _EDGE))
    c1 = min(before.width, math.floor(max(cols) + _EDGE))
    r1 = min(before.height, math.floor(max(rows) + _EDGE))
    return PixelWindow(c0, r0, c1 - c0, r1 - r0) if c1 > c0 and r1 > r0 else None


class ScenePair:
    """A before and an after raster on one grid (the before image's), read lazily by window."""

    def __init__(self, before: Path, after: Path, bands: Sequence[int] | None = None) -> None:
        self.rio = import_rasterio(str(before))
        self.shown = (str(before), str(after))
        self._env = self.rio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)
        self._env.__enter__()
        self._open: list[Any] = []
        try:
            self._setup(Path(before), Path(after), check_bands(bands, str(before)))
        except BaseException:
            self.close()
            raise

    def _setup(self, before: Path, after: Path, bands: tuple[int, ...] | None) -> None:
        self.before = _open(self.rio, before, self.shown[0])
        self._open.append(self.before)
        self.after = _open(self.rio, after, self.shown[1])
        self._open.append(self.after)
        if bands is None and self.before.count != self.after.count:
            fewer = min(self.before.count, self.after.count)
            raise DataError(f"before has {self.before.count} bands but after has {self.after.count}; pass "
                            f"--bands to pick the same bands of both (valid: 1..{fewer})")
        self.indexes = (_indexes(self.before, bands, self.shown[0]),
                        _indexes(self.after, bands, self.shown[1]))
        geo = (_georeferenced(self.before), _georeferenced(self.after))
        if geo[0] != geo[1]:
            which, other = ("before", "after") if geo[0] else ("after", "before")
            raise DataError(f"{which} is georeferenced but {other} is not ({self.shown[geo.index(False)]}); "
                            "give two georeferenced rasters, or two plain images of the same size")
        full = PixelWindow(0, 0, self.before.width, self.before.height)
        self._after_data = self._after_mask = self.after
        if not geo[0]:
            if self.before.shape != self.after.shape:
                raise ImageError(f"before is {self.before.width}x{self.before.height} but after is "
                                 f"{self.after.width}x{self.after.height}; images without georeferencing "
                                 f"must be the same size (before: {self.shown[0]}, after: {self.shown[1]})")
            self.alignment = Alignment(False, False, (), full)
            return
        differences = _differences(self.before, self.after)
        window = _intersection(self.before, self.after) if differences else full
        if window is None:
            raise DataError(f"the two dates do not overlap: after ({self.shown[1]}) lies outside before "
                            f"({self.shown[0]}) once both are in {self.before.crs.to_string()}")
        self.alignment = Alignment(True, bool(differences), differences, window)
        if differences:
            self._after_data = self._warped(self.before.transform, self.before.width, self.before.height,
                                            "bilinear", alpha=False)
            self._after_mask = self._warped(self.before.transform, self.before.width, self.before.height,
                                            "nearest", alpha=True)

    def _warped(self, transform: Any, width: int, height: int, resampling: str, alpha: bool) -> Any:
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        vrt = WarpedVRT(self.after, crs=self.before.crs, transform=transform, width=width, height=height,
                        resampling=Resampling[resampling], add_alpha=alpha)
        self._open.append(vrt)
        return vrt

    @property
    def dtypes(self) -> tuple[str, str]:
        return self.before.dtypes[self.indexes[0][0] - 1], self.after.dtypes[self.indexes[1][0] - 1]

    def _read(self, which: int, data_ds: Any, mask_ds: Any, window: PixelWindow,
              out_shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        """([h, w, k] data, [h, w] validity) of one date; read errors become one-line ImageErrors."""
        from rasterio.windows import Window

        indexes = self.indexes[which]
        win = Window(window.col_off, window.row_off, window.width, window.height)
        shape = None if out_shape is None else (len(indexes), *out_shape)
        try:
            data = data_ds.read(indexes, window=win, out_shape=shape)  # [k, h, w]
            masks = mask_ds.read_masks(indexes, window=win, out_shape=shape)  # [k, h, w], 0 = nodata
        except rasterio_errors(self.rio) as e:
            reason = gdal_reason(e, Path(self.shown[which]))
            raise image_error(self.shown[which], f"corrupted or truncated raster ({reason})") from None
        valid = np.all(masks != 0, axis=0)  # [h, w]
        if data.dtype.kind == "f":
            valid &= np.all(np.isfinite(data), axis=0)
        return np.moveaxis(data, 0, -1), valid

    def read(self, window: PixelWindow) -> WindowPixels:
        """Both dates over `window` of the before grid, at full resolution."""
        before, valid_b = self._read(0, self.before, self.before, window, None)
        after, valid_a = self._read(1, self._after_data, self._after_mask, window, None)
        return WindowPixels(before, after, valid_b & valid_a)

    def read_decimated(self, max_side: int, dates: tuple[int, ...] = (0, 1)) -> WindowPixels:
        """The processed window with its longest side at most `max_side` pixels (nearest neighbour),
        for scene-wide statistics and the quick-look at a bounded size. `dates`: 0 before, 1 after;
        a date not read is returned as zeros, valid everywhere."""
        w = self.alignment.window
        factor = max(1.0, max(w.width, w.height) / max_side)
        shape = (max(1, round(w.height / factor)), max(1, round(w.width / factor)))  # (h, w)
        if 0 in dates:
            before, valid_b = self._read(0, self.before, self.before, w, shape)
        else:
            before, valid_b = np.zeros((*shape, len(self.indexes[0])), np.uint8), np.ones(shape, bool)
        if 1 not in dates:
            after, valid_a = np.zeros_like(before), np.ones(shape, bool)
        elif self.alignment.warped:  # warp straight onto the coarse grid: no full-resolution warp
            from rasterio.transform import Affine

            t = self.before.transform  # the window's corner, then pixels sx x sy times larger
            sx, sy = w.width / shape[1], w.height / shape[0]
            x0, y0 = t.a * w.col_off + t.b * w.row_off + t.c, t.d * w.col_off + t.e * w.row_off + t.f
            coarse = Affine(t.a * sx, t.b * sy, x0, t.d * sx, t.e * sy, y0)
            data = self._warped(coarse, shape[1], shape[0], "nearest", alpha=True)
            after, valid_a = self._read(1, data, data, PixelWindow(0, 0, shape[1], shape[0]), None)
        else:
            after, valid_a = self._read(1, self.after, self.after, w, shape)
        return WindowPixels(before, after, valid_b & valid_a)

    def close(self) -> None:
        """Close every dataset and leave the GDAL settings as they were."""
        for ds in reversed(self._open):
            ds.close()
        self._open.clear()
        if self._env is not None:
            self._env.__exit__(None, None, None)
            self._env = None

    def __enter__(self) -> ScenePair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
