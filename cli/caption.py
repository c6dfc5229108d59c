"""`rsicrc caption`: caption one before/after pair, or many into a JSON Lines file (torch-free)."""

from __future__ import annotations

from pathlib import Path

import typer

from rsicrc.cli.common import (
    DEVICE,
    ENGINE,
    MODEL,
    OLD_BACKEND,
    PRECISION,
    THREADS,
    guarded,
    print_json,
    runtime_options,
    setup_logging,
)
from rsicrc.errors import ConfigError
from rsicrc.runtime.decoding import DecodingOptions


def caption(
    before: Path | None = typer.Argument(None, metavar="BEFORE", show_default=False,
                                         help="Before image: PNG, JPEG or TIFF/GeoTIFF."),
    after: Path | None = typer.Argument(None, metavar="AFTER", show_default=False,
                                        help="After image of the same place, same size as BEFORE."),
    model: Path | None = MODEL,
    beam: int = typer.Option(DecodingOptions.beam_size, "--beam", help="Beam size; 1 = greedy."),
    length_penalty: float = typer.Option(DecodingOptions.length_penalty, "--length-penalty",
                                         help="alpha in score = logprob / length^alpha."),
    engine: str = ENGINE,
    device: str = DEVICE,
    bands: str | None = typer.Option(None, "--bands", help="Bands of multiband images, 1-based, e.g. 4,3,2 "
                                     "(default: the first three, or the only one).", show_default=False),
    precision: str | None = PRECISION,
    threads: int | None = THREADS,
    json_out: bool = typer.Option(False, "--json", help="Print caption, score, tokens, beams and "
                                  "timing_ms as JSON."),
    pairs: Path | None = typer.Option(None, "--pairs", help="Caption many pairs: a folder with A/ and B/ "
                                      "(matched by file name), a LEVIR-CC folder, or a CSV with the "
                                      "header before,after[,id] (paths relative to the CSV).",
                                      show_default=False),
    split: str | None = typer.Option(None, "--split", help="With a LEVIR-CC --pairs folder: train, val or "
                                     "test (default: all).", show_default=False),
    batch_size: int = typer.Option(8, "--batch-size", help="With --pairs: pairs per encoder/decoder batch."),
    out: Path | None = typer.Option(None, "--out", help="With --pairs: the JSON Lines file to write (one "
                                    "object per pair: id, before, after, caption, score).",
                                    show_default=False),
    quiet: bool = typer.Option(False, "--quiet", help="With --pairs: no progress bar."),
    heatmap: Path | None = typer.Option(None, "--heatmap", help="Also draw where the model looked: a PNG "
                                        "with before | after | the summed attention | one panel per word "
                                        "(needs a model folder exported with attention).",
                                        show_default=False),
    attention: bool = typer.Option(False, "--attention", help="With --json: add `attention`, one row of N "
                                   "visual-token weights (row-major grid) per caption token."),
    backend: str | None = OLD_BACKEND,
) -> None:
    """Describe what changed between a BEFORE and an AFTER image, with an exported model.

    Needs no PyTorch: the model folder holds ONNX graphs run by ONNX Runtime. One pair prints
    the caption (or JSON with --json; --heatmap FILE.png also draws where the model looked);
    --pairs SOURCE --out FILE.jsonl captions many pairs in batches and writes the file only
    when all of them succeeded.
    """
    setup_logging()

    def run() -> object:
        from rsicrc.runtime.images import parse_bands

        options = DecodingOptions(beam_size=beam, length_penalty=length_penalty, attention=attention)
        runtime = runtime_options(engine, device, precision, threads, backend)
        chosen_bands = parse_bands(bands) if bands is not None else None
        if pairs is not None:
            if before is not None or after is not None:
                raise ConfigError("give either BEFORE AFTER or --pairs SOURCE, not both")
            if out is None:
                raise ConfigError("--pairs needs --out FILE.jsonl")
            if json_out:
                raise ConfigError("--json is for one pair; --pairs always writes JSON Lines to --out")
            if heatmap is not None or attention:
                raise ConfigError("--heatmap and --attention are for one pair, not --pairs")
            from rsicrc.runtime.pairs import caption_pairs

            return caption_pairs(pairs, out, options, model_dir=model, runtime=runtime, split=split,
                                 batch_size=batch_size, bands=chosen_bands, progress=not quiet)
        if before is None or after is None:
            raise ConfigError("give BEFORE and AFTER image files, or --pairs SOURCE --out FILE.jsonl")
        if out is not None or split is not None:
            raise ConfigError("--out and --split apply only with --pairs")
        if attention and not json_out:
            raise ConfigError("--attention adds the attention to the --json output; add --json")
        if heatmap is not None:
            from rsicrc.runtime.heatmap import caption_heatmap

            return caption_heatmap(before, after, heatmap, options, model_dir=model, runtime=runtime,
                                   bands=chosen_bands)
        from rsicrc.runtime.captioner import caption_pair

        return caption_pair(before, after, options, model_dir=model, runtime=runtime, bands=chosen_bands)

    result = guarded(run)
    if heatmap is not None:
        typer.echo(f"wrote the heatmap to {heatmap}", err=True)
    if pairs is not None:
        typer.echo(f"wrote {result} captions to {out}")
    elif json_out:
        print_json(result.to_dict(attention=attention))  # type: ignore[attr-defined]
    else:
        typer.echo(result.caption)  # type: ignore[attr-defined]
