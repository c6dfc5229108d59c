"""The batching worker on its own (a real Batcher, a real batch function that records what it
got): batches never mix keys, the oldest request goes first, max_batch and max_wait hold, a full
queue refuses, close() drains, and a failing batch fails only its own requests."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence

import pytest

from rsicrc.errors import ConfigError, ServiceBusyError
from rsicrc.runtime.serve.batcher import Batcher
from rsicrc.runtime.serve.settings import ServeSettings


class Recorder:
    """A batch function: returns each job doubled, remembers every batch, can be held or fail."""

    def __init__(self) -> None:
        self.batches: list[tuple[Hashable, list[int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, jobs: Sequence[int], key: Hashable) -> list[int]:
        self.started.set()
        self.gate.wait(10)
        if any(j < 0 for j in jobs):
            raise ValueError("negative job")
        self.batches.append((key, list(jobs)))
        return [2 * j for j in jobs]


def test_groups_by_key_and_takes_the_oldest_first() -> None:
    run = Recorder()
    run.gate.clear()  # hold the worker in its first batch while the rest queue up
    batcher = Batcher(run, max_batch=3, max_wait_s=0.0, max_queue=100)
    first = batcher.submit(0, "a")
    assert run.started.wait(5)
    futures = [batcher.submit(job, key) for job, key in
               [(1, "b"), (2, "a"), (3, "b"), (4, "a"), (5, "b"), (6, "b"), (7, "a")]]
    assert batcher.depth == 7
    run.gate.set()
    answers = [f.result(5) for f in [first, *futures]]
    assert [a.result for a in answers] == [0, 2, 4, 6, 8, 10, 12, 14]
    # b holds the oldest waiting job (1): b first, three at most, then a, then the rest of each
    assert run.batches == [("a", [0]), ("b", [1, 3, 5]), ("a", [2, 4, 7]), ("b", [6])]
    assert [a.batch_size for a in answers] == [1, 3, 3, 3, 3, 3, 1, 3]
    assert batcher.close(5)


def test_waits_up_to_max_wait_for_batch_mates() -> None:
    run = Recorder()
    batcher = Batcher(run, max_batch=4, max_wait_s=0.3, max_queue=10)
    start = time.monotonic()
    futures = [batcher.submit(i, "k") for i in range(2)]
    answers = [f.result(5) for f in futures]
    waited = time.monotonic() - start
    assert run.batches == [("k", [0, 1])]  # gathered, not run one by one
    assert 0.25 <= waited < 3.0
    assert answers[0].queue_ms >= 250.0
    full = [batcher.submit(i, "k") for i in range(4)]  # a full batch does not wait
    [f.result(5) for f in full]
    assert run.batches[-1] == ("k", [0, 1, 2, 3])
    assert max(f.result().queue_ms for f in full) < 250.0
    assert batcher.close(5)


def test_with_announcements_it_waits_only_for_requests_on_their_way() -> None:
    run = Recorder()
    batcher = Batcher(run, max_batch=4, max_wait_s=5.0, max_queue=10, wait_for_announced=True)
    start = time.monotonic()
    assert batcher.submit(1, "k").result(5).batch_size == 1  # nobody announced: no wait at all
    assert time.monotonic() - start < 2.0
    batcher.announce()
    batcher.announce()  # two requests on their way (being read)
    first = batcher.submit(2, "k")
    batcher.withdraw()  # the first of them is now queued
    time.sleep(0.3)
    assert not first.done()  # it waits for the other one
    second = batcher.submit(3, "k")
    batcher.withdraw()
    assert first.result(5).batch_size == second.result(5).batch_size == 2
    assert run.batches[-1] == ("k", [2, 3])
    batcher.announce()  # announced, then never submitted (it failed): max_wait still bounds the wait
    short = Batcher(run, max_batch=4, max_wait_s=0.3, max_queue=10, wait_for_announced=True)
    short.announce()
    alone = short.submit(4, "k")
    assert alone.result(5).queue_ms >= 250.0
    full = Batcher(run, max_batch=8, max_wait_s=5.0, max_queue=2, wait_for_announced=True)
    full.announce()  # someone is on the way, but the queue is full: waiting would only refuse requests
    pair = [full.submit(5, "k"), full.submit(6, "k")]
    assert [f.result(2.5).batch_size for f in pair] == [2, 2]
    assert batcher.close(5) and short.close(5) and full.close(5)


def test_full_queue_refuses_and_close_drains() -> None:
    run = Recorder()
    run.gate.clear()
    batcher = Batcher(run, max_batch=2, max_wait_s=0.0, max_queue=3)
    running = batcher.submit(0, "k")
    assert run.started.wait(5)
    queued = [batcher.submit(i, "k") for i in (1, 2, 3)]
    with pytest.raises(ServiceBusyError, match="queue is full"):
        batcher.submit(4, "k")
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(ServiceBusyError, match="shutting down"):
        batcher.submit(5, "k")
    run.gate.set()
    closer.join(5)
    assert not closer.is_alive()
    assert [f.result(0).result for f in [running, *queued]] == [0, 2, 4, 6]  # every queued job ran


def test_a_failing_batch_fails_only_its_requests() -> None:
    run = Recorder()
    batcher = Batcher(run, max_batch=8, max_wait_s=0.2, max_queue=10)
    bad = [batcher.submit(j, "x") for j in (1, -1)]  # one batch, one poisoned job
    for f in bad:
        with pytest.raises(ValueError, match="negative job"):
            f.result(5)
    assert batcher.submit(3, "x").result(5).result == 6  # the worker lives on
    assert batcher.close(5)


def test_a_cancelled_request_is_skipped() -> None:
    run = Recorder()
    run.gate.clear()
    batcher = Batcher(run, max_batch=8, max_wait_s=0.0, max_queue=10)
    batcher.submit(0, "k")
    assert run.started.wait(5)
    gone, kept = batcher.submit(1, "k"), batcher.submit(2, "k")
    assert gone.cancel()
    run.gate.set()
    assert kept.result(5).result == 4 and kept.result().batch_size == 1
    assert run.batches[-1] == ("k", [2])
    assert batcher.close(5)


@pytest.mark.parametrize("field, value, text", [
    ("max_batch", 0, "max-batch must be an integer >= 1"),
    ("max_wait_ms", -1.0, "max-wait-ms must be a finite number >= 0"),
    ("max_queue", True, "max-queue must be an integer >= 1"),
    ("port", 70000, "port must be an integer from 0 to 65535"),
    ("max_upload_mb", float("nan"), "max-upload-mb must be a finite number"),
    ("search", "fast", "unknown search 'fast'; choose one of: exact, quantized, faiss"),
    ("allow_paths", "/no/such/folder", "--allow-paths /no/such/folder is not a folder"),
])
def test_settings_refuse_bad_values(field: str, value: object, text: str) -> None:
    with pytest.raises(ConfigError, match="^" + text.replace("(", r"\(").replace(")", r"\)")):
        ServeSettings(**{field: value})
