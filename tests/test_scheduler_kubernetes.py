"""The Kubernetes translator on recorded watch events and a Node object (tests/data/k8s/).

Each fixture is a list of watch events as the API server sends them (``type`` and the Pod as
JSON). Every emitted record must survive the wire codec of its topic.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hpcinsight.agents.scheduler.kubernetes import (
    K8sConfig,
    KubernetesCollector,
    LabelConfig,
    PodSeen,
    forget_missing,
    node_to_inventory,
    pod_to_events,
    quantity,
)
from hpcinsight.schemas.catalog import NODE_INVENTORY, SCHEDULER_EVENTS
from hpcinsight.schemas.events import NodeInventory, SchedulerEvent

DATA = Path(__file__).parent / "data" / "k8s"
NOW = 1_741_800_000_000
GIB = 2**30


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def replay(name: str, labels: LabelConfig | None = None) -> list[SchedulerEvent]:
    state: dict[str, PodSeen] = {}
    out = [e for ev in load(name) for e in pod_to_events(ev["type"], ev["object"], labels or LabelConfig(), state, now_ms=NOW)]
    assert SCHEDULER_EVENTS.codec.decode(SCHEDULER_EVENTS.codec.encode(out)) == out
    assert state == {}, "a DELETED pod must be forgotten"
    return out


def test_quantities() -> None:
    assert quantity("500m") == 0.5 and quantity("16Gi") == 16 * GIB and quantity("1e3") == 1000
    assert quantity("2E") == 2e18 and quantity("129M") == 129e6 and quantity("bogus") is None and quantity(None) is None


def test_pod_lifecycle_pending_scheduled_running_succeeded() -> None:
    events = replay("pod_lifecycle_succeeded.json")
    assert [e.kind for e in events] == ["submitted", "scheduled", "started", "finished"]
    assert [e.ts for e in events] == [
        ms("2025-03-11T14:02:07Z"),
        ms("2025-03-11T14:02:31Z"),
        ms("2025-03-11T14:02:31Z"),
        ms("2025-03-11T16:47:52Z"),
    ]
    assert [e.node for e in events] == [None, "gpu-h100-017", "gpu-h100-017", "gpu-h100-017"]
    first, last = events[0], events[-1]
    assert (first.source, first.job_id, first.name) == ("kubernetes", "llama-8b-ft", "llama-8b-ft-0-7kq9d")
    assert (first.user, first.team, first.queue, first.priority, first.qos) == (
        "alice",
        "llm-pretrain",
        "team-llm",
        "training-high",
        "Guaranteed",
    )
    # the init container (2 CPUs, 4Gi) runs before the trainer (96 CPUs, 960Gi): the pod needs the larger
    assert (first.requested_gpus, first.requested_cpus, first.requested_memory_bytes) == (8.0, 96.0, 960 * GIB)
    assert first.gpu_model == "NVIDIA-H100-80GB-HBM3" and first.gpu_ids == []
    assert last.status == "Succeeded"


def test_each_transition_once_and_a_late_observer_gets_the_same_rows() -> None:
    raw = load("pod_lifecycle_succeeded.json")
    state: dict[str, PodSeen] = {}
    stepwise = [e for ev in raw[:5] for e in pod_to_events(ev["type"], ev["object"], state=state, now_ms=NOW)]
    again = [e for ev in raw[:5] for e in pod_to_events(ev["type"], ev["object"], state=state, now_ms=NOW)]
    assert again == []
    # a collector (re)started after the pod finished sees it once, as ADDED: same events, same times
    late = pod_to_events("ADDED", raw[4]["object"], state={}, now_ms=NOW + 999)
    assert late == stepwise


def test_evicted_pod_is_preempted_once_and_never_finished() -> None:
    events = replay_with_delete("pod_evicted.json")
    assert [e.kind for e in events] == ["submitted", "scheduled", "started", "preempted"]
    preempted = events[-1]
    assert preempted.ts == ms("2025-03-12T05:41:09Z") and preempted.status == "TerminationByKubelet"
    assert preempted.node == "gpu-a100-042" and preempted.job_id == "bert-sweep-lr3e-4"
    # requests for CPU and memory, the limit for GPUs; allowed GPU models from the node affinity
    assert (preempted.requested_cpus, preempted.requested_memory_bytes, preempted.requested_gpus) == (7.5, 32 * GIB, 1.0)
    assert preempted.gpu_model == "NVIDIA-A100-SXM4-80GB|NVIDIA-H100-80GB-HBM3"
    assert preempted.qos == "Burstable" and preempted.priority == "batch-low"


def replay_with_delete(name: str) -> list[SchedulerEvent]:
    """The evicted fixture ends before the pod is garbage-collected; deleting it must add nothing."""
    raw = load(name)
    state: dict[str, PodSeen] = {}
    out = [e for ev in raw for e in pod_to_events(ev["type"], ev["object"], state=state, now_ms=NOW)]
    out += pod_to_events("DELETED", raw[-1]["object"], state=state, now_ms=NOW)
    assert SCHEDULER_EVENTS.codec.decode(SCHEDULER_EVENTS.codec.encode(out)) == out and state == {}
    return out


def test_pod_deleted_while_pending() -> None:
    events = replay("pod_deleted_pending.json")
    assert [e.kind for e in events] == ["submitted", "deleted"]
    assert events[0].ts == ms("2025-03-12T09:30:00Z")
    assert events[1].ts == NOW and events[1].status == "Pending" and events[1].node is None  # no deletion time in the object


def test_pods_that_vanished_while_the_watch_was_down_are_deleted() -> None:
    state: dict[str, PodSeen] = {}
    for name in ("pod_deleted_pending.json", "pod_lifecycle_succeeded.json"):
        for ev in load(name)[:2]:  # the watch broke before these pods went away
            pod_to_events(ev["type"], ev["object"], state=state, now_ms=NOW)
    lifecycle_uid = load("pod_lifecycle_succeeded.json")[0]["object"]["metadata"]["uid"]
    gone = forget_missing(state, present={lifecycle_uid}, now_ms=NOW)  # the re-list shows only one of them
    assert [(e.job_id, e.kind, e.ts) for e in gone] == [("vit-huge-pt", "deleted", NOW)] and list(state) == [lifecycle_uid]
    assert SCHEDULER_EVENTS.codec.decode(SCHEDULER_EVENTS.codec.encode(gone)) == gone


def test_label_config_is_honoured() -> None:
    labels = LabelConfig(
        user_label="kueue.x-k8s.io/podset", team_label="missing", priority_label="batch.kubernetes.io/job-completion-index"
    )
    first = replay("pod_lifecycle_succeeded.json", labels)[0]
    assert (first.user, first.team, first.priority) == ("main", None, "0")


def test_watch_bookmarks_and_errors_are_ignored() -> None:
    assert pod_to_events("BOOKMARK", {"metadata": {"resourceVersion": "1"}}) == []
    assert pod_to_events("ERROR", {"kind": "Status", "code": 410}) == []


def test_node_inventory() -> None:
    inv = node_to_inventory(load("node_gpu.json"), NOW)
    assert inv is not None
    assert (inv.node, inv.gpu_count, inv.gpu_model) == ("gpu-h100-017", 8, "NVIDIA-H100-80GB-HBM3")
    assert inv.cpus == pytest.approx(191.45) and inv.memory_bytes == 2065398572 * 1024
    assert (inv.zone, inv.pool) == ("us-east-1b", "h100-train") and inv.labels[
        "node.kubernetes.io/instance-type"
    ] == "p5.48xlarge"
    assert NODE_INVENTORY.codec.decode(NODE_INVENTORY.codec.encode([inv])) == [inv]
    assert (
        node_to_inventory(load("node_gpu.json"), NOW, LabelConfig(pool_label="node.kubernetes.io/instance-type")).pool
        == "p5.48xlarge"
    )


def test_collector_without_the_client_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    with pytest.raises(RuntimeError, match="pip install kubernetes"):
        KubernetesCollector(K8sConfig())


def fake_client(pod_events: list[dict[str, Any]], node: dict[str, Any]) -> types.ModuleType:
    """A stand-in for the ``kubernetes`` package that serves the recorded responses."""
    served = threading.Event()

    class Response:
        def __init__(self, doc: dict[str, Any]) -> None:
            self.data = json.dumps(doc).encode()

    class CoreV1Api:
        def list_pod_for_all_namespaces(self, _preload_content: bool = True, **_: Any) -> Response:
            return Response({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "48812300"}, "items": []})

        def list_node(self, _preload_content: bool = True, **_: Any) -> Response:
            return Response(
                {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "48812300"}, "items": [node]}
            )

    class Watch:
        def stream(self, fn: Any, **_: Any) -> Any:
            if fn.__name__ == "list_pod_for_all_namespaces" and not served.is_set():
                served.set()
                yield from ({"type": ev["type"], "raw_object": ev["object"]} for ev in pod_events)
            time.sleep(0.02)

    module = types.ModuleType("kubernetes")
    module.config = types.SimpleNamespace(
        load_incluster_config=lambda: None, load_kube_config=lambda **_: None, ConfigException=Exception
    )
    module.client = types.SimpleNamespace(CoreV1Api=CoreV1Api)
    module.watch = types.SimpleNamespace(Watch=Watch)
    return module


def test_collector_hands_over_what_the_watch_threads_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = load("pod_lifecycle_succeeded.json")
    monkeypatch.setitem(sys.modules, "kubernetes", fake_client(raw, load("node_gpu.json")))
    got: list[Any] = []
    with KubernetesCollector(K8sConfig()) as collector:
        deadline = time.monotonic() + 10
        while len(got) < 5 and time.monotonic() < deadline:
            got += collector.sample(NOW)
            time.sleep(0.01)
    inventory = [r for r in got if isinstance(r, NodeInventory)]
    events = [r for r in got if isinstance(r, SchedulerEvent)]
    assert len(inventory) == 1 and inventory[0].node == "gpu-h100-017"  # listed once, not re-sent unchanged
    assert events == replay("pod_lifecycle_succeeded.json")
