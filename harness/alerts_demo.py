"""The alert router in ``hpcinsight demo --webhook URL`` (or ``--alerts-config FILE``).

The demo starts the router beside the worker and the sink, with a configuration that groups what
goes wrong on one node of one job and answers within seconds (group_wait 2 s, group_interval 2 s).
The URL reaches the router through the environment, never a file; a Slack, Discord or Teams
Workflows URL is posted to as that chat, any other URL gets the Alertmanager-format JSON webhook.
At the end the demo lists what was posted. The router is one more child of the demo's
:class:`~hpcinsight.harness.supervisor.Processes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from rich.console import Console
from rich.table import Table

from hpcinsight.core.kafka import lag
from hpcinsight.core.settings import Settings
from hpcinsight.harness.supervisor import Processes
from hpcinsight.schemas.catalog import ANOMALIES

WEBHOOK_ENV = "HPCINSIGHT_DEMO_WEBHOOK"
GROUP_WAIT_S = 2
GROUP_INTERVAL_S = 2


def demo_config(webhook: str) -> dict[str, object]:
    from hpcinsight.sinks.alerts.receivers import discord, msteams, slack

    kind = next((m.KIND for m in (slack, discord, msteams) if m.convert(webhook)), "webhook")
    return {
        "route": {
            "receiver": "demo",
            "group_by": ["job", "node"],
            "group_wait": f"{GROUP_WAIT_S}s",
            "group_interval": f"{GROUP_INTERVAL_S}s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "demo", f"{kind}_configs": [{"url": "${" + WEBHOOK_ENV + "}"}]}],
    }


def shown(url: str) -> str:
    """Where a URL points, without its path or query (they may hold its token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/..." if parts.hostname else "(a URL)"


@dataclass
class DemoAlerts:
    config: Path
    state_dir: Path
    where: str
    settle_s: float

    @classmethod
    def prepare(cls, settings: Settings, webhook: str | None, config_file: str | None, env: dict[str, str]) -> DemoAlerts | None:
        """The router's configuration and state folder for this demo run (None: no alerts asked for)."""
        if not webhook and not config_file:
            return None
        from hpcinsight.sinks.alerts import config as alerts_config

        folder = settings.data_dir / "alerts"
        folder.mkdir(parents=True, exist_ok=True)
        if config_file:
            path, where, settle = Path(config_file), f"the receivers of {config_file}", 30.0
        else:
            assert webhook is not None
            env[WEBHOOK_ENV] = webhook
            path = folder / "demo.yaml"
            path.write_text(yaml.safe_dump(demo_config(webhook), sort_keys=False))
            where, settle = shown(webhook), GROUP_WAIT_S + 2 * GROUP_INTERVAL_S + 5.0
        alerts_config.load(path, env=env)  # a mistake is said now, before anything starts
        return cls(path, folder / "demo-state", where, settle)

    def args(self) -> list[str]:
        return ["alerts", "--config", str(self.config), "--state-dir", str(self.state_dir), "--reset-state"]

    def wait(self, settings: Settings, procs: Processes) -> None:
        """Until the router has read every anomaly and told everything (open groups resolved, outbox
        empty), or ``settle_s`` has passed (an anomaly still firing keeps its group open); a child of
        ``procs`` that dies meanwhile raises with its log."""
        from hpcinsight.sinks.alerts.store import summary

        conf, prefix = settings.kafka.client_config(), settings.kafka.topic_prefix
        deadline = time.monotonic() + 60
        while lag(conf, f"{prefix}alert-router", [ANOMALIES.full_name(prefix)]) > 0 and time.monotonic() < deadline:
            procs.check()
            time.sleep(0.5)
        deadline = time.monotonic() + self.settle_s
        while time.monotonic() < deadline:
            procs.check()
            s = summary(self.state_dir)
            if s["groups"] == 0 and s["pending"] == 0:
                return
            time.sleep(0.5)

    def report(self, console: Console) -> None:
        from hpcinsight.sinks.alerts.store import read_outbox

        rows = read_outbox(self.state_dir, ("sent", "pending", "failed"))
        table = Table(title=f"Alerts posted to {self.where}")
        for col in ("at (UTC)", "receiver", "delivery", "notification"):
            table.add_column(col)
        for r in rows:
            at = time.strftime("%H:%M:%S", time.gmtime(int(r["done_at"] or r["created_at"]) / 1000))
            table.add_row(
                at,
                str(r["integration"]),
                str(r["state"]) + (f" ({r['error']})" if r["state"] != "sent" and r["error"] else ""),
                str(r["title"]),
            )
        console.print(table)
        sent = sum(1 for r in rows if r["state"] == "sent")
        console.print(f"alerts: {sent} notification(s) posted, {len(rows) - sent} not (router log: alerts.log)")
