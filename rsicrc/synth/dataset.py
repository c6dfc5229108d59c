"""Write a synthetic change dataset folder in the LEVIR-CC layout, deterministically.

    out/images/{train,val,test}/{A,B}/<split>_<nnnnnn>.png     A = before, B = after
    out/LevirCCcaptions.json

The folder is built next to `out` under a temporary name and renamed at the end, so `out`
either does not exist or is complete. Pair i's content depends only on (seed, i, size).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.errors import ConfigError, DataError
from rsicrc.levircc import ANNOTATION_FILE, SPLITS
from rsicrc.synth.captions import describe, raw_text
from rsicrc.synth.noise import TextureBank
from rsicrc.synth.png import write_png
from rsicrc.synth.scene import canvas_for, changes_of, plan_pair, render_pair

MIN_PAIRS = 3
MIN_SIZE = 64
DATASET_NAME = "synthetic"


def _check(pairs: object, seed: object, size: object, fractions: object) -> tuple[float, ...]:
    if isinstance(pairs, bool) or not isinstance(pairs, Integral) or pairs < MIN_PAIRS:
        raise ConfigError(f"pairs must be an integer >= {MIN_PAIRS} (one per split at least), "
                          f"got {pairs!r}")
    if isinstance(size, bool) or not isinstance(size, Integral) or size < MIN_SIZE:
        raise ConfigError(f"size must be an integer >= {MIN_SIZE} pixels, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        fr = tuple(float(f) for f in fractions)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ConfigError("split_fractions must be three numbers (train, val, test), "
                          f"got {fractions!r}") from None
    if (len(fr) != 3 or not all(isinstance(f, Real) and math.isfinite(f) and f > 0 for f in fr)
            or abs(sum(fr) - 1.0) > 1e-6):
        raise ConfigError("split_fractions must be three positive numbers (train, val, test) "
                          f"summing to 1, got {fractions!r}")
    return fr


def split_sizes(pairs: int, fractions: tuple[float, ...]) -> tuple[int, int, int]:
    """Pairs per split (train, val, test), each at least 1, summing to `pairs`."""
    val = max(1, round(pairs * fractions[1]))
    test = max(1, round(pairs * fractions[2]))
    while pairs - val - test < 1:
        if val >= test and val > 1:
            val -= 1
        else:
            test -= 1
    return pairs - val - test, val, test


def _changed_flags(seed: int, split_index: int, n: int) -> list[bool]:
    """About half of each split changed, in a seeded random order."""
    rng = np.random.default_rng([seed, 0xC4A9, split_index])
    n_changed = n // 2 + (int(rng.integers(2)) if n % 2 else 0)
    flags = np.zeros(n, dtype=bool)
    flags[:n_changed] = True
    return [bool(f) for f in rng.permutation(flags)]


def _entry(imgid: int, split: str, filename: str, captions: list[list[str]],
           changes: list[dict[str, Any]]) -> dict[str, Any]:
    sentences = [{"tokens": toks, "raw": raw_text(toks), "imgid": imgid, "sentid": imgid * 5 + k}
                 for k, toks in enumerate(captions)]
    return {"filepath": split, "filename": filename, "imgid": imgid, "split": split,
            "changeflag": 1 if changes else 0, "sentences": sentences,
            "sentids": [s["sentid"] for s in sentences], "changes": changes}


def _generate(root: Path, pairs: int, seed: int, size: int, fractions: tuple[float, ...],
              progress: bool) -> None:
    from tqdm import tqdm

    bank = TextureBank(seed, canvas_for(size).side)
    entries: list[dict[str, Any]] = []
    imgid = 0
    with tqdm(total=pairs, desc="synthesize", unit="pair", file=sys.stderr,
              disable=not progress) as bar:
        for si, (split, n) in enumerate(zip(SPLITS, split_sizes(pairs, fractions), strict=True)):
            dirs = [root / "images" / split / side for side in ("A", "B")]
            for d in dirs:
                d.mkdir(parents=True)
            for k, changed in enumerate(_changed_flags(seed, si, n)):
                rng = np.random.default_rng([seed, imgid])
                scene = plan_pair(rng, changed)
                before, after = render_pair(scene, rng, size, bank)
                changes = changes_of(scene, size)
                filename = f"{split}_{k:06d}.png"
                write_png(dirs[0] / filename, before)
                write_png(dirs[1] / filename, after)
                entries.append(_entry(imgid, split, filename, describe(changes, rng),
                                      [c.to_json() for c in changes]))
                imgid += 1
                bar.update(1)
    doc = {"dataset": DATASET_NAME, "images": entries}
    (root / ANNOTATION_FILE).write_text(json.dumps(doc) + "\n")


def synthesize(out: Path, pairs: int, seed: int, size: int = 256,
               split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
               progress: bool = False) -> Path:
    """Generate `pairs` synthetic before/after pairs with captions into the new folder `out`.

    Deterministic: the same arguments give byte-identical files. Raises ConfigError for bad
    arguments and DataError if `out` exists and is not an empty folder. Returns `out`.
    """
    fractions = _check(pairs, seed, size, split_fractions)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"output folder {out} already exists and is not empty; "
                        "choose a new path or remove it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as e:
        raise DataError(f"cannot create the output folder next to {out}: {e}") from None
    try:
        _generate(tmp, int(pairs), int(seed), int(size), fractions, progress)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a dataset folder is not
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
