"""Cheap, deterministic noise textures for terrain and grain (numpy + Pillow only).

Smooth fields are random coarse grids upsampled bicubically (a few octaves summed: fractal
"value noise"). Computing them per image is too slow for ~30 ms a pair, so a TextureBank makes
large fields once per dataset and every scene takes random windows of them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_BICUBIC = Image.Resampling.BICUBIC

# name: (cells across one image at the coarsest octave, octaves, persistence)
_FIELDS: dict[str, tuple[float, int, float]] = {
    "cover": (2.5, 3, 0.45),  # where grass grows on the base terrain
    "soil": (4.0, 4, 0.6),  # brightness variation of bare soil
    "grass": (6.0, 4, 0.65),  # brightness variation of grass
    "mix": (5.0, 2, 0.5),  # blend between the two grass tones
    "edge": (12.0, 2, 0.5),  # raggedness of patch and water edges
    "fine": (40.0, 2, 0.8),  # 3-6 px mottling of soil and grass
    "speck": (110.0, 1, 0.5),  # 1-2 px speckle
}
_BANK_IMAGES = 4  # bank fields are this many image sides across
NOISE_SIGMAS: tuple[float, ...] = (1.0, 1.6, 2.2, 2.8)  # sensor noise strengths (grey levels)


def upsample(grid: np.ndarray, side: int) -> np.ndarray:
    """Bicubic upsampling of a small float grid to side x side (float32)."""
    img = Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32), mode="F")
    return np.asarray(img.resize((side, side), _BICUBIC), dtype=np.float32)


def fbm(rng: np.random.Generator, side: int, cells: float, octaves: int = 3,
        persistence: float = 0.5) -> np.ndarray:
    """Fractal value noise, roughly zero-mean with values in about [-1, 1].

    `cells` is the number of grid cells of the coarsest octave across the field; each further
    octave doubles it and scales its amplitude by `persistence`.
    """
    out = np.zeros((side, side), dtype=np.float32)
    amp, total = 1.0, 0.0
    for k in range(octaves):
        n = int(min(side, round(cells * 2**k) + 1))
        out += amp * (upsample(rng.random((n, n), dtype=np.float32), side) - 0.5)
        total += amp
        amp *= persistence
    return out * (2.0 / total)


class TextureBank:
    """Large noise fields and a Gaussian grain block made once; scenes take windows of them."""

    def __init__(self, seed: int, side: int) -> None:
        rng = np.random.default_rng([seed, 0x7E47])
        self.side = side
        big = side * _BANK_IMAGES
        self.fields = {name: fbm(rng, big, cells * _BANK_IMAGES, octaves, pers)
                       for name, (cells, octaves, pers) in _FIELDS.items()}
        self.grain = rng.standard_normal((2 * side, 2 * side, 3), dtype=np.float32)
        normal = rng.standard_normal((2 * side, 2 * side, 3), dtype=np.float32)
        # sensor noise as uint8 around 128, at a few strengths (see radiometry.apply_look)
        self.noise = tuple(np.clip(128.5 + sigma * normal, 0, 255).astype(np.uint8)
                           for sigma in NOISE_SIGMAS)

    def window(self, rng: np.random.Generator, name: str) -> np.ndarray:
        """A side x side view of field `name` at a random offset (do not write to it)."""
        field = self.fields[name]
        y, x = (int(v) for v in rng.integers(0, field.shape[0] - self.side + 1, size=2))
        return field[y:y + self.side, x:x + self.side]

    def take(self, rng: np.random.Generator) -> np.ndarray:
        """A side x side x 3 view of unit Gaussian grain at a random offset."""
        y, x = (int(v) for v in rng.integers(0, self.side + 1, size=2))
        return self.grain[y:y + self.side, x:x + self.side]

    def take_noise(self, rng: np.random.Generator, level: int, size: int) -> np.ndarray:
        """A size x size x 3 uint8 window of sensor noise (128 = none) at NOISE_SIGMAS[level]."""
        y, x = (int(v) for v in rng.integers(0, 2 * self.side - size + 1, size=2))
        return self.noise[level][y:y + size, x:x + size]
