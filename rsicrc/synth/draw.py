"""Drawing of built objects (roads, lots, pools, houses, trees, shadows) with Pillow."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFilter

from rsicrc.synth.canvas import Canvas
from rsicrc.synth.items import (
    RGB,
    Box,
    House,
    Item,
    Lot,
    Point,
    Pool,
    Road,
    Style,
    Tree,
    box_corners,
    offset_polyline,
)

SHADOW_DEPTH = 0.6  # fraction of light a full shadow removes
_SHADE = [int(round(255 - SHADOW_DEPTH * v)) for v in range(256)]


def col(rgb: RGB, f: float = 1.0) -> tuple[int, int, int]:
    """An 8-bit colour from a float colour times a brightness factor."""
    return (int(max(0, min(255, rgb[0] * f))), int(max(0, min(255, rgb[1] * f))),
            int(max(0, min(255, rgb[2] * f))))


def circle(draw: ImageDraw.ImageDraw, c: Point, r: float, fill: tuple[int, ...] | int) -> None:
    draw.ellipse((c[0] - r, c[1] - r, c[0] + r, c[1] + r), fill=fill)


def roads(draw: ImageDraw.ImageDraw, items: list[Road], style: Style, cv: Canvas) -> None:
    """Sidewalks, then curbs, then carriageways of all roads (so junctions merge cleanly)."""
    for rd in items:
        if rd.sidewalk:
            for side in (-1, 1):
                line = cv.pts(offset_polyline(rd.points, side * (rd.width / 2 + 5.5)))
                draw.line(line, fill=col(style.concrete, 1.03), width=cv.w(3.0), joint="curve")
    for rd in items:
        pts = cv.pts(rd.points)
        draw.line(pts, fill=col(style.concrete, 0.95), width=cv.w(rd.width + 2.0), joint="curve")
        if rd.bulb:
            circle(draw, pts[-1], (rd.width * 1.2 + 1.0) * cv.scale, col(style.concrete, 0.95))
    for rd in items:
        pts = cv.pts(rd.points)
        surf = col(style.concrete, 0.86) if rd.concrete else col(style.asphalt)
        draw.line(pts, fill=surf, width=cv.w(rd.width), joint="curve")
        if rd.bulb:
            circle(draw, pts[-1], rd.width * 1.2 * cv.scale, surf)


def lot(draw: ImageDraw.ImageDraw, lt: Lot, style: Style, cv: Canvas) -> None:
    """Asphalt with a concrete rim, two facing rows of painted stalls, parked cars."""
    x0, y0, x1, y1 = lt.box
    (a, b), (c, d) = cv.pts([(x0, y0), (x1, y1)])
    draw.rectangle((a - cv.scale, b - cv.scale, c + cv.scale, d + cv.scale),
                   fill=col(style.concrete, 0.95))
    draw.rectangle((a, b, c, d), fill=col(style.asphalt, 1.08))
    paint, lw = (232, 232, 226), max(1, int(round(0.8 * cv.scale)))
    length = (y1 - y0) if lt.vertical else (x1 - x0)
    n = int((length - 2.0) // lt.stall)
    for row in (0, 1):
        for k in range(n + 1):
            u = 1.0 + k * lt.stall
            if lt.vertical:
                xa = x0 if row == 0 else x1 - lt.depth
                seg = [(xa, y0 + u), (xa + lt.depth, y0 + u)]
            else:
                ya = y0 if row == 0 else y1 - lt.depth
                seg = [(x0 + u, ya), (x0 + u, ya + lt.depth)]
            draw.line(cv.pts(seg), fill=paint, width=lw)
    for car in lt.cars:
        draw.polygon(cv.pts(box_corners(Box(car.x, car.y, 8.5, 4.2, car.angle))),
                     fill=col(car.color))
        cx, cy = car.x + 1.2 * math.cos(car.angle), car.y + 1.2 * math.sin(car.angle)
        draw.polygon(cv.pts(box_corners(Box(cx, cy, 2.0, 3.4, car.angle))),
                     fill=col(car.color, 0.35))


def pool(draw: ImageDraw.ImageDraw, p: Pool, style: Style, cv: Canvas) -> None:
    """A white deck, a darker rim and the bright water."""
    b = Box(p.cx, p.cy, p.length, p.width, p.angle)
    draw.polygon(cv.pts(box_corners(b, 2.5)), fill=col(style.concrete, 1.1))
    draw.polygon(cv.pts(box_corners(b)), fill=(38, 120, 170))
    draw.polygon(cv.pts(box_corners(b, -1.4)), fill=(72, 178, 218))


def _hull(pts: list[Point]) -> list[Point]:
    """Convex hull (monotone chain), for the swept shadow of a box."""
    pts = sorted(set(pts))
    if len(pts) < 3:
        return pts

    def half(seq: list[Point]) -> list[Point]:
        out: list[Point] = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return half(pts) + half(pts[::-1])


def shadows(items: tuple[Item, ...], style: Style, cv: Canvas) -> Image.Image:
    """Soft shading factors (L image, 255 = lit) from the shadows of houses and trees."""
    img = Image.new("L", (cv.side, cv.side), 0)
    draw = ImageDraw.Draw(img)
    sx, sy = style.shadow
    for it in items:
        if isinstance(it, House):
            for b in it.parts:
                foot = box_corners(b)
                moved = [(x + sx * it.height, y + sy * it.height) for x, y in foot]
                draw.polygon(cv.pts(_hull(foot + moved)), fill=255)
        elif isinstance(it, Tree):
            h = it.r * 0.9
            c = cv.pts([(it.x + sx * h, it.y + sy * h)])[0]
            circle(draw, c, it.r * 0.95 * cv.scale, 255)
    img = img.filter(ImageFilter.BoxBlur(max(0.5, 0.7 * cv.scale)))
    return img.point(_SHADE)


def house(draw: ImageDraw.ImageDraw, h: House, style: Style, cv: Canvas) -> None:
    """Roof facets shaded by their orientation to the sun, with dark eaves and a ridge."""
    lx, ly = style.light
    for b in h.parts:
        c, s = math.cos(b.angle), math.sin(b.angle)
        hl, hd = b.length / 2, b.depth / 2

        def world(u: float, v: float, b: Box = b, c: float = c, s: float = s) -> Point:
            return (b.cx + c * u - s * v, b.cy + s * u + c * v)

        def shade(nu: float, nv: float, c: float = c, s: float = s) -> float:
            return 1.0 + 0.32 * ((c * nu - s * nv) * lx + (s * nu + c * nv) * ly)

        draw.polygon(cv.pts(box_corners(b, 0.8)), fill=col(h.roof, 0.55))
        if h.style == "flat":
            draw.polygon(cv.pts(box_corners(b)), fill=col(h.roof, 1.12))
            draw.polygon(cv.pts(box_corners(b, -1.6)), fill=col(h.roof, 0.98))
            for k in range(2):  # rooftop units
                u = (k - 0.5) * hl * 0.6
                unit = box_corners(Box(*world(u, hd * 0.3), 4.0, 3.0, b.angle))
                draw.polygon(cv.pts(unit), fill=col(h.roof, 1.2))
            continue
        r = hl - hd if h.style == "hip" else hl  # ridge half-length
        facets = [([(-hl, -hd), (hl, -hd), (r, 0.0), (-r, 0.0)], (0.0, -1.0)),
                  ([(-hl, hd), (hl, hd), (r, 0.0), (-r, 0.0)], (0.0, 1.0))]
        if h.style == "hip":
            facets += [([(-hl, -hd), (-hl, hd), (-r, 0.0)], (-1.0, 0.0)),
                       ([(hl, -hd), (hl, hd), (r, 0.0)], (1.0, 0.0))]
        for poly, (nu, nv) in facets:
            draw.polygon(cv.pts([world(u, v) for u, v in poly]), fill=col(h.roof, shade(nu, nv)))
        draw.line(cv.pts([world(-r, 0.0), world(r, 0.0)]), fill=col(h.roof, 1.15),
                  width=max(1, int(0.7 * cv.scale)))


def tree(draw: ImageDraw.ImageDraw, t: Tree, color: RGB, style: Style, cv: Canvas) -> None:
    """A dark crown, mid-tone lumps, and sunlit highlights on the lumps."""
    lx, ly = style.light
    base = (color[0] * t.tone, color[1] * t.tone, color[2] * t.tone)
    x, y = cv.pts([(t.x, t.y)])[0]
    s = cv.scale
    circle(draw, (x, y), t.r * s, col(base, 0.7))
    for dx, dy, rr in t.lumps:
        circle(draw, (x + dx * s, y + dy * s), rr * s, col(base, 0.95))
    for dx, dy, rr in t.lumps:
        hc = (x + (dx + lx * rr * 0.35) * s, y + (dy + ly * rr * 0.35) * s)
        circle(draw, hc, rr * 0.5 * s, col(base, 1.25))
