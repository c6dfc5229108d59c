"""The change layer (`rsicrc scene --heat change.tif`): one float32 band on the scene's grid.

Each processed tile paints its score into the cells it covers: cells of CELL pixels of the
before grid (the image trunk's stride, so any tile size and overlap lands on whole cells up to
the last partial one). Where tiles overlap the larger score wins; cells of skipped tiles (nodata)
and of tiles never reached (Ctrl-C) stay NaN, the layer's nodata value.

The score is, per tile, what the run ranked it by:
- change gate: cosine of the tile's visual embedding to the nearest change sentence minus its
  cosine to the nearest no-change sentence (the gate's score with the sign flipped, so that
  higher means more change; the gate decodes a tile when this is >= -margin);
- --query: the cosine of the tile's embedding with the query's.

Written as a Cloud-Optimized GeoTIFF (GDAL's COG driver, deflate, internal overviews by
averaging) in the before image's CRS; without georeferencing in the GeoJSON's pixel
coordinates (x = column, y = -row). The layer holds one value per cell: 1/1024 of the scene's
pixels, the only output besides the features that grows with the scene.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.files import write_atomic
from rsicrc.runtime.scene.grid import MIN_TILE, PixelWindow, Tile

CELL = MIN_TILE  # pixels of the before grid per layer cell
BLOCK = 256  # COG tile side, pixels of the layer
MIN_OVERVIEW = 8  # overviews halve the layer until its longest side would fall below this
SCORES = {"gate": "change score: cos(nearest change sentence) - cos(nearest no-change sentence)",
          "query": "similarity of the tile to the query"}


class HeatLayer:
    """Per-cell scores of the processed window, NaN where no processed tile lies."""

    def __init__(self, window: PixelWindow, kind: str, cell: int = CELL) -> None:
        self.window, self.kind, self.cell = window, kind, cell
        shape = (-(-window.height // cell), -(-window.width // cell))  # (rows, cols), last ones partial
        self.values = np.full(shape, np.nan, dtype=np.float32)  # [rows, cols]

    def paint(self, tile: Tile, score: float) -> None:
        """Raise the cells under `tile` to `score` (NaN cells take it)."""
        w, c = tile.window, self.cell
        r0, c0 = (w.row_off - self.window.row_off) // c, (w.col_off - self.window.col_off) // c
        r1 = -(-(w.row_off - self.window.row_off + w.height) // c)
        c1 = -(-(w.col_off - self.window.col_off + w.width) // c)
        cells = self.values[r0:r1, c0:c1]  # a view
        np.fmax(cells, np.float32(score), out=cells)

    def transform(self, crs: Any, before_transform: Any) -> Any:
        """The layer's affine geotransform: the before grid's, shifted to the window and scaled by CELL
        (pixel coordinates x = column, y = -row without a CRS)."""
        from affine import Affine

        t = before_transform if crs is not None else Affine(1, 0, 0, 0, -1, 0)
        x, y, k = self.window.col_off, self.window.row_off, self.cell
        # t composed with "cell k of the window" written out: affine's `*` is deprecated, `@` too new
        return Affine(t.a * k, t.b * k, t.a * x + t.b * y + t.c, t.d * k, t.e * k, t.d * x + t.e * y + t.f)

    def write(self, path: Path, crs: Any, before_transform: Any, tags: dict[str, str]) -> None:
        """Write the layer atomically as a COG with overviews; `tags` go into its metadata."""
        data = _cog_bytes(self.values, crs, self.transform(crs, before_transform),
                          {**tags, "score": SCORES[self.kind], "cell_pixels": str(self.cell)})
        write_atomic(path, data)


def overview_factors(shape: tuple[int, int]) -> list[int]:
    """2, 4, 8, ... while the longest side stays >= MIN_OVERVIEW pixels."""
    factors, f = [], 2
    while max(shape) // f >= MIN_OVERVIEW:
        factors.append(f)
        f *= 2
    return factors


def _cog_bytes(values: np.ndarray, crs: Any, transform: Any, tags: dict[str, str]) -> bytes:
    """values [rows, cols] float32 -> the bytes of a single-band COG (built in GDAL's memory files)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy

    profile = {"driver": "GTiff", "height": values.shape[0], "width": values.shape[1], "count": 1,
               "dtype": "float32", "nodata": float("nan"), "crs": crs, "transform": transform}
    with MemoryFile() as staging, MemoryFile() as final:
        with rasterio.Env(), staging.open(**profile) as ds:
            ds.write(values, 1)
            ds.set_band_description(1, tags["score"])
            ds.update_tags(**tags)
            factors = overview_factors(values.shape)
            if factors:
                ds.build_overviews(factors, Resampling.average)
        copy(staging.name, final.name, driver="COG", COMPRESS="DEFLATE", PREDICTOR="3",
             BLOCKSIZE=str(BLOCK), OVERVIEWS="FORCE_USE_EXISTING")
        return bytes(final.read())
