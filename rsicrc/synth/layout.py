"""The unchanging part of a scene: roads lined with houses, trees, ponds, lots, shrubs.

Everything is placed on an Occupancy grid that already holds the change regions, so static
objects never overlap a change (and the change's caption stays true).
"""

from __future__ import annotations

import math

import numpy as np

from rsicrc.synth.changes import house_grid
from rsicrc.synth.items import (
    EXTENT,
    Box,
    House,
    Item,
    Patch,
    Path,
    Point,
    Road,
    Slab,
    Style,
    Tree,
    Water,
    box_corners,
    item_bounds,
    offset_polyline,
)
from rsicrc.synth.objects import (
    Occupancy,
    bezier,
    blob,
    make_house,
    make_lot,
    make_pool,
    make_road,
    make_tree,
    soft_rect,
    tree_cluster,
)

LO, HI = -14.0, EXTENT + 14.0


def _edge_point(rng: np.random.Generator, side: int) -> Point:
    t = float(rng.uniform(30, EXTENT - 30))
    return ((t, LO), (HI, t), (t, HI), (LO, t))[side]


def _road_lines(rng: np.random.Generator) -> tuple[list[Point], bool]:
    """A road centre line and whether it ends inside the image (a cul-de-sac)."""
    roll = rng.random()
    if roll < 0.65:  # straight, horizontal or vertical, slightly tilted; sometimes a dead end
        v = float(rng.uniform(24, EXTENT - 24))
        tilt = float(rng.uniform(-12, 12))
        dead_end = roll < 0.1
        end = float(rng.uniform(90, 200)) if dead_end else HI
        pts = [(LO, v), (end, v + tilt * (end - LO) / (HI - LO))]
        if rng.random() < 0.5:
            pts = [(EXTENT - x, y) for x, y in pts]
        return (pts if rng.random() < 0.5 else [(y, x) for x, y in pts]), dead_end
    a = int(rng.integers(4))
    b = (a + int(rng.integers(1, 4))) % 4
    p0, p2 = _edge_point(rng, a), _edge_point(rng, b)
    ctrl = (float(rng.uniform(50, EXTENT - 50)), float(rng.uniform(50, EXTENT - 50)))
    return bezier(p0, ctrl, p2), False


def _along(points: tuple[Point, ...], step: float) -> list[tuple[Point, Point]]:
    """Stations (point, unit tangent) every `step` units along a polyline."""
    out: list[tuple[Point, Point]] = []
    carry = step / 2
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        seg = math.hypot(x1 - x0, y1 - y0)
        if seg < 1e-6:
            continue
        tx, ty = (x1 - x0) / seg, (y1 - y0) / seg
        d = carry
        while d < seg:
            out.append(((x0 + tx * d, y0 + ty * d), (tx, ty)))
            d += step
        carry = d - seg
    return out


def _line_houses(rng: np.random.Generator, occ: Occupancy, road: Road, density: float,
                 items: list[Item]) -> None:
    """Houses facing the road on both sides, with driveways, some pools and yard trees."""
    length = float(rng.uniform(30, 42))
    depth = float(length * rng.uniform(0.65, 0.8))
    setback = float(rng.uniform(9, 16))
    for (px, py), (tx, ty) in _along(road.points, length + float(rng.uniform(10, 18))):
        for side in (-1.0, 1.0):
            if rng.random() > density:
                continue
            nx, ny = -ty * side, tx * side
            off = road.width / 2 + (9.0 if road.sidewalk else 3.0) + setback + depth / 2
            cx, cy = px + nx * off, py + ny * off
            if not (4 < cx < EXTENT - 4 and 4 < cy < EXTENT - 4):
                continue
            house = make_house(rng, cx, cy, math.atan2(ty, tx), length, depth)
            if not occ.free(item_bounds(house), 2):
                continue
            items.append(house)
            occ.mark(item_bounds(house), 1)
            u = float(rng.uniform(-0.25, 0.25)) * length
            d0, d1 = road.width / 2 + 1, off - depth / 2
            drive = [(px + tx * (u + s) + nx * d, py + ty * (u + s) + ny * d)
                     for s, d in ((-3, d0), (3, d0), (3, d1), (-3, d1))]
            if rng.random() < 0.75:
                items.append(Slab(tuple(drive), float(rng.uniform(0.95, 1.05))))
            back = off + depth / 2 + 13
            if rng.random() < 0.25:
                pool = make_pool(rng, px + nx * back + tx * u, py + ny * back + ty * u,
                                 math.atan2(ty, tx))
                if occ.free(item_bounds(pool)):
                    items.append(pool)
                    occ.mark(item_bounds(pool))
            for _ in range(int(rng.integers(0, 3))):
                w = back + float(rng.uniform(0, 14))
                s = float(rng.uniform(-0.6, 0.6)) * length
                t = make_tree(rng, px + nx * w + tx * s, py + ny * w + ty * s,
                              float(rng.uniform(5, 9)))
                if occ.free(item_bounds(t)):
                    items.append(t)
                    occ.mark(item_bounds(t))


def _lawn(road: Road, width: float) -> list[Patch]:
    out = []
    for side in (-1.0, 1.0):
        inner = offset_polyline(road.points, side * road.width / 2)
        outer = offset_polyline(road.points, side * (road.width / 2 + width))
        out.append(Patch(tuple(inner + outer[::-1]), "grass"))
    return out


def _free_spot(rng: np.random.Generator, occ: Occupancy, hw: float, hh: float,
               tries: int = 12) -> Point | None:
    for _ in range(tries):
        x = float(rng.uniform(hw + 2, EXTENT - hw - 2))
        y = float(rng.uniform(hh + 2, EXTENT - hh - 2))
        if occ.free((x - hw, y - hh, x + hw, y + hh), 3):
            return x, y
    return None


def _trees(rng: np.random.Generator, occ: Occupancy, n_clusters: int, items: list[Item]) -> None:
    for _ in range(n_clusters):
        spread = float(rng.uniform(8, 24))
        spot = _free_spot(rng, occ, spread, spread, 6)
        if spot is None:
            continue
        n = int(rng.integers(3, 6) + (spread / 3) ** 1.4)
        got = [t for t in tree_cluster(rng, spot[0], spot[1], spread, n, 5, 11)
               if occ.free(item_bounds(t))]
        items.extend(got)
        for t in got:
            occ.mark(item_bounds(t))


def static_items(rng: np.random.Generator, occ: Occupancy, style: Style) -> list[Item]:
    """Fill the free part of the image with a plausible suburb, building site or countryside."""
    kind = str(rng.choice(["suburb", "site", "rural"], p=[0.5, 0.3, 0.2]))
    items: list[Item] = []
    patches: list[Item] = []
    base = occ.grid.copy()  # roads may cross each other but not a change region
    n_roads = {"suburb": int(rng.integers(1, 4)), "site": int(rng.integers(0, 3)),
               "rural": int(rng.integers(0, 2))}[kind]
    roads: list[Road] = []
    for _ in range(n_roads * 3):
        if len(roads) >= n_roads:
            break
        pts, dead_end = _road_lines(rng)
        road = make_road(rng, pts, bulb=dead_end)
        probe = Occupancy()
        probe.grid = base
        if not probe.free_line(road.points, road.width + 24):
            continue
        roads.append(road)
        occ.mark_line(road.points, road.width + 14)
    items.extend(roads)
    for road in roads:
        if kind == "suburb" or rng.random() < 0.3:
            patches.extend(_lawn(road, float(rng.uniform(40, 70))))
    for road in roads:
        density = {"suburb": 0.85, "site": 0.35, "rural": 0.25}[kind]
        _line_houses(rng, occ, road, density, items)
    if rng.random() < (0.3 if kind == "rural" else 0.12):
        spot = _free_spot(rng, occ, 36, 32)
        if spot is not None:
            rx, ry = float(rng.uniform(18, 34)), float(rng.uniform(16, 30))
            items.append(Water(blob(rng, spot[0], spot[1], rx, ry), "water"))
            occ.mark((spot[0] - rx * 1.3, spot[1] - ry * 1.3,
                      spot[0] + rx * 1.3, spot[1] + ry * 1.3))
    if rng.random() < 0.2:
        w, h = float(rng.uniform(50, 76)), float(rng.uniform(34, 44))
        spot = _free_spot(rng, occ, w / 2, h / 2)
        if spot is not None:
            x0, y0 = spot[0] - w / 2, spot[1] - h / 2
            items.append(make_lot(rng, x0, y0, x0 + w, y0 + h))
            occ.mark((x0, y0, x0 + w, y0 + h), 2)
    for _ in range(int(rng.integers(*{"suburb": (0, 3), "site": (1, 5), "rural": (0, 4)}[kind]))):
        spot = _free_spot(rng, occ, 22, 22)
        if spot is not None:
            big = rng.random() < 0.2
            ln = float(rng.uniform(44, 60) if big else rng.uniform(28, 40))
            turn = float(rng.uniform(0, math.pi)) if rng.random() < 0.3 else (
                float(rng.integers(2)) * math.pi / 2 + float(rng.uniform(-0.08, 0.08)))
            h = make_house(rng, spot[0], spot[1], turn, ln,
                           ln * float(rng.uniform(0.6, 0.8)))
            if big:
                h = House((h.parts[0],), h.roof, "flat", h.height * 1.4)
            if occ.free(item_bounds(h), 2):
                items.append(h)
                occ.mark(item_bounds(h), 2)
    if rng.random() < 0.3:  # an existing block of houses (grids are not only new builds)
        cell = (int(rng.integers(3)), int(rng.integers(3)))
        n = int(rng.integers(2, 7))
        pts, length, depth, angle = house_grid(rng, n, cell, "several", n > 3)
        block = [make_house(rng, x, y, angle, length, depth, False) for x, y in pts]
        if all(occ.free(item_bounds(h), 2) for h in block):
            items.extend(block)
            for h in block:
                occ.mark(item_bounds(h), 2)
    n_clusters = {"suburb": int(rng.integers(1, 5)), "site": int(rng.integers(1, 5)),
                  "rural": int(rng.integers(3, 8))}[kind]
    _trees(rng, occ, n_clusters, items)
    if rng.random() < (0.5 if kind != "suburb" else 0.15):
        a = int(rng.integers(4))
        mid = (float(rng.uniform(40, 216)), float(rng.uniform(40, 216)))
        pts = bezier(_edge_point(rng, a), mid,
                     _edge_point(rng, (a + int(rng.integers(1, 4))) % 4), 14)
        path = Path(tuple(pts), float(rng.uniform(2.5, 4.5)))
        if occ.free_line(path.points, 8):
            items.insert(0, path)
    for _ in range(int(rng.integers(5, 40 if kind != "suburb" else 12))):
        x, y = float(rng.uniform(0, EXTENT)), float(rng.uniform(0, EXTENT))
        r = float(rng.uniform(2.0, 4.5))
        if occ.free((x - r, y - r, x + r, y + r), 1):
            items.append(Tree(x, y, r, float(rng.uniform(0.7, 0.95)), ()))
    for _ in range(int(rng.integers(0, 3))):  # stray patches of either cover (decoys too)
        hw, hh = float(rng.uniform(20, 45)), float(rng.uniform(20, 45))
        spot = _free_spot(rng, occ, hw, hh, 4)
        if spot is not None:
            cover = "bare" if rng.random() < 0.6 else "grass"
            patches.append(Patch(soft_rect(rng, spot[0] - hw, spot[1] - hh, spot[0] + hw,
                                           spot[1] + hh), cover))
            if cover == "bare" and kind == "site" and rng.random() < 0.4:  # an old slab
                slab = Box(spot[0], spot[1], float(rng.uniform(20, 32)),
                           float(rng.uniform(14, 22)), float(rng.integers(2)) * math.pi / 2)
                items.append(Slab(tuple(box_corners(slab)), float(rng.uniform(0.82, 0.95))))
            occ.mark((spot[0] - hw, spot[1] - hh, spot[0] + hw, spot[1] + hh))
    return patches + items
