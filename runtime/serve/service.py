"""One service process's state: the captioner, the optional retriever and the batching worker,
loaded once in a background thread (GET /readyz says when), and shut down by draining the queue.
Torch-free, no web library: the app calls these methods and maps their typed errors to statuses.

Batches run `Captioner.caption_preprocessed`, the captioning task every other path runs, on the
stacked rows of the batch's requests, with the batch's one `DecodingOptions` (the grouping key).
Each request's answer is `CaptionResult.to_dict()` (the `rsicrc caption --json` object); its
timing_ms holds the request's own read, preprocess and queue times beside its batch's encode and
decode times, and `total` is their sum.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rsicrc.errors import ConfigError, IndexFolderError, RsicrcError, ServiceBusyError
from rsicrc.runtime.captioner import Captioner, CaptionResult
from rsicrc.runtime.decoding import DecodingOptions
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.retriever import Retriever, check_top_k
from rsicrc.runtime.serve.batcher import Answer, Batcher
from rsicrc.runtime.serve.inputs import PreparedPair
from rsicrc.runtime.serve.metrics import ServeMetrics
from rsicrc.runtime.serve.settings import ServeSettings

log = logging.getLogger(__name__)

LOADING, READY, FAILED, CLOSING = "loading", "ready", "failed", "closing"  # Service.state


class Service:
    """The model, the index and the batching worker of one server process."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = ServeMetrics(settings.max_batch)
        self.state = LOADING
        self.failure: str | None = None  # why loading failed, one line
        self.captioner: Captioner | None = None
        self.retriever: Retriever | None = None
        self.batcher: Batcher[PreparedPair, CaptionResult] | None = None
        self._search_pool = ThreadPoolExecutor(1, thread_name_prefix="rsicrc-search")  # one query at a time
        self._searches = 0  # searches waiting or running
        self.metrics.track_queue(lambda: self.batcher.depth if self.batcher is not None else 0)

    # --- loading and shutdown -------------------------------------------------------------------

    def load(self) -> None:
        """Open the model (and the index), start the batching worker; RsicrcError on failure."""
        start = time.perf_counter()
        s = self.settings
        captioner = Captioner(ModelFolder.open(s.model), s.runtime)
        retriever = None
        if s.index is not None:
            retriever = Retriever(s.index, captioner.model.path, s.runtime, search=s.search)
        self.captioner, self.retriever = captioner, retriever
        self.batcher = Batcher(self._run_batch, s.max_batch, s.max_wait_ms / 1000.0, s.max_queue,
                               on_batch=self.metrics.observe_batch, wait_for_announced=True)
        self.state = READY
        self.metrics.ready.set(1)
        log.info("ready in %.1f s: %s (%s, %s)%s", time.perf_counter() - start, captioner.model.path,
                 captioner.precision, captioner.device,
                 f"; index {s.index} ({len(retriever)} pairs)" if retriever is not None else "")

    def start_loading(self, on_failure: Callable[[str], None]) -> threading.Thread:
        """Load in a background thread; on failure record it and call `on_failure(message)`."""

        def run() -> None:
            try:
                self.load()
            except RsicrcError as e:
                self.state, self.failure = FAILED, str(e)
                on_failure(str(e))
            except Exception as e:  # a thread boundary: an unexpected failure must stop the server too
                log.exception("loading the model failed")
                self.state, self.failure = FAILED, " ".join(f"{type(e).__name__}: {e}".split())
                on_failure(self.failure)

        thread = threading.Thread(target=run, name="rsicrc-load", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Refuse new work, finish every queued request and running search, then stop."""
        if self.state == READY:
            self.state = CLOSING
        self.metrics.ready.set(0)
        if self.batcher is not None:
            self.batcher.close()
        self._search_pool.shutdown(wait=True)

    def require_ready(self) -> None:
        """ServiceBusyError unless the service takes requests now (the queue has room)."""
        if self.state == LOADING:
            raise ServiceBusyError("the model is still loading; retry shortly")
        if self.state == FAILED:
            raise ServiceBusyError(f"the model failed to load: {self.failure}")
        if self.state == CLOSING:
            raise ServiceBusyError("the service is shutting down; send the request to another instance")
        if self.batcher is not None and self.batcher.depth >= self.settings.max_queue:
            raise ServiceBusyError(f"the queue is full ({self.settings.max_queue} waiting); retry later")

    def describe(self) -> dict[str, Any]:
        """What GET /readyz reports."""
        out: dict[str, Any] = {"status": self.state}
        if self.captioner is not None:
            out.update(model=str(self.captioner.model.path), precision=self.captioner.precision,
                       device=self.captioner.device, max_batch=self.settings.max_batch)
        if self.retriever is not None:
            out["index"] = {"path": str(self.settings.index), "pairs": len(self.retriever)}
        if self.failure is not None:
            out["error"] = self.failure
        return out

    # --- captioning -----------------------------------------------------------------------------

    def _run_batch(self, pairs: Sequence[PreparedPair], key: Hashable) -> list[CaptionResult]:
        """The batching worker's call: one encoder run and one beam search for all `pairs`."""
        assert isinstance(key, DecodingOptions) and self.captioner is not None  # set by load()
        before = np.stack([p.before for p in pairs])
        after = np.stack([p.after for p in pairs])
        return self.captioner.caption_preprocessed(before, after, key, {})

    async def caption(self, read: Callable[[], Awaitable[PreparedPair]]) -> tuple[dict[str, Any], int]:
        """Read a request (`await read()`: its pair, preprocessed), queue it, await its batch: the
        `rsicrc caption --json` object and the size of the batch it ran in. The request is announced
        to the batcher while it is read, so a batch forming meanwhile waits for it (batcher.py)."""
        self.require_ready()
        batcher = self.batcher
        assert batcher is not None  # READY
        batcher.announce()
        try:
            pair = await read()
            future = batcher.submit(pair, pair.options)
        finally:
            batcher.withdraw()
        answer: Answer[CaptionResult] = await asyncio.wrap_future(future)
        return self.answer(answer, pair), answer.batch_size

    def answer(self, answer: Answer[CaptionResult], pair: PreparedPair) -> dict[str, Any]:
        """The result's JSON object with this request's own timings."""
        out = answer.result.to_dict()
        batch = answer.result.timing_ms
        timing = {"load": batch["load"], **pair.timing_ms, "queue": answer.queue_ms,
                  "encode": batch["encode"], "decode": batch["decode"]}
        timing["total"] = sum(v for k, v in timing.items() if k != "load")
        out["timing_ms"] = timing
        return out

    # --- search ---------------------------------------------------------------------------------

    async def search(self, query: Any, top_k: Any) -> list[dict[str, Any]]:
        """The `rsicrc search --json` list for one query (searches run one at a time)."""
        self.require_ready()
        if self.retriever is None:
            raise IndexFolderError("this server has no index; start it with --index DIR to search")
        if not isinstance(query, str):
            raise ConfigError(f"query must be text, got {query!r}")
        k = check_top_k(top_k)
        if self._searches >= self.settings.max_queue:
            raise ServiceBusyError(f"{self.settings.max_queue} searches are waiting; retry later")
        retriever = self.retriever
        self._searches += 1
        try:
            hits = await asyncio.get_running_loop().run_in_executor(
                self._search_pool, lambda: retriever.search([query], k, warn=False)[0])
        finally:
            self._searches -= 1
        return [h.to_dict() for h in hits]
