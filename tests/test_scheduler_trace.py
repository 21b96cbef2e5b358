"""The openb trace replay on the real Alibaba trace in /work/shared/data (never copied into the repo)."""

from __future__ import annotations

import collections
import itertools
import time
from pathlib import Path

import numpy as np
import pytest

from hpcinsight.agents.scheduler.trace import (
    MILLI,
    NODE_FILE,
    POD_FILE,
    OpenbTraceCollector,
    PlacementModel,
    TraceConfig,
    allowed_models,
    events_between,
    pod_steps,
)
from hpcinsight.schemas.catalog import NODE_INVENTORY, SCHEDULER_EVENTS
from hpcinsight.schemas.events import NodeInventory, SchedulerEvent

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alibaba-openb-2023"
needs_trace = pytest.mark.skipif(not (DATA / POD_FILE).is_file(), reason=f"the openb trace is not at {DATA}")

T0 = 1_764_000_000_000
TRACE_END_S = 12_902_960  # the last deletion_time in the trace


def replay(collector: OpenbTraceCollector, ticks: list[int]) -> list[tuple[int, object]]:
    return [(now, e) for now in ticks for e in collector.sample(now)]


@needs_trace
def test_the_whole_trace_once_in_order() -> None:
    collector = OpenbTraceCollector(TraceConfig(data_dir=DATA, start_ms=T0))
    end = T0 + TRACE_END_S * 1000 // 60 + 1
    records = [e for _, e in replay(collector, [T0, end])]
    assert collector.skipped_rows == 0 and len(collector.pods) == 8152 and collector.done
    inventory = [r for r in records if isinstance(r, NodeInventory)]
    events = [r for r in records if isinstance(r, SchedulerEvent)]
    assert len(inventory) == 1213 and sum(i.gpu_count for i in inventory) == 6212
    assert collections.Counter(e.kind for e in events) == {"submitted": 8152, "scheduled": 7255, "finished": 7255, "deleted": 897}
    assert collections.Counter(e.status for e in events if e.kind == "finished") == {
        "Running": 5193,
        "Failed": 1870,
        "Succeeded": 192,
    }
    assert len({(e.job_id, e.kind) for e in events}) == len(events)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert SCHEDULER_EVENTS.codec.decode(SCHEDULER_EVENTS.codec.encode(events)) == events
    assert NODE_INVENTORY.codec.decode(NODE_INVENTORY.codec.encode(inventory)) == inventory


@needs_trace
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


@needs_trace
def test_mapping_of_known_pods() -> None:
    collector = OpenbTraceCollector(TraceConfig(data_dir=DATA, limit=100, start_ms=T0))
    events = [e for e in collector.sample(T0 + 10**12) if isinstance(e, SchedulerEvent)]
    by = {(e.job_id, e.kind): e for e in events}
    first = by["openb-pod-0000", "submitted"]  # 12000 mCPU, 16384 MiB, 1 GPU, LS, created at 0
    assert (first.ts, first.source, first.qos, first.priority) == (T0, "openb", "LS", "high")
    assert (first.requested_cpus, first.requested_memory_bytes, first.requested_gpus, first.gpu_model) == (
        12.0,
        16384 * 2**20,
        1.0,
        None,
    )
    shared = by["openb-pod-0001", "scheduled"]  # gpu_milli 460 of one GPU, scheduled at 427061 s
    assert shared.requested_gpus == 0.46 and shared.ts == T0 + round(427061 * 1000 / 60)
    # placement model: pod-0000 (1 GPU, empty cluster) best-fits the first 1-GPU node of the file
    # (openb-node-0143); pod-0001 finds no shared GPU yet, so it opens one on the next 1-GPU node
    whole = by["openb-pod-0000", "scheduled"]
    assert (whole.node, whole.gpu_ids) == ("openb-node-0143", ["openb-node-0143/gpu0"])
    assert (shared.node, shared.gpu_ids) == ("openb-node-0155", ["openb-node-0155/gpu0"])
    assert by["openb-pod-0000", "finished"].node == "openb-node-0143" and by["openb-pod-0000", "submitted"].node is None
    assert by["openb-pod-0000", "finished"].status == "Running"  # deleted while it ran
    never_ran = by["openb-pod-0061", "deleted"]  # BE, Pending, no scheduled_time
    assert never_ran.status == "Pending" and never_ran.priority == "low" and ("openb-pod-0061", "finished") not in by


@needs_trace
def test_events_between_is_a_pure_window() -> None:
    collector = OpenbTraceCollector(TraceConfig(data_dir=DATA, limit=50))
    steps = pod_steps(collector.pods)
    windows = [events_between(steps, a, b, T0, 60.0) for a, b in itertools.pairwise([0, 1e6, 5e6, 1e7, 2e7])]
    assert sum(windows, []) == events_between(steps, 0, float("inf"), T0, 60.0)
    assert all(T0 + 1e6 * 1000 / 60 <= e.ts < T0 + 5e6 * 1000 / 60 for e in windows[1])
    replayed = [
        e
        for e in OpenbTraceCollector(TraceConfig(data_dir=DATA, limit=50, start_ms=T0)).sample(T0 + 10**12)
        if isinstance(e, SchedulerEvent)
    ]
    assert events_between(steps, 0, float("inf"), T0, 60.0, collector.placements) == replayed  # placed as the collector places
    assert any(e.node for e in replayed)


@needs_trace
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


def inv(node: str, gpus: int, model: str | None = None) -> NodeInventory:
    return NodeInventory(ts=0, node=node, gpu_count=gpus, gpu_model=model)


def test_whole_gpu_pods_go_best_fit_to_a_node_of_an_allowed_model() -> None:
    model = PlacementModel([inv("a", 8, "V100"), inv("b", 2, "T4"), inv("c", 4, "V100"), inv("d", 4, "V100")])
    two = model.place(2, None)  # b is left with 0 free, the fewest
    assert two is not None and (two.node, two.gpu_ids) == ("b", ("b/gpu0", "b/gpu1"))
    three = model.place(3, "V100")  # c and d would keep 1 (c is listed first), a would keep 5
    assert three is not None and (three.node, three.gpu_ids) == ("c", ("c/gpu0", "c/gpu1", "c/gpu2"))
    one = model.place(1, "V100")  # c's last GPU leaves 0
    assert one is not None and (one.node, one.gpu_ids) == ("c", ("c/gpu3",))
    assert model.place(2, "T4") is None  # b is full
    assert model.place(1, "A100|P100") is None  # no such model
    assert model.place(1.5, None) is None and model.place(9, None) is None  # not whole; larger than any node
    eight = model.place(8, " T4 | V100 ")
    assert eight is not None and eight.node == "a"
    model.release(two)
    again = model.place(2, "T4")
    assert again is not None and again.gpu_ids == ("b/gpu0", "b/gpu1")
    assert allowed_models("") is None and allowed_models("A|B") == {"A", "B"}


def test_shares_of_a_gpu_fill_the_tightest_shared_gpu_first() -> None:
    model = PlacementModel([inv("a", 2), inv("b", 1)])
    first = model.place(0.5, None)  # nothing shared yet: opens a GPU on b (one whole GPU fits b best)
    assert first is not None and (first.gpu_ids, first.milli) == (("b/gpu0",), 500)
    second = model.place(0.3, None)  # b/gpu0 has 500 left
    assert second is not None and second.gpu_ids == ("b/gpu0",)
    third = model.place(0.3, None)  # b/gpu0 has 200 left: too little, opens a/gpu0
    assert third is not None and third.gpu_ids == ("a/gpu0",)
    fourth = model.place(0.2, None)  # b/gpu0 (200 left) is tighter than a/gpu0 (700 left)
    assert fourth is not None and fourth.gpu_ids == ("b/gpu0",)
    whole = model.place(1, None)  # a/gpu1 is the only fully free GPU: a shared GPU is not free
    assert whole is not None and whole.gpu_ids == ("a/gpu1",)
    assert model.place(1, None) is None and model.place(0.8, None) is None
    model.release(third)  # a/gpu0 is free again
    assert model.place(1, None) is not None


@needs_trace
def test_placement_over_the_whole_trace_is_feasible_best_fit_and_deterministic() -> None:
    started = time.perf_counter()
    collector = OpenbTraceCollector(TraceConfig(data_dir=DATA, start_ms=T0))
    build_s = time.perf_counter() - started
    records = collector.sample(T0 + 10**12)
    nodes = [r for r in records if isinstance(r, NodeInventory)]
    index = {n.node: i for i, n in enumerate(nodes)}
    # one row per GPU, in file order of nodes then GPUs (the model's tie order)
    gpu_node = np.repeat(np.arange(len(nodes)), [n.gpu_count for n in nodes])
    gpu_local = np.concatenate([np.arange(n.gpu_count) for n in nodes])
    first_gpu = np.concatenate([[0], np.cumsum([n.gpu_count for n in nodes])[:-1]])
    used = np.zeros(len(gpu_node), dtype=np.int64)  # thousandths allocated per GPU
    held: dict[str, tuple[str, list[str], np.ndarray, int]] = {}
    placed = unplaced = 0
    for e in (r for r in records if isinstance(r, SchedulerEvent)):
        gpus = e.requested_gpus or 0
        if e.kind == "scheduled":
            if not gpus:
                assert e.node is None and e.gpu_ids == []  # CPU-only pods are not placed
                continue
            if e.node is None:
                unplaced += 1
                continue
            placed += 1
            milli = round(gpus * MILLI) if gpus < 1 else MILLI
            assert all(g.startswith(f"{e.node}/gpu") for g in e.gpu_ids)
            rows = first_gpu[index[e.node]] + np.array([int(g.removeprefix(f"{e.node}/gpu")) for g in e.gpu_ids])
            assert len(set(rows.tolist())) == len(rows) and (gpu_node[rows] == index[e.node]).all()
            free_whole = np.bincount(gpu_node, weights=used == 0, minlength=len(nodes))
            if gpus >= 1:  # whole GPUs, all fully free, on the first node left with the fewest
                assert len(rows) == gpus and (used[rows] == 0).all()
                fits = free_whole >= gpus
                assert index[e.node] == int(np.flatnonzero(fits & (free_whole == free_whole[fits].min()))[0])
            else:  # the shared GPU with the least remaining share that fits, else a new one
                ok = np.flatnonzero((used > 0) & (MILLI - used >= milli))
                if len(ok):
                    best = ok[np.lexsort((gpu_local[ok], gpu_node[ok], MILLI - used[ok]))[0]]
                    assert rows[0] == best
                else:
                    fits = free_whole >= 1
                    assert used[rows[0]] == 0 and index[e.node] == int(
                        np.flatnonzero(fits & (free_whole == free_whole[fits].min()))[0]
                    )
            used[rows] += milli
            assert used.max() <= MILLI
            held[e.job_id] = (e.node, e.gpu_ids, rows, milli)
        elif e.kind in ("finished", "deleted") and e.job_id in held:
            node, gpu_ids, rows, milli = held.pop(e.job_id)
            assert (e.node, e.gpu_ids) == (node, gpu_ids)
            used[rows] -= milli
    still = np.zeros_like(used)
    for _, _, rows, milli in held.values():
        still[rows] += milli
    assert (used == still).all()  # released exactly what was taken (every pod of openb is deleted in the end)
    assert (placed, unplaced) == (len(collector.placements), collector.unplaced)
    gpu_pods = sum(1 for p in collector.pods if p.gpus and p.scheduled_s is not None)
    assert placed + unplaced == gpu_pods and placed > 0.95 * gpu_pods
    assert build_s < 2.0
    twin = OpenbTraceCollector(TraceConfig(data_dir=DATA, start_ms=T0))
    assert twin.sample(T0 + 10**12) == records


@needs_trace
def test_placement_can_be_switched_off() -> None:
    collector = OpenbTraceCollector(TraceConfig(data_dir=DATA, start_ms=T0, limit=300, place=False))
    events = [e for e in collector.sample(T0 + 10**12) if isinstance(e, SchedulerEvent)]
    assert collector.placements == {} and collector.unplaced == 0
    assert any(e.kind == "scheduled" and e.requested_gpus for e in events) and all(
        e.node is None and not e.gpu_ids for e in events
    )
