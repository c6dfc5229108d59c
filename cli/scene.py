"""`rsicrc scene`: caption every changed place of two large rasters into GeoJSON/GeoPackage
(torch-free); `rsicrc synth-scene`: write a synthetic scene pair with its ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rsicrc.cli.common import (
    DEVICE,
    ENGINE,
    MODEL,
    PRECISION,
    THREADS,
    guarded,
    print_json,
    runtime_options,
    setup_logging,
)
from rsicrc.runtime.decoding import DecodingOptions

if TYPE_CHECKING:
    from rsicrc.runtime.scene import SceneReport

# The defaults live in SceneOptions / ScenePairSpec; these mirror them for --help (a test checks).
TILE, OVERLAP, BATCH, TOP_K, MAX_NODATA, GATE_MARGIN = 256, 0, 16, 20, 0.5, 0.05
INTERRUPTED = 130  # exit code after Ctrl-C, as for any command


def scene_command(
    before: Path = typer.Argument(..., metavar="BEFORE", show_default=False,
                                  help="Before date: GeoTIFF (any CRS, 1-N bands, 8/16-bit or float) or a "
                                  "plain PNG/JPEG/TIFF."),
    after: Path = typer.Argument(..., metavar="AFTER", show_default=False,
                                 help="After date of the same place; warped onto BEFORE's grid when its CRS, "
                                 "resolution or extent differ (plain images: same size as BEFORE)."),
    out: Path = typer.Option(..., "--out", show_default=False,
                             help="Features file to write: GeoJSON (RFC 7946, WGS84 lon/lat), or GeoPackage "
                             "with --format gpkg or a .gpkg name."),
    model: Path | None = MODEL,
    tile: int = typer.Option(TILE, "--tile", help="Tile side in pixels of BEFORE's grid (LEVIR-CC: 256 px "
                             "at 0.5 m); each tile is resized to the model's input like `rsicrc caption`."),
    overlap: int = typer.Option(OVERLAP, "--overlap", help="Pixels shared by neighbouring tiles. Edge tiles "
                                "are moved inwards, never padded."),
    batch_size: int = typer.Option(BATCH, "--batch-size", help="Tiles per image-encoder batch."),
    beam: int = typer.Option(DecodingOptions.beam_size, "--beam", help="Beam size; 1 = greedy."),
    bands: str | None = typer.Option(None, "--bands", help="Bands to read, 1-based, e.g. 4,3,2 (default: the "
                                     "first three, or the only one).", show_default=False),
    engine: str = ENGINE,
    device: str = DEVICE,
    precision: str | None = PRECISION,
    threads: int | None = THREADS,
    all_tiles: bool = typer.Option(False, "--all-tiles", help="Decode every tile and write one feature per "
                                   "tile (with `changed` true or false), not only the changed ones."),
    query: str | None = typer.Option(None, "--query", help="Rank the scene's tiles by similarity to this "
                                     "description of a change; one feature per hit (rank, similarity).",
                                     show_default=False),
    top_k: int = typer.Option(TOP_K, "--top-k", help="With --query: hits to keep (each is captioned)."),
    quicklook: Path | None = typer.Option(None, "--quicklook", help="Also write this PNG: the after date "
                                          "(longest side <= 2048 px) with the features outlined and "
                                          "numbered.", show_default=False),
    heat: Path | None = typer.Option(None, "--heat", help="Also write this change layer: a single-band "
                                     "float32 Cloud-Optimized GeoTIFF on the scene grid (32 px cells) with "
                                     "each tile's change score (with --query: its similarity); NaN where "
                                     "tiles were skipped.", show_default=False),
    fmt: str | None = typer.Option(None, "--format", help="geojson or gpkg (default: gpkg for a .gpkg --out, "
                                   "else geojson). gpkg needs pyogrio: pip install 'rsicrc[gpkg]'.",
                                   show_default=False),
    gate_margin: float = typer.Option(GATE_MARGIN, "--gate-margin", help="Change gate: a tile is decoded "
                                      "unless its visual embedding is closer to the no-change sentences than "
                                      "to the change sentences by more than this (cosine). Lower decodes "
                                      "fewer tiles."),
    max_nodata: float = typer.Option(MAX_NODATA, "--max-nodata", help="Skip (and count) tiles with a larger "
                                     "share of nodata pixels in either date."),
    json_out: bool = typer.Option(False, "--json", help="Print counts, timings, tiles/s, km2/min and the "
                                  "output paths as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Caption every changed place of a BEFORE/AFTER scene pair into GIS features.

    Both rasters are read window by window (memory does not grow with the scene). The scene is
    cut into tiles on BEFORE's grid; the 8-bit stretch is fitted once per scene; tiles go through
    the image encoder in batches, a change gate (visual embedding vs the embedded no-change
    sentences) skips the decoder for tiles it calls unchanged, and each changed tile becomes a
    Feature with its caption, score, beams, row/col, pixel window and tile_id. Ctrl-C writes what
    is done (rsicrc.complete = false) and exits 130. Needs no PyTorch.
    """
    setup_logging()

    def run() -> SceneReport:
        from rsicrc.runtime.images import parse_bands
        from rsicrc.runtime.scene import SceneOptions, caption_scene

        chosen = fmt if fmt is not None else ("gpkg" if out.suffix.lower() == ".gpkg" else "geojson")
        options = SceneOptions(
            tile=tile, overlap=overlap, batch_size=batch_size, decoding=DecodingOptions(beam_size=beam),
            bands=parse_bands(bands) if bands is not None else None, all_tiles=all_tiles, query=query,
            top_k=top_k, quicklook=quicklook, heat=heat, format=chosen, max_nodata=max_nodata,
            gate_margin=gate_margin, progress=not quiet, model_dir=model,
            runtime=runtime_options(engine, device, precision, threads))
        return caption_scene(before, after, out, options)

    report = guarded(run)
    if json_out:
        print_json(report.to_dict())
    else:
        typer.echo(summary(report))
    if not report.complete:
        typer.echo(f"interrupted: {report.out} holds the {report.counts['processed']} tiles done "
                   f"of {report.counts['tiles']}", err=True)
        raise typer.Exit(INTERRUPTED)


def summary(report: SceneReport) -> str:
    """Two lines for people: what was found, where it went, how fast."""
    c = report.counts
    area = f", {report.km2_per_min:.3g} km2/min" if report.km2_per_min is not None else ""
    look = f" and the quick-look {report.quicklook}" if report.quicklook else ""
    look += f" and the change layer {report.heat}" if report.heat else ""
    return (f"{c['tiles']} tiles: {c['processed']} processed, {c['skipped_nodata']} skipped (nodata), "
            f"{c['decoded']} decoded, {c['changed']} changed\n"
            f"wrote {c['features']} features to {report.out}{look} "
            f"({report.tiles_per_s:.3g} tiles/s{area}, {report.timing_s['total']:.1f} s in all)")


def synth_scene_command(
    out: Path = typer.Option(..., "--out", help="Folder to create: before.tif, after.tif, truth.json.",
                             show_default=False),
    rows: int = typer.Option(..., "--rows", help="Tiles down.", show_default=False),
    cols: int = typer.Option(..., "--cols", help="Tiles across.", show_default=False),
    tile: int = typer.Option(TILE, "--tile", help="Tile side in pixels (each tile is one synthetic pair)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same scene."),
    changed: float = typer.Option(0.3, "--changed", help="Share of tiles with a change."),
    dtype: str = typer.Option("uint8", "--dtype", help="uint8 (RGB) or uint16 (4 bands: blue, green, red, "
                              "near-infrared; RGB is --bands 3,2,1)."),
    nodata_tiles: int = typer.Option(0, "--nodata-tiles", help="The last N tiles of the after date hold "
                                     "nodata only (a swath edge)."),
    after_crs: str | None = typer.Option(None, "--after-crs", help="Reproject the after date into this CRS, "
                                         "e.g. EPSG:3857.", show_default=False),
    after_resolution: float | None = typer.Option(None, "--after-resolution", help="... at this pixel size "
                                                  "(CRS units).", show_default=False),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Write a synthetic scene pair: a mosaic of synthetic change tiles as two GeoTIFFs in UTM 32N
    (EPSG:32632, 0.5 m), with the changed tiles listed in truth.json. Deterministic for a seed."""
    setup_logging()

    def run() -> Path:
        from rsicrc.synth.scene_pair import ScenePairSpec, synthesize_scene

        spec = ScenePairSpec(rows=rows, cols=cols, tile=tile, seed=seed, changed_fraction=changed,
                             dtype=dtype, nodata_tiles=nodata_tiles, after_crs=after_crs,
                             after_resolution=after_resolution)
        return synthesize_scene(out, spec, progress=not quiet)

    path = guarded(run)
    typer.echo(f"wrote a {cols}x{rows}-tile scene pair to {path} (before.tif, after.tif, truth.json)")
