"""Helpers for the scene tests: small real GeoTIFFs and a hand computation of UTM -> WGS84."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def write_tif(
    path: Path,
    data: np.ndarray,
    crs: str | None = "EPSG:32632",
    origin: tuple[float, float] = (500000.0, 5000000.0),
    res: float = 0.5,
    nodata: float | None = None,
    tiled: bool = True,
) -> Path:
    """Write [k, H, W] `data` as a GeoTIFF (no CRS and no transform when `crs` is None)."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.transform import Affine

    k, h, w = data.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": k, "dtype": data.dtype.name}
    if tiled and h >= 256 and w >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if crs is not None:
        profile.update(crs=crs, transform=Affine(res, 0.0, origin[0], 0.0, -res, origin[1]))
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings():  # a plain TIFF is what some tests want
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


def smooth_field(seed: int, k: int, h: int, w: int, dtype: str = "uint16") -> np.ndarray:
    """[k, h, w] smooth random bands plus noise, never 0, written strip by strip by callers."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((k, h, w), dtype=dtype)
    top = 250 if dtype == "uint8" else 4000
    for b in range(k):
        fx, fy, phase = rng.uniform(0.002, 0.02), rng.uniform(0.002, 0.02), rng.uniform(0, 6.3)
        wave = np.sin(xx * fx + phase) * np.cos(yy * fy) * 0.4 + 0.5  # [h, w] in 0.1..0.9
        noise = rng.normal(0, 0.03, size=(h, w)).astype(np.float32)
        out[b] = np.clip((wave + noise) * top, 1, top).astype(dtype)
    return out


# WGS84 and UTM (Snyder, Map Projections - A Working Manual, USGS PP 1395, pp. 63-64)
_A, _F, _K0 = 6378137.0, 1 / 298.257223563, 0.9996


def utm_to_lonlat(easting: float, northing: float, zone: int) -> tuple[float, float]:
    """Inverse transverse Mercator of a northern-hemisphere UTM point, by the series formulas."""
    e2 = _F * (2 - _F)
    ep2 = e2 / (1 - e2)
    x, m = easting - 500000.0, northing / _K0
    mu = m / (_A * (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256))
    e1 = (1 - math.sqrt(1 - e2)) / (1 + math.sqrt(1 - e2))
    phi1 = (
        mu
        + (3 * e1 / 2 - 27 * e1**3 / 32) * math.sin(2 * mu)
        + (21 * e1**2 / 16 - 55 * e1**4 / 32) * math.sin(4 * mu)
        + (151 * e1**3 / 96) * math.sin(6 * mu)
        + (1097 * e1**4 / 512) * math.sin(8 * mu)
    )
    s, c, t = math.sin(phi1), math.cos(phi1), math.tan(phi1)
    c1, t1 = ep2 * c**2, t**2
    n1 = _A / math.sqrt(1 - e2 * s**2)
    r1 = _A * (1 - e2) / (1 - e2 * s**2) ** 1.5
    d = x / (n1 * _K0)
    lat = phi1 - (n1 * t / r1) * (
        d**2 / 2
        - (5 + 3 * t1 + 10 * c1 - 4 * c1**2 - 9 * ep2) * d**4 / 24
        + (61 + 90 * t1 + 298 * c1 + 45 * t1**2 - 252 * ep2 - 3 * c1**2) * d**6 / 720
    )
    lon0 = math.radians(6 * zone - 183)
    lon = (
        lon0
        + (
            d
            - (1 + 2 * t1 + c1) * d**3 / 6
            + (5 - 2 * c1 + 28 * t1 - 3 * c1**2 + 8 * ep2 + 24 * t1**2) * d**5 / 120
        )
        / c
    )
    return math.degrees(lon), math.degrees(lat)
