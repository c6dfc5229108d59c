"""Image reading on real files written with Pillow and rasterio: formats, bands, stretch, errors."""

from __future__ import annotations

import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import LEVIRCC
from rsicrc.errors import DependencyError, ImageError
from rsicrc.runtime.images import parse_bands, read_image, read_pair

rasterio = pytest.importorskip("rasterio")

SAMPLES = LEVIRCC / "samples"
SAMPLE_NAMES = ("train_000016.png", "train_000051.png", "train_000054.png")


def _rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _write_tif(path: Path, bands: np.ndarray, nodata: float | None = None,
               georef: bool = True) -> Path:
    """bands: [count, H, W]; a real GeoTIFF (with CRS and transform) unless georef=False."""
    count, height, width = bands.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count,
                   dtype=str(bands.dtype), nodata=nodata)
    if georef:
        profile.update(crs="EPSG:32633",
                       transform=rasterio.Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(bands)
    return path


def _reference_stretch(band: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Independent 2..98 percentile stretch of `band` with limits taken from `values`."""
    lo, hi = np.percentile(values.astype(np.float64), [2, 98])
    y = np.clip((band.astype(np.float64) - lo) / (hi - lo) * 255, 0, 255)
    return np.floor(y + 0.5).astype(np.uint8)


def _assert_one_line_error(info: pytest.ExceptionInfo, path: Path | str) -> str:
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    assert str(path) in message
    return message


# --- Pillow formats ---------------------------------------------------------------------------


def test_png_rgb_is_read_exactly(tmp_path: Path) -> None:
    image = _rgb()
    Image.fromarray(image).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, image)


def test_jpeg_is_read_close_to_the_original(tmp_path: Path) -> None:
    image = np.zeros((40, 48, 3), dtype=np.uint8)
    image[:, :24] = (200, 30, 60)
    image[:, 24:] = (10, 120, 250)
    Image.fromarray(image).save(tmp_path / "a.jpg", quality=95)
    out = read_image(str(tmp_path / "a.jpg"))
    assert out.shape == (40, 48, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - image).mean() < 3


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    image = _rgb()
    alpha = np.full(image.shape[:2] + (1,), 128, dtype=np.uint8)
    Image.fromarray(np.concatenate([image, alpha], axis=2)).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), image)


def test_gray_png_is_replicated_to_rgb(tmp_path: Path) -> None:
    gray = _rgb()[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_palette_png_gives_palette_colours(tmp_path: Path) -> None:
    index = (np.arange(20 * 30) % 3).reshape(20, 30).astype(np.uint8)
    img = Image.fromarray(index).convert("P")
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    img.putpalette([v for c in colours for v in c] + [0] * (768 - 9))
    img.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out, np.array(colours, dtype=np.uint8)[index])


def test_bands_reorder_an_rgb_png(tmp_path: Path) -> None:
    image = _rgb()
    Image.fromarray(image).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", bands=(3, 2, 1)),
                                  image[..., ::-1])
    green = read_image(tmp_path / "a.png", bands=[2])
    np.testing.assert_array_equal(green, np.repeat(image[..., 1:2], 3, axis=2))


def test_16_bit_gray_png_is_stretched(tmp_path: Path) -> None:
    values = (np.arange(101, dtype=np.uint16) * 600).reshape(1, 101)  # 0..60000
    Image.fromarray(values).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[..., 0], _reference_stretch(values, values))
    assert out[0, 0, 0] == 0 and out[0, 100, 0] == 255 and out[0, 26, 0] == 64


# --- rasterio formats -------------------------------------------------------------------------


def test_geotiff_uint8_three_bands_is_read_exactly(tmp_path: Path) -> None:
    image = _rgb(16, 20)
    path = _write_tif(tmp_path / "a.tif", np.moveaxis(image, -1, 0).copy())
    np.testing.assert_array_equal(read_image(path), image)


def test_uint8_tiff_is_not_stretched_and_nodata_becomes_zero(tmp_path: Path) -> None:
    bands = np.full((3, 8, 8), 100, dtype=np.uint8)
    bands[:, 0, 0] = 7
    out = read_image(_write_tif(tmp_path / "a.tif", bands, nodata=7))
    assert out[0, 0].tolist() == [0, 0, 0]
    assert (out[1:] == 100).all()  # a constant band stays 100: no stretch for 8-bit data


def test_uint16_four_bands_with_bands_321(tmp_path: Path) -> None:
    h, w = 12, 16
    yy, xx = np.mgrid[0:h, 0:w]
    b1 = (xx * 250).astype(np.uint16)  # left-to-right ramp
    b2 = (yy * 300 + 1000).astype(np.uint16)  # top-to-bottom ramp
    b3 = ((xx + yy) % 5 * 900).astype(np.uint16)  # diagonal stripes
    b4 = np.random.default_rng(1).integers(0, 65535, size=(h, w)).astype(np.uint16)
    path = _write_tif(tmp_path / "ms.tif", np.stack([b1, b2, b3, b4]))
    out = read_image(path, bands=(3, 2, 1))
    for channel, band in enumerate([b3, b2, b1]):
        np.testing.assert_array_equal(out[..., channel], _reference_stretch(band, band))
    default = read_image(path)  # the first three bands, in file order
    for channel, band in enumerate([b1, b2, b3]):
        np.testing.assert_array_equal(default[..., channel], _reference_stretch(band, band))
    assert not np.array_equal(out, default)


def test_percentile_stretch_numbers(tmp_path: Path) -> None:
    values = np.arange(101, dtype=np.uint16).reshape(1, 1, 101)  # p2 = 2, p98 = 98
    out = read_image(_write_tif(tmp_path / "s.tif", values))[0, :, 0]
    # v -> (v - 2) / 96 * 255, clipped, rounded: 0 and 2 -> 0, 26 -> 63.75 -> 64,
    # 74 -> 191.25 -> 191, 98 and 100 -> 255
    assert [int(out[v]) for v in (0, 2, 26, 74, 98, 100)] == [0, 0, 64, 191, 255, 255]


def test_int16_with_negative_values(tmp_path: Path) -> None:
    values = np.arange(-20, 81, dtype=np.int16).reshape(1, 1, 101)  # p2 = -18, p98 = 78
    out = read_image(_write_tif(tmp_path / "i.tif", values))
    assert out.shape == (1, 101, 3)
    # -18 -> 0, 6 -> 24 / 96 * 255 = 63.75 -> 64, 78 -> 255
    assert [int(out[0, v + 20, 0]) for v in (-20, -18, 6, 78, 80)] == [0, 0, 64, 255, 255]


def test_float32_one_band_with_nan_and_nodata(tmp_path: Path) -> None:
    band = np.arange(100, dtype=np.float32).reshape(1, 10, 10) / 10
    band[0, 0, :3] = np.nan
    band[0, 9, 5:] = -9999.0
    out = read_image(_write_tif(tmp_path / "f.tif", band, nodata=-9999.0))
    valid = np.isfinite(band[0]) & (band[0] != -9999.0)
    expected = _reference_stretch(np.where(valid, band[0], 0), band[0][valid])
    expected[~valid] = 0
    for c in range(3):  # one band -> gray RGB
        np.testing.assert_array_equal(out[..., c], expected)
    assert (out[0, :3] == 0).all() and (out[9, 5:] == 0).all()
    assert out[valid].max() == 255  # the -9999 pixels did not take part in the stretch


def test_one_band_tiff_selected_from_many(tmp_path: Path) -> None:
    bands = np.stack([np.full((4, 5), v, dtype=np.uint8) for v in (10, 20, 30, 40, 50)])
    out = read_image(_write_tif(tmp_path / "five.tif", bands), bands=[4])
    assert (out == 40).all()


def test_plain_tiff_without_georeferencing(tmp_path: Path) -> None:
    image = _rgb(8, 9)
    path = _write_tif(tmp_path / "plain.TIFF", np.moveaxis(image, -1, 0).copy(), georef=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NotGeoreferencedWarning reaches the user
        np.testing.assert_array_equal(read_image(path), image)


# --- pairs --------------------------------------------------------------------------------------


def test_read_pair_stretches_both_dates_jointly(tmp_path: Path) -> None:
    dn = np.random.default_rng(2).integers(100, 1000, size=(3, 32, 32)).astype(np.uint16)
    before = _write_tif(tmp_path / "before.tif", dn)
    after = _write_tif(tmp_path / "after.tif", dn * 2)
    a, b = read_pair(before, after)
    assert a.shape == b.shape == (32, 32, 3)
    assert b.astype(float).mean() > a.astype(float).mean() + 40  # after really is brighter
    assert not np.array_equal(a, b)
    for c in range(3):  # the limits come from both images together
        both = np.concatenate([dn[c].ravel(), (dn[c] * 2).ravel()])
        np.testing.assert_array_equal(a[..., c], _reference_stretch(dn[c], both))
        np.testing.assert_array_equal(b[..., c], _reference_stretch(dn[c] * 2, both))
    # each image on its own is scale-free, so a separate stretch would hide the difference
    np.testing.assert_array_equal(read_image(before), read_image(after))


def test_read_pair_keeps_uint8_as_is(tmp_path: Path) -> None:
    x, y = _rgb(seed=1), _rgb(seed=2)
    Image.fromarray(x).save(tmp_path / "x.png")
    Image.fromarray(y).save(tmp_path / "y.png")
    a, b = read_pair(tmp_path / "x.png", tmp_path / "y.png")
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(b, y)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_real_levircc_sample_pairs(name: str) -> None:
    before, after = SAMPLES / "A" / name, SAMPLES / "B" / name
    if not before.is_file():
        pytest.skip("LEVIR-CC samples are not available")
    a, b = read_pair(before, after)
    assert a.shape == b.shape == (256, 256, 3) and a.dtype == b.dtype == np.uint8
    np.testing.assert_array_equal(a, np.asarray(Image.open(before).convert("RGB")))
    assert not np.array_equal(a, b)


# --- parse_bands --------------------------------------------------------------------------------


def test_parse_bands_accepts_one_or_three_numbers() -> None:
    assert parse_bands("4,3,2") == (4, 3, 2)
    assert parse_bands(" 1 , 2 ,3 ") == (1, 2, 3)
    assert parse_bands("5") == (5,)


@pytest.mark.parametrize("junk", ["", "a,b,c", "1.5", "0,1,2", "-1", "1,2", "1,2,3,4", "1,,2"])
def test_parse_bands_rejects_junk(junk: str) -> None:
    with pytest.raises(ImageError, match="1 or 3") as info:
        parse_bands(junk)
    assert "\n" not in str(info.value)


# --- errors: one line, naming the file ----------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="not found") as info:
        read_image(path)
    _assert_one_line_error(info, path)


def test_directory(tmp_path: Path) -> None:
    path = tmp_path / "dir.png"
    path.mkdir()
    with pytest.raises(ImageError, match="directory") as info:
        read_image(path)
    _assert_one_line_error(info, path)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_text_file_named_as_image(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"notes{suffix}"
    path.write_text("these are not pixels\n")
    with pytest.raises(ImageError) as info:
        read_image(path)
    _assert_one_line_error(info, path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_pillow_image(tmp_path: Path, suffix: str) -> None:
    full, path = tmp_path / f"full{suffix}", tmp_path / f"cut{suffix}"
    Image.fromarray(_rgb(64, 64)).save(full)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as info:
        read_image(path)
    _assert_one_line_error(info, path)


def test_truncated_tiff(tmp_path: Path) -> None:
    bands = np.random.default_rng(0).integers(0, 4000, size=(4, 64, 64)).astype(np.uint16)
    full = _write_tif(tmp_path / "full.tif", bands)
    path = tmp_path / "cut.tif"
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        read_image(path)
    _assert_one_line_error(info, path)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_zero_size_png(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"  # a well-formed header that declares 0 x 10 pixels
    ihdr = struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b""))
    with pytest.raises(ImageError, match="zero size") as info:
        read_image(path)
    _assert_one_line_error(info, path)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_zero_byte_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="0 bytes") as info:
        read_image(path)
    _assert_one_line_error(info, path)


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_all_nodata(tmp_path: Path, dtype: str) -> None:
    band = np.full((1, 6, 6), 9, dtype=dtype)
    path = _write_tif(tmp_path / "void.tif", band, nodata=9)
    with pytest.raises(ImageError, match="nodata") as info:
        read_image(path)
    _assert_one_line_error(info, path)


def test_all_nan(tmp_path: Path) -> None:
    path = _write_tif(tmp_path / "nan.tif", np.full((1, 5, 5), np.nan, dtype=np.float32))
    with pytest.raises(ImageError, match="nodata") as info:
        read_image(path)
    _assert_one_line_error(info, path)


def test_mismatched_pair_sizes(tmp_path: Path) -> None:
    before, after = tmp_path / "before.png", tmp_path / "after.png"
    Image.fromarray(_rgb(256, 256)).save(before)
    Image.fromarray(_rgb(200, 300)).save(after)
    with pytest.raises(ImageError) as info:
        read_pair(before, after)
    message = _assert_one_line_error(info, before)
    assert str(after) in message
    assert "before is 256x256 but after is 300x200; both must be the same size" in message


def test_two_bands_need_explicit_bands(tmp_path: Path) -> None:
    path = _write_tif(tmp_path / "two.tif", np.ones((2, 4, 4), dtype=np.uint16))
    with pytest.raises(ImageError, match="unsupported band layout: 2 bands; pass --bands") as i:
        read_image(path)
    _assert_one_line_error(i, path)
    assert read_image(path, bands=(1, 2, 2)).shape == (4, 4, 3)  # --bands makes it readable


def test_band_out_of_range(tmp_path: Path) -> None:
    path = _write_tif(tmp_path / "four.tif", np.ones((4, 4, 4), dtype=np.uint16))
    with pytest.raises(ImageError, match=r"band 5 is out of range.*1\.\.4") as info:
        read_image(path, bands=(5, 3, 2))
    _assert_one_line_error(info, path)
    png = tmp_path / "rgb.png"
    Image.fromarray(_rgb()).save(png)
    with pytest.raises(ImageError, match=r"1\.\.3") as info:
        read_image(png, bands=(4, 3, 2))
    _assert_one_line_error(info, png)


@pytest.mark.parametrize("bands", [(1, 2), (1, 2, 3, 4), (0, 1, 2), ()])
def test_bands_must_name_one_or_three(tmp_path: Path, bands: tuple[int, ...]) -> None:
    path = _write_tif(tmp_path / "four.tif", np.ones((4, 4, 4), dtype=np.uint16))
    with pytest.raises(ImageError, match="1 or 3") as info:
        read_image(path, bands=bands)
    _assert_one_line_error(info, path)


def test_unsupported_dtype(tmp_path: Path) -> None:
    path = _write_tif(tmp_path / "c.tif", np.ones((3, 4, 4), dtype=np.complex64))
    with pytest.raises(ImageError, match="complex64") as info:
        read_image(path)
    _assert_one_line_error(info, path)


def test_decompression_bomb_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(_rgb(64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 px is > 2 x the limit
    with pytest.raises(ImageError, match="too large") as info:
        read_image(path)
    _assert_one_line_error(info, path)


def test_missing_rasterio_is_a_dependency_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_tif(tmp_path / "a.tif", np.ones((3, 4, 4), dtype=np.uint8))
    png = tmp_path / "a.png"
    Image.fromarray(_rgb()).save(png)
    monkeypatch.setitem(sys.modules, "rasterio", None)  # makes `import rasterio` fail
    with pytest.raises(DependencyError, match="pip install rasterio"):
        read_image(path)
    assert read_image(png).shape == (24, 32, 3)  # PNG/JPEG need only Pillow
