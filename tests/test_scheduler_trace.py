"""The openb trace replay on the real Alibaba trace in /work/shared/data (never copied into the repo)."""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

import pytest

from agents.scheduler.trace import (
    NODE_FILE,
    POD_FILE,
    OpenbTraceCollector,
    TraceConfig,
    events_between,
    pod_steps,
)
from schemas.catalog import NODE_INVENTORY, SCHEDULER_EVENTS
from schemas.events import NodeInventory, SchedulerEvent

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alibaba-openb-2023"
pytestmark = pytest.mark.skipif(not (DATA / POD_FILE).is_file(), reason=f"the openb trace is not at {DATA}")

T0 = 1_764_000_000_000
TRACE_END_S = 12_902_960  # the last deletion_time in the trace


def replay(collector: OpenbTraceCollector, ticks: list[int]) -> list[tuple[int, object]]:
    return [(now, e) for now in ticks for e in collector.sample(now)]


def test_the_whole_trace_once_in_order() -> None:
    collector = OpenbTraceCollector(TraceConfig(data_dir=DATA, start_ms=T0))
    end = T0 + TRACE_END_S * 1000 // 60 + 1
    records = [e for _, e in replay(collector, [T0, end])]
    assert collector.skipped_rows == 0 and len(collector.pods) == 8152 and collector.done
    inventory = [r for r in records if isinstance(r, NodeInventory)]
    events = [r for r in records if isinstance(r, SchedulerEvent)]
    assert len(inventory) == 1213 and sum(i.gpu_count for i in inventory) == 6212
    assert collections.Counter(e.kind for e in events) == {"submitted": 8152, "scheduled": 7255, "finished": 7255, "deleted": 897}
    assert collections.Counter(e.status for e in events if e.kind == "finished") == {"Running": 5193, "Failed": 1870, "Succeeded": 192}
    assert len({(e.job_id, e.kind) for e in events}) == len(events)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert SCHEDULER_EVENTS.codec.decode(SCHEDULER_EVENTS.codec.encode(events)) == events
    assert NODE_INVENTORY.codec.decode(NODE_INVENTORY.codec.encode(inventory)) == inventory


def test_polling_hands_out_each_event_when_due_and_only_once() -> None:
    cfg = TraceConfig(data_dir=DATA, speedup=3600.0, limit=600, start_ms=T0)  # an hour of trace per wall second
    collector = OpenbTraceCollector(cfg)
    ticks = [T0 + k * 60_000 for k in range(0, 60 * 2)]  # the runner polls every minute; the trace lasts ~1 h
    got = replay(collector, ticks)
    events = [(now, e) for now, e in got if isinstance(e, SchedulerEvent)]
    assert all(isinstance(e, NodeInventory) and now == T0 for now, e in got if not isinstance(e, SchedulerEvent))
    assert collector.done and len(events) > 600
    for now, e in events:  # never early, and handed out by the first poll at or after its due time
        assert now - 60_000 < e.ts <= now
    whole = OpenbTraceCollector(cfg)
    all_at_once = [e for e in whole.sample(ticks[-1]) if isinstance(e, SchedulerEvent)]
    assert [e for _, e in events] == all_at_once and len({(e.job_id, e.kind) for _, e in events}) == len(events)


def test_mapping_of_known_pods() -> None:
    collector = OpenbTraceCollector(TraceConfig(data_dir=DATA, limit=100, start_ms=T0))
    events = [e for e in collector.sample(T0 + 10**12) if isinstance(e, SchedulerEvent)]
    by = {(e.job_id, e.kind): e for e in events}
    first = by["openb-pod-0000", "submitted"]  # 12000 mCPU, 16384 MiB, 1 GPU, LS, created at 0
    assert (first.ts, first.source, first.qos, first.priority) == (T0, "openb", "LS", "high")
    assert (first.requested_cpus, first.requested_memory_bytes, first.requested_gpus, first.gpu_model) == (12.0, 16384 * 2**20, 1.0, None)
    shared = by["openb-pod-0001", "scheduled"]  # gpu_milli 460 of one GPU, scheduled at 427061 s
    assert shared.requested_gpus == 0.46 and shared.ts == T0 + round(427061 * 1000 / 60) and shared.node is None
    assert by["openb-pod-0000", "finished"].status == "Running"  # deleted while it ran
    never_ran = by["openb-pod-0061", "deleted"]  # BE, Pending, no scheduled_time
    assert never_ran.status == "Pending" and never_ran.priority == "low" and ("openb-pod-0061", "finished") not in by


def test_events_between_is_a_pure_window() -> None:
    collector = OpenbTraceCollector(TraceConfig(data_dir=DATA, limit=50))
    steps = pod_steps(collector.pods)
    windows = [events_between(steps, a, b, T0, 60.0) for a, b in itertools.pairwise([0, 1e6, 5e6, 1e7, 2e7])]
    assert sum(windows, []) == events_between(steps, 0, float("inf"), T0, 60.0)
    assert all(T0 + 1e6 * 1000 / 60 <= e.ts < T0 + 5e6 * 1000 / 60 for e in windows[1])


def test_malformed_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    pods = (DATA / POD_FILE).read_text().splitlines()
    nodes = (DATA / NODE_FILE).read_text().splitlines()
    bad_pods = [
        "openb-bad-1,1000,1024,1,1000,,LS,Running,notanumber,10,5",  # time not a number
        "openb-bad-2,1000,1024,1,1000,,LS,Running,100,50,200",  # deleted before created
        ",1000,1024,1,1000,,LS,Running,0,10,5",  # no name
        "openb-bad-4,-5,1024,1,1000,,LS,Running,0,10,5",  # negative CPU
        "openb-bad-5,1000",  # truncated row
        "openb-bad-6,1000,1024,1,1000,,LS,Running,nan,10,5",  # NaN time
        "openb-ok-7,1000,1024,1,1000,,,Succeeded,7,,",  # no qos, never scheduled or deleted: valid
    ]
    (tmp_path / POD_FILE).write_text("\n".join([*pods[:6], *bad_pods]) + "\n")
    (tmp_path / NODE_FILE).write_text("\n".join([*nodes[:3], "openb-node-bad,64000,262144,2.5,P100", ",1,1,1,T4"]) + "\n")
    collector = OpenbTraceCollector(TraceConfig(data_dir=tmp_path, start_ms=T0))
    records = collector.sample(T0 + 10**12)
    assert collector.skipped_rows == 6 + 2
    assert len([r for r in records if isinstance(r, NodeInventory)]) == 2
    ok = [e for e in records if isinstance(e, SchedulerEvent) and e.job_id == "openb-ok-7"]
    assert [(e.kind, e.qos, e.priority) for e in ok] == [("submitted", None, None)]


def test_missing_trace_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data_dir"):
        OpenbTraceCollector(TraceConfig(data_dir=tmp_path))
    with pytest.raises(ValueError):
        TraceConfig(speedup=0)
