"""The tiles of a scene: square windows of the before image's pixel grid, declared once.

Tiles step by `tile - overlap` pixels across the processed window (the part of the before grid
that both dates cover). A row or column that would run past the window's edge is shifted
inwards so that it ends on the edge: every tile is `tile` pixels of real data, never padded.
"""

from __future__ import annotations

from dataclasses import dataclass

from rsicrc.checks import positive_int
from rsicrc.errors import ConfigError, DataError

MIN_TILE = 32  # smallest tile: the image trunk's stride; smaller tiles hold too little to describe
MAX_UPSCALE = 4  # a tile may be at most this many times smaller than the model's input side
MAX_DOWNSCALE = 8  # ... and at most this many times larger (objects would shrink below a pixel)


@dataclass(frozen=True)
class PixelWindow:
    """A rectangle of the before image's pixel grid (GDAL order: column, row, width, height)."""

    col_off: int  # first column
    row_off: int  # first row
    width: int  # columns
    height: int  # rows

    def to_dict(self) -> dict[str, int]:
        return {"col_off": self.col_off, "row_off": self.row_off, "width": self.width, "height": self.height}


@dataclass(frozen=True)
class Tile:
    """One tile of the grid: where it sits in the tile layout and in pixels."""

    index: int  # position in row-major order, 0-based
    row: int  # tile row, 0-based from the top
    col: int  # tile column, 0-based from the left
    window: PixelWindow  # its pixels in the before image

    @property
    def tile_id(self) -> str:
        return f"r{self.row:03d}c{self.col:03d}"


def _starts(offset: int, length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: every `stride` px, the last one moved inwards to end on the edge."""
    last = offset + length - tile
    starts = list(range(offset, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def check_tile(tile: int, overlap: int, input_size: int) -> tuple[int, int]:
    """(tile, overlap) if the model can take such tiles, else a ConfigError naming the valid range.

    Tiles are resized to the model's square input (`input_size`) by the caption preprocessing;
    more than MAX_UPSCALE x upsampling or MAX_DOWNSCALE x downsampling describes something else.
    """
    low = max(MIN_TILE, -(-input_size // MAX_UPSCALE))
    high = input_size * MAX_DOWNSCALE
    tile = positive_int(tile, "--tile")
    if not low <= tile <= high:
        raise ConfigError(f"--tile {tile} does not fit this model (input {input_size} px): give "
                          f"{low}..{high} pixels of the native grid")
    overlap = positive_int(overlap, "--overlap", minimum=0)
    if overlap >= tile:
        raise ConfigError(f"--overlap {overlap} must be smaller than --tile {tile} (valid: 0..{tile - 1})")
    return tile, overlap


def tile_grid(window: PixelWindow, tile: int, overlap: int) -> list[Tile]:
    """Every tile of `window`, row-major; a DataError if the window is smaller than one tile."""
    if window.width < tile or window.height < tile:
        raise DataError(f"the processed area is {window.width}x{window.height} pixels, smaller than one "
                        f"{tile}x{tile} tile; give a smaller --tile or larger images")
    stride = tile - overlap
    rows = _starts(window.row_off, window.height, tile, stride)
    cols = _starts(window.col_off, window.width, tile, stride)
    return [Tile(r * len(cols) + c, r, c, PixelWindow(x, y, tile, tile))
            for r, y in enumerate(rows) for c, x in enumerate(cols)]
