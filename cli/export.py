"""`rsicrc export`: a checkpoint folder -> an ONNX model folder the torch-free runtime runs."""

from __future__ import annotations

from pathlib import Path

import typer

from rsicrc.cli.common import guarded, print_json, setup_logging


def export_command(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder (from rsicrc-train or import-original)."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (graphs + manifest.json)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset: 18, 19 or 20."),
    data: Path | None = typer.Option(None, "--data", help="LEVIR-CC folder whose pairs and captions "
                                     "validate the graphs (default: a few synthetic pairs)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the export report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Export the image encoder, text encoder and decoder step to ONNX, validate each graph against
    PyTorch on real inputs (names, shapes, values) and write manifest.json. Nothing is written
    unless every graph passes; the folder appears atomically."""
    setup_logging()
    from rsicrc.export.pipeline import export_model

    report = guarded(lambda: export_model(checkpoint, out, opset=opset, progress=not quiet,
                                          validation_data=data, overwrite=overwrite))
    if json_out:
        print_json(report.to_dict())
    else:
        typer.echo("\n".join(report.lines()))
