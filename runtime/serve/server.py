"""Run the service: bind the socket, start uvicorn (one process, one event loop) and load the
model in the background; SIGTERM or Ctrl-C drains it (uvicorn stops accepting and answers the
requests in flight, then the app's shutdown finishes the queue). uvicorn is imported here only.

    code = serve(ServeSettings(model=Path("model"), port=8080))   # 0 after a clean shutdown

The socket is bound before uvicorn starts, so a busy port is a one-line ConfigError rather than
uvicorn's exit, and port 0 picks a free port that the start line reports.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from typing import Any

from rsicrc.errors import ConfigError, DependencyError, RsicrcError
from rsicrc.runtime.serve.app import create_app
from rsicrc.runtime.serve.metrics import SERVE_EXTRA
from rsicrc.runtime.serve.service import Service
from rsicrc.runtime.serve.settings import ServeSettings


def import_uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError:
        raise DependencyError(f"rsicrc serve needs FastAPI and uvicorn: {SERVE_EXTRA}") from None
    return uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (IPv4 or IPv6); ConfigError when it cannot be bound."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, socket.gaierror) as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _drained(signum: int, frame: Any) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""


def serve(settings: ServeSettings) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean drain. A model that fails to load stops the
    server and raises its RsicrcError."""
    uvicorn = import_uvicorn()
    service = Service(settings)
    app = create_app(service)
    sock = bind(settings.host, settings.port)
    config = uvicorn.Config(app, log_level="info", access_log=settings.access_log, lifespan="on",
                            timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)

    def failed(message: str) -> None:  # the CLI prints the message once the server has stopped
        server.should_exit = True

    print(f"rsicrc serve: listening on {url_of(sock)} (model loading; GET /readyz says when it is ready)",
          file=sys.stderr, flush=True)
    service.start_loading(failed)
    # uvicorn handles SIGTERM (stop accepting, answer what is in flight, shut the app down, which
    # drains the queue) and then raises the signal again under the handler it found; a handler
    # that does nothing makes that second delivery a normal end, exit code 0.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _drained) if main else None
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if main:
            signal.signal(signal.SIGTERM, previous)
    if service.failure is not None:
        raise RsicrcError(service.failure)
    return 0
