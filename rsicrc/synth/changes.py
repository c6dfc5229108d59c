"""Planners for each change kind: what is only before, only after, and shared.

A planner gets a target 3 x 3 cell and returns a ChangePlan around that cell's centre; the
scene builder checks that the changed objects' bounds really land in the cell (so the caption's
location is faithful) and that they do not overlap other changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rsicrc.synth.items import EXTENT, Item, Patch, Point, Slab, Tree, Water, box_corners
from rsicrc.synth.objects import (
    bezier,
    blob,
    make_house,
    make_lot,
    make_pool,
    make_road,
    make_tree,
    polyline_distance,
    soft_rect,
    tree_cluster,
)

CELL = EXTENT / 3


@dataclass(frozen=True)
class ChangePlan:
    """Items of one change and the words needed to caption it."""

    kind: str  # one of spec.KINDS
    count: str  # one of spec.COUNTS
    objects: int  # number of objects changed
    context: str  # ground/cover before the change
    detail: str  # kind-specific detail for captions
    before: tuple[Item, ...]  # only in the before image
    after: tuple[Item, ...]  # only in the after image
    shared: tuple[Item, ...]  # in both images (ground patches, existing houses, kept trees)


def _anchor(rng: np.random.Generator, cell: tuple[int, int], jitter: float = 8.0) -> Point:
    r, c = cell
    return (float((c + 0.5) * CELL + rng.uniform(-jitter, jitter)),
            float((r + 0.5) * CELL + rng.uniform(-jitter, jitter)))


def _clamp(v: float, half: float, margin: float = 4.0) -> float:
    return float(min(max(v, half + margin), EXTENT - half - margin))


def _ground(rng: np.random.Generator, pts: list[Point], pad: float, cover: str) -> Patch:
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return Patch(soft_rect(rng, min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad),
                 cover)


def _count(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.asarray([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _number(rng: np.random.Generator, count: str, cell: tuple[int, int]) -> int:
    corner = cell[0] != 1 and cell[1] != 1
    return {"a": 1, "two": 2, "three": 3, "several": int(rng.integers(4, 6)),
            "many": int(rng.integers(6, 8 if corner else 10)),
            "a row of": 3 if corner else int(rng.integers(4, 6))}[count]


def house_grid(rng: np.random.Generator, n: int, cell: tuple[int, int], count: str,
                small: bool) -> tuple[list[Point], float, float, float]:
    """Centres of n houses arranged around the cell centre, plus length, depth, angle."""
    length = float(rng.uniform(24, 30) if small else rng.uniform(30, 40))
    depth = float(length * rng.uniform(0.66, 0.8))
    vertical_row = (cell[1] != 1 and cell[0] == 1) or (cell == (1, 1) and rng.random() < 0.5)
    angle = (math.pi / 2 if rng.random() < 0.5 else 0.0) + float(rng.uniform(-0.05, 0.05))
    fx, fy = (depth, length) if abs(angle) > 1 else (length, depth)
    gap = float(rng.uniform(7, 11))
    if count == "a row of":
        rows, cols = (n, 1) if vertical_row else (1, n)
    else:
        cols = {1: 1, 2: 2, 3: 3, 4: 2, 5: 3, 6: 3, 7: 3, 8: 4, 9: 3}[n]
        rows = math.ceil(n / cols)
        if (cell[1] != 1 and cell[0] == 1) or (n == 3 and rng.random() < 0.3):
            rows, cols = cols, rows
    px, py = fx + gap, fy + gap
    cx, cy = _anchor(rng, cell)
    cx = _clamp(cx, (cols * px - gap) / 2 + 3)
    cy = _clamp(cy, (rows * py - gap) / 2 + 3)
    slots = [(cx + (j - (cols - 1) / 2) * px, cy + (i - (rows - 1) / 2) * py)
             for i in range(rows) for j in range(cols)]
    keep = sorted(rng.choice(len(slots), size=n, replace=False).tolist())
    jit = lambda: float(rng.uniform(-1.5, 1.5))  # noqa: E731
    return [(slots[k][0] + jit(), slots[k][1] + jit()) for k in keep], length, depth, angle


def houses_built(rng: np.random.Generator, cell: tuple[int, int]) -> ChangePlan:
    count = _count(rng, {"a": 2, "two": 2, "three": 1.5, "several": 1.5, "many": 1.5,
                         "a row of": 1.5})
    n = _number(rng, count, cell)
    pts, length, depth, angle = house_grid(rng, n, cell, count, n > 3)
    houses = tuple(make_house(rng, x, y, angle, length, depth, n == 1) for x, y in pts)
    cover = "bare" if rng.random() < 0.6 else "grass"
    patch = _ground(rng, pts, length * 0.6 + 10, cover)
    return ChangePlan("houses_built", count, n, "bareland" if cover == "bare" else "grass", "",
                      (), houses, (patch,))


def houses_demolished(rng: np.random.Generator, cell: tuple[int, int]) -> ChangePlan:
    count = _count(rng, {"a": 2, "two": 2, "three": 1.5, "several": 1.5, "a row of": 1.5})
    n = _number(rng, count, cell)
    pts, length, depth, angle = house_grid(rng, n, cell, count, n > 3)
    houses = tuple(make_house(rng, x, y, angle, length, depth, n == 1) for x, y in pts)
    lawn = _ground(rng, pts, length * 0.6 + 10, "grass" if rng.random() < 0.6 else "bare")
    found = rng.random() < 0.5
    after: list[Item] = []
    for h in houses:
        for b in h.parts:
            after.append(Patch(tuple(box_corners(b, 4.0)), "bare"))
            if found:
                after.append(Slab(tuple(box_corners(b, -1.5)), float(rng.uniform(0.82, 0.95))))
    left = "foundation" if found else "bareland"
    return ChangePlan("houses_demolished", count, n, "houses", left,
                      houses, tuple(after), (lawn,))


def _road_shape(rng: np.random.Generator, cell: tuple[int, int]) -> tuple[str, list[list[Point]]]:
    """Centre lines of a new road near the cell; a bulb may go on the very last point."""
    r, c = cell
    ax, ay = _anchor(rng, cell, 6)
    lo, hi = -14.0, EXTENT + 14.0
    shape = str(rng.choice(["straight", "t_shaped", "curved"]))
    tilt = float(rng.uniform(-8, 8))
    if r != 1 and c != 1:  # corner: a short road entering from the nearest edges
        ex, ey = (lo if c == 0 else hi), (lo if r == 0 else hi)
        ix, iy = (1.0 if c == 0 else -1.0), (1.0 if r == 0 else -1.0)  # inward directions
        if shape == "curved":
            p0 = (ex, ay + iy * float(rng.uniform(10, 30)))
            p2 = (ax + ix * float(rng.uniform(10, 30)), ey)
            ctrl = (ax + (ex - ax) * 0.35, ay + (ey - ay) * 0.35)
            return shape, [bezier(p0, ctrl, p2)]
        reach = float(rng.uniform(25, 38))
        if rng.random() < 0.5:  # horizontal main road from the side edge
            main = [(ex, ay), (ax + ix * reach, ay + tilt / 3)]
            mx = ((0.0 if c == 0 else EXTENT) + ax + ix * reach) / 2
            stem = [(mx, ay), (mx, ey)]
        else:  # vertical main road from the top or bottom edge
            main = [(ax, ey), (ax + tilt / 3, ay + iy * reach)]
            my = ((0.0 if r == 0 else EXTENT) + ay + iy * reach) / 2
            stem = [(ax, my), (ex, my)]
        return shape, ([stem, main] if shape == "t_shaped" else [main])
    horizontal = r != 1 or (c == 1 and rng.random() < 0.5)  # along the top/bottom band

    def hv(pts: list[Point]) -> list[Point]:  # (along, across) -> (x, y)
        return pts if horizontal else [(v, u) for u, v in pts]

    v0 = ay if horizontal else ax
    if shape == "curved":
        d = float(rng.uniform(14, 24)) * (1 if rng.random() < 0.5 else -1)
        e, mid = v0 - d, v0 + d
        return shape, [hv(bezier((lo, e), (EXTENT / 2 + tilt * 3, 2 * mid - e), (hi, e + tilt)))]
    main = hv([(lo, v0), (hi, v0 + tilt)])
    if shape == "t_shaped":
        ju = float(EXTENT / 2 + rng.uniform(-40, 40))
        vj = v0 + tilt * (ju - lo) / (hi - lo)
        direction = (-1.0 if v0 > EXTENT / 2 else 1.0) if (r, c) != (1, 1) else (
            -1.0 if rng.random() < 0.5 else 1.0)
        stem_len = float(rng.uniform(35, 50) if (r, c) == (1, 1) else rng.uniform(45, 60))
        return shape, [main, hv([(ju, vj), (ju, vj + direction * stem_len)])]
    return shape, [main]


def road_built(rng: np.random.Generator, cell: tuple[int, int]) -> ChangePlan:
    shape, lines = _road_shape(rng, cell)
    width = float(rng.uniform(11, 16))
    bulb_last = shape != "curved" and any(
        0 < v < EXTENT for v in lines[-1][-1]) and rng.random() < 0.7
    roads = [make_road(rng, ln, bulb=(bulb_last and i == len(lines) - 1), width=width,
                       concrete=False)
             for i, ln in enumerate(lines)]
    roll = rng.random()
    cover = "trees" if roll < 0.35 else ("bare" if roll < 0.7 else "grass")
    pts = [p for ln in lines for p in ln]
    pts = [(min(max(x, 0.0), EXTENT), min(max(y, 0.0), EXTENT)) for x, y in pts]
    shared: list[Item] = [_ground(rng, pts, width + 12, "grass" if cover != "bare" else "bare")]
    before: list[Item] = []
    if cover == "trees":
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        n = int(rng.integers(90, 140))
        tx = rng.uniform(min(xs) - 40, max(xs) + 40, n)
        ty = rng.uniform(min(ys) - 40, max(ys) + 40, n)
        d = np.min([polyline_distance(tx, ty, rd.points) for rd in roads], axis=0)
        for x, y, dist in zip(tx, ty, d, strict=True):
            if dist > width / 2 + 26 or not (0 < x < EXTENT and 0 < y < EXTENT):
                continue
            t = make_tree(rng, x, y, rng.uniform(6, 10))
            (before if dist < width / 2 + t.r + 4 else shared).append(t)
    return ChangePlan("road_built", "a", 1, {"trees": "trees", "bare": "bareland",
                                              "grass": "grass"}[cover], shape,
                      tuple(before), tuple(roads), tuple(shared))


def trees_removed(rng: np.random.Generator, cell: tuple[int, int]) -> ChangePlan:
    count = _count(rng, {"several": 1, "many": 1.5, "a row of": 1})
    cx, cy = _anchor(rng, cell)
    trees: list[Tree] = []
    if count == "several":
        n, spread = int(rng.integers(4, 7)), float(rng.uniform(9, 12))
        cx, cy = _clamp(cx, 2 * spread + 12), _clamp(cy, 2 * spread + 12)
        trees = tree_cluster(rng, cx, cy, spread, n, 7, 10)
    elif count == "many":
        n, spread = int(rng.integers(14, 24)), float(rng.uniform(15, 20))
        cx, cy = _clamp(cx, 2 * spread + 10), _clamp(cy, 2 * spread + 10)
        trees = tree_cluster(rng, cx, cy, spread, n, 6, 10)
    else:
        n = int(rng.integers(5, 8))
        r = float(rng.uniform(6.5, 8.5))
        step = 1.9 * r
        vertical = cell[1] != 1 and cell[0] == 1
        half = (n - 1) * step / 2 + r
        cx, cy = _clamp(cx, r + 6 if vertical else half + 4), _clamp(cy, half + 4 if vertical
                                                                    else r + 6)
        for k in range(n):
            off = (k - (n - 1) / 2) * step
            x, y = (cx, cy + off) if vertical else (cx + off, cy)
            trees.append(make_tree(rng, x + rng.uniform(-1, 1), y + rng.uniform(-1, 1), r))
    trees = [t for t in trees if t.r <= t.x <= EXTENT - t.r and t.r <= t.y <= EXTENT - t.r]
    under = "grass" if rng.random() < 0.7 else "bare"
    pts = [(t.x, t.y) for t in trees]
    patch = _ground(rng, pts, 16, under)
    after: tuple[Item, ...] = ()
    left = "grass" if under == "grass" else "bareland"
    if under == "grass" and rng.random() < 0.5:  # cleared down to the soil
        after = (Patch(patch.points, "bare"),)
        left = "bareland"
    shared = (patch,)
    return ChangePlan("trees_removed", count, len(trees), "trees", left, tuple(trees), after,
                      shared)


def parking_built(rng: np.random.Generator, cell: tuple[int, int]) -> ChangePlan:
    count = "two" if rng.random() < 0.3 else "a"
    cx, cy = _anchor(rng, cell)
    vertical = cell[1] != 1 and cell[0] == 1 and rng.random() < 0.7
    lots = []
    if count == "a":
        w, h = float(rng.uniform(54, 76)), float(rng.uniform(34, 46))
        boxes = [(w, h)]
    else:
        w, h = float(rng.uniform(38, 50)), float(rng.uniform(32, 40))
        boxes = [(w, h), (w, h)]
    if vertical:
        boxes = [(b, a) for a, b in boxes]
    gap = float(rng.uniform(8, 14))
    stack_v = vertical
    total_w = sum(b[0] for b in boxes) + gap * (len(boxes) - 1) if not stack_v else boxes[0][0]
    total_h = sum(b[1] for b in boxes) + gap * (len(boxes) - 1) if stack_v else boxes[0][1]
    cx, cy = _clamp(cx, total_w / 2 + 2), _clamp(cy, total_h / 2 + 2)
    x, y = cx - total_w / 2, cy - total_h / 2
    for bw, bh in boxes:
        lots.append(make_lot(rng, x, y, x + bw, y + bh))
        if stack_v:
            y += bh + gap
        else:
            x += bw + gap
    cover = "bare" if rng.random() < 0.65 else "grass"
    corners = [(lt.box[0], lt.box[1]) for lt in lots] + [(lt.box[2], lt.box[3]) for lt in lots]
    patch = _ground(rng, corners, 10, cover)
    return ChangePlan("parking_built", count, len(lots), "bareland" if cover == "bare" else "grass",
                      "cars", (), tuple(lots), (patch,))


def pool_built(rng: np.random.Generator, cell: tuple[int, int]) -> ChangePlan:
    count = str(rng.choice(["a", "two", "three"], p=[0.45, 0.35, 0.2]))
    n = {"a": 1, "two": 2, "three": 3}[count]
    length = float(rng.uniform(26, 32))
    depth = float(length * rng.uniform(0.66, 0.78))
    gap = float(rng.uniform(10, 14))
    side = 1.0 if rng.random() < 0.5 else -1.0  # pools below or above the houses
    cx, cy = _anchor(rng, cell)
    span = n * (length + gap) - gap
    cx = _clamp(cx, span / 2 + 3)
    cy = _clamp(cy, depth / 2 + 22, 6)
    houses, pools, pts = [], [], []
    for k in range(n):
        x = cx + (k - (n - 1) / 2) * (length + gap)
        y = cy - side * (depth / 2 + 7)
        houses.append(make_house(rng, x, y, 0.0, length, depth, wing=False))
        p = make_pool(rng, x + rng.uniform(-4, 4), y + side * (depth / 2 + 13), 0.0)
        pools.append(p)
        pts += [(x - length / 2, y - depth / 2), (x + length / 2, y + depth / 2),
                (p.cx, p.cy - 9), (p.cx, p.cy + 9)]
    lawn = _ground(rng, pts, 8, "grass")
    return ChangePlan("pool_built", count, n, "houses", "yard", (), tuple(pools),
                      (lawn, *houses))


def pond_appeared(rng: np.random.Generator, cell: tuple[int, int]) -> ChangePlan:
    count = "two" if rng.random() < 0.3 else "a"
    cx, cy = _anchor(rng, cell)
    if count == "a":
        rx, ry = float(rng.uniform(20, 32)), float(rng.uniform(18, 30))
        cx, cy = _clamp(cx, rx * 1.3), _clamp(cy, ry * 1.3)
        ponds = [Water(blob(rng, cx, cy, rx, ry), "water")]
    else:
        rx, ry = float(rng.uniform(13, 18)), float(rng.uniform(12, 17))
        horizontal = rng.random() < 0.5
        dx, dy = (rx * 1.3 + 4, 0.0) if horizontal else (0.0, ry * 1.3 + 4)
        cx, cy = _clamp(cx, rx * 1.3 + dx), _clamp(cy, ry * 1.3 + dy)
        ponds = [Water(blob(rng, cx - dx, cy - dy, rx, ry), "water"),
                 Water(blob(rng, cx + dx, cy + dy, rx, ry), "water")]
    cover = "bare" if rng.random() < 0.5 else "grass"
    pts = [p for w in ponds for p in w.points]
    context = "bareland" if cover == "bare" else "grass"
    return ChangePlan("pond_appeared", count, len(ponds), context,
                      "", (), tuple(ponds), (_ground(rng, pts, 12, cover),))


def lake_dried(rng: np.random.Generator, cell: tuple[int, int]) -> ChangePlan:
    cx, cy = _anchor(rng, cell)
    rx, ry = float(rng.uniform(26, 38)), float(rng.uniform(22, 34))
    cx, cy = _clamp(cx, rx * 1.3), _clamp(cy, ry * 1.3)
    outline = blob(rng, cx, cy, rx, ry)
    cover = "grass" if rng.random() < 0.6 else "bare"
    return ChangePlan("lake_dried", "a", 1, "water", "bareland",
                      (Water(outline, "water"),), (Water(outline, "dry"),),
                      (_ground(rng, list(outline), 12, cover),))


PLANNERS: dict[str, Callable[[np.random.Generator, tuple[int, int]], ChangePlan]] = {
    "houses_built": houses_built,
    "houses_demolished": houses_demolished,
    "road_built": road_built,
    "trees_removed": trees_removed,
    "parking_built": parking_built,
    "pool_built": pool_built,
    "pond_appeared": pond_appeared,
    "lake_dried": lake_dried,
}
