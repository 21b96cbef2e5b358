"""``hpcinsight db``: bring the store's schema to this build's version, or say where it stands.

The migrations themselves live in :mod:`hpcinsight.sinks.migrations`; this module runs them for an
operator and prints what changed (each migration applied, each table whose TTL moved). ``status``
reads only: a store without the version table yet has nothing applied.
"""

from __future__ import annotations

from typing import Any

from hpcinsight.core.settings import Settings
from hpcinsight.sinks.clickhouse import connect, ensure_tables
from hpcinsight.sinks.migrations import MIGRATIONS, MigrationReport, applied_versions


def schema_status(client: Any) -> list[tuple[int, str, bool]]:
    """(version, name, applied) of every migration of this build."""
    try:
        done = applied_versions(client)
    except Exception:  # noqa: BLE001 - no version table yet: nothing applied
        done = {}
    return [(m.version, m.name, m.version in done) for m in MIGRATIONS]


def report_lines(report: MigrationReport) -> list[str]:
    """What a migration run changed, one line each, ending with the schema's version."""
    lines = [f"migration {version}: {name}: applied" for version, name in report.applied]
    lines += [
        f"table {table}: TTL {f'{was} days' if was else 'none'} -> {f'{now} days' if now else 'none (kept forever)'}"
        for table, was, now in report.ttl_changed
    ]
    lines += [f"view {name}: set to this build's definition" for name in report.views_replaced]
    lines.append(
        f"schema at version {report.version}: nothing to do" if not report.applied else f"schema at version {report.version}"
    )
    return lines


def run_db(settings: Settings, action: str) -> int:
    """``migrate`` (``init`` is the same) or ``status``, printed; the exit code."""
    client = connect(settings.clickhouse, writer=action != "status")
    try:
        if action == "status":
            for version, name, applied in schema_status(client):
                print(f"{version:>3}  {'applied' if applied else 'PENDING':8} {name}")
            return 0
        report = ensure_tables(client, settings.clickhouse)
    finally:
        client.close()
    for line in report_lines(report):
        print(line)
    return 0
