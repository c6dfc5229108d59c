"""`rsicrc serve`: the captioning and search service (FastAPI + uvicorn, torch-free)."""

from __future__ import annotations

from pathlib import Path

import typer

from rsicrc.cli.common import (
    DEVICE,
    ENGINE,
    MODEL,
    PRECISION,
    THREADS,
    guarded,
    runtime_options,
    setup_logging,
)
from rsicrc.runtime.retriever import SEARCHES
from rsicrc.runtime.serve.settings import ServeSettings

D = ServeSettings()  # the defaults, declared once in the settings dataclass


def serve_command(
    model: Path | None = MODEL,
    index: Path | None = typer.Option(None, "--index", help="Index folder (from `rsicrc index`, made with "
                                      "the same model) for POST /v1/search.", show_default=False),
    host: str = typer.Option(D.host, "--host", help="Interface to listen on; 0.0.0.0 exposes the service "
                             "beyond this machine."),
    port: int = typer.Option(D.port, "--port", help="TCP port; 0 picks a free one (printed at start)."),
    max_batch: int = typer.Option(D.max_batch, "--max-batch", help="Most pairs encoded and decoded "
                                   "together."),
    max_wait_ms: float = typer.Option(D.max_wait_ms, "--max-wait-ms", help="How long the oldest waiting "
                                      "request waits for batch-mates."),
    max_queue: int = typer.Option(D.max_queue, "--max-queue", help="Requests that may wait for a batch; "
                                  "more are answered 503 with Retry-After."),
    max_upload_mb: float = typer.Option(D.max_upload_mb, "--max-upload-mb", help="Largest request body "
                                        "(MiB); larger ones are answered 413."),
    max_beam: int = typer.Option(D.max_beam, "--max-beam", help="Largest beam a request may ask for."),
    allow_paths: Path | None = typer.Option(None, "--allow-paths", help="Let JSON requests name images by "
                                            "path inside this folder (nothing outside it is readable).",
                                            show_default=False),
    search: str = typer.Option(D.search, "--search", help=f"How /v1/search scans the index: "
                               f"{', '.join(SEARCHES)} (see `rsicrc search --help`)."),
    engine: str = ENGINE,
    device: str = DEVICE,
    precision: str | None = PRECISION,
    threads: int | None = THREADS,
    access_log: bool = typer.Option(D.access_log, "--access-log/--no-access-log", help="Log every request."),
) -> None:
    """Serve change captioning (POST /v1/caption) and search (POST /v1/search) over HTTP.

    One process keeps the model loaded; concurrent caption requests with the same beam are
    encoded and decoded together (dynamic batching). GET /healthz, /readyz and /metrics
    (Prometheus) report on it; /docs shows the API. SIGTERM or Ctrl-C stops accepting, answers
    every queued request, then exits. Needs `pip install 'rsicrc[serve]'`.
    """
    setup_logging()

    def run() -> int:
        from rsicrc.runtime.model_folder import ModelFolder
        from rsicrc.runtime.serve.server import serve

        settings = ServeSettings(
            model=model, index=index, host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms,
            max_queue=max_queue, max_upload_mb=max_upload_mb, max_beam=max_beam, allow_paths=allow_paths,
            search=search, access_log=access_log,
            runtime=runtime_options(engine, device, precision, threads))
        folder = ModelFolder.open(model)  # a missing or malformed folder fails here, before listening
        folder.precision(settings.runtime.precision)
        if index is not None and not Path(index).is_dir():
            from rsicrc.errors import IndexFolderError

            raise IndexFolderError(f"--index {index} is not a folder; make one with `rsicrc index`")
        return serve(settings)

    code = guarded(run)
    raise typer.Exit(code)
