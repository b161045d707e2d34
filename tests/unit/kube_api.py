"""A stand-in for the Kubernetes API on loopback (there is no cluster here): tests/unit/test_scalein.py and
tests/integration/test_scalein.py. It answers every GET with the status and body set on its `Api`, and
records each request's path and Authorization header."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Api:
    """What the stand-in answers, and the requests it saw."""

    status: int = 200
    body: bytes = b'{"spec": {"replicas": 2}}'
    delay: float = 0.0
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization)
    url: str = ""


def serve() -> Iterator[Api]:
    """A stand-in API on loopback answering `Api`'s status and body, until closed."""
    state = Api()
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            state.seen.append((self.path, self.headers.get("Authorization")))
            if state.delay:
                stop.wait(state.delay)
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
