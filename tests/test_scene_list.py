"""`rsicrc scene --list scenes.csv`: real synthetic GeoTIFF scene pairs (`synth-scene`, tiny grids),
run as a list here and on a real local Ray instance (conftest's `ray_address`, 2 workers); every
output must equal what `rsicrc scene` writes for that row alone. Bad rows fail with one line, exit
2, before anything runs (no output folder, no file)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import assert_one_line_error
from rsicrc.cli.main import app
from rsicrc.synth.scene_pair import ScenePairSpec, synthesize_scene

runner = CliRunner()
# Same tiles, same batches; only Ray workers' thread count differs from this process's (float rounding).
SCORE_TOLERANCE = 1e-6
OPTIONS = ("--tile", "64", "--batch-size", "3", "--beam", "2", "--all-tiles", "--quiet")
ROWS = (("north", "s0", ""), ("", "s1", ""), ("east", "s2", "s2/changes.geojson"))  # id, folder, out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small scene pairs (one with its after date in another CRS and resolution) and their list."""
    root = tmp_path_factory.mktemp("scenes")
    specs = (ScenePairSpec(rows=2, cols=2, tile=64, seed=11, changed_fraction=0.5),
             ScenePairSpec(rows=1, cols=3, tile=64, seed=12, changed_fraction=1.0),
             ScenePairSpec(rows=2, cols=2, tile=64, seed=13, changed_fraction=0.5, after_crs="EPSG:3857",
                           after_resolution=0.7))
    for (_, folder, _), spec in zip(ROWS, specs, strict=True):
        synthesize_scene(root / folder, spec, progress=False)
    Image.new("RGB", (128, 128), (90, 120, 60)).save(root / "plain.png")  # a date without georeferencing
    lines = [f"{ident},{folder}/before.tif,{folder}/after.tif,{out}" for ident, folder, out in ROWS]
    (root / "scenes.csv").write_text("id,before,after,out\n" + "\n".join(lines) + "\n")
    return root / "scenes.csv"


def _outputs(scenes: Path, out: Path) -> list[Path]:
    """Where the list writes each row: its out, else OUT/ID.geojson (the id defaults to the row number)."""
    return [scenes.parent / o if o else out / f"{ident or n}.geojson"
            for n, (ident, _, o) in enumerate(ROWS, start=1)]


@pytest.fixture(scope="module")
def singles(scenes: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What `rsicrc scene BEFORE AFTER` writes for each row alone."""
    out = tmp_path_factory.mktemp("singles")
    written = []
    for ident, folder, _ in ROWS:
        path = out / f"{ident or folder}.geojson"
        result = runner.invoke(app, ["scene", str(scenes.parent / folder / "before.tif"),
                                     str(scenes.parent / folder / "after.tif"), "--out", str(path), "--model",
                                     str(tiny_model), *OPTIONS])
        assert result.exit_code == 0, result.output
        written.append(json.loads(path.read_text()))
    return written


def _assert_same(ours: Any, theirs: Any, tolerance: float, where: str = "") -> None:
    """Equal structure, strings and integers; floats within `tolerance`."""
    if isinstance(ours, float) or isinstance(theirs, float):
        assert math.isclose(ours, theirs, rel_tol=0, abs_tol=tolerance), (where, ours, theirs)
    elif isinstance(ours, dict):
        assert isinstance(theirs, dict) and sorted(ours) == sorted(theirs), (where, sorted(ours), theirs)
        for key in ours:
            _assert_same(ours[key], theirs[key], tolerance, f"{where}.{key}")
    elif isinstance(ours, list):
        assert isinstance(theirs, list) and len(ours) == len(theirs), (where, ours, theirs)
        for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _assert_same(a, b, tolerance, f"{where}[{k}]")
    else:
        assert ours == theirs, (where, ours, theirs)


def _run_list(scenes: Path, out: Path, model: Path, *extra: str) -> dict[str, Any]:
    result = runner.invoke(app, ["scene", "--list", str(scenes), "--out", str(out), "--model", str(model),
                                 *OPTIONS, "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_list_here_writes_what_scene_writes_per_row(scenes: Path, tiny_model: Path, tmp_path: Path,
                                                      singles: list[dict[str, Any]]) -> None:
    report = _run_list(scenes, tmp_path / "out", tiny_model)
    paths = _outputs(scenes, tmp_path / "out")
    assert (report["scenes"], report["written"], report["complete"]) == (3, 3, True)
    assert [o["out"] for o in report["outputs"]] == [str(p.resolve()) for p in paths]
    for path, single in zip(paths, singles, strict=True):
        assert json.loads(path.read_text()) == single  # same process, same model, same batches: same bits
    assert report["counts"]["tiles"] == 4 + 3 + 4 == sum(s["rsicrc"]["counts"]["tiles"] for s in singles)
    assert report["counts"]["features"] == sum(len(s["features"]) for s in singles) == 11  # --all-tiles
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left
    (scenes.parent / ROWS[2][2]).unlink()  # the row with its own out wrote beside its rasters


def test_a_list_on_ray_writes_what_scene_writes_per_row(scenes: Path, tiny_model: Path, tmp_path: Path,
                                                        singles: list[dict[str, Any]],
                                                        ray_address: str) -> None:
    report = _run_list(scenes, tmp_path / "out", tiny_model, "--cluster", f"ray:{ray_address}",
                       "--workers", "2")
    assert (report["written"], report["complete"]) == (3, True)
    assert report["cluster"] == f"the Ray cluster at {ray_address}"
    for path, single in zip(_outputs(scenes, tmp_path / "out"), singles, strict=True):
        _assert_same(json.loads(path.read_text()), single, SCORE_TOLERANCE, path.name)
    (scenes.parent / ROWS[2][2]).unlink()


S0, S1 = "s0/before.tif,s0/after.tif", "s1/before.tif,s1/after.tif"  # two good rows
BAD_LISTS = {
    "no after column": ("before,out\ns0/before.tif,x.geojson\n", "must name the columns before,after"),
    "unknown column": (f"before,after,ouut\n{S0},x\n", "found before,after,ouut"),
    "only a header": ("before,after\n", "names no scenes"),
    "empty cell": (f"before,after\n{S0}\ns1/before.tif,\n", "line 3: the after column is empty"),
    "extra values": (f"before,after\n{S0},x.geojson\n", "line 2: 3 values for 2 columns"),
    "missing raster": (f"before,after\n{S0}\ns1/before.tif,s1/gone.tif\n", "1 raster(s) not found: line 3:"),
    "same id": (f"id,before,after\na,{S0}\na,{S1}\n", "line 3: the same id as line 2"),
    "same out": (f"before,after,out\n{S0},o.geojson\n{S1},o.geojson\n", "line 3: the same output as line 2"),
    "id as a path": (f"id,before,after\n../up,{S0}\n", "cannot name a file in --out"),
    "not a raster": (f"before,after\n{S0}\nscenes.csv,s1/after.tif\n", "line 3 (scene 2):"),
    "one date not georeferenced": (f"before,after\n{S0}\ns0/before.tif,plain.png\n",
                                   "line 3 (scene 2): before is georeferenced but after is not"),
    "out folder missing": (f"before,after,out\n{S0},nowhere/x.geojson\n", "line 2 (scene 1): out",
                           "does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_LISTS))
def test_bad_rows_fail_with_one_line_before_anything_runs(case: str, scenes: Path, tiny_model: Path,
                                                          tmp_path: Path) -> None:
    text, *expected = BAD_LISTS[case]
    bad = scenes.parent / f"bad-{case.replace(' ', '-')}.csv"
    bad.write_text(text)
    out = tmp_path / "out"
    result = runner.invoke(app, ["scene", "--list", str(bad), "--out", str(out), "--model", str(tiny_model),
                                 "--tile", "64", "--quiet"])
    err = assert_one_line_error(result, *expected)
    assert case != "not a raster" or "scenes.csv" in err
    assert not out.exists() and not list(scenes.parent.glob("*.geojson"))


def test_list_options_refused_up_front(scenes: Path, tiny_model: Path, tmp_path: Path) -> None:
    s0 = [str(scenes.parent / "s0" / name) for name in ("before.tif", "after.tif")]
    base = ["scene", "--model", str(tiny_model), "--tile", "64"]
    assert_one_line_error(runner.invoke(app, [*base, *s0, "--list", str(scenes), "--out", str(tmp_path)]),
                          "either BEFORE AFTER or --list")
    assert_one_line_error(runner.invoke(app, [*base, "--list", str(scenes), "--out", str(tmp_path / "o"),
                                              "--quicklook", str(tmp_path / "q.png")]),
                          "--quicklook and --heat are for one")
    assert_one_line_error(runner.invoke(app, [*base, *s0, "--out", str(tmp_path / "x.geojson"), "--cluster",
                                              "ray"]), "--cluster ray applies to --list")
    assert_one_line_error(runner.invoke(app, [*base, "--list", str(scenes)]), "no out for scene")
    assert_one_line_error(runner.invoke(app, [*base, *s0]), "--out FILE is required")
    assert_one_line_error(runner.invoke(app, [*base]), "or --list scenes.csv")
    assert_one_line_error(runner.invoke(app, [*base, "--list", str(scenes), "--out", str(tmp_path / "o"),
                                              "--cluster", "ray:127.0.0.1:1"]), "cannot join the Ray cluster")
    assert not list(tmp_path.iterdir())
    help_text = " ".join(runner.invoke(app, ["scene", "--help"]).output.split())
    for words in ("before,after[,out][,id]", "row number", "--cluster", "--workers"):
        assert words in help_text
