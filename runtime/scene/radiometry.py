"""One 8-bit stretch per scene, so that neighbouring tiles are comparable.

`rsicrc caption` stretches each pair between its own 2nd and 98th percentiles; a scene instead
fits those limits once, on a decimated read of both dates (pixels valid in both), and applies
them to every tile. 8-bit data is never stretched. Same band selection and arithmetic as
`rsicrc.runtime.images` (its `joint_stretch` / `apply_stretch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rsicrc.errors import DataError
from rsicrc.runtime.images import Stretch, apply_stretch, joint_stretch
from rsicrc.runtime.scene.source import ScenePair, WindowPixels

SAMPLE_SIDE = 512  # longest side of the decimated read the stretch is fitted on (~0.26 M pixels)


@dataclass(frozen=True)
class SceneStretch:
    """The 8-bit conversion of each date, fixed for the whole scene."""

    before: Stretch  # limits of the before date (shared with after when both have one dtype)
    after: Stretch  # limits of the after date

    def apply(self, pixels: WindowPixels) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [h, w, 3] before and after of one window; pixels invalid in either date are 0."""
        return (apply_stretch(pixels.before, pixels.valid, self.before),
                apply_stretch(pixels.after, pixels.valid, self.after))

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before.to_dict(), "after": self.after.to_dict(),
                "fitted_on": f"both dates decimated to at most {SAMPLE_SIDE} px"}


def fit_stretch(scene: ScenePair, sample_side: int = SAMPLE_SIDE) -> SceneStretch:
    """Fit the scene's stretch on a decimated read; a DataError when no pixel has data in both dates."""
    sample = scene.read_decimated(sample_side)
    if not sample.valid.any():
        raise DataError(f"every pixel is nodata in at least one date ({scene.shown[0]}, {scene.shown[1]}); "
                        "there is nothing to caption")
    dtypes = scene.dtypes
    if dtypes[0] == dtypes[1]:
        both = joint_stretch([sample.before, sample.after], [sample.valid, sample.valid])
        return SceneStretch(both, both)
    return SceneStretch(joint_stretch([sample.before], [sample.valid]),
                        joint_stretch([sample.after], [sample.valid]))
