"""ClickHouse connection and schema, through clickhouse-connect's ``Client`` API only.

``CLICKHOUSE_URL`` picks the target: ``chdb:///dir`` opens the embedded engine
(chDB registers itself as a clickhouse-connect backend, so ``get_client`` returns a
``ChdbClient``, a subclass of ``Client``), and ``http(s)://host:port/db`` a server or
cluster. Everything after :func:`connect` is the same code for both.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from hpcinsight.core.settings import ClickHouseSettings
from hpcinsight.sinks.migrations import MigrationReport, SchemaDriftError, migrate
from hpcinsight.sinks.storage import Layout
from hpcinsight.sinks.store_share import StoreShare, read_owner


class StoreBusyError(RuntimeError):
    """The embedded store is open in another process (chDB allows one per directory)."""


def _embedded_store_busy(directory: Path) -> bool:
    """True if another process holds the store: ClickHouse keeps an flock on ``status``."""
    status = directory / "status"
    if not status.exists():
        return False
    with open(status, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def connect(settings: ClickHouseSettings, writer: bool = False) -> Client:
    """A client for the configured store. In embedded mode, a reader (``writer=False``) whose
    store is owned by another process is connected through that process, read-only."""
    kwargs = {}
    if settings.username:
        kwargs["username"] = settings.username
    if settings.password is not None:
        kwargs["password"] = settings.password.reveal()
    if settings.embedded:
        directory = Path(urlsplit(settings.url).path)
        directory.mkdir(parents=True, exist_ok=True)
        if _embedded_store_busy(directory):
            owner = None if writer else read_owner(directory)
            if owner is None:
                raise StoreBusyError(
                    f"the embedded store {settings.display_url} is open in another process that does not share it; "
                    "stop that process first, or point CLICKHOUSE_URL at a ClickHouse server"
                )
            # Read through the owning process (see hpcinsight.sinks.store_share): same Client API, over HTTP.
            return clickhouse_connect.get_client(host="127.0.0.1", port=owner.port, username="default", password=owner.token)
    try:
        return clickhouse_connect.get_client(dsn=settings.url, **kwargs)
    except ClickHouseError as err:
        # never echo credentials: clickhouse-connect errors can include the URL
        raise ConnectionError(f"cannot connect to ClickHouse at {settings.display_url}: {type(err).__name__}") from None


def share_if_embedded(client: Client, settings: ClickHouseSettings) -> StoreShare | None:
    """In embedded mode, let other processes read the store this process now owns."""
    if not settings.embedded:
        return None
    return StoreShare(clickhouse_connect.get_client(dsn=settings.url), Path(urlsplit(settings.url).path)).start()


def ensure_tables(client: Client, settings: ClickHouseSettings | None = None) -> MigrationReport:
    """Bring the store's schema to this build's version (idempotent; see hpcinsight.sinks.migrations)."""
    layout = Layout.of(settings, database=client.command("SELECT currentDatabase()")) if settings else Layout()
    return migrate(client, layout)


def while_store_refuses(call: Callable[[], Any], stop: threading.Event) -> Any:
    """``call()``, tried again with backoff while ClickHouse refuses (away, disk full): a sink
    started in such weather waits for the store instead of exiting (found by the chaos campaign).
    A schema that drifted from this build is a configuration error and is raised."""
    attempt = 0
    while True:
        try:
            return call()
        except SchemaDriftError:
            raise
        except (ClickHouseError, ConnectionError, OSError) as err:
            if stop.is_set():
                raise
            delay = min(30.0, 2.0**attempt)
            attempt += 1
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            logging.getLogger("hpcinsight.sink").warning("ClickHouse refused at start (%s); trying again in %.0f s", first, delay)
            stop.wait(delay)
