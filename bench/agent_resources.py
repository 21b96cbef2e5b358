"""Agent CPU and memory at 1 Hz, against a bare producer doing the same sends.

Runs the real ``hpcinsight agent`` process (sim backend, 8 GPUs, plus 8 InfiniBand ports
read from a fake sysfs tree) for ``seconds`` at 1 Hz against a real broker, and reads its
CPU time and peak RSS from /proc. The baseline is a plain Python process that imports
confluent-kafka and produces the same number of messages of a similar size at 1 Hz. The
figures: agent CPU as a percentage of one core (target <= 1%) and peak RSS (target <= 80 MB).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")

BASELINE = r"""
import sys, time
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": sys.argv[1], "enable.idempotence": True, "compression.type": "zstd"})
payload = b"x" * 2400
for _ in range(int(sys.argv[2])):
    p.produce(sys.argv[3], key=b"node", value=payload)
    p.produce(sys.argv[3], key=b"node", value=payload[:1600])
    p.poll(0)
    time.sleep(1)
p.flush(30)
"""


WARMUP_S = 8.0  # start-up (imports, topic checks) is not the steady cost at 1 Hz
WARMUP_TICKS = 3


def _ticks_done(metrics_port: int) -> int:
    """Ticks the agent reports on its /metrics (0 while it is not serving yet)."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0
    for line in body.splitlines():
        if line.startswith("hpcinsight_agent_ticks_total "):
            return int(float(line.split()[1]))
    return 0


def _watch(proc: subprocess.Popen[bytes], metrics_port: int | None = None) -> tuple[float, float, int]:
    """Steady-state CPU seconds (user+system, after the warm-up), the seconds they span, and
    peak RSS (bytes) of ``proc``, read until it exits. The warm-up ends ``WARMUP_S`` after the
    start, or, for the agent (``metrics_port``), once it has done ``WARMUP_TICKS`` ticks: on a slow
    machine its start-up (imports, topic checks) outlasted a fixed 8 s and was counted as steady cost."""
    cpu, peak, started = 0.0, 0, time.monotonic()
    warm: tuple[float, float] | None = None
    while proc.poll() is None:
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICK
            if warm is None and (
                _ticks_done(metrics_port) >= WARMUP_TICKS if metrics_port is not None else time.monotonic() - started >= WARMUP_S
            ):
                warm = (cpu, time.monotonic())
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, IndexError):
            pass
        time.sleep(0.2)
    if warm is None:
        raise RuntimeError("the process ended before its warm-up did; run longer")
    return cpu - warm[0], time.monotonic() - warm[1], peak


def bench_agent_resources(seconds: int = 40) -> dict[str, float]:
    from hpcinsight.deploy.local.kafka import LocalKafka, free_ports

    sys.path.insert(0, str(ROOT))
    from tests.fake_sysfs import FakeSysfs

    with tempfile.TemporaryDirectory() as tmp, LocalKafka() as kafka:
        FakeSysfs(Path(tmp) / "ib", devices=8)
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": kafka.bootstrap,
            "HPCINSIGHT_TOPIC_PREFIX": "bench.",
            "HPCINSIGHT_DATA_DIR": str(Path(tmp) / "data"),
        }
        port = free_ports(1)[0]
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpcinsight.cli",
                "agent",
                "--backend",
                "sim",
                "--nodes",
                "1",
                "--gpus",
                "8",
                "--ib",
                "--ib-root",
                str(Path(tmp) / "ib"),
                "--node",
                "sim-node-00",
                "--ticks",
                str(seconds),
                "--metrics-port",
                str(port),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cpu, span, rss = _watch(agent, metrics_port=port)
        base = subprocess.Popen(
            [sys.executable, "-c", BASELINE, kafka.bootstrap, str(seconds), "bench.baseline"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base_cpu, base_span, base_rss = _watch(base)
    return {
        "cpu_pct_of_core": 100 * cpu / span,
        "baseline_cpu_pct_of_core": 100 * base_cpu / base_span,
        "rss_mb": rss / 2**20,
        "baseline_rss_mb": base_rss / 2**20,
        "ratio": (base_cpu / cpu) if cpu else float("inf"),
    }


if __name__ == "__main__":
    print(bench_agent_resources())
