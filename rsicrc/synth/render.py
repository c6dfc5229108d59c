"""Render a tuple of scene items into an RGB float image (numpy + Pillow only).

Ground cover (soil, grass, patches, water) is composited in numpy from per-scene noise fields;
built objects are drawn with Pillow on top; shadows are one soft mask multiplied in between.
Everything that is not an item (terrain noise, grain) belongs to the scene, so the before and
after renders of one scene differ only where items differ and in the per-image `season`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from rsicrc.synth import draw as dr
from rsicrc.synth.canvas import Canvas
from rsicrc.synth.items import (
    House,
    Item,
    Lot,
    Patch,
    Path,
    Point,
    Pool,
    Road,
    Slab,
    Style,
    Tree,
    Water,
)
from rsicrc.synth.noise import TextureBank

_BILINEAR = Image.Resampling.BILINEAR
_SEASON = np.asarray((24.0, 10.0, -6.0), dtype=np.float32)  # dry-season shift of grass
_TREE_SEASON = (10.0, 6.0, -2.0)
_SHORE = np.asarray((78.0, 102.0, 108.0), dtype=np.float32)
_DEEP = np.asarray((28.0, 52.0, 68.0), dtype=np.float32)
GRAIN_NORM = 0.86  # grain multiplies by this on average; radiometry divides it out
_SILT = np.asarray((172.0, 162.0, 142.0), dtype=np.float32)


Region = tuple[slice, slice]


class Terrain:
    """Per-scene ground textures; both images of a pair share one Terrain (and its caches).

    The ground colour is linear in three per-pixel weights: soil (A), grass (B) and the second
    grass tone (C), so each image's ground (with its own season) is one small matrix product.
    """

    def __init__(self, rng: np.random.Generator, canvas: Canvas, style: Style,
                 bank: TextureBank) -> None:
        self.canvas = canvas
        self.style = style
        fine = bank.window(rng, "fine") + 0.6 * bank.window(rng, "speck")
        self.cover = np.clip((bank.window(rng, "cover") + style.grass_level) * 3.0 + 0.5, 0, 1)
        self.soil_mod = 1.0 + 0.12 * bank.window(rng, "soil") + 0.09 * fine
        self.grass_mod = 1.0 + 0.25 * bank.window(rng, "grass") - 0.2 * fine
        self.mix = np.clip(bank.window(rng, "mix") * 1.6 + 0.5, 0, 1)
        self.edge = bank.window(rng, "edge")
        self.fine = fine
        g = bank.take(rng)
        grain = (255.0 * GRAIN_NORM) * (1.0 + 0.05 * g[..., :1] + 0.012 * g)
        self.grain = Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8), "RGB")
        self._masks: dict[Item, tuple[Region, np.ndarray, np.ndarray]] = {}
        self._basis: dict[tuple[Item, ...], tuple[np.ndarray, list]] = {}

    def _region(self, points: tuple[Point, ...], margin: int) -> Region:
        pts = self.canvas.pts(points)
        side = self.canvas.side
        x0 = max(0, int(min(p[0] for p in pts)) - margin)
        y0 = max(0, int(min(p[1] for p in pts)) - margin)
        x1 = min(side, int(max(p[0] for p in pts)) + margin + 1)
        y1 = min(side, int(max(p[1] for p in pts)) + margin + 1)
        return slice(y0, max(y0 + 1, y1)), slice(x0, max(x0 + 1, x1))

    def _lowres(self, points: tuple[Point, ...], region: Region, factor: int,
                blur: float) -> np.ndarray:
        """A polygon mask over `region`, drawn at 1/factor resolution and upsampled."""
        ys, xs = region
        h, w = ys.stop - ys.start, xs.stop - xs.start
        n, m = max(2, h // factor), max(2, w // factor)
        ky, kx = n / h, m / w
        img = Image.new("L", (m, n), 0)
        ImageDraw.Draw(img).polygon(
            [((x - xs.start) * kx, (y - ys.start) * ky) for x, y in self.canvas.pts(points)],
            fill=255)
        if blur > 0:
            img = img.filter(ImageFilter.BoxBlur(blur))
        return np.asarray(img.resize((w, h), _BILINEAR), dtype=np.float32) * (1.0 / 255.0)

    def masks(self, item: Patch | Water) -> tuple[Region, np.ndarray, np.ndarray]:
        """(region, mask, inner) of a patch or water body; inner is a depth-like falloff."""
        got = self._masks.get(item)
        if got is None:
            region = self._region(item.points, 14)
            if isinstance(item, Patch):
                soft = self._lowres(item.points, region, 4, 1.0)
                wob = 0.4 * self.edge[region] + 0.12 * self.fine[region]
                mask = np.clip((soft - 0.5 + wob) * 3.0 + 0.5, 0.0, 1.0)
                got = (region, mask, mask)
            else:
                got = (region, self._lowres(item.points, region, 2, 0.0),
                       self._lowres(item.points, region, 4, 2.0) ** 1.5)
            self._masks[item] = got
        return got

    def _weights(self, items: tuple[Item, ...]) -> tuple[np.ndarray, list]:
        """Cached (A, B, C) weights and the water fills for this set of ground items."""
        key = tuple(it for it in items if isinstance(it, Patch | Water))
        got = self._basis.get(key)
        if got is not None:
            return got
        cover = self.cover.copy()
        waters = []
        soil = np.asarray(self.style.soil, dtype=np.float32)
        for it in key:
            region, m, inner = self.masks(it)
            if isinstance(it, Patch):
                cover[region] = cover[region] * (1.0 - m) + (m if it.cover == "grass" else 0.0)
                continue
            cover[region] *= 1.0 - m
            i3 = inner[..., None]
            if it.state == "water":
                fill = _SHORE + (_DEEP - _SHORE) * i3
            else:
                here = self.soil_mod[region][..., None] * soil
                fill = here * (0.82 + 0.1 * i3) + (_SILT - here) * (i3 * 0.7)
            waters.append((region, m[..., None], fill))
        b = self.grass_mod * cover
        basis = np.stack([self.soil_mod * (1.0 - cover), b, b * self.mix], axis=-1)
        got = (basis, waters)
        self._basis[key] = got
        return got

    def ground(self, items: tuple[Item, ...], season: float) -> np.ndarray:
        """uint8 RGB ground (soil, grass with this image's season, water) under the items."""
        basis, waters = self._weights(items)
        st = self.style
        g1 = np.asarray(st.grass, dtype=np.float32) + _SEASON * season
        mat = np.stack([np.asarray(st.soil, dtype=np.float32), g1,
                        np.asarray(st.grass2, dtype=np.float32) - np.asarray(st.grass)])
        rgb = basis @ mat
        for region, m3, fill in waters:
            rgb[region] += (fill - rgb[region]) * m3
        np.clip(rgb, 0, 255, out=rgb)
        return rgb.astype(np.uint8)


def render(items: tuple[Item, ...], style: Style, terrain: Terrain, season: float) -> Image.Image:
    """Draw the items over the terrain; returns the canvas-sized RGB image before radiometry."""
    cv = terrain.canvas
    img = Image.fromarray(terrain.ground(items, season), "RGB")
    draw = ImageDraw.Draw(img)
    for it in items:
        if isinstance(it, Path):
            draw.line(cv.pts(it.points), fill=dr.col(style.soil, 1.1), width=cv.w(it.width),
                      joint="curve")
    dr.roads(draw, [it for it in items if isinstance(it, Road)], style, cv)
    for it in items:
        if isinstance(it, Lot):
            dr.lot(draw, it, style, cv)
        elif isinstance(it, Slab):
            draw.polygon(cv.pts(it.points), fill=dr.col(style.concrete, it.tone))
    for it in items:
        if isinstance(it, Pool):
            dr.pool(draw, it, style, cv)
    shade = dr.shadows(items, style, cv)  # L image, 255 = full shadow
    img = ImageChops.multiply(img, Image.merge("RGB", (shade, shade, shade)))
    draw = ImageDraw.Draw(img)
    for it in items:
        if isinstance(it, House):
            dr.house(draw, it, style, cv)
    tc = (style.tree[0] + _TREE_SEASON[0] * season, style.tree[1] + _TREE_SEASON[1] * season,
          style.tree[2] + _TREE_SEASON[2] * season)
    for t in sorted((it for it in items if isinstance(it, Tree)), key=lambda t: (t.y, t.x)):
        dr.tree(draw, t, tc, style, cv)
    return ImageChops.multiply(img, terrain.grain)
