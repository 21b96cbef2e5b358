"""``hpcinsight diagnose JOB``: why is this job slow or stuck, and what to do about it.

The report is built only from the query library (``sinks/queries``: job_summary, gpu_outliers,
straggler_timeline, job_ib_timeline, metric_correlation, job_timeline, job_gpu_timeline), so
every number in it can be re-run by hand with ``hpcinsight query NAME --param job=...``:

* summary: who, how many GPUs and nodes, how long, p25/p50/p95 of utilisation since start;
* suspects, most serious first: GPUs and nodes the detectors flagged (XID, ECC, throttling, ...),
  GPUs out of line with their peers, the straggler rank, a node whose InfiniBand throughput fell
  behind its peers', an under-used job, each with its evidence and a next step;
* which metrics move together (correlation), strongest first;
* what happened when (timeline).

``--plots DIR`` writes three PNG figures with matplotlib (Agg): a per-GPU utilisation heat strip
over time, step time per rank, and IB throughput per node.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcinsight.core.durations import parse_seconds
from hpcinsight.sinks.query import plain_value, records

SEVERITY = {"critical": 3, "warning": 2, "info": 1}
#: a GPU is out of line when some metric sat this many robust deviations from its peers (the detector's k)
OUTLIER_K = 5.0
#: a rank is a straggler when it is this much slower than the median rank and slowest this often
STRAGGLER_RATIO, STRAGGLER_SHARE = 1.15, 0.5
#: a node's IB throughput below this fraction of its peers' median, in a bucket, is low
IB_LOW_RATIO = 0.5
UNDERUSED_P95 = 30.0
#: a detector's hardware finding ranks above statistics of the same severity (it names the cause)
HARDWARE_SCORE = 1000.0

NEXT_STEP = {
    "drain": "drain node {node} (the GPU needs a reset or replacement), e.g. `scontrol update nodename={node} state=drain "
    'reason="{why}"`, then run `dcgmi diag -r 3` before returning it',
    "ecc": "drain node {node}: uncorrectable ECC errors on {gpu}; reset the GPU to apply row remapping, replace it if "
    "remapping failed",
    "remap": "schedule a GPU reset on node {node} (rows are waiting to be remapped); drain it if remapping failed",
    "thermal": "check the cooling of node {node} (fans, inlet temperature, airflow around {gpu}); the GPU slows itself down",
    "power": "check the power cap and supply of node {node} (`nvidia-smi -q -d POWER`): {gpu} runs at its limit",
    "clock": "reset the application clocks of {gpu} on node {node} (`nvidia-smi -rgc`): they are locked low",
    "health": "inspect {gpu} on node {node} (`nvidia-smi -q`, `dcgmi diag -r 2`): the health detector flagged it",
    "outlier": "compare {gpu} on node {node} with its peers (`nvidia-smi -q`, `dcgmi diag -r 2`); if it lags in other "
    "jobs too, drain the node",
    "node": "check node {node} as a whole (CPU load, memory, NUMA binding, a noisy neighbour); drain it if it stays behind",
    "straggler": "the GPU of rank {rank} looks healthy: check the data loader, CPU and input pipeline of rank {rank} on "
    "node {node} (workers, storage reads, CPU pinning)",
    "straggler_gpu": "rank {rank} runs on {gpu}, which the findings above name: fix those first",
    "ib": "check the InfiniBand link of node {node}: cable, switch port and counters (`ibstat`, `perfquery -x`, `ibdiagnet`)",
    "hang": "the job looks stuck: dump the ranks' stacks (`py-spy dump`), rerun with NCCL_DEBUG=INFO to find the "
    "collective that waits",
    "underused": "right-size the request: p95 utilisation {p95:.0f} % on {gpus} GPUs; ask for fewer GPUs, or raise the "
    "batch size / data-loader workers",
}


@dataclass
class Finding:
    severity: str
    subject_type: str  # gpu | node | rank | link | job
    subject: str
    what: str
    evidence: list[str]
    next_step: str
    score: float = 0.0
    node: str | None = None

    def key(self) -> tuple[int, float]:
        return SEVERITY.get(self.severity, 0), self.score


@dataclass
class Report:
    job: str
    summary: dict[str, Any]
    findings: list[Finding]
    correlations: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    bucket_s: int = 0
    plots: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(plain_value(data), default=str, indent=2)


def _when(value: Any) -> str:
    return value.strftime("%H:%M:%S") if isinstance(value, dt.datetime) else str(value)


def _gpu_name(row: dict[str, Any]) -> str:
    return f"{row['node']}/gpu{row['gpu']}"


def _anomalies(timeline: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Incidents of the timeline by (kind, subject): first seen, state, severity, message."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in timeline:
        if row["source"] != "anomaly":
            continue
        m = re.fullmatch(r"(\S+) (firing|resolved) \((\w+)\)", row["event"])
        if not m:
            continue
        kind, state, severity = m.groups()
        entry = out.setdefault(
            (kind, row["subject"]),
            {
                "kind": kind,
                "subject": row["subject"],
                "since": row["ts"],
                "severity": severity,
                "message": row["detail"],
                "state": state,
            },
        )
        entry["state"] = state
        if state == "firing":
            entry["message"] = row["detail"]
    return out


def _from_anomalies(incidents: dict, gpus: dict[str, dict[str, Any]]) -> list[Finding]:
    found = []
    for (kind, subject), inc in incidents.items():
        uuid, _, condition = subject.partition("/")
        gpu = gpus.get(uuid)
        node = gpu["node"] if gpu else None
        name = _gpu_name(gpu) if gpu else uuid
        when = f"{kind} {inc['state']} (since {_when(inc['since'])}): {inc['message']}"
        step = None
        if kind == "gpu_xid":
            step = NEXT_STEP["drain" if inc["severity"] == "critical" else "outlier"]
        elif kind == "gpu_health":
            known = {
                "ecc_uncorrectable": "ecc",
                "row_remap_pending": "remap",
                "row_remap_failure": "ecc",
                "thermal_throttle": "thermal",
                "power_throttle": "power",
                "clock_stuck_low": "clock",
            }
            step = NEXT_STEP[known.get(condition, "clock" if "sm clock" in inc["message"].lower() else "health")]
        elif kind == "hang":
            found.append(
                Finding(inc["severity"], "job", subject, "the job looks hung", [when], NEXT_STEP["hang"], HARDWARE_SCORE)
            )
            continue
        if step is None:
            continue  # outliers, stragglers, IB and under-use are judged from the data below, with these as evidence
        xid = re.match(r"XID (\d+)", inc["message"])
        what = f"GPU {name}: " + (
            f"XID {xid.group(1)}"
            if kind == "gpu_xid" and xid
            else condition.replace("_", " ")
            if condition
            else kind.replace("_", " ")
        )
        found.append(
            Finding(
                inc["severity"],
                "gpu",
                name,
                what,
                [when],
                step.format(node=node or "?", gpu=name, why=inc["message"][:60].replace('"', "'")),
                HARDWARE_SCORE,
                node,
            )
        )
    return found


def _outliers(rows: list[dict[str, Any]], incidents: dict, gpu_findings: set[str]) -> list[Finding]:
    found = []
    out = [r for r in rows if r["outlying_buckets"] > 0]
    per_node: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        per_node.setdefault(r["node"], []).append(r)
    nodes_out = {n for n, rs in per_node.items() if len(rs) >= 2 and sum(r["outlying_buckets"] > 0 for r in rs) > len(rs) / 2}
    for node in sorted(nodes_out):
        rs = [r for r in per_node[node] if r["outlying_buckets"] > 0]
        found.append(
            Finding(
                "warning",
                "node",
                node,
                f"node {node}: {len(rs)} of {len(per_node[node])} GPUs out of line",
                [f"{_gpu_name(r)} util {r['util']} % vs peers {r['peers_util']} %" for r in rs[:4]],
                NEXT_STEP["node"].format(node=node),
                max(r["max_abs_z"] for r in rs),
                node,
            )
        )
    for r in out:
        if r["node"] in nodes_out:
            continue
        name = _gpu_name(r)
        flagged = [k for k in (r["anomalies"] or "").split(", ") if k]
        evidence = [
            f"out of line in {r['outlying_buckets']} of {r['buckets']} buckets of {r['bucket_s']} s "
            f"({_when(r['first_outlying'])} to {_when(r['last_outlying'])}), largest robust z {r['max_abs_z']}",
            f"utilisation {r['util']} % vs peers' median {r['peers_util']} % (z {r['z_util']:+})",
            f"power {r['power_w']} W vs {r['peers_power_w']} W (z {r['z_power']:+}); "
            f"SM clock {r['sm_clock_mhz']:.0f} vs {r['peers_sm_clock_mhz']:.0f} MHz (z {r['z_sm_clock']:+})",
        ]
        if flagged:
            evidence.append("detectors raised: " + ", ".join(flagged))
        step = NEXT_STEP["outlier"].format(node=r["node"], gpu=name)
        if r["gpu_uuid"] in gpu_findings:
            step = "see the hardware finding above for this GPU; " + step
        found.append(
            Finding(
                "warning",
                "gpu",
                name,
                f"GPU {name} lags its peers",
                evidence,
                step,
                r["max_abs_z"] * r["outlying_share"] + r["max_abs_z"] / 100,
                r["node"],
            )
        )
    return found


def _stragglers(rows: list[dict[str, Any]], suspects: set[str]) -> list[Finding]:
    """Ranks slower than the others in most steps. ``suspects``: GPUs (``node/gpuN``) and nodes with
    findings; a rank whose GPU (its local rank, where reported) or node is among them is not blamed
    on its input pipeline."""
    per_rank: dict[int, dict[str, Any]] = {}
    for r in rows:
        acc = per_rank.setdefault(
            r["rank"], {"node": r["node"], "local_rank": r["local_rank"], "steps": 0, "ratio": 0.0, "slowest": 0.0}
        )
        acc["steps"] += r["steps"]
        acc["ratio"] += r["vs_median"] * r["steps"]
        acc["slowest"] += r["slowest_share"] * r["steps"]
    found = []
    for rank, acc in per_rank.items():
        ratio, share = acc["ratio"] / acc["steps"], acc["slowest"] / acc["steps"]
        if ratio < STRAGGLER_RATIO or share < STRAGGLER_SHARE:
            continue
        own = f"{acc['node']}/gpu{acc['local_rank']}" if acc["local_rank"] is not None else acc["node"]
        key = "straggler_gpu" if own in suspects else "straggler"
        found.append(
            Finding(
                "warning",
                "rank",
                f"rank {rank}",
                f"rank {rank} on {acc['node']} is the straggler",
                [
                    f"{(ratio - 1) * 100:.0f} % slower than the median rank over {acc['steps']} steps, the slowest in "
                    f"{share * 100:.0f} % of them"
                ],
                NEXT_STEP[key].format(rank=rank, node=acc["node"], gpu=own),
                5 * (ratio - 1) + share,
                acc["node"],
            )
        )
    return found


def _interconnect(rows: list[dict[str, Any]], incidents: dict) -> list[Finding]:
    by_bucket: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        by_bucket.setdefault(r["bucket"], []).append(r)
    low: dict[str, list[tuple[Any, float, float]]] = {}
    for bucket, rs in by_bucket.items():
        if len(rs) < 2:
            continue
        for r in rs:
            peers = sorted(p["gb_per_s"] for p in rs if p is not r)
            median = peers[len(peers) // 2] if len(peers) % 2 else (peers[len(peers) // 2 - 1] + peers[len(peers) // 2]) / 2
            if median > 0 and r["gb_per_s"] < IB_LOW_RATIO * median:
                low.setdefault(r["node"], []).append((bucket, r["gb_per_s"], median))
    errors: dict[str, tuple[int, int]] = {}
    for r in rows:
        e, d = errors.get(r["node"], (0, 0))
        errors[r["node"]] = (e + r["errors"], d + r["link_downs"])
    found = []
    for node in sorted(set(low) | {n for n, (e, d) in errors.items() if e or d}):
        spans = low.get(node, [])
        evidence = []
        if spans:
            mine = sum(s[1] for s in spans) / len(spans)
            peers = sum(s[2] for s in spans) / len(spans)
            evidence.append(
                f"IB throughput {mine:.2f} GB/s vs peers' {peers:.2f} GB/s in {len(spans)} of "
                f"{len(by_bucket)} buckets ({_when(min(s[0] for s in spans))} to {_when(max(s[0] for s in spans))})"
            )
        e, d = errors.get(node, (0, 0))
        if e or d:
            evidence.append(f"{e} port errors, {d} link downs")
        flagged = [inc for (kind, subject), inc in incidents.items() if kind == "slow_interconnect" and subject.startswith(node)]
        evidence += [f"slow_interconnect {inc['state']} (since {_when(inc['since'])}): {inc['message']}" for inc in flagged]
        severity = "critical" if d else "warning"
        found.append(
            Finding(
                severity,
                "node",
                node,
                f"node {node}: slow interconnect",
                evidence,
                NEXT_STEP["ib"].format(node=node),
                len(spans) + e + 10 * d,
                node,
            )
        )
    return found


def build_report(client: Any, job: str, since_s: int = 0) -> Report:
    """Run the library's queries for ``job`` and judge them."""
    params: dict[str, Any] = {"job": job, "since_s": since_s}
    [summary] = records(client, "job_summary", {"job": job})
    if summary["state"] == "unknown":
        raise ValueError(f"nothing is stored about job {job!r} (no scheduler events, quantiles or samples)")
    outliers = records(client, "gpu_outliers", {**params, "k": OUTLIER_K})
    steps = records(client, "straggler_timeline", params)
    ib = records(client, "job_ib_timeline", params)
    correlations = records(client, "metric_correlation", params)
    timeline = records(client, "job_timeline", params)

    gpus = {r["gpu_uuid"]: r for r in outliers}
    incidents = _anomalies(timeline)
    findings = _from_anomalies(incidents, gpus)
    hardware = {f.subject for f in findings if f.subject_type == "gpu"}
    hardware_uuids = {uuid for uuid, r in gpus.items() if _gpu_name(r) in hardware}
    findings += _outliers(outliers, incidents, hardware_uuids)
    findings += _interconnect(ib, incidents)
    suspects = {f.subject for f in findings if f.subject_type in ("gpu", "node")}
    findings += _stragglers(steps, suspects)
    p95 = summary.get("util_p95")
    if p95 is not None and p95 < UNDERUSED_P95:
        findings.append(
            Finding(
                "info",
                "job",
                job,
                f"job {job} is under-used",
                [f"p95 utilisation {p95} % since start on {summary['gpus']} GPUs"],
                NEXT_STEP["underused"].format(p95=p95, gpus=summary["gpus"]),
                0,
            )
        )
    findings.sort(key=Finding.key, reverse=True)
    bucket = outliers[0]["bucket_s"] if outliers else 0
    return Report(job, summary, findings, correlations, timeline, bucket)


# -- text --------------------------------------------------------------------------------------
def _strength(r: float) -> str:
    a = abs(r)
    return "strong" if a >= 0.7 else "moderate" if a >= 0.4 else "weak"


def render_text(report: Report) -> str:
    s = report.summary
    lines = []
    duration = s.get("duration_s") or 0
    lines.append(
        f"Job {report.job}: {s.get('user') or '?'} (team {s.get('team') or '?'}), {s['state']}, {s['gpus']} GPUs on "
        f"{s['nodes']} nodes, {duration / 60:.1f} min"
        + (f", queued {s['queue_wait_s']:.0f} s" if s.get("queue_wait_s") is not None else "")
    )
    if s.get("util_p50") is not None:
        extra = "".join(
            f"; {label} p50 {s[key]:g} {unit}"
            for key, label, unit in (("power_p50_w", "power", "W"), ("sm_clock_p50_mhz", "SM clock", "MHz"))
            if s.get(key) is not None
        )
        lines.append(f"  GPU utilisation since start: p25 {s['util_p25']} %, p50 {s['util_p50']} %, p95 {s['util_p95']} %{extra}")
    lines.append(
        f"  anomalies: {s['anomalies']} ({s['open_anomalies']} open, {s['critical_anomalies']} critical)"
        + (f": {s['anomaly_kinds']}" if s["anomaly_kinds"] else "")
    )
    lines.append("")
    if report.findings:
        top = report.findings[0]
        lines.append(f"Suspect: {top.what}")
        lines.append("")
        lines.append("Findings, most serious first")
        for i, f in enumerate(report.findings, 1):
            lines.append(f" {i}. [{f.severity}] {f.what}")
            lines += [f"      - {e}" for e in f.evidence]
            lines.append(f"      next step: {f.next_step}")
    else:
        lines.append("Suspect: none: no GPU, node, rank or link stands out, and no detector raised anything.")
    lines.append("")
    moving = [c for c in report.correlations if c["r"] is not None and not (isinstance(c["r"], float) and math.isnan(c["r"]))]
    lines.append(f"Metrics that move together (Pearson r over each GPU x {report.bucket_s} s bucket)")
    for c in moving[:6]:
        lines.append(f"  {c['metric_a']:>14} ~ {c['metric_b']:<15} r {c['r']:+.2f}  {_strength(c['r']):8} (n {c['n']})")
    if not moving:
        lines.append("  (not enough data)")
    lines.append("")
    lines.append("Timeline")
    for t in report.timeline:
        lines.append(f"  {_when(t['ts'])}  {t['source']:9} {t['event']:38} {t['subject']:24} {t['detail']}")
    if report.plots:
        lines.append("")
        lines.append("Plots: " + ", ".join(report.plots))
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------------
def write_plots(client: Any, report: Report, directory: Path, since_s: int = 0) -> list[Path]:
    """Three PNGs: per-GPU utilisation heat strip, step time per rank, IB throughput per node."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    params = {"job": report.job, "since_s": since_s}
    job = report.job
    paths = []

    cells = records(client, "job_gpu_timeline", params)
    gpus = sorted({(c["node"], c["gpu"]) for c in cells})
    buckets = sorted({c["bucket"] for c in cells})
    fig, ax = plt.subplots(figsize=(11, max(2.5, 0.22 * len(gpus) + 1.2)))
    if cells:
        grid = np.full((len(gpus), len(buckets)), np.nan)
        row, col = {g: i for i, g in enumerate(gpus)}, {b: i for i, b in enumerate(buckets)}
        for c in cells:
            grid[row[(c["node"], c["gpu"])], col[c["bucket"]]] = c["util"] if c["util"] is not None else np.nan
        x0, x1 = mdates.date2num(buckets[0]), mdates.date2num(buckets[-1]) + (report.bucket_s or 60) / 86400
        image = ax.imshow(
            grid, aspect="auto", cmap="viridis", vmin=0, vmax=100, interpolation="nearest", extent=(x0, x1, len(gpus) - 0.5, -0.5)
        )
        ax.set_yticks(range(len(gpus)), [f"{n}/{g}" for n, g in gpus], fontsize=7)
        ax.xaxis_date()
        fig.colorbar(image, ax=ax, label="GPU utilisation %")
    else:
        ax.text(0.5, 0.5, "no GPU samples for this job", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"{job}: GPU utilisation per GPU over time")
    paths.append(_save(fig, directory / f"{_safe(job)}_gpu_utilisation.png"))

    steps = records(client, "straggler_timeline", params)
    fig, ax = plt.subplots(figsize=(11, 4))
    ranks = sorted({s["rank"] for s in steps})
    suspect_ranks = {f.subject for f in report.findings if f.subject_type == "rank"}
    for rank in ranks:
        mine = [s for s in steps if s["rank"] == rank]
        flagged = f"rank {rank}" in suspect_ranks
        ax.plot(
            [s["bucket"] for s in mine],
            [s["step_s"] for s in mine],
            lw=2.2 if flagged else 0.8,
            color="tab:red" if flagged else None,
            alpha=1 if flagged else 0.6,
            label=f"rank {rank} ({mine[0]['node']})" if flagged or len(ranks) <= 8 else None,
        )
    if ranks:
        ax.set_ylabel("median step time (s)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    else:
        ax.text(
            0.5,
            0.5,
            "no step metrics reported for this job\n(record them with hpcinsight.agents.steps.StepRecorder)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_title(f"{job}: step time per rank")
    paths.append(_save(fig, directory / f"{_safe(job)}_step_time.png"))

    ib = records(client, "job_ib_timeline", params)
    fig, ax = plt.subplots(figsize=(11, 4))
    suspect_nodes = {f.node for f in report.findings if "interconnect" in f.what}
    for node in sorted({r["node"] for r in ib}):
        mine = [r for r in ib if r["node"] == node]
        flagged = node in suspect_nodes
        ax.plot(
            [r["bucket"] for r in mine],
            [r["gb_per_s"] for r in mine],
            lw=2.2 if flagged else 1.0,
            color="tab:red" if flagged else None,
            label=node,
        )
    if ib:
        ax.set_ylabel("IB throughput, transmit + receive (GB/s)")
        ax.legend(fontsize=7, loc="lower left", ncol=4)
    else:
        ax.text(0.5, 0.5, "no InfiniBand samples for this job", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"{job}: InfiniBand throughput per node")
    paths.append(_save(fig, directory / f"{_safe(job)}_ib_throughput.png"))
    return paths


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    for ax in fig.axes[:1]:
        if ax.has_data():
            ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_since(text: str | None) -> int:
    """``90`` (seconds), ``90s``, ``15m``, ``2h``, ``1d`` -> whole seconds; empty: the whole job (0)."""
    if not text:
        return 0
    return round(parse_seconds(text, "--since", plain="s"))


def run_diagnose(settings: Any, job: str, since: str | None, plots: str | None, fmt: str) -> int:
    from hpcinsight.sinks.clickhouse import connect

    since_s = parse_since(since)
    client = connect(settings.clickhouse)
    try:
        report = build_report(client, job, since_s)
        if plots:
            report.plots = [str(p) for p in write_plots(client, report, Path(plots), since_s)]
    finally:
        client.close()
    print(report.to_json() if fmt == "json" else render_text(report))
    return 0
