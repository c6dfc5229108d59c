"""Where the model looked: the caption's cross-attention drawn over the after image (issue #15).

    result = caption_heatmap(before, after, "out.png", DecodingOptions(beam_size=3))

One PNG: a title with the caption; before | after | the summed map (all words); then one small
panel per word of the caption, each with that word's attention (the decoder step's
`cross_attention`, last multimodal layer, mean over heads) upsampled bilinearly from the model's
token grid (7 x 7 at 224 px) over a grey copy of the after image; and colour bars with 0 and the
maximum. The word panels share one scale (0 .. the largest weight of any word), so that a faint
word looks faint; the summed map has its own. The colormap is viridis (dark violet = 0, yellow =
max) as a lookup table: drawn with Pillow and numpy only, no plotting dependency. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rsicrc.errors import ConfigError
from rsicrc.files import write_atomic
from rsicrc.runtime.captioner import Captioner, CaptionResult, timed
from rsicrc.runtime.decoding import DecodingOptions
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.vocab import SPECIAL_TOKENS, UNK

# viridis at 0, 1/8, ..., 1 (the 9-colour viridis palette); the LUT interpolates linearly between them.
VIRIDIS_ANCHORS = ("#440154", "#472c7a", "#3b518b", "#2c718e", "#21908d", "#27ad81", "#5cc863",
                   "#aadc32", "#fde725")
BIG, SMALL, MARGIN = 256, 124, 8  # panel widths (before/after/sum, word panels) and gaps, px
WORD_COLUMNS = 6  # word panels per row: 6 x 124 + 5 x 8 = 3 x 256 + 2 x 8
LABEL = 20  # label band above each panel, px
OVERLAY = 0.6  # share of the colour in a heat panel (the rest: the grey after image)
BAR_WIDTH, BAR_HEIGHT = 240, 14  # colour bars, px
BACKGROUND, INK = (255, 255, 255), (0, 0, 0)


def colormap_lut(size: int = 256) -> np.ndarray:
    """The viridis lookup table: uint8 [size, 3], entry i for the value i / (size - 1)."""
    anchors = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in VIRIDIS_ANCHORS],
                       np.float64)  # [9, 3]
    at = np.linspace(0.0, 1.0, len(anchors))  # [9]
    x = np.linspace(0.0, 1.0, size)  # [size]
    lut = np.stack([np.interp(x, at, anchors[:, c]) for c in range(3)], axis=1)  # [size, 3]
    return np.round(lut).astype(np.uint8)


LUT = colormap_lut()


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped), any shape [...] -> uint8 RGB [..., 3] through the LUT."""
    index = np.round(np.clip(values, 0.0, 1.0) * (len(LUT) - 1)).astype(np.int64)
    return LUT[index]


def bilinear_weights(source: int, target: int) -> np.ndarray:
    """[target, source] interpolation matrix: bilinear with pixel centres aligned (half-pixel
    offsets, edges clamped), the convention of Pillow's and OpenCV's resize when enlarging."""
    centre = (np.arange(target) + 0.5) * source / target - 0.5  # [target] source coordinates
    centre = np.clip(centre, 0.0, source - 1)
    low = np.floor(centre).astype(np.int64)
    high = np.minimum(low + 1, source - 1)
    frac = centre - low
    out = np.zeros((target, source))
    out[np.arange(target), low] += 1.0 - frac
    out[np.arange(target), high] += frac
    return out


def upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """A [g, g'] map -> [height, width] by bilinear interpolation (float64)."""
    return bilinear_weights(grid.shape[0], height) @ grid @ bilinear_weights(grid.shape[1], width).T


def token_grid(tokens: int) -> int:
    """The side of the square token grid (N = side^2, row-major, as the encoder flattens it)."""
    side = math.isqrt(tokens)
    if side * side != tokens or side < 1:
        raise ConfigError(f"{tokens} visual tokens do not form a square grid")
    return side


@dataclass(frozen=True)
class Panel:
    """One picture in the figure."""

    kind: str  # "before" | "after" | "sum" | "word"
    label: str  # text drawn above it
    box: tuple[int, int, int, int]  # left, top, right, bottom (exclusive) in figure pixels


@dataclass(frozen=True)
class Heatmap:
    """The drawn figure and where everything is in it."""

    image: np.ndarray  # uint8 [H, W, 3], the figure
    panels: tuple[Panel, ...]  # before, after, sum, then one per word in caption order
    word_max: float  # top of the word panels' colour scale (largest weight of any word)
    sum_max: float  # top of the summed map's colour scale

    def save(self, path: Path) -> None:
        """Write the figure as PNG through a temporary file and a rename (never half a file)."""
        image = Image.fromarray(self.image)
        write_atomic(Path(path), lambda f: image.save(f, format="PNG"))


def _font(size: int) -> Any:
    """Pillow's built-in font at `size` px (FreeType), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """`text`, shortened with '...' until it fits in `width` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [height, width, 3] (Pillow bicubic, as the model's preprocessing)."""
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))


def _overlay(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Blend colourized heat [h, w] in [0, 1] over a grey image [h, w] (float 0..255)."""
    out = (1.0 - OVERLAY) * grey[..., None] + OVERLAY * colorize(heat).astype(np.float64)  # [h, w, 3]
    return np.round(out).astype(np.uint8)


def _panel_height(width: int, image: np.ndarray) -> int:
    """Panels keep the image's aspect ratio (the model squashes it to a square; we do not)."""
    return max(1, round(width * image.shape[0] / image.shape[1]))


def render_heatmap(before: np.ndarray, after: np.ndarray, words: Sequence[str], attention: np.ndarray,
                   caption: str | None = None) -> Heatmap:
    """Draw the figure. before/after: uint8 [H, W, 3] (read_pair's output); words: the caption's
    words; attention: float [len(words), N] (a row per word, N = g x g tokens, row-major)."""
    attention = np.asarray(attention, dtype=np.float64)  # [T, N]
    if attention.ndim != 2 or attention.shape[0] != len(words):
        raise ConfigError(f"attention has shape {list(attention.shape)}; expected one row per word "
                          f"({len(words)}) of N values")
    if before.shape != after.shape or before.ndim != 3 or before.shape[2] != 3:
        raise ConfigError(f"before {list(before.shape)} and after {list(after.shape)} must be equal "
                          "[H, W, 3] images")
    side = token_grid(attention.shape[1])
    maps = attention.reshape(len(words), side, side)  # [T, g, g]
    total = maps.sum(axis=0)  # [g, g]
    word_max = float(maps.max(initial=0.0))
    sum_max = float(total.max(initial=0.0))

    big_h, small_h = _panel_height(BIG, after), _panel_height(SMALL, after)
    rows = math.ceil(len(words) / WORD_COLUMNS)
    width = 3 * BIG + 4 * MARGIN
    title_h = LABEL + MARGIN
    top = title_h + MARGIN + LABEL  # first row of panels
    words_top = top + big_h + MARGIN + LABEL
    legend_top = words_top + rows * (small_h + MARGIN + LABEL) - (LABEL if rows else 0)
    height = legend_top + 2 * (BAR_HEIGHT + LABEL) + 2 * MARGIN

    figure = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    font, small_font = _font(14), _font(12)
    if caption is not None:
        draw.text((MARGIN, MARGIN), _fit(draw, caption, font, width - 2 * MARGIN), fill=INK, font=font)

    def grey(w: int, h: int) -> np.ndarray:
        return np.asarray(Image.fromarray(_resized(after, w, h)).convert("L"), dtype=np.float64)  # [h, w]

    panels: list[Panel] = []

    def place(kind: str, label: str, pixels: np.ndarray, left: int, upper: int, text_font: Any) -> None:
        h, w = pixels.shape[:2]
        draw.text((left, upper - LABEL + 2), _fit(draw, label, text_font, w), fill=INK, font=text_font)
        figure.paste(Image.fromarray(pixels), (left, upper))
        panels.append(Panel(kind, label, (left, upper, left + w, upper + h)))

    big_grey = grey(BIG, big_h)
    summed = upsample(total, big_h, BIG) / sum_max if sum_max > 0 else np.zeros((big_h, BIG))
    columns = [MARGIN + i * (BIG + MARGIN) for i in range(3)]
    place("before", "before", _resized(before, BIG, big_h), columns[0], top, font)
    place("after", "after", _resized(after, BIG, big_h), columns[1], top, font)
    place("sum", f"sum over {len(words)} words", _overlay(big_grey, summed), columns[2], top, font)

    small_grey = grey(SMALL, small_h)
    for i, (word, grid) in enumerate(zip(words, maps, strict=True)):
        row, col = divmod(i, WORD_COLUMNS)
        heat = upsample(grid, small_h, SMALL) / word_max if word_max > 0 else np.zeros((small_h, SMALL))
        left = MARGIN + col * (SMALL + MARGIN)
        place("word", f"{i + 1} {word}", _overlay(small_grey, heat), left,
              words_top + row * (small_h + MARGIN + LABEL), small_font)

    bar = colorize(np.broadcast_to(np.linspace(0.0, 1.0, BAR_WIDTH), (BAR_HEIGHT, BAR_WIDTH)))
    for j, (name, top_value) in enumerate((("each word", word_max), ("sum", sum_max))):
        y = legend_top + MARGIN + j * (BAR_HEIGHT + LABEL)
        label_w = 90
        draw.text((MARGIN, y), name, fill=INK, font=small_font)
        x = MARGIN + label_w
        draw.text((x - 12, y), "0", fill=INK, font=small_font)
        figure.paste(Image.fromarray(np.ascontiguousarray(bar)), (x, y))
        draw.rectangle((x - 1, y - 1, x + BAR_WIDTH, y + BAR_HEIGHT), outline=INK)
        draw.text((x + BAR_WIDTH + 6, y), f"{top_value:.3g}", fill=INK, font=small_font)
    return Heatmap(np.asarray(figure), tuple(panels), word_max, sum_max)


def caption_words(tokens: Sequence[int], words: Sequence[str],
                  skipped: Sequence[int]) -> list[tuple[int, str]]:
    """(row, word) for each token the printed caption shows: the rows of the attention to draw.
    `skipped` are the ids the caption leaves out (PAD, START: a model may emit them mid-caption)."""
    return [(i, words[t] if 0 <= t < len(words) else SPECIAL_TOKENS[UNK]) for i, t in enumerate(tokens)
            if t not in skipped]


def check_png_path(out: Path) -> Path:
    """The heatmap's output file: a .png name in an existing folder (checked before any work)."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--heatmap writes a PNG image; give a file name ending in .png, not {out.name!r}")
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise ConfigError(f"cannot write {out}: it is a folder")
    return out


def caption_heatmap(before: Path, after: Path, out: Path, options: DecodingOptions,
                    model_dir: Path | None = None, runtime: RuntimeOptions = RuntimeOptions(),
                    bands: Sequence[int] | None = None) -> CaptionResult:
    """Caption one pair with attention and write its heatmap figure to `out` (PNG, atomically).
    Returns the CaptionResult (with its attention). The `rsicrc caption --heatmap` call."""
    out = check_png_path(out)
    timing: dict[str, float] = {}
    b, a = timed(timing, "read", lambda: read_pair(before, after, bands))  # bad images fail before loading
    captioner = Captioner(ModelFolder.open(model_dir), runtime)
    captioner.require_attention()
    result = captioner.caption_arrays([b], [a], replace(options, attention=True), timing)[0]
    attention = result.attention  # [T, N]; the search always sets it with options.attention
    if attention is None:
        raise ConfigError("the decoder returned no attention for this caption")
    special = captioner.model.special
    shown = caption_words(result.tokens, captioner.model.vocab.words, (special["pad"], special["start"]))
    rows = [i for i, _ in shown]
    render_heatmap(b, a, [w for _, w in shown], attention[rows], result.caption).save(out)
    return result
