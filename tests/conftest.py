"""Shared fixtures: real LEVIR-CC reference data, tiny configs and a small synthetic dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ../shared beside the checkout (CI lays it there); RSICRC_SHARED overrides.
SHARED = Path(os.environ.get("RSICRC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
LEVIRCC = SHARED / "data" / "levircc"


@pytest.fixture(scope="session")
def levircc_dir() -> Path:
    if not (LEVIRCC / "LevirCCcaptions.json").is_file():
        pytest.skip(f"real LEVIR-CC reference data not found at {LEVIRCC}")
    return LEVIRCC


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic synthetic dataset shared by the whole session."""
    from rsicrc.synth import synthesize

    out = tmp_path_factory.mktemp("synth") / "data"
    return synthesize(out, pairs=40, seed=7, size=128)
