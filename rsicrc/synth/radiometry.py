"""Per-image acquisition differences: light, season, sensor noise, blur and misregistration.

Every pair, changed or not, gets two independent looks, so "nothing changed" has to be told
apart from "the picture was taken on another day".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from rsicrc.synth.canvas import Canvas
from rsicrc.synth.noise import NOISE_SIGMAS, TextureBank
from rsicrc.synth.render import GRAIN_NORM

_SMOOTH = ImageFilter.BoxBlur(0.5)  # a [1, 2, 1] / 4 kernel on both axes


@dataclass(frozen=True)
class Look:
    """Radiometric and geometric settings of one image."""

    season: float  # vegetation hue shift, -1 (lush) .. 1 (dry)
    gain: float  # overall brightness factor
    contrast: float  # contrast factor around mid grey
    tint: tuple[float, float, float]  # per-channel factors (white balance)
    haze: float  # additive offset
    noise: int  # sensor noise level: index into noise.NOISE_SIGMAS
    blur: float  # extra (box) blur radius in px at 256 px, 0 for none
    shift: tuple[int, int]  # (dx, dy) crop offset in px


def _look(rng: np.random.Generator, blur: bool, shift: tuple[int, int]) -> Look:
    tint = rng.uniform(0.975, 1.025, size=3)
    return Look(
        season=float(rng.uniform(-0.5, 0.5)),
        gain=float(rng.uniform(0.9, 1.1)),
        contrast=float(rng.uniform(0.98, 1.22)),
        tint=(float(tint[0]), float(tint[1]), float(tint[2])),
        haze=float(rng.uniform(-6, 6)),
        noise=int(rng.integers(len(NOISE_SIGMAS))),
        blur=float(rng.uniform(0.5, 1.0)) if blur else 0.0,
        shift=shift,
    )


def random_looks(rng: np.random.Generator, max_shift: int) -> tuple[Look, Look]:
    """Looks for A and B: B is shifted by up to max_shift px; one side may be blurred."""
    blur_side = int(rng.integers(0, 4))  # 0: A, 1: B, else none
    dx, dy = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
    return _look(rng, blur_side == 0, (0, 0)), _look(rng, blur_side == 1, (dx, dy))


def apply_look(img: Image.Image, look: Look, canvas: Canvas, bank: TextureBank,
               rng: np.random.Generator) -> np.ndarray:
    """Radiometry (one lookup table), optics smoothing, optional blur, crop, sensor noise."""
    tint = np.asarray(look.tint)[:, None]
    a = look.contrast * look.gain * tint / GRAIN_NORM
    b = 128.0 * (1.0 - look.contrast) * look.gain * tint + look.haze + 0.5
    table = np.clip(np.arange(256.0)[None, :] * a + b, 0, 255).astype(np.uint8)
    # optics: drawn edges are never razor sharp
    out = img.point(table.ravel().tolist()).filter(_SMOOTH)
    if look.blur > 0:
        out = out.filter(ImageFilter.BoxBlur(look.blur * canvas.scale))
    p = canvas.pad
    dx, dy = look.shift
    out = out.crop((p + dx, p + dy, p + dx + canvas.size, p + dy + canvas.size))
    noise = Image.fromarray(np.ascontiguousarray(bank.take_noise(rng, look.noise, canvas.size)),
                            "RGB")
    return np.asarray(ImageChops.add(out, noise, 1.0, -128))
