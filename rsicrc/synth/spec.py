"""The vocabulary of synthetic changes: kinds, locations, counts, and the change record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS: tuple[str, ...] = (
    "houses_built",  # new houses on bare ground or grass
    "houses_demolished",  # houses removed, bare ground or foundations left
    "road_built",  # a straight, T-shaped or curved road, possibly through trees
    "trees_removed",  # a group, a forest patch or a row of trees cut down
    "parking_built",  # parking lots with stall lines and cars
    "pool_built",  # swimming pools appear beside existing houses
    "pond_appeared",  # ponds appear on bare ground or grass
    "lake_dried",  # a lake dries up, leaving a silted bed
)
# 3 x 3 cells of the image; a change's location is the cell holding its bbox centre.
LOCATIONS: tuple[str, ...] = (
    "top_left", "top", "top_right",
    "left", "center", "right",
    "bottom_left", "bottom", "bottom_right",
)
COUNTS: tuple[str, ...] = ("a", "two", "three", "several", "many", "a row of")
CONTEXTS: tuple[str, ...] = ("bareland", "grass", "trees", "houses", "water")


def location_of(cx: float, cy: float, extent: float) -> str:
    """The 3 x 3 cell name of a point in an image of side `extent`."""
    col = min(2, max(0, int(3 * cx / extent)))
    row = min(2, max(0, int(3 * cy / extent)))
    return LOCATIONS[3 * row + col]


def cell_of(location: str) -> tuple[int, int]:
    """(row, col) of a location name."""
    i = LOCATIONS.index(location)
    return i // 3, i % 3


@dataclass(frozen=True)
class Change:
    """One rendered change, as stored in the annotation file's `changes` list."""

    kind: str  # one of KINDS
    location: str  # one of LOCATIONS
    count: str  # one of COUNTS
    objects: int  # how many objects appear or disappear
    context: str  # what was there before: one of CONTEXTS
    detail: str  # kind-specific: road shape, ground left behind, ... ("" if none)
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of image A (x1, y1 exclusive)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "location": self.location, "count": self.count,
                "bbox": list(self.bbox), "objects": self.objects, "context": self.context,
                "detail": self.detail}
