"""Tiles as GIS features: RFC 7946 polygons (WGS84 longitude/latitude, counter-clockwise) and
their properties, plus the collection's `rsicrc` member that says how they were made.

A tile's polygon is its four pixel corners on the before grid, through the before image's
geotransform into its CRS, then to WGS84. Images without georeferencing have no place on Earth:
their polygons are in pixel units (x = column, y = -row, as GIS software shows such images) and
the collection says so in `rsicrc.coordinates`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rsicrc.runtime.scene.grid import Tile

WGS84 = "EPSG:4326"
DECIMALS = 8  # of a degree: about 1 mm on the ground
COORDINATES_WGS84 = "WGS84 longitude/latitude (RFC 7946)"
COORDINATES_PIXEL = "pixels of the before image: x = column, y = -row (no georeferencing)"


@dataclass(frozen=True)
class TileResult:
    """What the scene run found for one tile."""

    tile: Tile  # where it is
    caption: str | None  # decoded caption; None when not decoded (an interrupted --query run)
    score: float | None  # the caption's length-normalised log-probability
    beams: tuple[tuple[str, float], ...]  # every finished beam (caption, score), best first
    changed: bool  # the decoded caption is not a no-change sentence
    gate_score: float | None  # the gate's no-change-minus-change similarity (above margin: unchanged)
    similarity: float | None = None  # --query: cosine of the tile's embedding with the query's
    rank: int | None = None  # --query: 1-based rank among the scene's tiles


def _counter_clockwise(ring: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The open ring in counter-clockwise order (positive shoelace area)."""
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1], strict=True))
    return ring if area > 0 else ring[::-1]


class Georeference:
    """Pixel corners of the before grid -> output coordinates."""

    def __init__(self, crs: Any, transform: Any) -> None:
        self.crs = crs  # rasterio CRS of the before image, None without georeferencing
        self.transform = transform  # its affine geotransform (pixel -> CRS)

    @property
    def coordinates(self) -> str:
        return COORDINATES_WGS84 if self.crs is not None else COORDINATES_PIXEL

    def ring(self, tile: Tile) -> list[list[float]]:
        """The tile's closed, counter-clockwise exterior ring."""
        w = tile.window
        corners = [(w.col_off, w.row_off), (w.col_off, w.row_off + w.height),
                   (w.col_off + w.width, w.row_off + w.height), (w.col_off + w.width, w.row_off)]
        if self.crs is None:
            points = [(float(c), -float(r)) for c, r in corners]
        else:
            from rasterio.warp import transform

            t = self.transform  # written out: affine's `*` is deprecated, its `@` too new for rasterio 1.3
            xs = [t.a * c + t.b * r + t.c for c, r in corners]
            ys = [t.d * c + t.e * r + t.f for c, r in corners]
            lon, lat = transform(self.crs, WGS84, xs, ys)
            points = [(round(x, DECIMALS), round(y, DECIMALS)) for x, y in zip(lon, lat, strict=True)]
        ring = _counter_clockwise(points)
        return [list(p) for p in ring + ring[:1]]


def properties(result: TileResult, number: int) -> dict[str, Any]:
    """The Feature properties of one tile (`number`: its 1-based position in the collection)."""
    tile = result.tile
    props: dict[str, Any] = {
        "number": number,
        "caption": result.caption,
        "score": result.score,
        "changed": result.changed,
        "beams": [{"caption": c, "score": s} for c, s in result.beams],
        "row": tile.row,
        "col": tile.col,
        "window": tile.window.to_dict(),
        "tile_id": tile.tile_id,
        "gate_score": result.gate_score,
    }
    if result.rank is not None:
        props["rank"] = result.rank
        props["similarity"] = result.similarity
    return props


def feature_collection(results: list[TileResult], geo: Georeference, meta: dict[str, Any]) -> dict[str, Any]:
    """The GeoJSON FeatureCollection: one Feature per result, in order, ids 1..N."""
    features = [{"type": "Feature", "id": i,
                 "geometry": {"type": "Polygon", "coordinates": [geo.ring(r.tile)]},
                 "properties": properties(r, i)}
                for i, r in enumerate(results, start=1)]
    return {"type": "FeatureCollection", "rsicrc": {**meta, "coordinates": geo.coordinates},
            "features": features}
