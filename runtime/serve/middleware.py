"""Two small ASGI middlewares of the service (plain ASGI, so they wrap any framework's app):
`BodyLimit` answers 413 to a request body over the limit (by its Content-Length before anything is
read, or while a chunked body streams in) and `RequestMetrics` times every request and records
its status. Torch-free, no web library."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from rsicrc.errors import RequestTooLargeError
from rsicrc.runtime.serve.metrics import ServeMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_json_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None
                          ) -> None:
    """A complete `{"error": message}` response."""
    body = json.dumps({"error": message}, separators=(",", ":")).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def too_large(limit: int) -> str:
    return f"request body is larger than the server's limit of {limit / (1 << 20):g} MiB (--max-upload-mb)"


class BodyLimit:
    """413 for request bodies over `max_bytes`: at once by Content-Length, else by RequestTooLargeError
    raised from `receive` (the app's handler for it answers 413)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_json_error(send, 413, too_large(self.max_bytes), {"connection": "close"})
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLargeError(too_large(self.max_bytes))
            return message

        await self.app(scope, limited, send)


class RequestMetrics:
    """Count and time every HTTP request by path and status (500 when the app raised)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            self.metrics.observe_request(scope.get("path", ""), status, time.perf_counter() - start)
