"""Training end to end on a handful of synthetic pairs: the loop, both InfoNCE averages, the
cosine schedule and the checkpoint it leaves (the numbers are not checked, only that they exist)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from rsicrc.checkpoint import load_checkpoint
from rsicrc.config import Config, load_config
from rsicrc.train import TrainOptions, train


@pytest.mark.parametrize("nce_average, lr_decay", [("positives", "none"), ("anchors", "cosine")])
def test_a_few_steps_write_a_loadable_checkpoint(small_synth_dir: Path, tmp_path: Path,
                                                  nce_average: str, lr_decay: str) -> None:
    tiny = load_config("tiny")
    config = Config(model=dataclasses.replace(tiny.model, image_size=64),
                    train=dataclasses.replace(tiny.train, batch_size=8, nce_average=nce_average,
                                              lr_decay=lr_decay).validate())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(TrainOptions(data=small_synth_dir, out=tmp_path / "ckpt", config=config,
                                    max_steps=4, device="cpu", seed=1, progress=False))
    finally:
        torch.set_num_threads(threads)
    assert result.steps == 4 and math.isfinite(result.best_val_loss)
    ckpt = load_checkpoint(tmp_path / "ckpt", torch.device("cpu"))
    assert ckpt.config.train.nce_average == nce_average and ckpt.config.train.lr_decay == lr_decay
