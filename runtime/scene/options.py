"""What a scene run is asked to do (`SceneOptions`, every default in one place) and what it did
(`SceneReport`: counts, timings, throughput, output paths)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsicrc.checks import finite_number, positive_int
from rsicrc.errors import ConfigError
from rsicrc.runtime.decoding import DecodingOptions
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.scene.gate import DEFAULT_MARGIN
from rsicrc.runtime.scene.output import check_format


@dataclass(frozen=True)
class SceneOptions:
    """How to tile, caption and write a scene. Invalid values raise ConfigError when built."""

    tile: int = 256  # tile side in pixels of the before grid (LEVIR-CC: 256 px at 0.5 m)
    overlap: int = 0  # pixels shared by neighbouring tiles
    batch_size: int = 16  # tiles per image-encoder batch (and at most per decoder batch)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)  # beam search settings
    bands: tuple[int, ...] | None = None  # 1-based bands to read (1 or 3); None: the first three
    all_tiles: bool = False  # decode every tile and write one feature per tile, not only changed ones
    query: str | None = None  # rank the scene's tiles by similarity to this text instead
    top_k: int = 20  # with `query`: how many tiles to keep (and caption)
    quicklook: Path | None = None  # PNG to write: the after date with the features outlined
    heat: Path | None = None  # COG to write: every processed tile's score on the scene grid (heat.py)
    format: str = "geojson"  # one of output.FORMATS
    max_nodata: float = 0.5  # a tile with a larger share of nodata pixels (either date) is skipped
    gate_margin: float = DEFAULT_MARGIN  # the change gate's margin (see gate.py)
    progress: bool = True  # a progress bar on stderr
    model_dir: Path | None = None  # exported model folder; None: the default ($RSICRC_MODEL, ...)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)  # engine, device, precision, threads

    def __post_init__(self) -> None:
        positive_int(self.batch_size, "--batch-size")
        positive_int(self.top_k, "--top-k")
        finite_number(self.max_nodata, "max_nodata", minimum=0.0, maximum=1.0)
        finite_number(self.gate_margin, "gate margin", minimum=-2.0, maximum=2.0)
        if self.query is not None and not self.query.strip():
            raise ConfigError("--query is empty; give the change to look for, e.g. \"a road is built\"")
        if self.query is not None and self.all_tiles:
            raise ConfigError("--query ranks tiles by a description; it cannot be combined with --all-tiles")
        check_format(self.format)


@dataclass(frozen=True)
class SceneReport:
    """The outcome of one scene run (`rsicrc scene --json` prints `to_dict()`)."""

    out: Path  # the features file written
    quicklook: Path | None  # the quick-look PNG, if asked for
    complete: bool  # False when interrupted: the files hold the tiles done before Ctrl-C
    counts: dict[str, int]  # tiles, processed, skipped_nodata, gate_unchanged, decoded, changed, features
    timing_s: dict[str, float]  # seconds: open, load_model, stretch, read, preprocess, encode, decode, ...
    area_km2: float | None  # ground area of the processed tiles (None without a metric CRS)
    alignment: str  # what was done to align the dates (one line)
    heat: Path | None = None  # the change layer (COG), if asked for

    @property
    def tiles_per_s(self) -> float:
        return self.counts["processed"] / max(self.timing_s["tiles"], 1e-9)

    @property
    def km2_per_min(self) -> float | None:
        if self.area_km2 is None:
            return None
        return self.area_km2 / max(self.timing_s["tiles"], 1e-9) * 60.0

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "quicklook": str(self.quicklook) if self.quicklook else None,
                "complete": self.complete, "counts": dict(self.counts),
                "timing_s": {k: round(v, 3) for k, v in self.timing_s.items()},
                "tiles_per_s": round(self.tiles_per_s, 3), "area_km2": self.area_km2,
                "km2_per_min": None if self.km2_per_min is None else round(self.km2_per_min, 4),
                "alignment": self.alignment, "heat": str(self.heat) if self.heat else None}
