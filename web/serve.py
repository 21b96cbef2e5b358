"""``hpcinsight serve``: the Insight API and the unit view on uvicorn, fed from Kafka."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hpcinsight.core.settings import ConfigError, Secret, Settings, read_secret

TOKEN_SETTING = "HPCINSIGHT_API_TOKEN"


def api_token(env: Mapping[str, str] | None = None) -> Secret | None:
    """The bearer token from ``HPCINSIGHT_API_TOKEN`` or the file ``HPCINSIGHT_API_TOKEN_FILE`` names."""
    token = read_secret(os.environ if env is None else env, {}, TOKEN_SETTING)
    if token is not None and len(token.reveal()) < 16:
        raise ConfigError(f"{TOKEN_SETTING}: use at least 16 characters")
    return token


def job_threshold(settings: Settings) -> Any:
    """The job_underused detector's threshold for a job's team and user, as the worker applies it."""
    from hpcinsight.streams.detectors.job_underused import JobUnderusedConfig

    try:
        config = JobUnderusedConfig(**settings.detectors.get("job_underused", {}))
    except TypeError:
        config = JobUnderusedConfig()
    return config.threshold


def build(settings: Settings, token: Secret | None, frame_interval_s: float = 1.0, store: bool = True) -> tuple[Any, Any]:
    """The app and its (not yet started) Kafka feed."""
    from hpcinsight.web.app import create_app
    from hpcinsight.web.feed import Feed
    from hpcinsight.web.state import ClusterState

    state = ClusterState()
    feed = Feed(
        state,
        {**settings.kafka.client_config(), "bootstrap.servers": settings.kafka.require_bootstrap()},
        settings.kafka.topic_prefix,
    )

    def connect() -> Any:
        from hpcinsight.sinks.clickhouse import connect as ch_connect

        if settings.clickhouse.embedded:
            # Only ever through the sink that owns the embedded store: opening it here would lock the
            # sink out of its own store (chDB allows one process per directory).
            from urllib.parse import urlsplit

            from hpcinsight.sinks.store_share import read_owner

            if read_owner(Path(urlsplit(settings.clickhouse.url).path)) is None:
                raise ConnectionError("no sink is sharing the embedded store now (start `hpcinsight sink`)")
        return ch_connect(settings.clickhouse)

    def feed_status() -> dict[str, Any]:
        return {"following": feed.assigned.is_set(), "error": feed.error}

    app = create_app(state, token, connect if store else None, feed_status, job_threshold(settings), frame_interval_s)
    return app, feed


def feed_metric_families(feed: Any) -> Callable[[], Iterator[Any]]:
    """The live feed's own counts for /metrics (records the live state could not take)."""

    def families() -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily("hpcinsight_serve_feed_skipped", "records the live state could not take", value=feed.skipped)

    return families


def run_serve(
    settings: Settings,
    host: str,
    port: int,
    frame_interval_s: float = 1.0,
    store: bool = True,
    on_app: Callable[[Any, Any], object] | None = None,
) -> int:
    """Serve until stopped; ``on_app(app, feed)`` sees the app first (the CLI serves its metrics)."""
    import uvicorn

    token = api_token()
    app, feed = build(settings, token, frame_interval_s, store)
    if on_app is not None:
        on_app(app, feed)
    feed.start()
    logging.getLogger("hpcinsight").info(
        "serving the unit view at http://%s:%d/ (token %s)", host, port, "required" if token else "not configured"
    )
    print(
        f"hpcinsight serve: unit view at http://{host}:{port}/ (bearer token {'required' if token else 'not configured'})",
        flush=True,
    )
    try:
        # access_log off: request lines are not needed and a careless client may put secrets in a URL
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    finally:
        feed.stop()
    return 0
