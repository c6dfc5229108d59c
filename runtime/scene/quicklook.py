"""The quick-look: the after image, downsampled, with the changed tiles outlined and numbered as
in the features file. People would rather look than read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from rsicrc.files import write_atomic
from rsicrc.runtime.images import apply_stretch
from rsicrc.runtime.scene.features import TileResult
from rsicrc.runtime.scene.radiometry import SceneStretch
from rsicrc.runtime.scene.source import ScenePair

MAX_SIDE = 2048  # longest side of the quick-look, pixels
OUTLINE = (255, 40, 40)  # changed tiles
OUTLINE_UNCHANGED = (255, 230, 60)  # with --all-tiles / --query: tiles the model calls unchanged
NODATA = (40, 40, 40)  # where either date has no data


def render_quicklook(scene: ScenePair, stretch: SceneStretch, results: Sequence[TileResult]) -> Image.Image:
    """The after date over the processed area, longest side <= MAX_SIDE, tiles outlined and numbered
    1..N in the order of `results` (the features' order)."""
    sample = scene.read_decimated(MAX_SIDE, dates=(1,))
    rgb = apply_stretch(sample.after, sample.valid, stretch.after)  # [h, w, 3]
    rgb[~sample.valid] = NODATA
    image = Image.fromarray(rgb)
    area = scene.alignment.window
    sx, sy = image.width / area.width, image.height / area.height
    draw = ImageDraw.Draw(image)
    width = max(1, round(min(image.size) / 400))
    font = ImageFont.load_default(size=max(10, round(min(image.size) / 64)))
    for number, result in enumerate(results, start=1):
        w = result.tile.window
        box = ((w.col_off - area.col_off) * sx, (w.row_off - area.row_off) * sy,
               (w.col_off - area.col_off + w.width) * sx - 1, (w.row_off - area.row_off + w.height) * sy - 1)
        color = OUTLINE if result.changed else OUTLINE_UNCHANGED
        draw.rectangle(box, outline=color, width=width)
        label = str(number)
        at = (box[0] + width + 2, box[1] + width + 2)
        left, top, right, bottom = draw.textbbox(at, label, font=font)
        draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(0, 0, 0))
        draw.text(at, label, fill=color, font=font)
    return image


def write_quicklook(path: Path, scene: ScenePair, stretch: SceneStretch,
                    results: Sequence[TileResult]) -> None:
    """Render and write the quick-look PNG atomically."""
    image = render_quicklook(scene, stretch, results)
    write_atomic(path, lambda f: image.save(f, format="PNG"))

