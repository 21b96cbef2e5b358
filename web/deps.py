"""What the Insight API's routers share: the live state, the store, the bearer token, as dependencies.

:func:`hpcinsight.web.app.create_app` puts one :class:`Services` on the app; each router asks for it
with ``Depends(services)`` and guards its ``/api`` routes with ``Depends(authorised)``, so a router
module holds routes only and can be read (and tested) on its own.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request

from hpcinsight.web.state import ClusterState

if TYPE_CHECKING:
    from hpcinsight.web.health import ServeStats

log = logging.getLogger("hpcinsight.web")
#: what a label in a filter or a path may be (team, user, job, node, ...)
LABEL = r"^[\w.:@/+=-]{1,128}$"


class Store:
    """One read-only client of the store, opened on first use and reopened after a failure;
    calls are serialised (the embedded client is not shared between threads)."""

    def __init__(self, connect: Callable[[], Any] | None) -> None:
        self.connect, self.client, self.lock = connect, None, threading.Lock()

    def run(self, fn: Callable[[Any], Any]) -> Any:
        if self.connect is None:
            raise HTTPException(503, "no store is configured for this service")
        with self.lock:
            try:
                if self.client is None:
                    self.client = self.connect()
                return fn(self.client)
            except ValueError:
                raise
            except Exception as err:  # noqa: BLE001 - any failure to open the store is reported, the half-open client closed
                if self.client is not None:
                    try:
                        self.client.close()
                    except Exception:  # noqa: BLE001 - closing a client that failed to open: nothing more to say
                        pass
                self.client = None
                log.warning("store: %s", type(err).__name__)
                why = str(err) if isinstance(err, ConnectionError) else type(err).__name__  # never a URL with credentials
                raise HTTPException(503, f"the store did not answer ({why})") from None


@dataclass
class Services:
    """The service's parts, one per app: what the routes read (never a module global, so two apps
    in one process, as the tests run them, share nothing)."""

    state: ClusterState
    store: Store
    traffic: ServeStats
    feed_status: Callable[[], dict[str, Any]] | None = None
    job_threshold: Callable[[str | None, str | None], float] | None = None
    frame_interval_s: float = 1.0
    token: bytes | None = field(default=None, repr=False)  # the expected bearer token; never printed


def services(request: Request) -> Services:
    """The app's :class:`Services` (a dependency)."""
    found: Services = request.app.state.services  # Starlette's app.state is untyped
    return found


def authorised(request: Request) -> None:
    """A dependency of every ``/api`` route: when the service has a token, the request must carry
    ``Authorization: Bearer TOKEN``, compared in constant time."""
    expected = services(request).token
    if expected is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
        raise HTTPException(
            401, "a bearer token is required (Authorization: Bearer TOKEN)", headers={"WWW-Authenticate": "Bearer"}
        )


def json_safe(value: Any) -> Any:
    """Store values as JSON can carry them: plain types, NaN and infinities as null."""
    from hpcinsight.sinks.query import plain_value

    value = plain_value(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
