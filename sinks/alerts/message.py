"""What a notification says: what is wrong, where (job, user, GPU, node), since when, the evidence,
and how to dig in (``hpcinsight diagnose JOB``, the dashboard when one is configured).

:class:`Renderer` writes the chat text (Markdown, which apprise turns into each service's format)
and the per-alert annotations of the Alertmanager webhook payload.
"""

from __future__ import annotations

import string
import time
from urllib.parse import quote

from hpcinsight.sinks.alerts.model import Alert, Notification

#: the placeholders a dashboard URL template may use
DASHBOARD_FIELDS = ("job", "node", "gpu_uuid", "gpu", "kind", "id", "user", "team", "from_ms", "to_ms")


def check_template(template: str) -> None:
    """``ValueError`` if the dashboard template uses an unknown placeholder or is malformed."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"malformed template: {err}") from None
    unknown = sorted({n for n in names if n not in DASHBOARD_FIELDS})
    if unknown:
        raise ValueError(
            f"unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; "
            f"known: {', '.join('{' + n + '}' for n in DASHBOARD_FIELDS)}"
        )


def utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def rfc3339(ms: int | None) -> str:
    if ms is None:
        return "0001-01-01T00:00:00Z"  # Alertmanager's zero time: still firing
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def span(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s} s" if s else f"{minutes} min"
    hours, m = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {m} min" if m else f"{hours} h"
    return f"{hours // 24} d {hours % 24} h"


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:.4g}"


class Renderer:
    def __init__(self, dashboard_url: str | None = None, max_alerts: int = 20) -> None:
        self.dashboard_url = dashboard_url
        self.max_alerts = max_alerts

    # -- pieces --------------------------------------------------------------------------
    def where(self, a: Alert) -> str:
        labels = a.labels
        parts = []
        if labels.get("subject_type") == "gpu" or labels.get("gpu_uuid"):
            gpu = f"GPU {labels['gpu']}" if "gpu" in labels else "GPU"
            parts.append(f"{gpu} ({labels.get('gpu_uuid', labels.get('subject', '?'))})")
        if labels.get("node"):
            parts.append(f"node {labels['node']}")
        elif labels.get("subject_type") not in ("gpu", "job"):
            parts.append(f"{labels.get('subject_type', 'subject')} {labels.get('subject', '?')}")
        if labels.get("job"):
            owner = ", ".join(f"{k} {labels[k]}" for k in ("user", "team") if labels.get(k))
            parts.append(f"job {labels['job']}" + (f" ({owner})" if owner else ""))
        return " · ".join(parts) or labels.get("subject", "?")

    def evidence(self, a: Alert) -> str:
        return ", ".join(f"{k}={_number(v)}" for k, v in sorted(a.evidence.items()))

    def dig_in(self, a: Alert) -> str:
        job = a.labels.get("job")
        return f"hpcinsight diagnose {job}" if job else f"hpcinsight query \"SELECT * FROM anomalies WHERE id = '{a.id}'\""

    def dashboard(self, a: Alert) -> str | None:
        if not self.dashboard_url:
            return None
        fields = {k: quote(a.labels.get(k, ""), safe="") for k in ("job", "node", "gpu_uuid", "gpu", "kind", "user", "team")}
        fields.update(id=a.id, from_ms=str(a.starts_at - 15 * 60_000), to_ms=str((a.ends_at or a.updated_at) + 15 * 60_000))
        return self.dashboard_url.format(**fields)

    def annotations(self, a: Alert) -> dict[str, str]:
        out = {
            "summary": a.message,
            "description": f"{a.message} ({self.where(a)})",
            "evidence": self.evidence(a),
            "diagnose": self.dig_in(a),
            "anomaly_id": a.id,
        }
        if a.resolved_message:
            out["resolution"] = a.resolved_message
        link = self.dashboard(a)
        if link:
            out["dashboard"] = link
        return out

    # -- chat ----------------------------------------------------------------------------
    def title(self, n: Notification) -> str:
        head = f"[FIRING:{len(n.firing)}]" if n.firing else f"[RESOLVED:{len(n.resolved)}]"
        if n.firing and n.resolved:
            head += f" (+{len(n.resolved)} resolved)"
        labels = ", ".join(f"{k}={v}" for k, v in n.group_labels.items())
        kinds = sorted({a.labels.get("kind", "") for a in n.alerts})
        return f"{head} {labels or ', '.join(kinds)}"

    def body(self, n: Notification, now_ms: int | None = None) -> str:
        now_ms = n.created_at if now_ms is None else now_ms
        lines: list[str] = []
        shown = 0
        for state, alerts in (("FIRING", n.firing), ("RESOLVED", n.resolved)):
            for a in alerts:
                if shown == self.max_alerts:
                    break
                shown += 1
                severity = a.labels.get("severity", "").upper()
                lines.append(f"**{state if state == 'RESOLVED' else severity} {a.labels.get('kind', '')}** on {self.where(a)}")
                lines.append(a.message)
                if a.ends_at is None:
                    lines.append(f"since {utc(a.starts_at)} ({span((now_ms - a.starts_at) / 1000)} ago)")
                else:
                    lines.append(
                        f"resolved {utc(a.ends_at)} after {span((a.ends_at - a.starts_at) / 1000)}"
                        + (f": {a.resolved_message}" if a.resolved_message else "")
                    )
                if a.evidence:
                    lines.append(f"evidence: {self.evidence(a)}")
                link = self.dashboard(a)
                lines.append(f"dig in: `{self.dig_in(a)}`" + (f" · [dashboard]({link})" if link else ""))
                lines.append("")
        hidden = len(n.firing) + len(n.resolved) - shown
        if hidden > 0:
            lines.append(f"... and {hidden} more alert(s) in this group")
        return "\n".join(lines).rstrip()
