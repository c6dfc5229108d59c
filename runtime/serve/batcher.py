"""Dynamic batching: requests wait in one bounded queue; a single worker thread takes the oldest
request and up to max_batch - 1 more *with the same decoding options* (beam size), waiting at most
max_wait for them to arrive, and runs them as one batch. Torch-free, no web library.

Grouping. Waiting requests are kept per key (the frozen `DecodingOptions`), each group in arrival
order. The next batch always comes from the group holding the oldest request, so no request waits
behind younger ones of another key for more than the batches in between. The worker waits for
batch-mates only while the oldest request is younger than max_wait and the queue is not full;
under load the queue fills while a batch runs, and the next batch starts at once with whatever has
gathered.

Announced requests. With `wait_for_announced`, the caller announces each request when it arrives
(`announce()`, before its images are read) and withdraws it once submitted or failed; the worker
then waits for batch-mates only while announced requests are still on their way: a lone request
runs at once instead of waiting max_wait for nobody, and a burst that arrives while a batch runs
is gathered whole (up to max_wait) instead of being cut at the first request that is ready.

Backpressure. `submit` raises ServiceBusyError when max_queue requests are already waiting (they
are not yet in a batch) or when the batcher is closing. `close` stops new submissions, lets the
worker run every request already queued, and joins it (graceful drain).

Results come back as concurrent.futures.Future objects (the web side awaits them with
asyncio.wrap_future); a request whose future was cancelled before its batch starts is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

from rsicrc.checks import finite_number, positive_int
from rsicrc.errors import ServiceBusyError

log = logging.getLogger(__name__)

J = TypeVar("J")  # a job (one request's input)
R = TypeVar("R")  # its result


@dataclass(frozen=True)
class Answer(Generic[R]):
    """A job's result and the batch it ran in."""

    result: R  # what the batch function returned for this job
    batch_size: int  # jobs in the batch (cancelled ones excluded)
    queue_ms: float  # from submit to the start of its batch


@dataclass
class _Waiting(Generic[J, R]):
    """A submitted job not yet in a batch."""

    job: J
    future: Future[Answer[R]]
    queued_at: float  # time.monotonic() at submit


BatchFn = Callable[[Sequence[J], Hashable], Sequence[R]]  # (jobs, key) -> one result per job


class Batcher(Generic[J, R]):
    """One worker thread running `run(jobs, key)` over batches of jobs with one key."""

    def __init__(self, run: BatchFn, max_batch: int, max_wait_s: float, max_queue: int,
                 on_batch: Callable[[int, float], None] | None = None, wait_for_announced: bool = False,
                 name: str = "rsicrc-batcher") -> None:
        self._run = run
        self.max_batch = positive_int(max_batch, "max-batch")
        self.max_wait_s = finite_number(max_wait_s, "max-wait", minimum=0.0)
        self.max_queue = positive_int(max_queue, "max-queue")
        self._on_batch = on_batch  # (batch size, seconds) after every batch, for metrics
        self._groups: dict[Hashable, deque[_Waiting[J, R]]] = {}
        self._depth = 0  # jobs waiting in self._groups
        self._wait_for_announced = wait_for_announced  # wait only while announced jobs are on their way
        self._announced = 0  # jobs announced and not yet withdrawn
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting for a batch (the running batch excluded)."""
        return self._depth

    def submit(self, job: J, key: Hashable) -> Future[Answer[R]]:
        """Queue a job; ServiceBusyError when the queue is full or the batcher is closing."""
        future: Future[Answer[R]] = Future()
        with self._cond:
            if self._closing:
                raise ServiceBusyError("the service is shutting down; send the request to another instance")
            if self._depth >= self.max_queue:
                raise ServiceBusyError(f"the queue is full ({self.max_queue} waiting); retry later")
            self._groups.setdefault(key, deque()).append(_Waiting(job, future, time.monotonic()))
            self._depth += 1
            self._cond.notify()
        return future

    def announce(self) -> None:
        """A request has arrived and will be submitted (or withdrawn) soon."""
        with self._cond:
            self._announced += 1

    def withdraw(self) -> None:
        """An announced request has been submitted, or will not be (it failed)."""
        with self._cond:
            self._announced -= 1
            self._cond.notify()

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new jobs, finish the queued ones, stop the worker; False if it outlived `timeout`."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            with self._cond:
                taken = self._take()
            if taken is None:
                return
            self._execute(*taken)

    def _take(self) -> tuple[Hashable, list[_Waiting[J, R]]] | None:
        """(key, jobs) of the next batch, waiting as the module docstring says; None once closed and
        empty. Called with the lock held."""
        while True:
            if not self._groups:
                if self._closing:
                    return None
                self._cond.wait()
                continue
            key = min(self._groups, key=lambda k: self._groups[k][0].queued_at)
            group = self._groups[key]
            left = group[0].queued_at + self.max_wait_s - time.monotonic()
            nobody_coming = self._wait_for_announced and self._announced <= 0
            full = self._depth >= self.max_queue  # waiting longer would only refuse requests
            if len(group) >= self.max_batch or left <= 0 or self._closing or nobody_coming or full:
                break
            self._cond.wait(left)
        batch = [group.popleft() for _ in range(min(self.max_batch, len(group)))]
        if not group:
            del self._groups[key]
        self._depth -= len(batch)
        return key, batch

    def _execute(self, key: Hashable, batch: list[_Waiting[J, R]]) -> None:
        """Run one batch and settle its futures; a failure fails this batch's requests only."""
        live = [w for w in batch if w.future.set_running_or_notify_cancel()]
        if not live:
            return
        start = time.monotonic()
        try:
            results = self._run([w.job for w in live], key)
            if len(results) != len(live):
                raise RuntimeError(f"the batch function returned {len(results)} results for {len(live)} jobs")
        except Exception as e:  # any failure: the worker must outlive a failing batch
            log.exception("a batch of %d request(s) failed", len(live))
            for w in live:
                w.future.set_exception(e)
            return
        finally:
            if self._on_batch is not None:
                self._on_batch(len(live), time.monotonic() - start)
        for w, result in zip(live, results, strict=True):
            w.future.set_result(Answer(result, len(live), (start - w.queued_at) * 1000.0))
