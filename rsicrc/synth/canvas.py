"""The pixel frame that canonical scene coordinates are drawn into."""

from __future__ import annotations

from dataclasses import dataclass

from rsicrc.synth.items import EXTENT, Point


@dataclass(frozen=True)
class Canvas:
    """The image plus a margin on every side (room for the misregistration shift)."""

    size: int  # output image side in px
    pad: int  # margin in px

    @property
    def side(self) -> int:
        return self.size + 2 * self.pad

    @property
    def scale(self) -> float:
        """Pixels per canonical unit."""
        return self.size / EXTENT

    def pts(self, points: tuple[Point, ...] | list[Point]) -> list[Point]:
        s, p = self.scale, self.pad
        return [(x * s + p, y * s + p) for x, y in points]

    def w(self, width: float) -> int:
        """A line width in whole pixels (at least 1)."""
        return max(1, int(round(width * self.scale)))
