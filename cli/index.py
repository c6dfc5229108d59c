"""`rsicrc index`: embed an archive of before/after pairs into a retrieval index folder (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rsicrc.cli.common import (
    CLUSTER,
    DEVICE,
    ENGINE,
    GPUS_PER_WORKER,
    MODEL,
    THREADS,
    WORKER_THREADS,
    WORKERS,
    cluster_options,
    guarded,
    print_json,
    runtime_options,
    setup_logging,
)
from rsicrc.runtime.index import DEFAULT_COMMIT_ROWS
from rsicrc.runtime.index_format import DEFAULT_DTYPE, STORE_DTYPES

if TYPE_CHECKING:
    from rsicrc.runtime.retriever import IndexReport


def index_command(
    pairs: Path = typer.Argument(..., metavar="PAIRS", show_default=False,
                                 help="A LEVIR-CC dataset folder, a folder with A/ and B/ (pairs matched by "
                                 "file name, ids = file names) or a CSV with the header before,after[,id] "
                                 "(paths relative to the CSV; ids from the id column, else line numbers)."),
    out: Path = typer.Option(..., "--out", help="Index folder: created, or appended to when it exists.",
                             show_default=False),
    model: Path | None = MODEL,
    split: str | None = typer.Option(None, "--split", help="With a LEVIR-CC folder: train, val or test "
                                     "(default: all).", show_default=False),
    batch_size: int = typer.Option(8, "--batch-size", help="Pairs per image-encoder batch."),
    dtype: str | None = typer.Option(None, "--dtype", help=f"Stored embeddings: {' or '.join(STORE_DTYPES)} "
                                     f"(default: {DEFAULT_DTYPE} for a new index, the index's own when "
                                     "appending).", show_default=False),
    commit_every: int = typer.Option(DEFAULT_COMMIT_ROWS, "--commit-every",
                                     help="Pairs per committed shard: an interrupted run keeps what was "
                                     "committed and resumes from there."),
    engine: str = ENGINE,
    device: str = DEVICE,
    precision: str | None = typer.Option(None, "--precision", help="fp32 or int8, as exported (default: the "
                                         "index's when appending, else the model folder's default).",
                                         show_default=False),
    threads: int | None = THREADS,
    cluster: str = CLUSTER,
    workers: int | None = WORKERS,
    worker_threads: int | None = WORKER_THREADS,
    gpus_per_worker: float | None = GPUS_PER_WORKER,
    bands: str | None = typer.Option(None, "--bands", help="Bands of multiband images, 1-based, e.g. 4,3,2 "
                                     "(default: the first three, or the only one).", show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print added, skipped, total and index as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Embed before/after pairs with the model's image encoder into an index folder for `rsicrc search`.

    Embeddings are L2-normalised and stored with ids, paths and the sha256 of the model. Running it
    again on the same folder appends: pairs already indexed are skipped, so an interrupted run
    resumes where it was committed. Writes are atomic; a crash never leaves a damaged index.
    With --cluster ray[:ADDRESS], Ray workers embed the batches and this process writes the index.
    """
    setup_logging()

    def run() -> IndexReport:
        from rsicrc.runtime.images import parse_bands
        from rsicrc.runtime.retriever import index_pairs

        chosen_bands = parse_bands(bands) if bands is not None else None
        runtime = runtime_options(engine, device, precision, threads)
        where = cluster_options(cluster, workers, worker_threads, gpus_per_worker)
        return index_pairs(pairs, out, model_dir=model, runtime=runtime, split=split, batch_size=batch_size,
                           dtype=dtype, bands=chosen_bands, commit_every=commit_every, progress=not quiet,
                           cluster=where)

    report = guarded(run)
    if json_out:
        print_json(report.to_dict())
    else:
        typer.echo(f"indexed {report.added} new pair(s), skipped {report.skipped} already indexed; "
                   f"{report.index_dir} holds {report.total}")
