"""The numpy preprocessing equals an independent torchvision pipeline, and its spec is strict."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import LEVIRCC
from rsicrc.errors import ConfigError, ImageError
from rsicrc.runtime.preprocess import PreprocessSpec, preprocess, preprocess_batch

SAMPLES = LEVIRCC / "samples"
SAMPLE_NAMES = ("train_000016.png", "train_000051.png", "train_000054.png")
DESIGN_MEAN = (0.48145466, 0.4578275, 0.40821073)
DESIGN_STD = (0.26862954, 0.26130258, 0.27577711)


def _sample(name: str, side: str = "A") -> np.ndarray:
    path = SAMPLES / side / name
    if not path.is_file():
        pytest.skip(f"LEVIR-CC sample {path} is not available")
    return np.asarray(Image.open(path).convert("RGB"))


def _torchvision(image: np.ndarray, size: int, mean, std, interpolation: str) -> np.ndarray:
    """The reference: torchvision's Resize -> ToTensor -> Normalize on the PIL image."""
    transforms = pytest.importorskip("torchvision.transforms")
    mode = getattr(transforms.InterpolationMode, interpolation)
    pipeline = transforms.Compose([
        transforms.Resize((size, size), interpolation=mode),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    return pipeline(Image.fromarray(image)).numpy()


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_matches_torchvision_on_levircc_samples(name: str) -> None:
    image = _sample(name)
    assert image.shape == (256, 256, 3)
    ours = preprocess(image)
    ref = _torchvision(image, 224, DESIGN_MEAN, DESIGN_STD, "BICUBIC")
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    assert ours.flags.c_contiguous
    assert np.abs(ours - ref).max() <= 1e-6


def test_matches_torchvision_on_non_square_random_image() -> None:
    image = np.random.default_rng(7).integers(0, 256, size=(181, 317, 3), dtype=np.uint8)
    ref = _torchvision(image, 224, DESIGN_MEAN, DESIGN_STD, "BICUBIC")
    assert np.abs(preprocess(image) - ref).max() <= 1e-6


def test_matches_torchvision_with_other_size_filter_and_stats() -> None:
    image = np.random.default_rng(8).integers(0, 256, size=(97, 50, 3), dtype=np.uint8)
    spec = PreprocessSpec(size=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                          resample="bilinear")
    ref = _torchvision(image, 64, spec.mean, spec.std, "BILINEAR")
    assert np.abs(preprocess(image, spec) - ref).max() <= 1e-6


def test_normalization_numbers_by_hand() -> None:
    # A uniform image stays uniform under any resize, so each channel is (v/255 - mean)/std.
    image = np.zeros((10, 30, 3), dtype=np.uint8)
    image[...] = (0, 128, 255)
    out = preprocess(image, PreprocessSpec(size=8))
    expected = (np.array([0, 128, 255]) / 255 - np.array(DESIGN_MEAN)) / np.array(DESIGN_STD)
    for c in range(3):
        np.testing.assert_allclose(out[c], expected[c], rtol=0, atol=1e-5)


def test_default_spec_is_the_clip_one_from_the_design() -> None:
    spec = PreprocessSpec()
    assert spec.size == 224 and spec.resample == "bicubic"
    assert spec.mean == DESIGN_MEAN and spec.std == DESIGN_STD


def test_batch_equals_stacked_singles_and_accepts_mixed_sizes() -> None:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in [(40, 60, 3), (33, 33, 3)]]
    spec = PreprocessSpec(size=32)
    batch = preprocess_batch(images, spec)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.float32
    assert batch.flags.c_contiguous
    np.testing.assert_array_equal(batch[0], preprocess(images[0], spec))
    np.testing.assert_array_equal(batch[1], preprocess(images[1], spec))
    assert preprocess_batch([], spec).shape == (0, 3, 32, 32)


def test_spec_round_trips_through_json() -> None:
    spec = PreprocessSpec(size=128, mean=(0.1, 0.2, 0.3), std=(1, 2, 3), resample="lanczos")
    d = json.loads(json.dumps(spec.to_dict()))
    assert d == {"size": 128, "mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 3.0],
                 "resample": "lanczos"}
    back = PreprocessSpec.from_dict(d)
    assert back == spec and isinstance(back.mean, tuple) and isinstance(back.std[0], float)
    assert PreprocessSpec.from_dict({}) == PreprocessSpec()


def test_from_dict_rejects_unknown_keys_naming_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="crop") as info:
        PreprocessSpec.from_dict({"size": 224, "crop": 200})
    assert "size, mean, std, resample" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"size": 0}, "size"),
        ({"size": 22.4}, "size"),
        ({"size": True}, "size"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"mean": "abc"}, "mean"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"std": (0.2, float("nan"), 0.2)}, "std"),
        ({"resample": "cubic"}, "bicubic"),  # the message lists the valid filters
    ],
)
def test_bad_spec_values_raise_config_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        PreprocessSpec(**kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        PreprocessSpec.from_dict(kwargs)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10, 3), dtype=np.float32),
        np.zeros((10, 10), dtype=np.uint8),
        np.zeros((10, 10, 4), dtype=np.uint8),
        np.zeros((0, 10, 3), dtype=np.uint8),
        [[1, 2, 3]],
    ],
)
def test_rejects_inputs_that_are_not_uint8_rgb(bad) -> None:
    with pytest.raises(ImageError):
        preprocess(bad)


def test_runtime_modules_do_not_import_torch() -> None:
    code = (
        "import sys; import rsicrc.runtime.preprocess, rsicrc.runtime.images; "
        "bad = [m for m in ('torch', 'torchvision', 'rasterio') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""  # rasterio too: it is imported lazily
