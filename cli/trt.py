"""`rsicrc build-engines` and `rsicrc check`: TensorRT engines for a model folder, and a backend
compared with ONNX Runtime on real pairs."""

from __future__ import annotations

from pathlib import Path

import typer

from rsicrc.cli.common import (
    DEVICE,
    ENGINE,
    OLD_BACKEND,
    deprecated,
    guarded,
    print_json,
    runtime_options,
    setup_logging,
)


def build_engines_command(
    model: Path = typer.Argument(..., help="Exported model folder (from rsicrc export)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16."),
    max_batch: int = typer.Option(16, "--max-batch", help="Most pairs (or query texts) per call."),
    max_beam: int = typer.Option(5, "--max-beam", help="Most beams: decoder rows <= max-batch x max-beam."),
    opt_batch: int = typer.Option(1, "--opt-batch", help="Pairs per call TensorRT tunes for."),
    opt_beam: int = typer.Option(3, "--opt-beam", help="Beam size TensorRT tunes for."),
    workspace: float = typer.Option(4.0, "--workspace", help="Builder workspace limit in GB."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Build even if matching engines exist."),
    strongly_typed: bool = typer.Option(False, "--strongly-typed", help="TensorRT 10: fp16 from an fp16 "
                                        "ONNX (as TensorRT 11 always does) instead of the builder flag."),
    tf32: bool = typer.Option(False, "--tf32", help="Let fp32 engines use TF32 (faster, less exact)."),
    json_out: bool = typer.Option(False, "--json", help="Print the build report as JSON."),
) -> None:
    """Build TensorRT engines for the three graphs on this GPU into MODEL/engines/ and record them in
    manifest.json (TensorRT version, GPU, compute capability, ONNX sha256, profile). Engines that
    already match this machine are kept; others are rebuilt. Needs TensorRT 10 or 11 and cuda-python."""
    setup_logging()

    def run():  # noqa: ANN202 - the report type lives behind the lazy import
        from rsicrc.export.trt import BuildOptions, ProfileOptions, build_engines, check_tensorrt

        check_tensorrt()  # the most basic requirement first, before reading large files
        profile = ProfileOptions(max_batch=max_batch, opt_batch=opt_batch, max_beam=max_beam,
                                 opt_beam=opt_beam)
        return build_engines(model, BuildOptions(precision=precision, profile=profile, workspace_gb=workspace,
                                                 rebuild=rebuild, strongly_typed=strongly_typed, tf32=tf32))

    report = guarded(run)
    if json_out:
        print_json(report.to_dict())
    else:
        typer.echo("\n".join(report.lines()))


def check_command(
    model: Path = typer.Argument(..., help="Exported model folder."),
    data: Path = typer.Option(..., "--data", help="Real pairs: a folder with A/ and B/, a LEVIR-CC folder "
                              "or a CSV with before,after columns."),
    engine: str = ENGINE,
    precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16 (trt); fp32 or int8 "
                                  "(onnxruntime)."),
    count: int = typer.Option(4, "--count", help="How many pairs of --data to use."),
    tolerance: float | None = typer.Option(None, "--tolerance", help="Relative tolerance (default per "
                                           "precision: fp32 1e-3, fp16 5e-2, int8 1e-1)."),
    device: str = DEVICE,
    json_out: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    backend: str | None = OLD_BACKEND,
    pairs: int | None = typer.Option(None, "--pairs", hidden=True, help="Deprecated: use --count."),
) -> None:
    """Compare an engine and precision with ONNX Runtime fp32 (CPU) graph by graph on real pairs (image
    encoder, text encoder, decoder steps on real cache states). Exit code 1 when an output is out of
    tolerance. E.g. `rsicrc check MODEL --data PAIRS --engine trt --precision fp16`."""
    setup_logging()

    def run():  # noqa: ANN202
        from rsicrc.runtime.compare import check_model

        how_many = count
        if pairs is not None:
            deprecated("--pairs", "--count")
            how_many = pairs
        runtime = runtime_options(engine, device, precision, None, backend)
        return check_model(model, data, runtime, count=how_many, tolerance=tolerance)

    report = guarded(run)
    if json_out:
        print_json(report.to_dict())
    else:
        typer.echo("\n".join(report.lines()))
    if not report.ok:
        raise typer.Exit(1)
