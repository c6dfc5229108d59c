"""One synthetic before/after pair: plan the changes, fill the rest, render both images.

The changes are placed first (each in a 3 x 3 cell, checked to really land there), then the
static scene fills the free space around them. Both images render the same static items over
the same terrain; they differ in the change items and in per-image radiometry and a small shift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rsicrc.synth.canvas import Canvas
from rsicrc.synth.changes import PLANNERS, ChangePlan
from rsicrc.synth.items import EXTENT, Item, Style, union_bounds
from rsicrc.synth.layout import static_items
from rsicrc.synth.noise import TextureBank
from rsicrc.synth.objects import Occupancy, make_style
from rsicrc.synth.radiometry import apply_look, random_looks
from rsicrc.synth.render import Terrain, render
from rsicrc.synth.spec import KINDS, LOCATIONS, Change, cell_of, location_of

Bounds = tuple[float, float, float, float]
_N_CHANGES = (1, 2, 3)
_P_CHANGES = (0.55, 0.3, 0.15)


@dataclass(frozen=True)
class PlacedChange:
    """A planned change with its (verified) location and canonical bounds."""

    plan: ChangePlan  # the items and caption words
    location: str  # one of spec.LOCATIONS
    bounds: Bounds  # canonical bounds of the changed items, clipped to the image


@dataclass(frozen=True)
class PairScene:
    """Everything needed to render one pair."""

    style: Style  # palette and lighting
    before: tuple[Item, ...]  # items of image A
    after: tuple[Item, ...]  # items of image B
    changes: tuple[PlacedChange, ...]  # empty for an unchanged pair


def _clip(b: Bounds) -> Bounds:
    return (max(0.0, b[0]), max(0.0, b[1]), min(EXTENT, b[2]), min(EXTENT, b[3]))


def _place(rng: np.random.Generator, kind: str, occ: Occupancy) -> PlacedChange | None:
    """Try to plan one change of `kind` somewhere free; None if it does not fit."""
    for _ in range(12):
        location = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
        plan = PLANNERS[kind](rng, cell_of(location))
        moved = plan.before + plan.after
        if not moved:
            continue
        b = _clip(union_bounds(list(moved)))
        if b[2] - b[0] < 4 or b[3] - b[1] < 4:
            continue
        if location_of((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, EXTENT) != location:
            continue
        region = _clip(union_bounds(list(moved + plan.shared)))
        if not occ.free(region, 6):
            continue
        occ.mark(region, 4)
        return PlacedChange(plan, location, b)
    return None


def plan_pair(rng: np.random.Generator, changed: bool,
              kinds: Sequence[str] | None = None) -> PairScene:
    """Plan the items of a pair; a changed pair gets 1-3 changes of distinct kinds.

    `kinds` forces the change kinds (for inspection and tests); those that do not fit are
    dropped, except that a changed pair always keeps at least one change.
    """
    style = make_style(rng)
    occ = Occupancy()
    placed: list[PlacedChange] = []
    if changed:
        if kinds is None:
            n = int(rng.choice(_N_CHANGES, p=_P_CHANGES))
            wanted = [KINDS[int(i)] for i in rng.permutation(len(KINDS))]
        else:
            n, wanted = len(kinds), list(kinds)
        for kind in wanted:
            if len(placed) == n:
                break
            got = _place(rng, kind, occ)
            if got is not None:
                placed.append(got)
        for _ in range(20):  # a changed pair never goes without a change
            if placed:
                break
            got = _place(rng, wanted[0], occ)
            if got is not None:
                placed.append(got)
        if not placed:
            raise RuntimeError(f"could not place a {wanted[0]} change")  # not reachable in practice
    static = tuple(static_items(rng, occ, style))
    before: list[Item] = list(static)
    after: list[Item] = list(static)
    for pc in placed:
        before.extend(pc.plan.shared + pc.plan.before)
        after.extend(pc.plan.shared + pc.plan.after)
    return PairScene(style, tuple(before), tuple(after), tuple(placed))


def pixel_bbox(b: Bounds, size: int) -> tuple[int, int, int, int]:
    s = size / EXTENT
    return (int(math.floor(b[0] * s)), int(math.floor(b[1] * s)),
            min(size, int(math.ceil(b[2] * s))), min(size, int(math.ceil(b[3] * s))))


def changes_of(scene: PairScene, size: int) -> list[Change]:
    return [Change(pc.plan.kind, pc.location, pc.plan.count, pc.plan.objects, pc.plan.context,
                   pc.plan.detail, pixel_bbox(pc.bounds, size)) for pc in scene.changes]


def canvas_for(size: int) -> Canvas:
    """The drawing frame for an output size: margin = the largest shift + 1 px."""
    return Canvas(size, max(1, round(3 * size / EXTENT)) + 1)


def render_pair(scene: PairScene, rng: np.random.Generator, size: int,
                bank: TextureBank) -> tuple[np.ndarray, np.ndarray]:
    """Both images as uint8 (size, size, 3): A (before) and B (after, shifted)."""
    canvas = canvas_for(size)
    max_shift = canvas.pad - 1
    terrain = Terrain(rng, canvas, scene.style, bank)
    look_a, look_b = random_looks(rng, max_shift)
    a = render(scene.before, scene.style, terrain, look_a.season)
    b = render(scene.after, scene.style, terrain, look_b.season)
    return apply_look(a, look_a, canvas, bank, rng), apply_look(b, look_b, canvas, bank, rng)
