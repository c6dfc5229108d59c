"""What every command shares: logging, the error boundary, JSON printing, and the options that
choose how an exported model folder runs — declared once here, used by every command that runs
graphs (caption, evaluate, index, search, check)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from rsicrc.errors import RsicrcError
from rsicrc.runtime.cluster import ClusterOptions
from rsicrc.runtime.cluster import cluster_options as make_cluster_options
from rsicrc.runtime.options import DEFAULT_ENGINE, DEVICES, ENGINES, RuntimeOptions

T = TypeVar("T")

DEFAULT_MODEL_TEXT = ("$RSICRC_MODEL if set, else $XDG_DATA_HOME/rsicrc/model "
                      "(~/.local/share/rsicrc/model when XDG_DATA_HOME is unset)")

# --- the runtime options, declared once (defaults: rsicrc.runtime.options.RuntimeOptions) ---------
MODEL = typer.Option(None, "--model", help=f"Exported model folder (from `rsicrc export`); default: "
                     f"{DEFAULT_MODEL_TEXT}.", show_default=False)
ENGINE = typer.Option(DEFAULT_ENGINE, "--engine", help=f"What runs the graphs: {' or '.join(ENGINES)} "
                      "(TensorRT engines built with `rsicrc build-engines`).")
DEVICE = typer.Option("auto", "--device", help=f"{', '.join(DEVICES)}: auto uses CUDA when the engine can "
                      "really use it, else the CPU.")
PRECISION = typer.Option(None, "--precision", help="fp32 or int8 as exported (fp32 or fp16 for TensorRT "
                         "engines); default: the model folder's default precision.", show_default=False)
THREADS = typer.Option(None, "--threads", help="CPU threads per graph (default: ONNX Runtime's choice, all "
                       "cores).", show_default=False)
# --backend meant the engine in caption/evaluate/check (and the search algorithm in search)
OLD_BACKEND = typer.Option(None, "--backend", hidden=True, help="Deprecated: use --engine.")

# --- where archive-sized work runs (index, caption --pairs), declared once (runtime/cluster.py) -----
CLUSTER = typer.Option("local", "--cluster", help="Where the batches are computed: local (this process), "
                       "ray (a Ray instance started on this machine for the run) or ray:ADDRESS (join a "
                       "running Ray cluster: ray:auto, ray:HOST:6379). On Ray, model workers read and "
                       "compute the batches and this process alone writes the output. Needs pip install "
                       "'rsicrc[ray]'.")
WORKERS = typer.Option(None, "--workers", help="With --cluster ray: model workers (Ray actors, one model "
                       "load each); default: as many as the cluster's CPUs (or GPUs) fit.",
                       show_default=False)
WORKER_THREADS = typer.Option(None, "--worker-threads", help="With --cluster ray: ONNX Runtime threads per "
                              "worker, and the CPUs Ray reserves for it (ONNX Runtime ignores "
                              "OMP_NUM_THREADS); default 1.", show_default=False)
GPUS_PER_WORKER = typer.Option(None, "--gpus-per-worker", help="With --cluster ray: GPUs Ray reserves per "
                               "worker (0.5: two workers share a GPU); default 0 (CPU workers).",
                               show_default=False)


def deprecated(old: str, new: str) -> None:
    """One warning line on stderr for an option spelling kept for one release."""
    typer.echo(f"warning: {old} is deprecated and will be removed in the next release; use {new}", err=True)


def runtime_options(engine: str, device: str, precision: str | None, threads: int | None,
                    old_backend: str | None = None) -> RuntimeOptions:
    """The RuntimeOptions of a command's shared options (a deprecated --backend names the engine)."""
    if old_backend is not None:
        deprecated("--backend", "--engine")
        engine = old_backend
    return RuntimeOptions(engine=engine, device=device, precision=precision, threads=threads)


def cluster_options(cluster: str, workers: int | None, worker_threads: int | None,
                    gpus_per_worker: float | None) -> ClusterOptions:
    """The ClusterOptions of a command's --cluster, --workers, --worker-threads, --gpus-per-worker."""
    return make_cluster_options(cluster, workers, worker_threads, gpus_per_worker)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(message)s" if verbose else "%(message)s",
                        stream=sys.stderr)


def guarded(fn: Callable[[], T]) -> T:
    """Run a library call; expected failures become one line on stderr and exit code 2."""
    try:
        return fn()
    except RsicrcError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def app(help_text: str) -> typer.Typer:
    return typer.Typer(help=help_text, add_completion=False, no_args_is_help=True,
                       pretty_exceptions_enable=False, rich_markup_mode=None)

