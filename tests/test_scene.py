"""Whole scenes (`rsicrc.runtime.scene`) on real GeoTIFFs written by rasterio and the real tiny
exported model: the tile grid, coordinates against a hand computation, alignment of a
reprojected after date, nodata, the scene-wide stretch, the output formats and the quick-look."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scene_helpers import smooth_field, utm_to_lonlat, write_tif

from rsicrc.errors import ConfigError, DataError
from rsicrc.runtime.decoding import DecodingOptions
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.scene import SceneOptions, caption_scene
from rsicrc.runtime.scene.grid import PixelWindow, check_tile, tile_grid
from rsicrc.synth.scene_pair import ScenePairSpec, synthesize_scene

SPEC = ScenePairSpec(rows=4, cols=4, tile=64, seed=3, changed_fraction=0.5, nodata_tiles=2)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same synthetic scene pair three ways: aligned uint8, after date reprojected to Web
    Mercator at another resolution, and 4-band uint16."""
    root = tmp_path_factory.mktemp("scenes")
    return {
        "aligned": synthesize_scene(root / "aligned", SPEC),
        "reprojected": synthesize_scene(
            root / "reprojected",
            ScenePairSpec(**{**SPEC.__dict__, "after_crs": "EPSG:3857", "after_resolution": 0.7}),
        ),
        "uint16": synthesize_scene(root / "uint16", ScenePairSpec(**{**SPEC.__dict__, "dtype": "uint16"})),
    }


def _options(model: Path, **kw: object) -> SceneOptions:
    base = {
        "tile": 64,
        "batch_size": 8,
        "decoding": DecodingOptions(beam_size=2),
        "progress": False,
        "model_dir": model,
        "runtime": RuntimeOptions(device="cpu", threads=1),
    }
    return SceneOptions(**{**base, **kw})  # type: ignore[arg-type]


def _run(folder: Path, out: Path, model: Path, **kw: object) -> tuple[dict, object]:
    report = caption_scene(folder / "before.tif", folder / "after.tif", out, _options(model, **kw))
    return (json.loads(out.read_text()) if out.suffix == ".geojson" else {}), report


# --- the grid -------------------------------------------------------------------------------------


def test_edge_tiles_move_inwards_and_are_never_padded() -> None:
    tiles = tile_grid(PixelWindow(10, 20, 300, 200), tile=128, overlap=0)
    cols = sorted({t.window.col_off for t in tiles})
    rows = sorted({t.window.row_off for t in tiles})
    assert cols == [10, 138, 182] and rows == [20, 92]  # last column/row end exactly on the edge
    assert all(t.window.width == t.window.height == 128 for t in tiles)
    assert (
        max(t.window.col_off + 128 for t in tiles) == 310
        and max(t.window.row_off + 128 for t in tiles) == 220
    )
    overlapped = tile_grid(PixelWindow(0, 0, 256, 256), tile=128, overlap=64)
    assert sorted({t.window.col_off for t in overlapped}) == [0, 64, 128]
    assert [t.index for t in overlapped] == list(range(9)) and overlapped[4].tile_id == "r001c001"


def test_tile_sizes_the_model_cannot_take_and_too_small_scenes() -> None:
    assert check_tile(256, 32, input_size=224) == (256, 32)
    with pytest.raises(
        ConfigError, match=r"--tile 16 does not fit this model \(input 224 px\): give 56\.\.1792"
    ):
        check_tile(16, 0, input_size=224)
    with pytest.raises(ConfigError, match="--overlap 64 must be smaller than --tile 64"):
        check_tile(64, 64, input_size=64)
    with pytest.raises(DataError, match="smaller than one 256x256 tile"):
        tile_grid(PixelWindow(0, 0, 255, 900), 256, 0)


# --- coordinates, properties, counts ---------------------------------------------------------------


def test_corner_features_land_where_the_transform_says(
    scenes: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    doc, report = _run(scenes["aligned"], tmp_path / "all.geojson", tiny_model, all_tiles=True)
    features = {f["properties"]["tile_id"]: f for f in doc["features"]}
    # r000c000 spans easting 500000..500032, northing 5000000..4999968 (64 px at 0.5 m)
    ring = features["r000c000"]["geometry"]["coordinates"][0]
    expected = [
        utm_to_lonlat(e, n, zone=32)
        for e, n in [(500000, 5000000), (500000, 4999968), (500032, 4999968), (500032, 5000000)]
    ]
    assert ring[0] == ring[-1] and len(ring) == 5
    for corner in expected:  # each hand-computed corner is a vertex, within 1e-7 degrees (~1 cm)
        assert min(np.hypot(p[0] - corner[0], p[1] - corner[1]) for p in ring) < 1e-7, (corner, ring)
    # the last tile of the scene (bottom right; the nodata tiles are the last two, so take r003c001)
    w = features["r003c001"]["properties"]["window"]
    assert w == {"col_off": 64, "row_off": 192, "width": 64, "height": 64}
    corner = utm_to_lonlat(500000 + 0.5 * 128, 5000000 - 0.5 * 256, zone=32)
    ring = features["r003c001"]["geometry"]["coordinates"][0]
    assert min(np.hypot(p[0] - corner[0], p[1] - corner[1]) for p in ring) < 1e-7
    for f in doc["features"]:  # RFC 7946: counter-clockwise exterior rings in lon/lat
        r = f["geometry"]["coordinates"][0]
        area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(r[:-1], r[1:], strict=True))
        assert area > 0 and all(-180 <= x <= 180 and -90 <= y <= 90 for x, y in r)
    meta = doc["rsicrc"]
    assert meta["source_crs"] == "EPSG:32632" and meta["source_transform"] == [
        0.5,
        0,
        500000,
        0,
        -0.5,
        5000000,
    ]
    assert meta["tiles"] == {"size": 64, "overlap": 0, "rows": 4, "cols": 4, "max_nodata": 0.5}
    assert len(meta["model"]["sha256"]) == 3 and meta["complete"] is True
    assert report.counts == meta["counts"] and report.area_km2 == pytest.approx(128 * 128 / 1e6 * 14 / 16)


def test_nodata_tiles_are_skipped_and_counted(
    scenes: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    truth = json.loads((scenes["aligned"] / "truth.json").read_text())
    doc, report = _run(scenes["aligned"], tmp_path / "all.geojson", tiny_model, all_tiles=True)
    ids = {f["properties"]["tile_id"] for f in doc["features"]}
    assert truth["nodata_tiles"] == ["r003c002", "r003c003"] and not ids & set(truth["nodata_tiles"])
    assert report.counts["skipped_nodata"] == 2 and report.counts["processed"] == 14 == len(ids)
    props = doc["features"][0]["properties"]
    assert set(props) >= {"caption", "score", "changed", "beams", "row", "col", "window", "tile_id"}
    assert props["beams"][0] == {"caption": props["caption"], "score": props["score"]}


def test_reprojected_after_date_gives_the_same_changed_tiles(
    scenes: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    aligned, _ = _run(scenes["aligned"], tmp_path / "a.geojson", tiny_model, all_tiles=True)
    warped, report = _run(scenes["reprojected"], tmp_path / "w.geojson", tiny_model, all_tiles=True)
    meta = warped["rsicrc"]["alignment"]
    assert meta["warped"] and meta["differences"][0].startswith("CRS (EPSG:32632 vs EPSG:3857)")
    assert "warped onto the before grid" in report.alignment
    by_tile = [
        {f["properties"]["tile_id"]: f["properties"] for f in d["features"]} for d in (aligned, warped)
    ]
    assert by_tile[0].keys() == by_tile[1].keys()  # the same tiles processed (nodata ones skipped)
    assert {t for t, p in by_tile[0].items() if p["changed"]} == {
        t for t, p in by_tile[1].items() if p["changed"]
    }
    # the model sees nearly the same pixels: its gate scores agree far better than across tiles
    a = np.array([by_tile[0][t]["gate_score"] for t in sorted(by_tile[0])])
    w = np.array([by_tile[1][t]["gate_score"] for t in sorted(by_tile[0])])
    assert np.corrcoef(a, w)[0, 1] > 0.9, (a, w)


def test_the_stretch_is_fitted_once_per_scene_on_both_dates(
    scenes: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    import rasterio

    doc, _ = _run(scenes["uint16"], tmp_path / "u16.geojson", tiny_model, bands=(3, 2, 1))
    limits = doc["rsicrc"]["stretch"]["before"]["limits"]
    assert doc["rsicrc"]["stretch"]["after"]["limits"] == limits
    with (
        rasterio.open(scenes["uint16"] / "before.tif") as b,
        rasterio.open(scenes["uint16"] / "after.tif") as a,
    ):
        valid = (b.read_masks(1) > 0) & (a.read_masks(1) > 0)  # the scene is smaller than the sample side
        for k, band in enumerate((3, 2, 1)):
            values = np.concatenate([b.read(band)[valid], a.read(band)[valid]])
            assert limits[k] == pytest.approx(list(np.percentile(values, (2, 98))))


# --- modes and outputs ------------------------------------------------------------------------------


def test_query_ranks_tiles_and_captions_the_hits(
    scenes: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    doc, report = _run(
        scenes["aligned"], tmp_path / "q.geojson", tiny_model, query="a road is built", top_k=5
    )
    props = [f["properties"] for f in doc["features"]]
    assert [p["rank"] for p in props] == [1, 2, 3, 4, 5] and report.counts["features"] == 5
    sims = [p["similarity"] for p in props]
    assert sims == sorted(sims, reverse=True) and all(-1 <= s <= 1 for s in sims)
    assert all(p["caption"] for p in props) and doc["rsicrc"]["query"]["text"] == "a road is built"


def test_geopackage_holds_the_same_features(
    scenes: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    pyogrio = pytest.importorskip("pyogrio")
    doc, _ = _run(scenes["aligned"], tmp_path / "all.geojson", tiny_model, all_tiles=True)
    _run(scenes["aligned"], tmp_path / "all.gpkg", tiny_model, all_tiles=True, format="gpkg")
    info = pyogrio.read_info(tmp_path / "all.gpkg", layer="changes")
    assert info["features"] == len(doc["features"]) and "4326" in info["crs"]
    meta, _, geometry, fields = pyogrio.raw.read(tmp_path / "all.gpkg", layer="changes")
    names = list(meta["fields"])
    assert list(fields[names.index("caption")]) == [f["properties"]["caption"] for f in doc["features"]]
    assert list(fields[names.index("tile_id")]) == [f["properties"]["tile_id"] for f in doc["features"]]
    assert len(geometry) == len(doc["features"]) and meta["geometry_type"] == "Polygon"


def test_quicklook_outlines_the_features_on_the_after_date(
    scenes: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    doc, report = _run(
        scenes["aligned"],
        tmp_path / "all.geojson",
        tiny_model,
        all_tiles=True,
        quicklook=tmp_path / "look.png",
    )
    image = np.asarray(Image.open(tmp_path / "look.png"))
    assert image.shape == (256, 256, 3) and report.quicklook == tmp_path / "look.png"
    for f in doc["features"]:  # the right edge column of every outlined tile is drawn in a tile colour
        w = f["properties"]["window"]
        edge = image[w["row_off"] + 20 : w["row_off"] + 40, w["col_off"] + w["width"] - 1]
        assert (edge[:, 0] >= 250).all(), edge
    assert (image[200:, 140:] == (40, 40, 40)).all()  # the nodata tiles are shown as nodata


def test_plain_images_work_in_pixel_coordinates(tiny_model: Path, tmp_path: Path) -> None:
    before, after = (smooth_field(s, 3, 128, 192, "uint8") for s in (1, 2))
    for name, data in (("b.png", before), ("a.png", after)):
        Image.fromarray(np.moveaxis(data, 0, -1)).save(tmp_path / name)
    report = caption_scene(
        tmp_path / "b.png", tmp_path / "a.png", tmp_path / "px.geojson", _options(tiny_model, all_tiles=True)
    )
    doc = json.loads((tmp_path / "px.geojson").read_text())
    assert doc["rsicrc"]["coordinates"].startswith("pixels") and doc["rsicrc"]["source_crs"] is None
    assert report.counts["tiles"] == 6 and report.area_km2 is None
    last = next(f for f in doc["features"] if f["properties"]["tile_id"] == "r001c002")
    assert sorted(map(tuple, last["geometry"]["coordinates"][0][:4])) == [
        (128, -128),
        (128, -64),
        (192, -128),
        (192, -64),
    ]


def test_tiff_without_crs_and_uint16_4band_with_bands(tiny_model: Path, tmp_path: Path) -> None:
    data = smooth_field(5, 4, 128, 128)
    write_tif(tmp_path / "b.tif", data, crs=None)
    write_tif(tmp_path / "a.tif", data[:, :, ::-1].copy(), crs=None)
    report = caption_scene(
        tmp_path / "b.tif",
        tmp_path / "a.tif",
        tmp_path / "o.geojson",
        _options(tiny_model, bands=(4, 3, 2), all_tiles=True),
    )
    assert report.counts["processed"] == 4 and not report.alignment.startswith("after date warped")


# --- the change layer (--heat) ----------------------------------------------------------------------


def test_heat_layer_is_a_cog_with_each_tiles_score_and_nodata_where_skipped(
    scenes: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    import rasterio

    heat = tmp_path / "change.tif"
    doc, report = _run(scenes["aligned"], tmp_path / "all.geojson", tiny_model, all_tiles=True, heat=heat)
    assert report.heat == heat and report.to_dict()["heat"] == str(heat)
    with rasterio.open(scenes["aligned"] / "before.tif") as before, rasterio.open(heat) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert (ds.count, ds.dtypes[0], ds.crs, ds.shape) == (1, "float32", before.crs, (8, 8))  # 256 px / 32
        assert np.isnan(ds.nodata) and json.loads(ds.tags()["model"]) == doc["rsicrc"]["model"]
        assert ds.transform.c == before.transform.c and ds.transform.f == before.transform.f
        assert ds.transform.a == before.transform.a * 32 and ds.transform.e == before.transform.e * 32
        values = ds.read(1)
    for feature in doc["features"]:
        p = feature["properties"]
        cells = values[2 * p["row"]: 2 * p["row"] + 2, 2 * p["col"]: 2 * p["col"] + 2]  # 64 px tile: 2x2 cells
        np.testing.assert_allclose(cells, -p["gate_score"], rtol=1e-6)
    assert np.isnan(values[6:8, 4:8]).all()  # r003c002, r003c003: nodata tiles, skipped
    assert np.isfinite(values).sum() == 14 * 4


def test_heat_cells_take_the_larger_score_of_overlapping_tiles_and_have_overviews(tmp_path: Path) -> None:
    import rasterio

    from rsicrc.runtime.scene.grid import PixelWindow, tile_grid
    from rsicrc.runtime.scene.heat import HeatLayer, overview_factors

    window = PixelWindow(100, 40, 2000, 1000)
    tiles = tile_grid(window, 256, 128)  # stride 128: every inner cell lies under four tiles
    layer = HeatLayer(window, "gate")
    for t in tiles:
        layer.paint(t, float(t.index))
    assert layer.values.shape == (32, 63)  # ceil(1000/32), ceil(2000/32)
    # the cell at pixel (col 300, row 200) of the window: tiles starting at cols 128/256, rows 128/... overlap it
    covering = [t.index for t in tiles if t.window.col_off - 100 <= 300 < t.window.col_off - 100 + 256
                and t.window.row_off - 40 <= 200 < t.window.row_off - 40 + 256]
    assert layer.values[200 // 32, 300 // 32] == max(covering)
    assert overview_factors(layer.values.shape) == [2, 4]  # 63 -> 31 -> 15, not 7
    layer.write(tmp_path / "h.tif", None, None, {"complete": "true"})
    with rasterio.open(tmp_path / "h.tif") as ds:
        assert ds.crs is None and ds.overviews(1) == [2, 4]
        assert (ds.transform.c, ds.transform.f, ds.transform.a, ds.transform.e) == (100, -40, 32, -32)
        np.testing.assert_array_equal(ds.read(1), layer.values)
        assert ds.tags()["score"].startswith("change score")
