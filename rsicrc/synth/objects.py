"""Randomised constructors for scene items, and a coarse occupancy grid for placing them."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from rsicrc.synth.items import (
    EXTENT,
    RGB,
    Box,
    Car,
    House,
    Lot,
    Point,
    Pool,
    Road,
    Style,
    Tree,
)

_SOILS: tuple[RGB, ...] = ((198, 188, 158), (186, 176, 146), (210, 202, 178), (192, 176, 140),
                           (176, 172, 152), (200, 188, 154))
_GRASSES: tuple[RGB, ...] = ((108, 120, 72), (94, 110, 64), (128, 130, 86), (86, 102, 60),
                             (116, 116, 78))
_TREES: tuple[RGB, ...] = ((50, 70, 42), (58, 78, 46), (46, 64, 46), (64, 80, 52))
ROOFS: tuple[RGB, ...] = ((112, 112, 118), (140, 140, 142), (88, 90, 96), (122, 98, 82),
                          (150, 122, 98), (152, 94, 78), (188, 178, 160), (108, 120, 132),
                          (206, 206, 200), (96, 84, 78))
_CARS: tuple[RGB, ...] = ((225, 225, 225), (30, 30, 34), (160, 162, 166), (150, 40, 40),
                          (40, 60, 120), (200, 200, 205), (90, 90, 95))


def _jit(rng: np.random.Generator, rgb: RGB, amount: float) -> RGB:
    j = rng.uniform(-amount, amount, size=3)
    return (float(rgb[0] + j[0]), float(rgb[1] + j[1]), float(rgb[2] + j[2]))


def _pick(rng: np.random.Generator, seq: tuple[RGB, ...]) -> RGB:
    return seq[int(rng.integers(len(seq)))]


def make_style(rng: np.random.Generator) -> Style:
    grass = _jit(rng, _pick(rng, _GRASSES), 8)
    sun = rng.uniform(-math.pi * 0.95, -math.pi * 0.55)  # towards the upper left, +-
    light = (math.cos(sun), math.sin(sun))
    mag = rng.uniform(0.8, 1.2)
    a = rng.uniform(98, 132)
    c = rng.uniform(182, 204)
    return Style(
        soil=_jit(rng, _pick(rng, _SOILS), 8),
        grass=grass,
        grass2=_jit(rng, (grass[0] - 14, grass[1] - 6, grass[2] - 12), 8),
        tree=_jit(rng, _pick(rng, _TREES), 5),
        asphalt=(a, a + 1, a + rng.uniform(2, 7)),
        concrete=(c, c, c - rng.uniform(2, 8)),
        light=light,
        shadow=(-light[0] * mag, -light[1] * mag),
        grass_level=float(rng.uniform(-0.35, 0.3)),
    )


def make_house(rng: np.random.Generator, cx: float, cy: float, angle: float,
               length: float, depth: float, wing: bool = True) -> House:
    """A house of about length x depth; sometimes L-shaped (if `wing`), with a random roof."""
    parts = [Box(cx, cy, length, depth, angle)]
    if wing and rng.random() < 0.3:  # a wing at one end, perpendicular to the main body
        end = 1.0 if rng.random() < 0.5 else -1.0
        side = 1.0 if rng.random() < 0.5 else -1.0
        wl, wd = depth * rng.uniform(0.8, 1.1), length * rng.uniform(0.3, 0.42)
        u, v = end * (length / 2 - wd / 2), side * (depth / 2 + wl / 2 - depth * 0.2)
        c, s = math.cos(angle), math.sin(angle)
        parts.append(Box(cx + c * u - s * v, cy + s * u + c * v, wl, wd, angle + math.pi / 2))
    style = "hip" if rng.random() < 0.6 else ("gable" if rng.random() < 0.8 else "flat")
    return House(tuple(parts), _jit(rng, _pick(rng, ROOFS), 8), style,
                 float(rng.uniform(3.5, 6.0)))


def make_tree(rng: np.random.Generator, x: float, y: float, r: float) -> Tree:
    n = int(rng.integers(2, 5)) if r > 4.5 else 1
    lumps = []
    for _ in range(n):
        a = rng.uniform(0, 2 * math.pi)
        d = rng.uniform(0.0, 0.4) * r
        lumps.append((float(math.cos(a) * d), float(math.sin(a) * d),
                      float(r * rng.uniform(0.5, 0.75))))
    return Tree(float(x), float(y), float(r), float(rng.uniform(0.85, 1.12)), tuple(lumps))


def tree_cluster(rng: np.random.Generator, cx: float, cy: float, spread: float, n: int,
                 rmin: float, rmax: float) -> list[Tree]:
    out = []
    for _ in range(n):
        x, y = rng.normal(cx, spread), rng.normal(cy, spread)
        out.append(make_tree(rng, x, y, rng.uniform(rmin, rmax)))
    return out


def blob(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float,
         n: int = 28) -> tuple[Point, ...]:
    """An irregular closed outline (smooth random radius perturbation of an ellipse)."""
    k = np.arange(n) * (2 * math.pi / n)
    r = np.ones(n)
    for f in (2, 3, 5):
        r += rng.uniform(0.03, 0.12) * np.cos(f * k + rng.uniform(0, 2 * math.pi))
    return tuple((float(cx + rx * ri * math.cos(a)), float(cy + ry * ri * math.sin(a)))
                 for ri, a in zip(r, k, strict=True))


def soft_rect(rng: np.random.Generator, x0: float, y0: float, x1: float,
              y1: float) -> tuple[Point, ...]:
    """A rounded, slightly wobbly outline around a box (a patch of different ground)."""
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    a, b = (x1 - x0) / 2 * 1.12, (y1 - y0) / 2 * 1.12
    n = 32
    k = np.arange(n) * (2 * math.pi / n)
    wob = np.ones(n)
    for f in (2, 3, 5):
        wob += rng.uniform(0.0, 0.05) * np.cos(f * k + rng.uniform(0, 2 * math.pi))
    c, s = np.cos(k), np.sin(k)
    px = np.sign(c) * np.abs(c) ** 0.5 * a * wob
    py = np.sign(s) * np.abs(s) ** 0.5 * b * wob
    return tuple((float(cx + x), float(cy + y)) for x, y in zip(px, py, strict=True))


def make_lot(rng: np.random.Generator, x0: float, y0: float, x1: float, y1: float) -> Lot:
    """A parking lot filling the box, two rows of stalls, 30-80 % of them taken."""
    vertical = (y1 - y0) > (x1 - x0)
    stall, depth = float(rng.uniform(5.2, 6.2)), float(rng.uniform(10.0, 11.5))
    length = (y1 - y0) if vertical else (x1 - x0)
    n = int((length - 2.0) // stall)
    fill = rng.uniform(0.3, 0.8)
    cars = []
    for row in (0, 1):
        for k in range(n):
            if rng.random() > fill:
                continue
            u = 1.0 + (k + 0.5) * stall
            v = depth / 2 + 0.3
            if vertical:
                x = x0 + v if row == 0 else x1 - v
                cars.append(Car(x, y0 + u, 0.0 if row == 0 else math.pi,
                                _pick(rng, _CARS)))
            else:
                y = y0 + v if row == 0 else y1 - v
                cars.append(Car(x0 + u, y, -math.pi / 2 if row == 0 else math.pi / 2,
                                _pick(rng, _CARS)))
    return Lot((x0, y0, x1, y1), stall, depth, vertical, tuple(cars))


def make_pool(rng: np.random.Generator, cx: float, cy: float, angle: float) -> Pool:
    return Pool(float(cx), float(cy), float(rng.uniform(16, 22)), float(rng.uniform(9, 12)),
                angle)


def make_road(rng: np.random.Generator, points: list[Point], bulb: bool = False,
              width: float | None = None, concrete: bool | None = None) -> Road:
    w = float(width if width is not None else rng.uniform(11, 16))
    light = bool(rng.random() < 0.25) if concrete is None else concrete
    return Road(tuple((float(x), float(y)) for x, y in points), w, bool(rng.random() < 0.5),
                light, bulb)


def bezier(p0: Point, p1: Point, p2: Point, n: int = 18) -> list[Point]:
    """Points on a quadratic Bezier curve."""
    out = []
    for i in range(n):
        t = i / (n - 1)
        a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t * t
        out.append((a * p0[0] + b * p1[0] + c * p2[0], a * p0[1] + b * p1[1] + c * p2[1]))
    return out


def polyline_distance(px: np.ndarray, py: np.ndarray, points: tuple[Point, ...]) -> np.ndarray:
    """Distance from each (px, py) to a polyline."""
    best = np.full(px.shape, np.inf)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        best = np.minimum(best, np.hypot(px - x0 - t * dx, py - y0 - t * dy))
    return best


class Occupancy:
    """A 4-unit grid over the image marking what is taken (so objects do not overlap)."""

    CELL = 4.0

    def __init__(self) -> None:
        self.n = int(EXTENT / self.CELL)
        self.grid = np.zeros((self.n, self.n), dtype=bool)

    def _slice(self, box: tuple[float, float, float, float], margin: float) -> tuple[slice, slice]:
        x0, y0, x1, y1 = box
        c = self.CELL
        i0 = max(0, int((y0 - margin) // c))
        i1 = min(self.n, int(math.ceil((y1 + margin) / c)))
        j0 = max(0, int((x0 - margin) // c))
        j1 = min(self.n, int(math.ceil((x1 + margin) / c)))
        return slice(i0, max(i0, i1)), slice(j0, max(j0, j1))

    def free(self, box: tuple[float, float, float, float], margin: float = 0.0) -> bool:
        return not self.grid[self._slice(box, margin)].any()

    def mark(self, box: tuple[float, float, float, float], margin: float = 0.0) -> None:
        self.grid[self._slice(box, margin)] = True

    def _line(self, points: tuple[Point, ...], width: float) -> np.ndarray:
        img = Image.new("1", (self.n, self.n), 0)
        pts = [(x / self.CELL, y / self.CELL) for x, y in points]
        ImageDraw.Draw(img).line(pts, fill=1, width=max(1, int(math.ceil(width / self.CELL))))
        return np.asarray(img, dtype=bool)

    def free_line(self, points: tuple[Point, ...], width: float) -> bool:
        return not (self.grid & self._line(points, width)).any()

    def mark_line(self, points: tuple[Point, ...], width: float) -> None:
        self.grid |= self._line(points, width)

    def inside(self, box: tuple[float, float, float, float], margin: float = 2.0) -> bool:
        """Whether the box lies within the image (with a small margin)."""
        x0, y0, x1, y1 = box
        return x0 >= margin and y0 >= margin and x1 <= EXTENT - margin and y1 <= EXTENT - margin
