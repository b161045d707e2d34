"""Runs a container health check's command on this machine, against a stand-in HTTP server.

The Dockerfile's HEALTHCHECK and docker-compose.yml's healthchecks are Python one-liners
(a slim image has no curl). No container engine runs here, so the tests run the same
argument vector with this interpreter against a loopback server that answers each path
with a chosen status: a check that cannot pass, or that passes on a 503, fails a test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def http_server(statuses: Mapping[str, int]) -> Iterator[tuple[int, list[str]]]:
    """A loopback server answering each path of `statuses` with its status, others 404: its port, the paths asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(statuses.get(self.path, 404))
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], asked
    finally:
        server.shutdown()
        server.server_close()


def run_check(argv: list[str], env: Mapping[str, str]) -> int:
    """The exit status of a check's exec-form command (`python` is this interpreter), with `env` added."""
    assert argv[0] == "python", f"the image runs checks with its python, not {argv[0]}"
    result = subprocess.run(
        [sys.executable, *argv[1:]],
        env={**os.environ, **env},
        capture_output=True,
        check=False,
        timeout=30,
    )
    return result.returncode


def retarget(argv: list[str], port: int, to: int) -> list[str]:
    """The command with its literal port `port` replaced by `to` (for checks that name their port)."""
    return [arg.replace(f":{port}/", f":{to}/") for arg in argv]
