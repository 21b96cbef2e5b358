"""Kubernetes pods and nodes as scheduler events and node inventory.

:func:`pod_to_events` is a pure translator of watch events (``ADDED``/``MODIFIED``/``DELETED``
with the Pod as the API returns it, as JSON). The API reports a pod's *state*, not its
transitions, so the translator keeps per pod uid the kinds already emitted and derives each
transition once: pending -> ``submitted``; ``spec.nodeName`` or a true ``PodScheduled``
condition -> ``scheduled``; a ``startTime`` with phase Running (or later) -> ``started``;
``Succeeded``/``Failed`` -> ``finished``; eviction or preemption (``status.reason`` Evicted or
Preempting, or a true ``DisruptionTarget`` condition) -> ``preempted``; ``DELETED`` before any
of those -> ``deleted`` (at the deletion request: ``deletionTimestamp`` less the grace period,
else the clock). Only one of finished/preempted/deleted is ever emitted per pod.
Timestamps come from the object (creation, condition and container times), so re-emitting
after a restart gives identical rows, which the ReplacingMergeTree table collapses.

``job_id`` is the pod's ``job-name`` label (set by the Job controller), else the name of its
controlling owner (Job, JobSet, ReplicaSet...), else the pod name; pods of one job share it.
:class:`KubernetesCollector` runs list+watch loops in background threads with the official
``kubernetes`` client, imported only when the collector is built (not a hard dependency).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import msgspec

from hpcinsight.agents.base import Collector
from hpcinsight.agents.registry import check, collector_kind
from hpcinsight.schemas.catalog import NODE_INVENTORY, SCHEDULER_EVENTS, Topic
from hpcinsight.schemas.events import Event, NodeInventory, SchedulerEvent

log = logging.getLogger(__name__)

SOURCE = "kubernetes"
TERMINAL = frozenset({"finished", "preempted", "deleted"})
_SUFFIX = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "": 1,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}
_QUANTITY = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?")


@dataclass(frozen=True)
class LabelConfig:
    """Which labels carry what; ``priority_label=None`` uses ``spec.priorityClassName``."""

    user_label: str = "hpcinsight.io/user"
    team_label: str = "hpcinsight.io/team"
    priority_label: str | None = None
    queue_label: str = "kueue.x-k8s.io/queue-name"
    pool_label: str = "hpcinsight.io/pool"
    zone_label: str = "topology.kubernetes.io/zone"
    gpu_model_label: str = "nvidia.com/gpu.product"
    gpu_resource: str = "nvidia.com/gpu"


@dataclass
class PodSeen:
    """What the translator remembers of one pod: kinds emitted and the fields of its last event."""

    kinds: set[str] = field(default_factory=set)
    fields: dict[str, Any] = field(default_factory=dict)


def quantity(text: Any) -> float | None:
    """A Kubernetes quantity (``500m``, ``16Gi``, ``1e3``) as a number; None if absent or malformed."""
    m = _QUANTITY.fullmatch(str(text).strip()) if text is not None else None
    return float(m.group(1)) * _SUFFIX[m.group(2) or ""] if m else None


def epoch_ms(text: Any) -> int | None:
    """An RFC 3339 time from the API (``2024-05-14T09:12:03Z``) as epoch ms; None if absent or malformed."""
    try:
        return int(datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() * 1000) if text else None
    except ValueError:
        return None


def _label(value: Any) -> str | None:
    return str(value)[:256] if value not in (None, "") else None


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind and c.get("status") == "True"), None)


def _requested(spec: dict[str, Any], name: str, gpu: bool) -> float | None:
    """Effective pod request: sum over containers, at least the largest init container (GPUs: limits first)."""

    def one(c: dict[str, Any]) -> float | None:
        res = c.get("resources") or {}
        first, second = ("limits", "requests") if gpu else ("requests", "limits")
        return quantity((res.get(first) or {}).get(name, (res.get(second) or {}).get(name)))

    main = [v for c in spec.get("containers") or [] if (v := one(c)) is not None]
    init = [v for c in spec.get("initContainers") or [] if (v := one(c)) is not None]
    return max([sum(main), *init]) if main or init else None


def _gpu_model(spec: dict[str, Any], label: str) -> str | None:
    """From a nodeSelector, or a required node affinity ``In`` list ('|'-joined, as in the openb trace)."""
    if model := (spec.get("nodeSelector") or {}).get(label):
        return _label(model)
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == label and expr.get("operator") == "In" and expr.get("values"):
                return _label("|".join(expr["values"]))
    return None


def job_id_of(meta: dict[str, Any]) -> str:
    labels = meta.get("labels") or {}
    owner = next((o.get("name") for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
    return str(labels.get("job-name") or labels.get("batch.kubernetes.io/job-name") or owner or meta.get("name"))


def _pod_fields(pod: dict[str, Any], cfg: LabelConfig) -> dict[str, Any]:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    labels = meta.get("labels") or {}
    memory = _requested(spec, "memory", False)
    return {
        "source": SOURCE,
        "job_id": job_id_of(meta)[:256],
        "name": _label(meta.get("name")),
        "user": _label(labels.get(cfg.user_label)),
        "team": _label(labels.get(cfg.team_label)),
        "priority": _label(labels.get(cfg.priority_label) if cfg.priority_label else spec.get("priorityClassName")),
        "qos": _label((pod.get("status") or {}).get("qosClass")),
        "queue": _label(labels.get(cfg.queue_label)),
        "requested_gpus": _requested(spec, cfg.gpu_resource, True) or 0.0,
        "requested_cpus": _requested(spec, "cpu", False),
        "requested_memory_bytes": None if memory is None else int(memory),
        "gpu_model": _gpu_model(spec, cfg.gpu_model_label),
    }


def _finished_ms(status: dict[str, Any]) -> int | None:
    ends = [
        epoch_ms(((s.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        for s in status.get("containerStatuses") or []
    ]
    return max((e for e in ends if e is not None), default=None)


def pod_to_events(
    event_type: str,
    pod: dict[str, Any],
    labels: LabelConfig | None = None,
    state: dict[str, PodSeen] | None = None,
    now_ms: int | None = None,
) -> list[SchedulerEvent]:
    """The transitions that ``pod`` shows and ``state`` (per pod uid, kept by the caller) has not seen.

    ``now_ms`` stamps a transition whose time the object does not carry (default: the clock).
    Without ``state`` every transition visible in the object is returned.
    """
    if event_type not in ("ADDED", "MODIFIED", "DELETED") or not isinstance(pod, dict):
        return []
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    if not meta.get("name"):
        return []
    uid = str(meta.get("uid") or f"{meta.get('namespace')}/{meta['name']}")
    state = {} if state is None else state
    seen = state.setdefault(uid, PodSeen())
    seen.fields = _pod_fields(pod, labels or LabelConfig())
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    node, phase, out = _label(spec.get("nodeName")), status.get("phase"), []

    def emit(kind: str, ts: int | None, **extra: Any) -> None:
        if kind in seen.kinds or (kind in TERMINAL and seen.kinds & TERMINAL):
            return
        seen.kinds.add(kind)
        out.append(SchedulerEvent(ts=ts or now, kind=kind, **seen.fields, **extra))

    emit("submitted", epoch_ms(meta.get("creationTimestamp")))
    scheduled = _condition(status, "PodScheduled")
    if node or scheduled:
        emit("scheduled", epoch_ms((scheduled or {}).get("lastTransitionTime")), node=node)
    if phase in ("Running", "Succeeded", "Failed") and status.get("startTime"):
        emit("started", epoch_ms(status.get("startTime")), node=node)
    disruption = _condition(status, "DisruptionTarget")
    if status.get("reason") in ("Evicted", "Preempting") or disruption:
        reason = status.get("reason") or (disruption or {}).get("reason") or "DisruptionTarget"
        when = epoch_ms((disruption or {}).get("lastTransitionTime")) or _finished_ms(status)
        emit("preempted", when, node=node, status=_label(reason))
    elif phase in ("Succeeded", "Failed"):
        emit("finished", _finished_ms(status), node=node, status=phase)
    if event_type == "DELETED":
        deleting = epoch_ms(meta.get("deletionTimestamp"))
        grace_ms = int(meta.get("deletionGracePeriodSeconds") or 0) * 1000
        emit("deleted", deleting - grace_ms if deleting else None, node=node, status=_label(phase))
        del state[uid]
    return out


def forget_missing(state: dict[str, PodSeen], present: set[str], now_ms: int) -> list[SchedulerEvent]:
    """After a re-list: pods remembered but no longer listed were deleted while the watch was down."""
    out = []
    for uid in [u for u in state if u not in present]:
        seen = state.pop(uid)
        if not seen.kinds & TERMINAL and seen.fields:
            out.append(SchedulerEvent(ts=now_ms, kind="deleted", **seen.fields))
    return out


def node_to_inventory(node: dict[str, Any], now_ms: int, labels: LabelConfig | None = None) -> NodeInventory | None:
    """A Node object as :class:`NodeInventory` (allocatable resources, zone, pool, GPU model, labels)."""
    cfg, meta = labels or LabelConfig(), node.get("metadata") or {}
    alloc = (node.get("status") or {}).get("allocatable") or {}
    if not meta.get("name"):
        return None
    node_labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    memory = quantity(alloc.get("memory"))
    return NodeInventory(
        ts=now_ms,
        node=str(meta["name"])[:256],
        gpu_count=int(quantity(alloc.get(cfg.gpu_resource)) or 0),
        gpu_model=_label(node_labels.get(cfg.gpu_model_label)),
        cpus=quantity(alloc.get("cpu")),
        memory_bytes=None if memory is None else int(memory),
        zone=_label(node_labels.get(cfg.zone_label)),
        pool=_label(node_labels.get(cfg.pool_label)),
        labels=node_labels,
    )


@dataclass(frozen=True)
class K8sConfig:
    namespace: str | None = None  # None: all namespaces
    label_selector: str | None = None  # pods only
    labels: LabelConfig = LabelConfig()
    watch_nodes: bool = True
    kubeconfig: str | None = None  # None: in-cluster service account, else ~/.kube/config
    watch_timeout_s: int = 300

    def __post_init__(self) -> None:
        check(self.watch_timeout_s >= 1, "watch_timeout_s", "must be >= 1")


def _load_client(config: K8sConfig) -> Any:
    try:
        import kubernetes
    except ImportError as err:
        raise RuntimeError(
            "KubernetesCollector needs the official client: pip install 'hpcinsight[k8s]' (or: pip install kubernetes)"
        ) from err
    try:
        if config.kubeconfig:
            raise kubernetes.config.ConfigException("a kubeconfig was given")
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=config.kubeconfig)
    return kubernetes


class KubernetesCollector(Collector[K8sConfig]):
    """Watches pods (and nodes) in background threads; :meth:`sample` hands over what arrived since."""

    topic = SCHEDULER_EVENTS
    #: NodeInventory records in :meth:`sample` belong on this topic, not on :attr:`topic`
    extra_topics: ClassVar[tuple[Topic, ...]] = (NODE_INVENTORY,)

    def __init__(self, config: K8sConfig) -> None:
        super().__init__(config)
        self._k8s = _load_client(config)
        self._api = self._k8s.client.CoreV1Api()
        self._queue: deque[Event] = deque()
        self._stop = threading.Event()
        self._pods: dict[str, PodSeen] = {}
        self._nodes: dict[str, NodeInventory] = {}
        self.errors = 0
        kinds = ["pods", *(["nodes"] if config.watch_nodes else [])]
        self._threads = [threading.Thread(target=self._watch, args=(k,), name=f"k8s-watch-{k}", daemon=True) for k in kinds]
        for t in self._threads:
            t.start()

    def _list_fn(self, kind: str) -> tuple[Any, dict[str, Any]]:
        if kind == "nodes":
            return self._api.list_node, {}
        kw = {"label_selector": self.config.label_selector} if self.config.label_selector else {}
        if self.config.namespace:
            return self._api.list_namespaced_pod, {"namespace": self.config.namespace, **kw}
        return self._api.list_pod_for_all_namespaces, kw

    def _handle(self, kind: str, event_type: str, obj: dict[str, Any]) -> None:
        try:
            self._translate(kind, event_type, obj)
        except (AttributeError, KeyError, TypeError, ValueError) as err:  # one odd object must not stop the watch
            self.errors += 1
            log.warning("skipped a %s watch event that could not be read: %s", kind, err)

    def _translate(self, kind: str, event_type: str, obj: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        if kind == "pods":
            self._queue.extend(pod_to_events(event_type, obj, self.config.labels, self._pods, now))
            return
        name = (obj.get("metadata") or {}).get("name")
        if event_type == "DELETED":
            self._nodes.pop(name, None)
        elif (inv := node_to_inventory(obj, now, self.config.labels)) is not None:
            if (old := self._nodes.get(inv.node)) is None or msgspec.structs.replace(old, ts=inv.ts) != inv:  # changed
                self._nodes[inv.node] = inv
                self._queue.append(inv)

    def _watch(self, kind: str) -> None:
        """List, then watch from the list's resourceVersion; re-list when the version expired (410)."""
        fn, kwargs = self._list_fn(kind)
        version, backoff = None, 1.0
        while not self._stop.is_set():
            try:
                if version is None:
                    doc = json.loads(fn(**kwargs, _preload_content=False).data)
                    version = doc["metadata"]["resourceVersion"]
                    for item in doc.get("items") or []:
                        self._handle(kind, "ADDED", item)
                    if kind == "pods":
                        present = {str(i["metadata"].get("uid")) for i in doc.get("items") or []}
                        self._queue.extend(forget_missing(self._pods, present, int(time.time() * 1000)))
                stream = self._k8s.watch.Watch().stream(
                    fn,
                    resource_version=version,
                    timeout_seconds=self.config.watch_timeout_s,
                    allow_watch_bookmarks=True,
                    **kwargs,
                )
                for event in stream:
                    raw = event.get("raw_object") or {}
                    if event.get("type") == "ERROR":
                        version = None if raw.get("code") == 410 else version
                        break
                    version = (raw.get("metadata") or {}).get("resourceVersion") or version
                    self._handle(kind, event.get("type", ""), raw)
                    if self._stop.is_set():
                        break
                backoff = 1.0
            except Exception as err:  # noqa: BLE001 - the API server went away, or the version expired: retry, never die
                self.errors += 1
                version = None if getattr(err, "status", None) == 410 else version
                log.warning("kubernetes %s watch failed (%s); retrying in %.0f s", kind, err, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)

    def sample(self, now_ms: int) -> list[Event]:
        return [self._queue.popleft() for _ in range(len(self._queue))]  # the watch threads only append

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=1.0)


@collector_kind("scheduler_kubernetes", K8sConfig)
def scheduler_kubernetes(config: K8sConfig) -> list[Collector[Any]]:
    """Pods and nodes watched through the Kubernetes API (``[agent.collectors.scheduler_kubernetes]``)."""
    return [KubernetesCollector(config)]
