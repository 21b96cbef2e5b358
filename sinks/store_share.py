"""Share an embedded (chDB) store that this process owns with readers in other processes.

chDB opens a store directory in one process at a time. While the sink owns the store, the
query CLI (and later the dashboard) must still read it, through the same clickhouse-connect
``Client`` API as always. So the owner serves the store read-only on a loopback port,
speaking the subset of ClickHouse's HTTP interface that clickhouse-connect uses, and writes
the port and a random access token to ``<store>/hpcinsight-owner.json`` (mode 0600). A
reader that finds the store busy connects there with ``clickhouse_connect.get_client``:
an ordinary HTTP client, so there is no second code path in query code.

Every statement runs with ``readonly=1``, and only one reading statement without ``INTO
OUTFILE`` is accepted (:mod:`hpcinsight.sinks.sql_guard`, checked here on the port, not only in clients):
a reader can never write to the store or its disk, or change its settings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
from base64 import b64decode
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from hpcinsight.sinks.sql_guard import NotReadingError, reading_statement

log = logging.getLogger(__name__)

OWNER_FILE = "hpcinsight-owner.json"
_FORMAT = re.compile(r"\s+FORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
# HTTP parameters that belong to the transport, not to ClickHouse settings
_TRANSPORT = {
    "query",
    "query_id",
    "session_id",
    "session_timeout",
    "database",
    "default_format",
    "compress",
    "decompress",
    "enable_http_compression",
    "wait_end_of_query",
    "send_progress_in_http_headers",
    "http_headers_progress_interval_ms",
    "cancel_http_readonly_queries_on_client_close",
    "client_protocol_version",
    "user",
    "password",
}
_SUMMARY = json.dumps(
    {
        k: "0"
        for k in (
            "read_rows",
            "read_bytes",
            "written_rows",
            "written_bytes",
            "total_rows_to_read",
            "result_rows",
            "result_bytes",
            "elapsed_ns",
        )
    }
)


_ESCAPES = {"b": "\b", "f": "\f", "r": "\r", "n": "\n", "t": "\t", "0": "\0", "a": "\a", "v": "\v"}


def unescape_param(value: str) -> str | None:
    """A query parameter's value as ClickHouse's HTTP interface reads it (escaped text format:
    ``\\N`` is NULL, a backslash escapes the next character)."""
    if value == "\\N":
        return None
    if "\\" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Owner:
    pid: int
    port: int
    token: str


def read_owner(store_dir: Path) -> Owner | None:
    """The live owner of ``store_dir``, or None if there is none (or it died)."""
    try:
        data = json.loads((store_dir / OWNER_FILE).read_text())
        owner = Owner(int(data["pid"]), int(data["port"]), str(data["token"]))
    except (OSError, ValueError, KeyError):
        return None
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return owner


class StoreShare:
    """Serves ``client`` (a connection to the owned store) read-only on 127.0.0.1."""

    def __init__(self, client: Client, store_dir: Path) -> None:
        self.client = client
        self.store_dir = store_dir
        self.token = secrets.token_urlsafe(24)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="store-share", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> StoreShare:
        self._thread.start()
        path = self.store_dir / OWNER_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "port": self.port, "token": self.token}, f)
        os.replace(tmp, path)
        log.info("sharing the embedded store read-only on 127.0.0.1:%d", self.port)
        return self

    def stop(self) -> None:
        owner = read_owner(self.store_dir)
        if owner is not None and owner.pid == os.getpid():
            (self.store_dir / OWNER_FILE).unlink(missing_ok=True)
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        share = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:  # quiet: no access log
                log.debug("store share: " + fmt, *args)

            def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                auth = self.headers.get("Authorization", "")
                supplied = ""
                if auth.startswith("Basic "):
                    try:
                        supplied = b64decode(auth[6:]).decode().partition(":")[2]
                    except ValueError:
                        supplied = ""
                supplied = supplied or self.headers.get("X-ClickHouse-Key", "")
                return secrets.compare_digest(supplied, share.token)

            def _handle(self) -> None:
                if not self._authorised():
                    self._reply(
                        401,
                        b"Code: 516. DB::Exception: wrong store-share token. (AUTHENTICATION_FAILED)\n",
                        {"X-ClickHouse-Exception-Code": "516"},
                    )
                    return
                query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query, keep_blank_values=True).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
                sql = " ".join(part for part in (query.get("query", ""), body) if part)
                # ClickHouse's HTTP interface takes parameter values in its escaped text format
                # (clickhouse-connect sends a'b as a\'b); the engine's binding escapes again
                params = {k[6:]: unescape_param(v) for k, v in query.items() if k.startswith("param_")}
                settings: dict[str, Any] = {k: v for k, v in query.items() if k not in _TRANSPORT and not k.startswith("param_")}
                settings["readonly"] = 1
                match = _FORMAT.search(sql)
                fmt = match.group(1) if match else query.get("default_format", "TabSeparated")
                if match:
                    sql = sql[: match.start()]
                try:
                    sql = reading_statement(sql)
                except NotReadingError as err:
                    self._reply(
                        403,
                        f"Code: 164. DB::Exception: the shared embedded store is read-only: {err}. (READONLY)\n".encode(),
                        {"X-ClickHouse-Exception-Code": "164"},
                    )
                    return
                try:
                    data = share.client.raw_query(sql, parameters=params or None, settings=settings, fmt=fmt)
                except ClickHouseError as err:
                    code = re.search(r"Code: (\d+)", str(err))
                    self._reply(500, f"{err}\n".encode(), {"X-ClickHouse-Exception-Code": code.group(1) if code else "1"})
                    return
                self._reply(
                    200,
                    data,
                    {
                        "X-ClickHouse-Format": fmt,
                        "X-ClickHouse-Timezone": "UTC",
                        "X-ClickHouse-Summary": _SUMMARY,
                        "Content-Type": "application/octet-stream",
                    },
                )

            do_GET = do_POST = _handle

        return Handler
