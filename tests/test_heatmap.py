"""The attention heatmap figure (rsicrc.runtime.heatmap): the colormap, the bilinear upsampling
against Pillow's, and the drawn panels: where they are, what is in them, which way up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsicrc.errors import ConfigError
from rsicrc.runtime.heatmap import (
    BIG,
    LUT,
    OVERLAY,
    SMALL,
    caption_words,
    colorize,
    render_heatmap,
    token_grid,
    upsample,
)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """Relative luminance Y of sRGB colours uint8 [..., 3] (linearised, Rec. 709 weights)."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def test_colormap_is_viridis_and_ordered_by_lightness() -> None:
    assert LUT.shape == (256, 3) and LUT.dtype == np.uint8
    assert LUT[0].tolist() == [0x44, 0x01, 0x54] and LUT[-1].tolist() == [0xFD, 0xE7, 0x25]
    assert LUT[128].tolist() == pytest.approx([0x21, 0x90, 0x8D], abs=2)  # viridis' middle teal
    steps = np.diff(_luminance(LUT))
    assert (steps >= 0).all() and (steps > 0).mean() > 0.95  # perceptual: darker never means more
    assert colorize(np.array([-1.0, 0.0, 1.0, 2.0])).tolist() == [LUT[0].tolist(), LUT[0].tolist(),
                                                                  LUT[-1].tolist(), LUT[-1].tolist()]


@pytest.mark.parametrize(("height", "width"), [(124, 124), (100, 150), (7, 7), (13, 29)])
def test_upsampling_is_pillows_bilinear(height: int, width: int) -> None:
    grid = np.random.default_rng(height).random((7, 7)).astype(np.float32)
    ours = upsample(grid.astype(np.float64), height, width)
    pillow = np.asarray(Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(ours, pillow, atol=1e-5, rtol=0)
    assert upsample(np.full((4, 4), 0.25), 9, 11) == pytest.approx(np.full((9, 11), 0.25))


def test_token_grid() -> None:
    assert token_grid(49) == 7 and token_grid(16) == 4 and token_grid(1) == 1
    with pytest.raises(ConfigError, match="12 visual tokens do not form a square grid"):
        token_grid(12)


GREY = 128  # flat grey images: a heat panel's pixel is then OVERLAY * colour + (1 - OVERLAY) * GREY


def _flat(size: tuple[int, int]) -> np.ndarray:
    return np.full((*size, 3), GREY, dtype=np.uint8)


def _read_heat(panel: np.ndarray) -> np.ndarray:
    """Invert a heat panel drawn over the flat grey image: the scaled heat of each pixel [h, w]."""
    colours = (1 - OVERLAY) * GREY + OVERLAY * LUT.astype(np.float64)  # [256, 3] what each value draws
    dist = ((panel[:, :, None, :].astype(np.float64) - colours[None, None]) ** 2).sum(-1)  # [h, w, 256]
    return dist.argmin(-1) / (len(LUT) - 1)


def _panel(image: np.ndarray, panel) -> np.ndarray:  # noqa: ANN001
    left, top, right, bottom = panel.box
    return image[top:bottom, left:right]


def test_figure_layout_and_panels(tmp_path: Path) -> None:
    """before | after | sum, then one panel per word in caption order, each word's peak drawn
    where its token sits (row-major grid, right way up), on one colour scale; saved as PNG."""
    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    words = ["two", "houses", "are", "built", "at", "the", "top", "left"]
    side, n = 7, 49
    peaks = [(0, 0), (0, 6), (6, 0), (6, 6), (3, 3), (1, 5), (5, 2), (2, 4)]  # (row, column) per word
    attention = np.full((len(words), n), 0.01, np.float32)
    for i, (r, c) in enumerate(peaks):
        attention[i, r * side + c] = 1.0 - 0.01 * (n - 1)  # rows sum to 1
    attention[1] *= 0.5  # a fainter word: its peak must not reach the top of the shared scale
    fig = render_heatmap(before, _flat((96, 96)), words, attention, "two houses are built at the top left")

    kinds = [p.kind for p in fig.panels]
    assert kinds == ["before", "after", "sum"] + ["word"] * len(words)
    assert [p.label for p in fig.panels[3:]] == [f"{i + 1} {w}" for i, w in enumerate(words)]
    image = fig.image
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    for p in fig.panels:
        left, top, right, bottom = p.box
        assert 0 <= left < right <= image.shape[1] and 0 <= top < bottom <= image.shape[0]
        assert right - left == (SMALL if p.kind == "word" else BIG)
    boxes = [p.box for p in fig.panels]
    assert all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]  # no two overlap
               for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert len({p.box[1] for p in fig.panels[:3]}) == 1  # before | after | sum: one row, in that order
    assert fig.panels[0].box[0] < fig.panels[1].box[0] < fig.panels[2].box[0]
    assert fig.panels[3].box[1] > fig.panels[0].box[3]  # the words come below

    # before is the image itself (resized like the model's input)
    left, top, right, bottom = fig.panels[0].box
    want = np.asarray(Image.fromarray(before).resize((BIG, BIG), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(image[top:bottom, left:right], want)

    # each word panel: reading the colours back gives that word's map, upsampled, on the shared
    # scale (so the peak sits in its own cell, right way up, and the fainter word stays fainter)
    assert fig.word_max == pytest.approx(float(attention.max()))
    cell = SMALL / side
    for i, ((r, c), p) in enumerate(zip(peaks, fig.panels[3:], strict=True)):
        left, top, right, bottom = p.box
        heat = _read_heat(image[top:bottom, left:right])  # [SMALL, SMALL] in 0..1
        want = upsample(attention[i].reshape(side, side).astype(np.float64), SMALL, SMALL) / fig.word_max
        np.testing.assert_allclose(heat, want, atol=0.02)
        y, x = np.unravel_index(np.argmax(heat), heat.shape)
        assert (int(y // cell), int(x // cell)) == (r, c)
    assert _read_heat(_panel(image, fig.panels[4])).max() < 0.55  # "houses", at half strength
    assert fig.sum_max == pytest.approx(float(attention.sum(axis=0).max()), rel=1e-6)

    out = tmp_path / "fig.png"
    fig.save(out)
    np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), image)
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # no temporary file left


def test_figure_keeps_the_aspect_ratio_and_takes_an_empty_caption() -> None:
    before = _flat((60, 120))
    fig = render_heatmap(before, before, [], np.zeros((0, 16), np.float32))
    assert [p.kind for p in fig.panels] == ["before", "after", "sum"]
    left, top, right, bottom = fig.panels[0].box
    assert (right - left, bottom - top) == (BIG, BIG // 2)
    assert fig.word_max == fig.sum_max == 0.0


def test_figure_refuses_mismatched_inputs() -> None:
    img = _flat((32, 32))
    with pytest.raises(ConfigError, match="one row per word"):
        render_heatmap(img, img, ["a", "b"], np.full((3, 49), 1 / 49, np.float32))
    with pytest.raises(ConfigError, match="must be equal"):
        render_heatmap(img, _flat((32, 40)), ["a"], np.full((1, 49), 1 / 49, np.float32))
    with pytest.raises(ConfigError, match="square grid"):
        render_heatmap(img, img, ["a"], np.full((1, 10), 0.1, np.float32))


def test_panels_are_the_words_the_caption_prints() -> None:
    """A model may emit START or PAD mid-caption (a random one does); the caption leaves them out,
    so does the figure: one panel per printed word, with that word's attention row."""
    from rsicrc.vocab import PAD, SPECIAL_TOKENS, START, Vocabulary

    vocab = Vocabulary(SPECIAL_TOKENS + ("a", "road"))
    tokens = (4, START, 5, PAD, 2, 4)
    shown = caption_words(tokens, vocab.words, (PAD, START))
    assert shown == [(0, "a"), (2, "road"), (4, "<UNK>"), (5, "a")]
    assert " ".join(w for _, w in shown) == vocab.decode(tokens)
