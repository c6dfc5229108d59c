"""Model and training configuration: frozen dataclasses, strict JSON (torch-free).

A shipped config (`rsicrc/configs/<name>.json`) or any JSON file holds
`{"model": {...}, "train": {...}}`; unknown keys are an error, missing model keys
are an error, and missing train keys take the paper defaults below (DESIGN §3).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from rsicrc.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class BackboneConfig:
    """open_clip ModifiedResNet trunk without its attention pool."""

    layers: tuple[int, int, int, int]  # Bottleneck blocks per stage (RN50: 3, 4, 6, 3)
    width: int  # stem width; the trunk emits 32 * width channels (RN50: 64 -> 2048)
    frozen_stages: int = 2  # 0 none, 1 the stem, 2 the stem and layer1 (paper)

    @property
    def feature_dim(self) -> int:
        return 32 * self.width


@dataclass(frozen=True)
class ModelConfig:
    """The RSICRC architecture (DESIGN §3). Vocabulary size comes from the vocabulary."""

    name: str  # shipped name or a label for a custom config
    backbone: BackboneConfig
    d_model: int  # C: visual token width and decoder width
    encoder_layers: int  # bi-temporal encoder layers (T1 + T2 each)
    decoder_layers: int  # layers of the unimodal and of the multimodal stack
    num_heads: int  # heads in every attention
    h_dim: int  # bi-temporal encoder feed-forward hidden width
    a_dim: int  # bi-temporal encoder attention inner width (q/k/v projections)
    dropout: float  # dropout everywhere (0.1 in the paper)
    max_len: int  # token positions incl. START and END; self-attention cache capacity
    image_size: int = 224  # input side; the trunk's grid is image_size / 32
    value_from_key: bool = False  # original code's quirk: encoder V computed with to_k (DESIGN §10)
    # Variants of the original research code's decoder (its config.json `prenorm`, `learnable`,
    # `tie_embeddings`); the defaults are the paper's, so older checkpoints read unchanged.
    prenorm: bool = False  # decoder layers normalise each sub-block's input, not the residual sum
    learned_positions: bool = False  # a learned [max_len, C] position table instead of sin/cos
    tie_embeddings: bool = True  # LM head = token embedding; else its own bias-free [V, C] head

    @property
    def grid(self) -> int:
        return self.image_size // 32

    @property
    def num_visual_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def validate(self) -> ModelConfig:
        problems = []
        if self.image_size % 32:
            problems.append(f"image_size {self.image_size} is not a multiple of 32")
        if self.d_model % self.num_heads or self.d_model % 2:
            problems.append(f"d_model {self.d_model} must be even and divisible by num_heads")
        if self.a_dim % self.num_heads:
            problems.append(f"a_dim {self.a_dim} must be divisible by num_heads {self.num_heads}")
        if self.max_len < 3:
            problems.append("max_len must be at least 3 (START, one word, END)")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("dropout must be in [0, 1)")
        if not 0 <= self.backbone.frozen_stages <= 2:
            problems.append("backbone.frozen_stages must be 0, 1 or 2")
        if min(self.encoder_layers, self.decoder_layers, self.h_dim, self.backbone.width) < 1:
            problems.append("layer counts and widths must be positive")
        if problems:
            raise ConfigError(f"invalid model config {self.name!r}: " + "; ".join(problems))
        return self


NCE_AVERAGES = ("positives", "anchors")  # how InfoNCE averages its terms (loss.info_nce)
LR_DECAYS = ("none", "cosine")  # the learning rate after warmup (train.lr_factor)


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults are the paper's (DESIGN §3)."""

    lr: float = 1e-4  # AdamW learning rate after warmup (constant)
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.01  # AdamW weight decay (torch default)
    batch_size: int = 4  # samples per step (one caption per sample)
    epochs: int = 50  # passes over the training captions
    warmup_fraction: float = 0.025  # linear warmup over this share of all steps
    lr_decay: str = "none"  # after warmup: "none" keeps lr constant (paper), "cosine" decays to 0
    contrastive_weight: float = 0.5  # lambda: loss = CE + lambda * InfoNCE
    temperature: float = 0.01  # InfoNCE temperature tau
    fn_threshold: float = 1.0  # caption similarity at which two pairs are false negatives
    fna: bool = True  # false-negative attraction (else elimination only)
    nce_average: str = "positives"  # InfoNCE mean over all positives (paper) or per anchor first
    grad_clip: float = 0.0  # max gradient norm, 0 = off
    label_smoothing: float = 0.0  # cross-entropy label smoothing

    def validate(self) -> TrainConfig:
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1 or self.temperature <= 0:
            raise ConfigError("lr, batch_size, epochs and temperature must be positive")
        if not 0.0 < self.fn_threshold <= 1.0:
            raise ConfigError(f"fn_threshold must be in (0, 1], got {self.fn_threshold}")
        if self.lr_decay not in LR_DECAYS:
            raise ConfigError(f"lr_decay must be one of {', '.join(LR_DECAYS)}; got {self.lr_decay!r}")
        if self.nce_average not in NCE_AVERAGES:
            raise ConfigError(f"nce_average must be one of {', '.join(NCE_AVERAGES)}; "
                              f"got {self.nce_average!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError("warmup_fraction must be in [0, 1)")
        return self


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type[T], data: Any, where: str) -> T:
    """Strictly turn a JSON object into dataclass `cls` (nested dataclasses, tuples)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(fields)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        ftype = fields[name].type
        if ftype == "BackboneConfig":
            value = _build(BackboneConfig, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def model_config_from_dict(data: Any, where: str = "model") -> ModelConfig:
    return _build(ModelConfig, data, where).validate()


def train_config_from_dict(data: Any, where: str = "train") -> TrainConfig:
    return _build(TrainConfig, data, where).validate()


def config_from_dict(data: Any, where: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    unknown = sorted(set(data) - {"model", "train"})
    if unknown or "model" not in data:
        raise ConfigError(f"{where}: expected keys 'model' and optionally 'train'")
    return Config(
        model=model_config_from_dict(data["model"], f"{where}.model"),
        train=train_config_from_dict(data.get("train", {}), f"{where}.train"),
    )


def shipped_configs() -> list[str]:
    files = resources.files("rsicrc").joinpath("configs").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".json"))


def load_config(name_or_path: str | Path) -> Config:
    """A shipped config by name (`paper`, `tiny`, ...) or a JSON file path."""
    text = str(name_or_path)
    if text in shipped_configs():
        raw = resources.files("rsicrc").joinpath("configs", f"{text}.json").read_text()
        where = f"config {text}"
    else:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(
                f"unknown config {text!r}: not a file, and not one of {', '.join(shipped_configs())}"
            )
        raw, where = path.read_text(), str(path)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: invalid JSON ({e})") from None
    return config_from_dict(data, where)
