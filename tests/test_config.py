"""Config loading is strict: unknown keys, bad values and unknown names fail clearly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rsicrc.config import load_config, shipped_configs
from rsicrc.errors import ConfigError


def test_shipped_configs_load() -> None:
    assert {"paper", "tiny"} <= set(shipped_configs())
    paper = load_config("paper")
    assert paper.model.d_model == 2048 and paper.model.backbone.layers == (3, 4, 6, 3)
    assert paper.model.max_len == 41 and paper.model.num_visual_tokens == 49
    assert paper.train.lr == 1e-4 and paper.train.batch_size == 4 and paper.train.epochs == 50
    assert paper.train.contrastive_weight == 0.5 and paper.train.temperature == 0.01
    assert paper.train.nce_average == "positives" and paper.train.lr_decay == "none"


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    return path


def test_config_round_trip(tmp_path: Path) -> None:
    tiny = load_config("tiny")
    assert load_config(_write(tmp_path, tiny.to_dict())) == tiny


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["model"].update(colour=1), "unknown key(s) colour"),
    (lambda d: d["model"]["backbone"].update(depth=1), "unknown key(s) depth"),
    (lambda d: d.update(extra={}), "expected keys"),
    (lambda d: d["model"].pop("d_model"), "d_model"),
    (lambda d: d["model"].update(d_model=130), "divisible"),
    (lambda d: d["train"].update(fn_threshold=1.5), "fn_threshold"),
    (lambda d: d["train"].update(nce_average="batch"), "nce_average must be one of positives, anchors"),
    (lambda d: d["train"].update(lr_decay="step"), "lr_decay must be one of none, cosine"),
])
def test_bad_configs_fail(tmp_path: Path, mutate, message: str) -> None:
    data = load_config("tiny").to_dict()
    mutate(data)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(_write(tmp_path, data))


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ConfigError, match="paper"):
        load_config("nonexistent")


def test_learning_rate_schedule() -> None:
    from rsicrc.train import lr_factor

    warm = [lr_factor(s, 4, 20, "none") for s in range(4)]
    assert warm == [0.25, 0.5, 0.75, 1.0]
    assert [lr_factor(s, 4, 20, "none") for s in (4, 12, 19, 40)] == [1.0] * 4  # the paper's
    assert lr_factor(4, 4, 20, "cosine") == 1.0
    assert abs(lr_factor(12, 4, 20, "cosine") - 0.5) < 1e-12  # half way down
    assert lr_factor(20, 4, 20, "cosine") == 0.0 and lr_factor(40, 4, 20, "cosine") == 0.0
    cos = [lr_factor(s, 4, 20, "cosine") for s in range(4, 21)]
    assert all(a > b for a, b in zip(cos, cos[1:], strict=False))
