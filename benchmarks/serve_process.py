"""`rsicrc serve` in a child process on a free loopback port, for the service tests and the load
test: started with --port 0 (the server binds and prints the URL), ready once GET /readyz answers
200, stopped with SIGTERM (the graceful drain) and its exit code returned. Standard library only.

    with ServerProcess(["--model", "model"]) as server:
        urllib.request.urlopen(server.url + "/healthz")
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

LISTENING = re.compile(r"listening on (http://\S+)")
MAIN = "from rsicrc.cli.main import main\nmain()\n"


class ServerProcess:
    """A running `rsicrc serve`; `log` collects its stderr lines (read continuously, so the child
    never blocks on a full pipe)."""

    def __init__(self, args: Sequence[str], prelude: str = "", ready_timeout_s: float = 180.0,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.args = ["serve", "--host", "127.0.0.1", "--port", "0", *map(str, args)]
        self.prelude = prelude  # Python run in the child before the CLI (e.g. an import blocker)
        self.ready_timeout_s = ready_timeout_s
        self.env, self.cwd = env, cwd
        self.url = ""
        self.log: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._seen = threading.Condition()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> ServerProcess:
        """Start and wait until /readyz answers 200; RuntimeError (with the log) otherwise."""
        self.proc = subprocess.Popen([sys.executable, "-c", self.prelude + MAIN, *self.args], text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=self.env, cwd=self.cwd)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + self.ready_timeout_s
        with self._seen:
            while not self.url and self.proc.poll() is None and time.monotonic() < deadline:
                self._seen.wait(0.1)
        while self.url and self.proc.poll() is None and time.monotonic() < deadline:
            if self.status("/readyz") == 200:
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("rsicrc serve did not become ready:\n" + "\n".join(self.log[-30:]))

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._seen:
                self.log.append(line.rstrip("\n"))
                found = LISTENING.search(line)
                if found and not self.url:
                    self.url = found.group(1)
                self._seen.notify_all()

    def status(self, path: str) -> int:
        """The HTTP status of GET path (0 when the server does not answer)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return 0

    def rss_mb(self) -> float:
        """The server's resident set now (Linux /proc), MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError("no VmRSS in /proc")

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM (graceful drain), then the exit code; killed if it outlives `timeout_s`."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.wait())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
