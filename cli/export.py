"""`rsicrc export`: a checkpoint folder -> an ONNX model folder the torch-free runtime runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from rsicrc.cli.common import guarded, print_json, setup_logging
from rsicrc.errors import ConfigError


def export_command(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder (from rsicrc-train or import-original)."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (graphs + manifest.json)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset: 18, 19 or 20."),
    data: Path | None = typer.Option(None, "--data", help="LEVIR-CC folder whose pairs and captions "
                                     "validate the graphs (default: a few synthetic pairs); with --int8 its "
                                     "train pairs also calibrate the image encoder."),
    int8: bool = typer.Option(False, "--int8", help="Also write int8 graphs (*_int8.onnx) beside the fp32 "
                              "ones."),
    choose_default: bool = typer.Option(False, "--choose-default", help="With --int8 and --data: evaluate "
                                        "fp32 and int8 on the test split of --data and make int8 the default "
                                        "precision only if every metric stays within 2 % of fp32."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model folder."),
    trt: bool = typer.Option(False, "--trt", help="Then build TensorRT engines on this GPU "
                             "(as rsicrc build-engines)."),
    fp16: bool = typer.Option(False, "--fp16", help="With --trt: fp16 engines instead of fp32."),
    max_batch: int = typer.Option(16, "--max-batch", help="With --trt: most pairs per call."),
    workspace: float = typer.Option(4.0, "--workspace", help="With --trt: builder workspace in GB."),
    json_out: bool = typer.Option(False, "--json", help="Print the export report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Export the image encoder, text encoder and decoder step to ONNX, validate each graph against
    PyTorch on real inputs (names, shapes, values) and write manifest.json. Nothing is written
    unless every graph passes; the folder appears atomically."""
    setup_logging()
    from rsicrc.export.pipeline import export_model

    def run() -> tuple[Any, Any]:
        if choose_default and not (int8 and data is not None):
            raise ConfigError("--choose-default needs --int8 and --data (its test split decides)")
        report = export_model(checkpoint, out, opset=opset, progress=not quiet, validation_data=data,
                              overwrite=overwrite, int8=int8, calibration_data=data)
        if not choose_default:
            return report, None
        from rsicrc.export.default_precision import choose_default as choose

        return report, choose(out, data, progress=not quiet)

    if trt:  # fail before the long export when TensorRT cannot be used here
        from rsicrc.export.trt import BuildOptions, ProfileOptions, build_engines, check_tensorrt

        guarded(check_tensorrt)
    elif fp16:
        def refuse() -> None:
            raise ConfigError("--fp16 applies to TensorRT engines: add --trt")

        guarded(refuse)
    report, choice = guarded(run)
    engines = guarded(lambda: build_engines(out, BuildOptions(
        precision="fp16" if fp16 else "fp32", profile=ProfileOptions(max_batch=max_batch),
        workspace_gb=workspace))) if trt else None
    if json_out:
        print_json({**report.to_dict(), **({"default_choice": choice.to_dict()} if choice else {}),
                    **({"engines": engines.to_dict()} if engines else {})})
    else:
        typer.echo("\n".join(report.lines() + (choice.lines() if choice else [])
                             + (engines.lines() if engines else [])))
