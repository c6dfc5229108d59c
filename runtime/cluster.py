"""Run one job over many units of work here or on a Ray cluster (DESIGN §12 "Cluster"). Torch-free,
and importable without Ray: Ray is imported when a run asks for it (`pip install 'rsicrc[ray]'`).

    cluster = cluster_options("ray:10.0.0.5:6379", workers=8, worker_threads=2)
    for seq, results in execute(units, job, cluster):    # in the driver, the only writer
        ...

Three parts, so that any archive-sized job plugs in (pairs to embed, pairs to caption, later a
list of scenes to tile):
- a source: `units`, a sequence of work units, each a list of small picklable items (ids and
  paths, never pixels). For pairs a unit is one batch of --batch-size pairs: exactly the batch a
  local run makes, so results do not depend on where they were computed;
- a job: a frozen, picklable description (`Job`) whose `open()` runs once per worker (it loads
  the model) and returns the function that turns one unit into its results, one per item;
- a sink: the caller's loop over `execute(...)`, in the driver process, which alone writes.

On Ray the units are the rows of a Ray Data dataset, handed one per call by `map_batches` to a
fixed pool of actors of a callable class (one model load per actor; `worker_threads` CPUs and
`gpus_per_worker` GPUs reserved for each; ONNX Runtime's intra-op threads set to the same
`worker_threads`, since it ignores OMP_NUM_THREADS and would start one thread per core in every
actor). Results stream back to the driver as units complete, in completion order.

Faults. Ray Data restarts an actor whose process dies and retries the units it held, each at most
TASK_RETRIES times (a unit that kills its worker every time fails the run with a ClusterError
rather than looping). A unit delivered twice after a retry is dropped in the driver: every unit
reaches the sink exactly once. Errors the job raises on purpose (RsicrcError: a corrupt image, a
model folder a node cannot see) travel back as results and are raised again, as themselves, in the
driver: one line for the user, as in a local run.

Ray API versions. A fixed actor pool is `compute=ActorPoolStrategy(size=n)` from Ray 2.51 on and
`concurrency=n` in 2.9-2.50; each of those versions logs a deprecation warning for the other
spelling, so `actor_pool` picks by the installed version. Tested: RAY_TESTED, the range pinned by
pyproject's [ray] extra; an older Ray is refused, a newer one is used with a warning.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import numpy as np

from rsicrc.checks import finite_number, optional_positive_int, positive_int
from rsicrc.errors import ClusterError, ConfigError, DependencyError, RsicrcError
from rsicrc.runtime.options import RuntimeOptions

LOCAL, RAY = "local", "ray"
CLUSTER_CHOICES = ("local (this process)", "ray (a Ray instance started for this run)",
                   "ray:ADDRESS (join a running Ray cluster, e.g. ray:auto or ray:10.0.0.5:6379)")
# Oldest and newest Ray minor versions the cluster tests (tests/test_cluster.py, test_scene_list.py)
# passed on: 2.44.1 (concurrency=) and 2.60.0 (compute=).
RAY_TESTED = ((2, 44), (2, 60))
RAY_REQUIREMENT = "ray[data]>=2.44,<2.61"  # the [ray] extra in pyproject.toml
COMPUTE_SINCE = (2, 51)  # first Ray whose map_batches takes compute= (and deprecates concurrency=)
TASK_RETRIES = 3  # retries of a unit whose worker died; a unit that kills its worker 4 times fails
CONNECT_TIMEOUT_S = 10.0  # how long preflight waits for the cluster's address to answer
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"  # where Ray notes its auth default
MAX_BLOCKS = 4096  # Ray Data blocks at most: one unit per block up to here, then units share blocks
log = logging.getLogger(__name__)

T = TypeVar("T")  # a work item (an index entry, a pair, a scene)
R = TypeVar("R")  # its result (an embedding, a caption)
T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


class Job(Protocol[T_contra, R_co]):
    """What every worker does: `open()` once (load the model), then the returned function on each
    unit, giving one result per item. Frozen and picklable: it travels to the workers."""

    def open(self) -> Callable[[list[T_contra]], Sequence[R_co]]: ...


@dataclass(frozen=True)
class ClusterOptions:
    """Where the work runs and with how many model workers. Invalid values raise ConfigError."""

    kind: str = LOCAL  # local: this process (the plain code path) | ray: a Ray Data actor pool
    address: str | None = None  # ray: None starts a local Ray instance; else the cluster to join
    workers: int | None = None  # ray: actors, one model load each; None = as many as the cluster fits
    worker_threads: int = 1  # ray: CPUs reserved per actor = its ONNX Runtime intra-op threads
    gpus_per_worker: float = 0.0  # ray: GPUs reserved per actor (0.5: two actors share one GPU)

    def __post_init__(self) -> None:
        if self.kind not in (LOCAL, RAY):
            raise ConfigError(f"unknown cluster {self.kind!r}; choose one of: {', '.join(CLUSTER_CHOICES)}")
        if self.address is not None and (self.kind != RAY or not isinstance(self.address, str)
                                         or not self.address.strip()):
            raise ConfigError(f"a cluster address goes with ray only (ray:ADDRESS), got {self.address!r}")
        optional_positive_int(self.workers, "workers")
        positive_int(self.worker_threads, "worker threads")
        finite_number(self.gpus_per_worker, "GPUs per worker", minimum=0.0)

    @property
    def is_local(self) -> bool:
        return self.kind == LOCAL

    def describe(self) -> str:
        if self.is_local:
            return "this process"
        return f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"


def cluster_options(spec: str, workers: int | None = None, worker_threads: int | None = None,
                    gpus_per_worker: float | None = None) -> ClusterOptions:
    """The options of `--cluster SPEC --workers N --worker-threads T --gpus-per-worker G`; the
    last three apply to ray only (None: not given)."""
    text = spec.strip() if isinstance(spec, str) else ""
    if text in (LOCAL, RAY):
        kind, address = text, None
    elif text.startswith(f"{RAY}:") and text[len(RAY) + 1:].strip():
        kind, address = RAY, text[len(RAY) + 1:].strip()
    else:
        raise ConfigError(f"unknown --cluster {spec!r}; choose one of: {', '.join(CLUSTER_CHOICES)}")
    given = [flag for flag, value in (("--workers", workers), ("--worker-threads", worker_threads),
                                      ("--gpus-per-worker", gpus_per_worker)) if value is not None]
    if kind == LOCAL and given:
        raise ConfigError(f"{', '.join(given)} apply only with --cluster ray or ray:ADDRESS "
                          "(this run is local)")
    return ClusterOptions(kind, address, workers, 1 if worker_threads is None else worker_threads,
                          0.0 if gpus_per_worker is None else gpus_per_worker)


def worker_runtime(cluster: ClusterOptions, runtime: RuntimeOptions) -> RuntimeOptions:
    """The RuntimeOptions every Ray worker opens the model with: its own thread count, and a device
    that agrees with the GPUs Ray reserves for it (ConfigError for a combination that cannot)."""
    if runtime.threads is not None:
        raise ConfigError("--threads applies to --cluster local; on Ray each worker's ONNX Runtime threads "
                          "are --worker-threads")
    if runtime.device == "cuda" and cluster.gpus_per_worker == 0:
        raise ConfigError("--device cuda on Ray needs GPUs reserved per worker: --gpus-per-worker 1 (or 0.5 "
                          "for two workers per GPU)")
    if runtime.device == "cpu" and cluster.gpus_per_worker > 0:
        raise ConfigError("--gpus-per-worker reserves GPUs that --device cpu would not use; drop one of them")
    return replace(runtime, threads=cluster.worker_threads)


def _version(text: str) -> tuple[int, int]:
    numbers = [int(n) for n in re.findall(r"\d+", text)[:2]]
    return (numbers + [0, 0])[0], (numbers + [0, 0])[1]


def import_ray() -> Any:
    """The `ray` module with Ray Data; DependencyError naming the extra when it is missing or older
    than the tested range, a warning when it is newer."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is a separate part of the ray package: ray[data])
    except ImportError:
        raise DependencyError(f"--cluster ray needs Ray Data: pip install 'rsicrc[ray]' ({RAY_REQUIREMENT})"
                              ) from None
    (low, high), found = RAY_TESTED, _version(ray.__version__)
    if found < low:
        raise DependencyError(f"ray {ray.__version__} is older than rsicrc supports ({RAY_REQUIREMENT}); "
                              "pip install 'rsicrc[ray]'")
    if found > high:
        log.warning("warning: ray %s is newer than the versions rsicrc was tested with (%s)", ray.__version__,
                    RAY_REQUIREMENT)
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of "HOST:PORT" or "ray://HOST:PORT"; None for names Ray resolves itself (auto)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def preflight(cluster: ClusterOptions) -> None:
    """Before anything is written: Ray is installed, and something answers at the cluster's
    address (Ray itself retries a dead address for minutes, printing a warning every few seconds)."""
    import_ray()
    target = _host_port(cluster.address) if cluster.address else None
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ClusterError(f"cannot join the Ray cluster at {cluster.address}: nothing answers at "
                           f"{target[0]}:{target[1]} ({e.strerror or type(e).__name__}); start it with "
                           "`ray start --head` or check the address") from None


def actor_pool(ray: Any, workers: int) -> dict[str, Any]:
    """map_batches' arguments for a fixed pool of `workers` actors, spelled for the installed Ray."""
    if _version(ray.__version__) >= COMPUTE_SINCE:
        return {"compute": ray.data.ActorPoolStrategy(size=workers)}
    return {"concurrency": workers}


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


class _DefaultAuthNote(logging.Filter):
    """Drops Ray's note (2.5x+) that a local instance uses its default, token authentication; a
    warning that authentication is *disabled* still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")


@contextmanager
def ray_session(cluster: ClusterOptions) -> Iterator[tuple[Any, bool]]:
    """(ray, started) connected as `cluster` says: a local instance started here and shut down on
    exit, or the cluster at its address (disconnected on exit). A process already connected (a
    notebook, a test) is used as it is and left connected; `started` is True only for an instance
    this call started."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray, False
        return
    # Errors come back as results; Ray's own worker and raylet logs stay in its session folder
    # (/tmp/ray/session_latest/logs) instead of interleaving with the driver's progress and errors.
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if cluster.address is None:
        kwargs["include_dashboard"] = False
    else:
        kwargs["address"] = cluster.address
    auth_log, note = logging.getLogger(AUTH_LOGGER), _DefaultAuthNote()
    auth_log.addFilter(note)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError, OSError) as e:
        what = (f"join the Ray cluster at {cluster.address}" if cluster.address
                else "start a local Ray instance")
        raise ClusterError(f"cannot {what}: {_one_line(e)}") from None
    finally:
        auth_log.removeFilter(note)
    try:
        yield ray, cluster.address is None
    finally:
        ray.shutdown()


def plan_workers(ray: Any, cluster: ClusterOptions, started: bool) -> int:
    """How many actors to run: --workers, or as many as the cluster's CPUs (and GPUs) fit. More than
    fit is a ClusterError on an instance started here (it would wait forever) and a warning on a
    cluster joined (an autoscaler may add nodes)."""
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    fits = int(cpus // cluster.worker_threads + 1e-9)
    if cluster.gpus_per_worker > 0:
        fits = min(fits, int(gpus / cluster.gpus_per_worker + 1e-9))
    workers = cluster.workers or fits
    if workers > fits or workers == 0:
        need = f"{workers or 1} worker(s) x {cluster.worker_threads} CPU(s)"
        need += f" + {cluster.gpus_per_worker:g} GPU(s)" if cluster.gpus_per_worker > 0 else ""
        message = (f"{need} do not fit on {cluster.describe()} ({cpus:g} CPUs, {gpus:g} GPUs); lower "
                   "--workers, --worker-threads or --gpus-per-worker")
        if started or workers == 0:
            raise ClusterError(message)
        log.warning("warning: %s, or let the cluster's autoscaler add nodes (waiting for them)", message)
    return workers


class _Worker:
    """The callable class of the actor pool: the job opened once per actor, then one unit per
    row of each batch; its outcome (results, or the RsicrcError the job raised) goes back pickled."""

    job: Job[Any, Any]  # set on the per-job subclass made by worker_class

    def __init__(self) -> None:
        self.where = f"{socket.gethostname()}:{os.getpid()}"
        self.error: RsicrcError | None = None
        self.run: Callable[[list[Any]], Sequence[Any]] | None = None
        try:
            self.run = self.job.open()
        except RsicrcError as e:  # e.g. a node without the model folder: reported per unit, as itself
            self.error = e

    def outcome(self, blob: bytes) -> tuple[str, Any]:
        if self.run is None:
            return "error", self.error
        items = pickle.loads(blob)
        try:
            results = list(self.run(items))
        except RsicrcError as e:
            return "error", e
        if len(results) != len(items):
            raise RuntimeError(f"{type(self.job).__name__} gave {len(results)} results for "
                               f"{len(items)} items")
        return "ok", results

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seqs = [int(s) for s in batch["seq"]]
        outcomes = [pickle.dumps(self.outcome(blob), protocol=pickle.HIGHEST_PROTOCOL)
                    for blob in batch["unit"]]
        return {"seq": np.asarray(seqs, dtype=np.int64), "outcome": np.asarray(outcomes, dtype=object),
                "worker": np.asarray([self.where] * len(seqs), dtype=object)}


def worker_class(job: Job[Any, Any]) -> type:
    """A callable class carrying `job` as a class attribute, so that an actor restarted by Ray needs
    no constructor arguments; named after the job (Ray's process titles: ray::MapWorker(MapBatches(
    RsicrcEmbedPairs)))."""
    return type(f"Rsicrc{type(job).__name__}", (_Worker,), {"job": job, "__module__": __name__})


class _QuietConsole(logging.Filter):
    """Ray Data's console output while rsicrc runs: warnings and errors, without the note that its
    progress bars are off (the driver draws its own). Its log file keeps everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not str(record.msg).startswith("Progress bars disabled")


@contextmanager
def _ray_data_quiet(ray: Any) -> Iterator[None]:
    """Ray Data without its progress bars and its per-run INFO lines on the console; restored after."""
    context = ray.data.DataContext.get_current()
    bars, quiet = context.enable_progress_bars, _QuietConsole()
    consoles = [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    context.enable_progress_bars = False
    for handler in consoles:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        context.enable_progress_bars = bars
        for handler in consoles:
            handler.removeFilter(quiet)


def execute(units: Sequence[Sequence[T]], job: Job[T, R], cluster: ClusterOptions
            ) -> Iterator[tuple[int, list[R]]]:
    """(seq, results) for every unit, results in the order of the unit's items: here, in order;
    on Ray, in completion order. Every unit exactly once; the job's RsicrcErrors raised as
    themselves; a cluster that fails or loses the work is a ClusterError."""
    if cluster.is_local:
        run = job.open()
        for seq, unit in enumerate(units):
            yield seq, list(run(list(unit)))
        return
    if len(units) == 0:
        return
    yield from _execute_on_ray(units, job, cluster)


def _execute_on_ray(units: Sequence[Sequence[T]], job: Job[T, R], cluster: ClusterOptions
                    ) -> Iterator[tuple[int, list[R]]]:
    with ray_session(cluster) as (ray, started), _ray_data_quiet(ray):
        workers = plan_workers(ray, cluster, started)
        gpus = f" + {cluster.gpus_per_worker:g} GPU" if cluster.gpus_per_worker > 0 else ""
        log.info("ray: %d worker(s) x %d thread(s)%s on %s (ray %s), %d batch(es)", workers,
                 cluster.worker_threads, gpus, cluster.describe(), ray.__version__, len(units))
        rows = [{"seq": seq, "unit": pickle.dumps(list(unit), protocol=pickle.HIGHEST_PROTOCOL)}
                for seq, unit in enumerate(units)]
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS))
        resources: dict[str, Any] = {"num_cpus": cluster.worker_threads}
        if cluster.gpus_per_worker > 0:
            resources["num_gpus"] = cluster.gpus_per_worker
        with warnings.catch_warnings():
            # Ray 2.60 deprecates remote arguments passed as **kwargs (removal in 2.64, past our pin)
            # and names no parameter for task retries; without it a unit that kills its worker
            # every time would be retried forever.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            mapped = dataset.map_batches(worker_class(job), batch_size=1, batch_format="numpy",
                                         max_restarts=-1, max_task_retries=TASK_RETRIES,
                                         **resources, **actor_pool(ray, workers))
        delivered: set[int] = set()
        seen: set[str] = set()
        duplicates = 0
        try:
            for row in mapped.iter_rows():
                seq = int(row["seq"])
                if seq in delivered:  # a unit computed again after its worker died: already written
                    duplicates += 1
                    continue
                status, payload = pickle.loads(row["outcome"])
                if status == "error":
                    raise payload
                delivered.add(seq)
                seen.add(str(row["worker"]))
                yield seq, payload
        except ray.exceptions.RayError as e:
            log.debug("the Ray run failed", exc_info=True)
            raise ClusterError(f"the Ray run failed after {len(delivered)} of {len(units)} batch(es): "
                               f"{_one_line(e)}") from None
        if len(delivered) != len(units):
            raise ClusterError(f"Ray returned {len(delivered)} of {len(units)} batch(es)")
        # A restarted actor is a new process: more processes than workers means Ray replaced some.
        log.info("ray: %d batch(es) from %d worker process(es)%s", len(delivered), len(seen),
                 f"; {duplicates} repeated after a retry, dropped" if duplicates else "")


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """`items` in consecutive units of `size` (the last may be shorter): a local run's batches."""
    positive_int(size, "batch size")
    return [list(items[i: i + size]) for i in range(0, len(items), size)]

