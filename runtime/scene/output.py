"""Writing a scene's features: GeoJSON (always available) or GeoPackage (with pyogrio).

Both go through `rsicrc.files.write_atomic`: a reader sees the old file or the whole new one.
GeoPackage is written by pyogrio (`pip install 'rsicrc[gpkg]'`): it is maintained with GDAL's
own vector drivers, needs neither shapely nor geopandas, and writes into memory, so the bytes
take the same atomic path as GeoJSON. Its layer `changes` holds the same features as the
GeoJSON (geometry in WGS84, or unitless pixels without georeferencing), `beams` as a JSON text
field and the collection's `rsicrc` member as dataset metadata.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.errors import ConfigError, DataError, DependencyError
from rsicrc.files import write_atomic
from rsicrc.runtime.scene.features import WGS84

FORMATS: tuple[str, ...] = ("geojson", "gpkg")
LAYER = "changes"  # the GeoPackage layer name


def check_output(path: Path, what: str) -> Path:
    """`path` can be written: its folder exists and is writable, and it is not a folder."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise DataError(f"{what} {path}: the folder {folder} does not exist")
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder; give a file name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"{what} {path}: the folder {folder} is not writable")
    return path


def check_format(fmt: str) -> str:
    """`fmt` if known; GeoPackage also needs pyogrio installed (checked before any work starts)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "gpkg":
        _pyogrio()
    return fmt


def _pyogrio() -> Any:
    try:
        import pyogrio.raw
    except ImportError:
        raise DependencyError("--format gpkg needs pyogrio; install it with: pip install 'rsicrc[gpkg]' "
                              "(or use --format geojson)") from None
    return pyogrio.raw


def write_geojson(path: Path, collection: dict[str, Any]) -> None:
    """The FeatureCollection as compact JSON (no NaN), atomically."""
    write_atomic(path, json.dumps(collection, separators=(",", ":"), allow_nan=False) + "\n")


def _wkb_polygon(ring: list[list[float]]) -> bytes:
    """One-ring polygon as little-endian WKB."""
    return struct.pack("<BII", 1, 3, 1) + struct.pack("<I", len(ring)) + b"".join(
        struct.pack("<dd", x, y) for x, y in ring)


# GeoPackage columns and their types, whatever the features hold (an empty layer keeps its schema).
_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("number", np.int64), ("caption", object), ("score", np.float64), ("changed", np.bool_),
    ("row", np.int64), ("col", np.int64), ("tile_id", object), ("gate_score", np.float64),
    ("beams", object), ("window_col_off", np.int64), ("window_row_off", np.int64),
    ("window_width", np.int64), ("window_height", np.int64))
_QUERY_COLUMNS: tuple[tuple[str, Any], ...] = (("rank", np.int64), ("similarity", np.float64))


def _value(props: dict[str, Any], name: str) -> Any:
    if name == "beams":
        return json.dumps(props["beams"])
    if name.startswith("window_"):
        return props["window"][name[len("window_"):]]
    return props.get(name)


def write_gpkg(path: Path, collection: dict[str, Any]) -> None:
    """The same features as a GeoPackage layer `changes`, atomically."""
    raw = _pyogrio()
    features = collection["features"]
    meta = collection["rsicrc"]
    columns = _COLUMNS + (_QUERY_COLUMNS if meta.get("query") else ())
    field_data, masks = [], []
    for name, dtype in columns:
        values = [_value(f["properties"], name) for f in features]
        missing = np.array([v is None for v in values], dtype=bool)  # [n]
        blank = "" if dtype is object else 0
        field_data.append(np.array([blank if v is None else v for v in values], dtype=dtype))
        masks.append(missing if missing.any() else None)
    geometry = np.array([_wkb_polygon(f["geometry"]["coordinates"][0]) for f in features], dtype=object)
    crs = WGS84 if meta["coordinates"].startswith("WGS84") else None
    buffer = io.BytesIO()
    logging.getLogger("pyogrio").setLevel(logging.WARNING)  # not "Created N records" on every run
    raw.write(buffer, geometry, field_data, [name for name, _ in columns], field_mask=masks, layer=LAYER,
              driver="GPKG", geometry_type="Polygon", crs=crs, dataset_metadata={"rsicrc": json.dumps(meta)})
    write_atomic(path, buffer.getvalue())


def write_features(path: Path, collection: dict[str, Any], fmt: str) -> None:
    """Write `collection` in `fmt` (one of FORMATS)."""
    (write_gpkg if fmt == "gpkg" else write_geojson)(path, collection)
