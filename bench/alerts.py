"""Alert router throughput: anomalies per second from the topic to a fast local receiver.

``alerts``: 40,000 firing anomalies already in the anomalies topic (one message each, as the worker
writes them; 2,000 nodes x 20 GPUs, gpu_health), the real router (``AlertRouter`` in-process, on a
real broker, its state and outbox in SQLite) reads them, groups them by node and posts them, in
Alertmanager-format JSON, to a local HTTP receiver on loopback. The rate is the anomalies over the
time from the router's start until the receiver holds every one of them. Baseline: a bare
confluent-kafka consume-and-decode loop over the same topic (what any consumer pays). Also reported:
the same anomalies with ``group_by: ['...']``, one notification each, the worst case for delivery.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODES, GPUS = 2000, 20
_FINGERPRINT = re.compile(rb'"fingerprint": ?"([0-9a-z-]+)"')


class _Sink:
    """The fastest receiver http.server gives, in a process of its own (it must not share the router's
    interpreter lock): keeps the connection, collects alert fingerprints; GET answers what it holds."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.alerts", "serve"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def state(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/state", timeout=10) as r:
            return json.loads(r.read())

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{self.port}/reset", method="PUT"), timeout=10).close()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _serve() -> None:
    seen: set[bytes] = set()
    state = {"seen": 0, "posts": 0, "last_at": 0.0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, body: bytes = b"") -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            found = _FINGERPRINT.findall(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                seen.update(found)
                state.update(seen=len(seen), posts=state["posts"] + 1, last_at=time.time())
            self._answer()

        def do_GET(self) -> None:
            with lock:
                self._answer(json.dumps(state).encode())

        def do_PUT(self) -> None:
            with lock:
                seen.clear()
                state.update(seen=0, posts=0, last_at=0.0)
            self._answer()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


def _anomalies(t0: int) -> list[tuple[bytes, bytes]]:
    from hpcinsight.schemas.catalog import ANOMALIES
    from hpcinsight.schemas.events import Anomaly

    out = []
    for n in range(NODES):
        node = f"node-{n:04d}"
        for g in range(GPUS):
            subject = f"GPU-{n:04d}-{g:02d}"
            a = Anomaly(
                f"a-{n:04d}-{g:02d}",
                "gpu_health",
                "warning",
                "firing",
                "gpu",
                subject,
                t0,
                t0 - 60_000,
                t0 - 60_000,
                t0,
                f"GPU {g} of {node} is throttled for heat in 80% of a busy minute",
                {"throttled_share": 0.8, "gpu_index": float(g)},
                node=node,
                gpu_uuid=subject,
                job_id=f"job-{n // 8}",
            )
            out.append((subject.encode(), ANOMALIES.codec.encode([a])))
    return out


def _bare_consume(bootstrap: str, topic: str, records: int) -> float:
    from confluent_kafka import Consumer

    from hpcinsight.schemas.catalog import ANOMALIES

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got, start = 0, time.perf_counter()
    while got < records:
        for msg in consumer.consume(num_messages=1000, timeout=1.0):
            if not msg.error():
                got += len(ANOMALIES.codec.decode(msg.value()))
    elapsed = time.perf_counter() - start
    consumer.close()
    return elapsed


def _route(bootstrap: str, prefix: str, sink: _Sink, group_by: list[str], state: Path, records: int) -> float:
    from hpcinsight.sinks.alerts import config as alerts_config
    from hpcinsight.sinks.alerts.router import AlertRouter, RouterOptions

    config = alerts_config.parse(
        {
            "route": {"receiver": "hook", "group_by": group_by, "group_wait": "1s", "group_interval": "1s"},
            "receivers": [{"name": "hook", "webhook_configs": [{"url": sink.url}]}],
        },
        "bench",
    )
    sink.reset()
    stop = threading.Event()
    router = AlertRouter(config, {"bootstrap.servers": bootstrap}, prefix, RouterOptions(state))
    start = time.time()
    thread = threading.Thread(target=router.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 900
    while (got := sink.state())["seen"] < records:
        assert thread.is_alive() and time.monotonic() < deadline, "router died or stalled"
        time.sleep(0.1)
    stop.set()
    thread.join(60)
    return float(got["last_at"]) - start


def bench_alerts(repeats: int) -> dict[str, float]:
    from confluent_kafka import Producer

    from hpcinsight.deploy.local.kafka import LocalKafka
    from hpcinsight.schemas.catalog import ANOMALIES, ensure_topics

    data = _anomalies(int(time.time() * 1000) - 60_000)
    records = len(data)
    sink = _Sink()
    with tempfile.TemporaryDirectory() as tmp, LocalKafka() as kafka:
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        ensure_topics({"bootstrap.servers": kafka.bootstrap}, prefix)
        topic = ANOMALIES.full_name(prefix)
        producer = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 20, "enable.idempotence": True})
        for key, value in data:
            producer.produce(topic, key=key, value=value)
            producer.poll(0)
        assert producer.flush(60) == 0
        runs = max(1, min(repeats, 3))  # each run reads 40,000 anomalies anew: three are enough for a best-of
        base = min(_bare_consume(kafka.bootstrap, topic, records) for _ in range(runs))
        grouped = []
        for k in range(runs):
            grouped.append(_route(kafka.bootstrap, prefix, sink, ["node"], Path(tmp) / f"grouped-{k}", records))
        posts_grouped = sink.state()["posts"]
        single = _route(kafka.bootstrap, prefix, sink, ["..."], Path(tmp) / "single", records)
        posts_single = sink.state()["posts"]
    sink.close()
    ours = min(grouped)
    return {
        "anomalies_per_s": records / ours,
        "baseline_anomalies_per_s": records / base,
        "ratio": base / ours,
        "notifications_grouped": posts_grouped,
        "anomalies_per_s_one_notification_each": records / single,
        "notifications_one_each": posts_single,
    }


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    _serve()
