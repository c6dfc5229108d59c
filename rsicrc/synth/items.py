"""Scene items: plain, hashable descriptions of what is drawn where.

Geometry is in canonical units: the image spans [0, 256) on both axes whatever the output
size (1 unit = 0.5 m, LEVIR-CC's ground resolution at 256 px); y grows downwards. A scene is
a tuple of items; the "after" scene reuses the unchanged items of the "before" scene, so both
render identically outside the changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Point = tuple[float, float]
RGB = tuple[float, float, float]
EXTENT = 256.0  # canonical image side

# Draw order (render.py): ground cover (Patch, Water), then Path, Road, Lot and Slab, Pool,
# shadows, House, Tree (trees sorted top to bottom).


@dataclass(frozen=True)
class Style:
    """Per-scene palette and lighting, shared by the before and after images."""

    soil: RGB  # bare ground colour
    grass: RGB  # grass colour (first tone)
    grass2: RGB  # grass colour (second tone, mixed in by noise)
    tree: RGB  # canopy mid tone
    asphalt: RGB  # road surface
    concrete: RGB  # sidewalks, slabs, pool decks
    light: Point  # unit vector pointing towards the sun in image coordinates
    shadow: Point  # shadow displacement per unit of object height (canonical units)
    grass_level: float  # threshold shift of the base cover noise: higher = more grass


@dataclass(frozen=True)
class Patch:
    """A ground-cover override (bare soil or grass) with a soft, ragged edge."""

    points: tuple[Point, ...]  # polygon outline
    cover: str  # "bare" or "grass"


@dataclass(frozen=True)
class Water:
    """A pond or lake; `state` "dry" draws the dried, silted lake bed instead."""

    points: tuple[Point, ...]  # irregular closed outline
    state: str  # "water" or "dry"


@dataclass(frozen=True)
class Road:
    """A paved road along a polyline, optionally with curbs, sidewalks and a cul-de-sac."""

    points: tuple[Point, ...]  # centre line
    width: float  # carriageway width
    sidewalk: bool  # draw sidewalks on both sides
    concrete: bool  # light cement surface instead of asphalt
    bulb: bool  # round turning circle at the last point


@dataclass(frozen=True)
class Path:
    """An unpaved dirt track."""

    points: tuple[Point, ...]  # centre line
    width: float  # track width


@dataclass(frozen=True)
class Car:
    """A parked car (drawn as part of a parking lot)."""

    x: float  # centre
    y: float
    angle: float  # heading in radians
    color: RGB  # body colour


@dataclass(frozen=True)
class Lot:
    """An axis-aligned parking lot with painted stalls and parked cars."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    stall: float  # stall width
    depth: float  # stall depth
    vertical: bool  # stalls rows run along y instead of x
    cars: tuple[Car, ...]  # parked cars


@dataclass(frozen=True)
class Slab:
    """A flat concrete surface: a house foundation, a driveway or a pool deck."""

    points: tuple[Point, ...]  # polygon
    tone: float  # brightness factor relative to the style's concrete


@dataclass(frozen=True)
class Pool:
    """A swimming pool with its deck."""

    cx: float  # centre
    cy: float
    length: float  # along `angle`
    width: float
    angle: float  # radians


@dataclass(frozen=True)
class Box:
    """One rectangular part of a building footprint."""

    cx: float  # centre
    cy: float
    length: float  # along `angle`
    depth: float  # across
    angle: float  # radians


@dataclass(frozen=True)
class House:
    """A building: one or two boxes with a hip, gable or flat roof, casting a shadow."""

    parts: tuple[Box, ...]  # footprint parts, drawn in order
    roof: RGB  # roof base colour
    style: str  # "hip", "gable" or "flat"
    height: float  # shadow length factor


@dataclass(frozen=True)
class Tree:
    """A tree canopy made of a few overlapping lumps, casting a shadow."""

    x: float  # centre
    y: float
    r: float  # canopy radius
    tone: float  # brightness factor of the canopy
    lumps: tuple[tuple[float, float, float], ...]  # (dx, dy, radius) sub-canopies


Item = Patch | Water | Road | Path | Lot | Slab | Pool | House | Tree


def box_corners(b: Box, grow: float = 0.0) -> list[Point]:
    """Corners of a rotated rectangle, optionally grown by `grow` on every side."""
    c, s = math.cos(b.angle), math.sin(b.angle)
    hl, hd = b.length / 2 + grow, b.depth / 2 + grow
    return [(b.cx + c * u - s * v, b.cy + s * u + c * v)
            for u, v in ((-hl, -hd), (hl, -hd), (hl, hd), (-hl, hd))]


def item_bounds(item: Item) -> tuple[float, float, float, float]:
    """Axis-aligned canonical bounds (x0, y0, x1, y1) of an item, shadows and decks included."""
    if isinstance(item, House):
        pts = [p for b in item.parts for p in box_corners(b)]
        x0, y0, x1, y1 = _bounds(pts)
        g = item.height * 1.2
        return x0 - g, y0 - g, x1 + g, y1 + g
    if isinstance(item, Tree):
        g = item.r * 1.6
        return item.x - g, item.y - g, item.x + g, item.y + g
    if isinstance(item, Pool):
        return _bounds(box_corners(Box(item.cx, item.cy, item.length, item.width, item.angle), 3))
    if isinstance(item, Lot):
        return item.box
    if isinstance(item, Road):
        x0, y0, x1, y1 = _bounds(item.points)
        g = item.width / 2 + (9.0 if item.sidewalk else 2.0) + (item.width if item.bulb else 0)
        return x0 - g, y0 - g, x1 + g, y1 + g
    if isinstance(item, Path):
        x0, y0, x1, y1 = _bounds(item.points)
        return x0 - item.width, y0 - item.width, x1 + item.width, y1 + item.width
    return _bounds(item.points)


def offset_polyline(points: tuple[Point, ...], d: float) -> list[Point]:
    """A polyline shifted sideways by d (per-vertex averaged normals)."""
    out: list[Point] = []
    n = len(points)
    for i in range(n):
        x0, y0 = points[max(0, i - 1)]
        x1, y1 = points[min(n - 1, i + 1)]
        dx, dy = x1 - x0, y1 - y0
        norm = math.hypot(dx, dy) or 1.0
        out.append((points[i][0] - dy / norm * d, points[i][1] + dx / norm * d))
    return out


def _bounds(pts: list[Point] | tuple[Point, ...]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def union_bounds(items: list[Item]) -> tuple[float, float, float, float]:
    boxes = [item_bounds(i) for i in items]
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))
