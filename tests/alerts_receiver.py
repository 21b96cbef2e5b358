"""A local HTTP receiver for the alert tests: records every payload it accepts.

It answers on 127.0.0.1 with the status set in ``status`` (200 by default; 503 plays a receiver that
is down), after ``delay_s``, or once ``gate`` is set when one is given (a receiver that hangs
until the test lets it answer, with no clock involved); only payloads answered with 2xx count as received. ``stop()`` and
``start()`` again take it off the network and back on the same port (connection refused meanwhile).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    at: float


class LocalReceiver:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.status = 200
        self.delay_s = 0.0
        self.gate: threading.Event | None = None
        self.received: list[Received] = []
        self.refused = 0  # requests answered with a non-2xx status
        self.requests = 0
        self.aborted = 0  # requests whose body never arrived whole (the sender died mid-send)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if len(raw) < length:
                    # the sender died mid-body (a router killed mid-send): as a real server would, no
                    # notification was received; its resend after the restart is what counts
                    with receiver._lock:
                        receiver.aborted += 1
                    self.close_connection = True
                    return
                with receiver._lock:
                    receiver.requests += 1
                    status, delay, gate = receiver.status, receiver.delay_s, receiver.gate
                if gate is not None:
                    gate.wait()
                if delay:
                    time.sleep(delay)
                if 200 <= status < 300:
                    try:
                        body: Any = json.loads(raw)
                    except ValueError:
                        body = raw.decode(errors="replace")
                    with receiver._lock:
                        receiver.received.append(Received(self.path, dict(self.headers), body, time.time()))
                else:
                    with receiver._lock:
                        receiver.refused += 1
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender is gone (a router killed mid-send): what it sent still counts

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def bodies(self) -> list[Any]:
        with self._lock:
            return [r.body for r in self.received]

    def wait_for(self, n: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.received) >= n:
                    return list(self.received)
            if time.monotonic() > deadline:
                raise AssertionError(f"received {len(self.received)} payloads, expected {n}, within {timeout} s")
            time.sleep(0.05)
