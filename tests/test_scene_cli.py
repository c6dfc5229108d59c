"""`rsicrc scene` through the real typer app and real subprocesses: the summary, one test per bad
input (exit 2, one error line, no output file), Ctrl-C (a valid, partial file; torch blocked),
and peak memory that does not grow with the scene."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scene_helpers import smooth_field, write_tif
from typer.testing import CliRunner

from conftest import assert_one_line_error
from rsicrc.cli.main import app
from rsicrc.synth.scene_pair import ScenePairSpec, synthesize_scene

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize_scene(
        tmp_path_factory.mktemp("cli") / "scene",
        ScenePairSpec(rows=2, cols=3, tile=64, seed=1, changed_fraction=0.5),
    )


def _scene(*args: str | Path):
    return runner.invoke(app, ["scene", *[str(a) for a in args]])


def test_help_explains_the_command() -> None:
    text = " ".join(runner.invoke(app, ["scene", "--help"]).output.split())
    for words in (
        "--engine",
        "change gate",
        "window by window",
        "--quicklook",
        "--query",
        "--all-tiles",
        "Ctrl-C writes what is done",
    ):
        assert words in text


def test_cli_defaults_are_the_library_defaults() -> None:
    from rsicrc.cli import scene as cli
    from rsicrc.runtime.scene import SceneOptions
    from rsicrc.synth.scene_pair import ScenePairSpec

    d = SceneOptions()
    assert (cli.TILE, cli.OVERLAP, cli.BATCH, cli.TOP_K, cli.MAX_NODATA, cli.GATE_MARGIN) == (
        d.tile,
        d.overlap,
        d.batch_size,
        d.top_k,
        d.max_nodata,
        d.gate_margin,
    )
    assert ScenePairSpec(rows=1, cols=1).tile == cli.TILE


def test_json_summary_and_files(scene: Path, tiny_model: Path, tmp_path: Path) -> None:
    out, look = tmp_path / "changes.geojson", tmp_path / "look.png"
    result = _scene(
        scene / "before.tif",
        scene / "after.tif",
        "--out",
        out,
        "--model",
        tiny_model,
        "--tile",
        64,
        "--beam",
        1,
        "--quicklook",
        look,
        "--heat",
        tmp_path / "heat.tif",
        "--json",
        "--quiet",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["out"] == str(out) and summary["quicklook"] == str(look) and summary["complete"]
    assert summary["counts"]["tiles"] == 6 and summary["tiles_per_s"] > 0 and summary["km2_per_min"] > 0
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == summary["counts"]["features"]
    assert doc["rsicrc"]["decoding"]["beam"] == 1 and look.stat().st_size > 0
    assert summary["heat"] == str(tmp_path / "heat.tif") and (tmp_path / "heat.tif").stat().st_size > 0


def _bad(tmp_path: Path, model: Path, before: Path, after: Path, *extra: str | Path) -> str:
    out = tmp_path / "out.geojson"
    err = assert_one_line_error(_scene(before, after, "--out", out, "--model", model, *extra))
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.geojson")]
    return err


def test_missing_corrupt_and_truncated_rasters(scene: Path, tiny_model: Path, tmp_path: Path) -> None:
    good = scene / "before.tif"
    _bad(tmp_path, tiny_model, tmp_path / "nope.tif", good, "--tile", 64)
    assert "nope.tif: image not found" in _bad(
        tmp_path, tiny_model, good, tmp_path / "nope.tif", "--tile", 64
    )
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    assert "junk.tif: not a readable raster" in _bad(tmp_path, tiny_model, good, junk, "--tile", 64)
    data = smooth_field(1, 3, 256, 256, "uint8")  # tiled, uncompressed: cut it inside the pixel blocks
    whole = write_tif(tmp_path / "whole.tif", data)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    err = _bad(tmp_path, tiny_model, whole, cut, "--tile", 64)
    assert "cut.tif" in err and ("corrupted or truncated" in err or "not a readable raster" in err)


def test_no_overlap_band_counts_georeferencing(tiny_model: Path, tmp_path: Path) -> None:
    data = smooth_field(2, 3, 128, 128, "uint8")
    before = write_tif(tmp_path / "b.tif", data)
    far = write_tif(tmp_path / "far.tif", data, origin=(600000.0, 5000000.0))
    assert "do not overlap" in _bad(tmp_path, tiny_model, before, far, "--tile", 64)
    four = write_tif(tmp_path / "four.tif", np.concatenate([data, data[:1]]))
    err = _bad(tmp_path, tiny_model, before, four, "--tile", 64)
    assert "before has 3 bands but after has 4; pass --bands" in err and "(valid: 1..3)" in err
    result = _scene(
        before,
        four,
        "--out",
        tmp_path / "ok.geojson",
        "--model",
        tiny_model,
        "--tile",
        64,
        "--bands",
        "1,2,3",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    plain = write_tif(tmp_path / "plain.tif", data, crs=None)
    assert "before is georeferenced but after is not" in _bad(
        tmp_path, tiny_model, before, plain, "--tile", 64
    )
    assert "band 5 is out of range" in _bad(tmp_path, tiny_model, before, four, "--bands", "5,2,1")


def test_small_scene_nodata_scene_and_tile_sizes(tiny_model: Path, tmp_path: Path) -> None:
    data = smooth_field(3, 3, 128, 128, "uint8")
    before = write_tif(tmp_path / "b.tif", data)
    after = write_tif(tmp_path / "a.tif", data[:, ::-1].copy())
    assert "smaller than one 256x256 tile" in _bad(tmp_path, tiny_model, before, after)
    empty = write_tif(tmp_path / "empty.tif", np.zeros_like(data), nodata=0)
    assert "every pixel is nodata" in _bad(tmp_path, tiny_model, before, empty, "--tile", 64)
    assert "--tile 8 does not fit this model (input 64 px): give 32..512" in _bad(
        tmp_path, tiny_model, before, after, "--tile", 8
    )
    _bad(tmp_path, tiny_model, before, after, "--tile", 4096)
    assert "--overlap 64 must be smaller" in _bad(
        tmp_path, tiny_model, before, after, "--tile", 64, "--overlap", 64
    )


def test_outputs_and_options_refused_up_front(scene: Path, tiny_model: Path, tmp_path: Path) -> None:
    b, a = scene / "before.tif", scene / "after.tif"
    err = assert_one_line_error(_scene(b, a, "--out", tmp_path / "no" / "x.geojson", "--model", tiny_model))
    assert "does not exist" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "does not exist" in assert_one_line_error(_scene(b, a, "--out", blocker / "x.geojson"))
    assert "is a folder" in assert_one_line_error(_scene(b, a, "--out", tmp_path))
    assert "--heat" in assert_one_line_error(_scene(b, a, "--out", tmp_path / "x.geojson",
                                                    "--heat", tmp_path / "no" / "h.tif"))
    assert "choose one of: geojson, gpkg" in _bad(tmp_path, tiny_model, b, a, "--format", "shp")
    assert "cannot be combined with --all-tiles" in _bad(
        tmp_path, tiny_model, b, a, "--query", "a road", "--all-tiles"
    )
    assert "--batch-size must be an integer >= 1" in _bad(tmp_path, tiny_model, b, a, "--batch-size", 0)


# --- real subprocesses ----------------------------------------------------------------------------

NO_TORCH = textwrap.dedent("""
    import signal, sys

    # As in a terminal: a test run started in the background inherits SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test: {name}")
            return None

    sys.meta_path.insert(0, NoTorch())
    from rsicrc.cli.main import main
    sys.argv = ["rsicrc", "scene", *sys.argv[1:]]
    main()
""")


def test_ctrl_c_writes_a_valid_partial_file_without_torch(tiny_model: Path, tmp_path: Path) -> None:
    data = smooth_field(4, 3, 2048, 2048, "uint8")
    before = write_tif(tmp_path / "b.tif", data)
    after = write_tif(tmp_path / "a.tif", data[:, :, ::-1].copy())
    out = tmp_path / "partial.geojson"
    args = [
        str(before),
        str(after),
        "--out",
        str(out),
        "--model",
        str(tiny_model),
        "--tile",
        "32",
        "--all-tiles",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", NO_TORCH, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=REPO,
    )
    assert proc.stderr is not None
    seen = b""
    while not re.search(rb"\| *[1-9][0-9]*/4096 \[", seen):  # the progress bar shows tiles done
        chunk = proc.stderr.read1(4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    proc.send_signal(signal.SIGINT)
    out_bytes, err_bytes = proc.communicate(timeout=120)
    stderr = (seen + err_bytes).decode()
    assert proc.returncode == 130, (proc.returncode, out_bytes, stderr)
    assert "interrupted:" in stderr and "Traceback" not in stderr
    doc = json.loads(out.read_text())
    counts = doc["rsicrc"]["counts"]
    assert doc["rsicrc"]["complete"] is False and 0 < counts["processed"] < counts["tiles"] == 4096
    assert len(doc["features"]) == counts["processed"]  # --all-tiles: one feature per tile done
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial")]


RSS = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from rsicrc.runtime.decoding import DecodingOptions
    from rsicrc.runtime.scene import SceneOptions, caption_scene
    from rsicrc.runtime.options import RuntimeOptions

    before, after, out, model = sys.argv[1:5]
    options = SceneOptions(tile=256, batch_size=8, decoding=DecodingOptions(beam_size=1), bands=(1, 2, 3),
                           progress=False, model_dir=Path(model),
                           runtime=RuntimeOptions(device="cpu", threads=1))
    report = caption_scene(Path(before), Path(after), Path(out), options)
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across exec)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"rss_kib": hwm, "tiles": report.counts["processed"]}))
""")


def _peak_rss(tmp_path: Path, model: Path, side: int) -> dict:
    """Peak RSS of a fresh process captioning a side x side 4-band uint16 scene (strips of 512 rows)."""
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    paths = [tmp_path / f"{name}{side}.tif" for name in ("b", "a")]
    for seed, path in enumerate(paths):
        profile = {
            "driver": "GTiff",
            "width": side,
            "height": side,
            "count": 4,
            "dtype": "uint16",
            "crs": "EPSG:32632",
            "transform": Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0),
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
        }
        with rasterio.open(path, "w", **profile) as dst:
            strip = smooth_field(seed, 4, 512, side)
            for row in range(0, side, 512):
                dst.write(np.roll(strip, row, axis=2), window=Window(0, row, side, 512))
    run = subprocess.run(
        [sys.executable, "-c", RSS, *map(str, paths), str(tmp_path / f"o{side}.geojson"), str(model)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_the_scene(tiny_model: Path, tmp_path: Path) -> None:
    small = _peak_rss(tmp_path, tiny_model, 1024)
    large = _peak_rss(tmp_path, tiny_model, 3072)  # 9x the pixels: 144 MiB of uint16 over both dates
    assert (small["tiles"], large["tiles"]) == (16, 144)
    assert large["rss_kib"] <= 1.15 * small["rss_kib"], (small, large)


def test_one_stderr_line_in_a_real_process(scene: Path, tiny_model: Path, tmp_path: Path) -> None:
    """Outside CliRunner logging reaches stderr too: a late error must still be the only line."""
    out = tmp_path / "x.geojson"
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rsicrc.cli.main import main; main()",
            "scene",
            str(scene / "before.tif"),
            str(scene / "after.tif"),
            "--out",
            str(out),
            "--model",
            str(tiny_model),
            "--tile",
            "8",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 2 and not out.exists()
    assert run.stderr.strip().splitlines() == [
        "error: --tile 8 does not fit this model (input 64 px): give 32..512 pixels of the native grid"
    ]


def test_synth_scene_writes_georeferenced_rasters_and_truth(tmp_path: Path) -> None:
    import rasterio

    args = [
        "synth-scene",
        "--rows",
        "2",
        "--cols",
        "3",
        "--tile",
        "64",
        "--seed",
        "4",
        "--changed",
        "0.5",
        "--quiet",
    ]
    first = runner.invoke(
        app, [*args, "--out", str(tmp_path / "a"), "--dtype", "uint16", "--nodata-tiles", "1"]
    )
    assert first.exit_code == 0, first.output
    again = runner.invoke(
        app, [*args, "--out", str(tmp_path / "b"), "--dtype", "uint16", "--nodata-tiles", "1"]
    )
    assert (
        again.exit_code == 0
        and (tmp_path / "a" / "before.tif").read_bytes() == (tmp_path / "b" / "before.tif").read_bytes()
    )  # deterministic for a seed
    truth = json.loads((tmp_path / "a" / "truth.json").read_text())
    assert len(truth["changed_tiles"]) == 3 and truth["nodata_tiles"] == ["r001c002"]
    assert truth["rgb_bands"] == [3, 2, 1] and len(truth["tiles"]) == 6
    assert all(t["caption"] for t in truth["tiles"]) and all(
        t["changes"] for t in truth["tiles"] if t["changed"]
    )
    with (
        rasterio.open(tmp_path / "a" / "before.tif") as ds,
        rasterio.open(tmp_path / "a" / "after.tif") as af,
    ):
        assert (ds.crs.to_string(), ds.count, ds.dtypes[0], ds.nodata) == ("EPSG:32632", 4, "uint16", 0)
        assert tuple(ds.transform)[:6] == (0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0) and ds.shape == (
            128,
            192,
        )
        assert (af.read(1)[64:, 128:] == 0).all() and (af.read(1)[:64] > 0).all()
    warped = runner.invoke(app, [*args, "--out", str(tmp_path / "w"), "--after-crs", "EPSG:32633"])
    assert warped.exit_code == 0, warped.output
    with rasterio.open(tmp_path / "w" / "after.tif") as af:
        assert af.crs.to_string() == "EPSG:32633"
    err = assert_one_line_error(runner.invoke(app, [*args, "--out", str(tmp_path / "a")]))
    assert "already exists and is not empty" in err
    assert "dtype" in assert_one_line_error(
        runner.invoke(app, [*args, "--out", str(tmp_path / "x"), "--dtype", "u4"])
    )
