"""What a `rsicrc serve` process is started with: one frozen dataclass that holds every default
of the service (the CLI reads its defaults from here) and checks every value when it is built.
Torch-free and free of web libraries, so the CLI can build and check it before anything loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rsicrc.checks import finite_number, one_of, positive_int
from rsicrc.errors import ConfigError
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.retriever import SEARCHES

MAX_PORT = 65535


@dataclass(frozen=True)
class ServeSettings:
    """How the service listens, batches, limits and runs the model. Invalid values raise
    ConfigError naming the option."""

    model: Path | None = None  # exported model folder; None: $RSICRC_MODEL or the default folder
    index: Path | None = None  # retrieval index folder for /v1/search; None: search answers 404
    host: str = "127.0.0.1"  # interface to listen on (loopback unless deliberately widened)
    port: int = 8080  # TCP port; 0 lets the OS pick a free one (logged at start)
    max_batch: int = 16  # most pairs encoded and decoded together
    max_wait_ms: float = 10.0  # how long the oldest waiting request may wait for batch-mates
    max_queue: int = 256  # requests waiting for the model (not yet in a batch); more -> 503
    max_upload_mb: float = 64.0  # largest request body in MiB; more -> 413
    max_beam: int = 8  # largest beam a request may ask for (a beam of B costs ~B pairs)
    allow_paths: Path | None = None  # folder JSON requests may name images in; None: uploads only
    search: str = "exact"  # how /v1/search scans the index (see `rsicrc search --search`)
    retry_after_s: int = 1  # the Retry-After header of a 503 (queue full, model still loading)
    access_log: bool = False  # one log line per request (uvicorn's access log); /metrics counts anyway
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)  # engine, device, precision, threads

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ConfigError(f"host must be an interface name or address, got {self.host!r}")
        positive_int(self.port, "port", minimum=0)
        if self.port > MAX_PORT:
            raise ConfigError(f"port must be an integer from 0 to {MAX_PORT}, got {self.port!r}")
        positive_int(self.max_batch, "max-batch")
        finite_number(self.max_wait_ms, "max-wait-ms", minimum=0.0, maximum=60_000.0)
        positive_int(self.max_queue, "max-queue")
        finite_number(self.max_upload_mb, "max-upload-mb", minimum=0.001)
        positive_int(self.max_beam, "max-beam")
        positive_int(self.retry_after_s, "retry-after")
        one_of(self.search, SEARCHES, "search")
        if not isinstance(self.runtime, RuntimeOptions):
            raise ConfigError(f"runtime must be RuntimeOptions, got {type(self.runtime).__name__}")
        if self.allow_paths is not None and not Path(self.allow_paths).is_dir():
            raise ConfigError(f"--allow-paths {self.allow_paths} is not a folder")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def allowed_root(self) -> Path | None:
        """The --allow-paths folder, resolved (symlinks followed), or None."""
        return None if self.allow_paths is None else Path(self.allow_paths).resolve()
