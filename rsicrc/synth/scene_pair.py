"""A synthetic scene pair: a mosaic of synthetic change tiles as two georeferenced GeoTIFFs.

    out/before.tif   out/after.tif   out/truth.json

Each tile of the mosaic is one synthetic pair (the generator of `rsicrc synth`, same look and
captions), so the ground truth per tile is exact: truth.json lists every tile with its window,
whether it changed, its change events and a reference caption. The rasters carry a real CRS
(default UTM zone 32N, EPSG:32632) and a 0.5 m geotransform; uint8 RGB or uint16 with four bands
(blue, green, red, near-infrared: RGB is `--bands 3,2,1`); nodata 0. Optionally the last tiles
of the after date are nodata (a swath edge) and the after date is reprojected to another CRS or
resolution (bilinear). Written strip by strip (memory does not grow with the scene), in a
temporary folder renamed at the end. Deterministic for a seed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.checks import finite_number, one_of, positive_int
from rsicrc.errors import ConfigError, DataError
from rsicrc.synth.captions import describe, raw_text
from rsicrc.synth.noise import TextureBank
from rsicrc.synth.scene import canvas_for, changes_of, plan_pair, render_pair

BEFORE_FILE, AFTER_FILE, TRUTH_FILE = "before.tif", "after.tif", "truth.json"
DTYPES: tuple[str, ...] = ("uint8", "uint16")
NODATA = 0  # both files' nodata value; real pixels are never 0
RGB_BANDS = {"uint8": [1, 2, 3], "uint16": [3, 2, 1]}  # 1-based bands that make the RGB picture
_GTIFF = {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}


@dataclass(frozen=True)
class ScenePairSpec:
    """What scene pair to write."""

    rows: int  # tiles down
    cols: int  # tiles across
    tile: int = 256  # tile side in pixels (LEVIR-CC: 256 px at 0.5 m)
    seed: int = 0  # same seed, same scene
    changed_fraction: float = 0.3  # share of tiles with a change (rounded to whole tiles)
    dtype: str = "uint8"  # uint8: RGB; uint16: blue, green, red, near-infrared
    crs: str = "EPSG:32632"  # CRS of the before date (and of the after date unless after_crs)
    origin: tuple[float, float] = (500000.0, 5000000.0)  # upper-left corner (x, y) in CRS units
    resolution: float = 0.5  # pixel size in CRS units
    nodata_tiles: int = 0  # after date: the last this many tiles (row-major) hold nodata only
    after_crs: str | None = None  # reproject the after date into this CRS
    after_resolution: float | None = None  # ... at this pixel size (default: about the same)

    def __post_init__(self) -> None:
        positive_int(self.rows, "rows")
        positive_int(self.cols, "cols")
        positive_int(self.tile, "tile size", minimum=64)
        positive_int(self.seed, "seed", minimum=0)
        finite_number(self.changed_fraction, "changed fraction", minimum=0.0, maximum=1.0)
        one_of(self.dtype, DTYPES, "dtype")
        finite_number(self.resolution, "resolution", minimum=1e-9)
        positive_int(self.nodata_tiles, "nodata tiles", minimum=0)
        if self.nodata_tiles >= self.rows * self.cols:
            raise ConfigError(f"nodata tiles must leave at least one tile with data "
                              f"(< {self.rows * self.cols}), got {self.nodata_tiles}")
        if self.after_resolution is not None:
            finite_number(self.after_resolution, "after resolution", minimum=1e-9)


def _bands(rgb: np.ndarray, dtype: str) -> np.ndarray:
    """uint8 [h, w, 3] -> [k, h, w] in the file's layout, never 0 (0 is nodata)."""
    rgb = np.maximum(rgb, 1)  # [h, w, 3]
    if dtype == "uint8":
        return np.moveaxis(rgb, -1, 0)
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    nir = np.clip(1.7 * g - 0.7 * r + 30.0, 1.0, 255.0)  # vegetation bright, water and roofs dark
    return (np.stack([b, g, r, nir]) * 39.0 + 311.0).astype(np.uint16)  # [4, h, w], 12-bit-ish range


def _changed_tiles(spec: ScenePairSpec) -> set[int]:
    n = spec.rows * spec.cols
    rng = np.random.default_rng([spec.seed, 0x5CE7E])
    return {int(i) for i in rng.permutation(n)[: round(spec.changed_fraction * n)]}


def _profile(spec: ScenePairSpec) -> dict[str, Any]:
    from rasterio.transform import Affine

    return {**_GTIFF, "width": spec.cols * spec.tile, "height": spec.rows * spec.tile,
            "count": 3 if spec.dtype == "uint8" else 4, "dtype": spec.dtype, "crs": spec.crs,
            "transform": Affine(spec.resolution, 0.0, spec.origin[0], 0.0, -spec.resolution, spec.origin[1]),
            "nodata": NODATA}


def _write_mosaic(root: Path, spec: ScenePairSpec, progress: bool) -> list[dict[str, Any]]:
    """Render every tile into before.tif and after.tif (one strip of tiles at a time)."""
    import rasterio
    from rasterio.windows import Window
    from tqdm import tqdm

    changed, t = _changed_tiles(spec), spec.tile
    first_nodata = spec.rows * spec.cols - spec.nodata_tiles
    bank = TextureBank(spec.seed, canvas_for(t).side)
    tiles: list[dict[str, Any]] = []
    profile = _profile(spec)
    with rasterio.open(root / BEFORE_FILE, "w", **profile) as dst_b, \
            rasterio.open(root / AFTER_FILE, "w", **profile) as dst_a, \
            tqdm(total=spec.rows * spec.cols, unit="tile", desc="synth-scene", file=sys.stderr,
                 disable=not progress) as bar:
        for r in range(spec.rows):
            strip_b = np.zeros((profile["count"], t, spec.cols * t), dtype=spec.dtype)  # [k, t, W]
            strip_a = np.zeros_like(strip_b)
            for c in range(spec.cols):
                index = r * spec.cols + c
                rng = np.random.default_rng([spec.seed, 0x5CE7E, r, c])
                scene = plan_pair(rng, index in changed)
                before, after = render_pair(scene, rng, t, bank)
                changes = changes_of(scene, t)
                caption = raw_text(describe(changes, rng, n=1)[0])
                strip_b[:, :, c * t:(c + 1) * t] = _bands(before, spec.dtype)
                nodata = index >= first_nodata
                if not nodata:
                    strip_a[:, :, c * t:(c + 1) * t] = _bands(after, spec.dtype)
                tiles.append({"row": r, "col": c, "tile_id": f"r{r:03d}c{c:03d}",
                              "window": {"col_off": c * t, "row_off": r * t, "width": t, "height": t},
                              "changed": bool(changes), "nodata_after": nodata, "caption": caption,
                              "changes": [ch.to_json() for ch in changes]})
                bar.update(1)
            dst_b.write(strip_b, window=Window(0, r * t, spec.cols * t, t))
            dst_a.write(strip_a, window=Window(0, r * t, spec.cols * t, t))
    return tiles


def _reproject_after(root: Path, spec: ScenePairSpec) -> dict[str, Any]:
    """Replace after.tif by its warp into after_crs / after_resolution (bilinear, strip by strip)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import calculate_default_transform
    from rasterio.windows import Window

    aligned = root / f"aligned-{AFTER_FILE}"
    os.replace(root / AFTER_FILE, aligned)
    crs = spec.after_crs or spec.crs
    with rasterio.open(aligned) as src:
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds, resolution=spec.after_resolution)
        with WarpedVRT(src, crs=crs, transform=transform, width=width, height=height,
                       resampling=Resampling.bilinear, nodata=NODATA) as vrt, \
                rasterio.open(root / AFTER_FILE, "w", **{**src.profile, "crs": crs, "transform": transform,
                                                          "width": width, "height": height}) as dst:
            for row in range(0, height, 256):
                window = Window(0, row, width, min(256, height - row))
                dst.write(vrt.read(window=window), window=window)
    aligned.unlink()
    return {"crs": crs, "transform": list(transform)[:6], "width": width, "height": height}


def synthesize_scene(out: Path, spec: ScenePairSpec, progress: bool = False) -> Path:
    """Write the scene pair `spec` into the new folder `out` (see the module doc). Returns `out`."""
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
        tiles = _write_mosaic(tmp, spec, progress)
        profile = _profile(spec)
        after: dict[str, Any] = {"crs": spec.crs, "transform": list(profile["transform"])[:6],
                                 "width": profile["width"], "height": profile["height"]}
        if spec.after_crs is not None or spec.after_resolution is not None:
            after = _reproject_after(tmp, spec)
        truth = {"spec": {**asdict(spec), "origin": list(spec.origin)},
                 "before": {"file": BEFORE_FILE, "crs": spec.crs, "transform": list(profile["transform"])[:6],
                            "width": profile["width"], "height": profile["height"]},
                 "after": {"file": AFTER_FILE, "reprojected": after["crs"] != spec.crs
                           or spec.after_resolution is not None, **after},
                 "rgb_bands": RGB_BANDS[spec.dtype], "nodata": NODATA,
                 "changed_tiles": [t["tile_id"] for t in tiles if t["changed"]],
                 "nodata_tiles": [t["tile_id"] for t in tiles if t["nodata_after"]],
                 "tiles": tiles}
        (tmp / TRUTH_FILE).write_text(json.dumps(truth, indent=1) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
