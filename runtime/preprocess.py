"""The one image preprocessing used by training and by the deployed runtime (numpy + Pillow).

uint8 [H, W, 3] -> float32 [3, size, size]: Pillow resize of the whole image to size x size
(no crop: a crop could cut away the change), /255, then (x - mean) / std per channel. The
float arithmetic is done in float32 in the same order as torchvision's
Resize -> ToTensor -> Normalize, so both give the same tensor (tested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from rsicrc.checks import positive_int
from rsicrc.errors import ConfigError, ImageError

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Pillow filter names accepted in a spec (and written into the manifest).
RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _triple(name: str, value: Any, positive: bool) -> tuple[float, float, float]:
    """Validate a per-channel (R, G, B) triple of finite floats."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise ConfigError(f"preprocessing {name} must be 3 numbers (R, G, B), got {value!r}")
    out: list[float] = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"preprocessing {name} must be 3 finite numbers, got {value!r}")
        if positive and v <= 0:
            raise ConfigError(f"preprocessing {name} must be > 0 for every channel, got {value!r}")
        out.append(float(v))
    return out[0], out[1], out[2]


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input; recorded in checkpoints and in the export manifest."""

    size: int = 224  # output side in pixels (square)
    mean: tuple[float, float, float] = CLIP_MEAN  # per-channel mean subtracted after /255
    std: tuple[float, float, float] = CLIP_STD  # per-channel std divided by after the mean
    resample: str = "bicubic"  # Pillow filter name, one of RESAMPLE_FILTERS

    def __post_init__(self) -> None:
        positive_int(self.size, "preprocessing size")
        object.__setattr__(self, "mean", _triple("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _triple("std", self.std, positive=True))
        if self.resample not in RESAMPLE_FILTERS:
            raise ConfigError(
                f"unknown resample filter {self.resample!r}; "
                f"choose one of: {', '.join(RESAMPLE_FILTERS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists for mean and std)."""
        return {
            "size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resample": self.resample,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessSpec:
        """Strict inverse of to_dict: unknown keys are an error, missing keys take defaults."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"preprocessing must be a JSON object, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ConfigError(
                f"unknown preprocessing key(s): {', '.join(unknown)}; "
                f"valid keys: {', '.join(known)}"
            )
        return cls(**dict(d))


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy uint8 [H, W, 3] image, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(
            f"expected a uint8 [H, W, 3] image, got {image.dtype} {list(image.shape)}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"cannot preprocess an empty image of shape {list(image.shape)}")
    return image


def _preprocess_into(image: np.ndarray, spec: PreprocessSpec, out: np.ndarray) -> None:
    """Write the preprocessed [3, size, size] tensor of one image into `out`."""
    pil = Image.fromarray(np.ascontiguousarray(_check_image(image)))
    resized = pil.resize((spec.size, spec.size), resample=RESAMPLE_FILTERS[spec.resample])
    x = np.asarray(resized, dtype=np.float32) / np.float32(255.0)  # [size, size, 3]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    out[...] = ((x - mean) / std).transpose(2, 0, 1)


def preprocess(image: np.ndarray, spec: PreprocessSpec = PreprocessSpec()) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, size, size], C-contiguous."""
    out = np.empty((3, spec.size, spec.size), dtype=np.float32)
    _preprocess_into(image, spec, out)
    return out


def preprocess_batch(
    images: Sequence[np.ndarray], spec: PreprocessSpec = PreprocessSpec()
) -> np.ndarray:
    """A sequence of uint8 [H, W, 3] images (sizes may differ) -> float32 [B, 3, size, size]."""
    out = np.empty((len(images), 3, spec.size, spec.size), dtype=np.float32)
    for i, image in enumerate(images):
        _preprocess_into(image, spec, out[i])
    return out
