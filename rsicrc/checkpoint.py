"""Checkpoint folders: the one loader and writer (weights + config + vocabulary + metadata).

    CKPT_DIR/model.safetensors   best weights (by validation loss)
    CKPT_DIR/config.json         {"model": {...}, "train": {...}}
    CKPT_DIR/vocab.json          {word: id}, PAD 0, START 1, UNK 2, END 3
    CKPT_DIR/training.json       metadata: steps, epochs, losses, data, seed, backbone, times
    CKPT_DIR/resume/             last state for --resume (last.safetensors + state.pt)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rsicrc.config import Config, config_from_dict
from rsicrc.errors import CheckpointError, RsicrcError
from rsicrc.files import CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS, write_json_atomic
from rsicrc.model import RSICRC
from rsicrc.vocab import Vocabulary

WEIGHTS, CONFIG, VOCAB, META = CHECKPOINT_WEIGHTS, CHECKPOINT_CONFIG, "vocab.json", "training.json"
RESUME_DIR = "resume"


@dataclass(frozen=True)
class Checkpoint:
    model: RSICRC
    config: Config
    vocab: Vocabulary
    meta: dict[str, Any]
    path: Path


def is_checkpoint_dir(path: Path) -> bool:
    return (Path(path) / WEIGHTS).is_file() and (Path(path) / CONFIG).is_file()


def save_weights(model: RSICRC, path: Path) -> None:
    """Weights as safetensors (the LM head reuses the embedding tensor, so nothing is stored twice)."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    # contiguous(): training may keep conv weights channels-last; the file stores plain layout
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def save_checkpoint(path: Path, model: RSICRC, config: Config, vocab: Vocabulary,
                    meta: dict[str, Any]) -> None:
    """Write (or update) a checkpoint folder; each file is replaced atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path / CONFIG, config.to_dict())
    write_json_atomic(path / VOCAB, vocab.to_dict())
    save_weights(model, path / WEIGHTS)
    write_json_atomic(path / META, meta)


def read_config_and_vocab(path: Path) -> tuple[Config, Vocabulary, dict[str, Any]]:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    for name in (WEIGHTS, CONFIG, VOCAB):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is not a checkpoint folder: {name} is missing")
    try:
        config = config_from_dict(json.loads((path / CONFIG).read_text()), str(path / CONFIG))
        vocab = Vocabulary.load(path / VOCAB)
        meta = json.loads((path / META).read_text()) if (path / META).is_file() else {}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None
    except RsicrcError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return config, vocab, meta


def load_weights(model: RSICRC, file: Path) -> None:
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(model, str(file), strict=False)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"cannot load weights {file}: {e}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{file} does not match its config (missing: {', '.join(list(missing)[:5]) or 'none'}; "
            f"unexpected: {', '.join(list(unexpected)[:5]) or 'none'})")


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu") -> Checkpoint:
    """The one loader: config + vocabulary + weights -> model in eval mode."""
    path = Path(path)
    config, vocab, meta = read_config_and_vocab(path)
    model = RSICRC(config.model, len(vocab))
    load_weights(model, path / WEIGHTS)
    return Checkpoint(model.to(device).eval(), config, vocab, meta, path)


def remove_resume_state(path: Path) -> None:
    shutil.rmtree(Path(path) / RESUME_DIR, ignore_errors=True)
