"""The Slurm parsers on recorded ``squeue --json``, ``sacct --json`` and ``scontrol show nodes --json``.

Fixtures (tests/data/slurm/) cover both number formats: Slurm 24.05 (``{"set", "number"}``
wrappers, ``job_state`` lists) and 23.02/22.05 (plain integers, string states). ``t0``/``t1``
are two polls of one cluster an hour apart.
"""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from hpcinsight.agents.scheduler.slurm import (
    JobSeen,
    SlurmCollector,
    SlurmConfig,
    nodes_to_inventory,
    number,
    sacct_to_events,
    squeue_to_events,
)
from hpcinsight.schemas.catalog import NODE_INVENTORY, SCHEDULER_EVENTS
from hpcinsight.schemas.events import NodeInventory, SchedulerEvent

DATA = Path(__file__).parent / "data" / "slurm"
NOW = 1_741_706_000_000
GIB = 2**30


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def checked(events: list[SchedulerEvent]) -> list[SchedulerEvent]:
    assert SCHEDULER_EVENTS.codec.decode(SCHEDULER_EVENTS.codec.encode(events)) == events
    return events


def kinds(events: list[SchedulerEvent]) -> list[tuple[str, str]]:
    return [(e.job_id, e.kind) for e in events]


def test_numbers_in_both_formats() -> None:
    assert number(7) == 7.0 and number({"set": True, "infinite": False, "number": 7}) == 7.0
    assert number({"set": False, "infinite": False, "number": 0}) is None
    assert number({"set": True, "infinite": True, "number": 0}) is None and number(None) is None and number(True) is None


def test_squeue_2405_first_poll() -> None:
    events = checked(squeue_to_events(load("squeue_v0041_t0.json"), {}, NOW))
    assert kinds(events) == [
        ("812300", "submitted"),
        ("812300", "scheduled"),
        ("812300", "started"),
        ("812305", "submitted"),
        ("812305", "scheduled"),
        ("812305", "started"),
        ("812310", "submitted"),
        ("812310", "scheduled"),
        ("812310", "started"),
        ("812345", "submitted"),
        ("812346", "submitted"),
        ("812347", "submitted"),
        ("812347", "scheduled"),  # CONFIGURING: nodes still booting, not started
    ]
    big = events[1]
    assert (big.source, big.ts, big.node, big.user, big.team, big.queue, big.qos, big.priority) == (
        "slurm",
        1741695642000,
        "gpu[017-018]",
        "alice",
        "llm-pretrain",
        "gpu",
        "high",
        "28731",
    )
    assert (big.requested_gpus, big.requested_cpus, big.requested_memory_bytes, big.gpu_model) == (
        16.0,
        192.0,
        2000 * GIB,
        "h100",
    )
    assert big.name == "llama-70b-pt" and events[0].node is None
    pending = events[9]
    assert pending.ts == 1741700400000 and pending.requested_gpus == 8.0 and pending.gpu_model is None
    assert events[-1].requested_gpus == 0.0  # a CPU job asks for no GPUs


def test_second_poll_gives_only_the_transitions() -> None:
    state: dict[str, JobSeen] = {}
    squeue_to_events(load("squeue_v0041_t0.json"), state, NOW)
    assert squeue_to_events(load("squeue_v0041_t0.json"), state, NOW + 1000) == []
    events = checked(squeue_to_events(load("squeue_v0041_t1.json"), state, NOW + 60_000))
    assert kinds(events) == [
        ("812290", "submitted"),
        ("812290", "scheduled"),
        ("812290", "started"),
        ("812290", "finished"),  # ended between polls
        ("812305", "preempted"),  # requeued: restart_cnt went 0 -> 1
        ("812310", "preempted"),
        ("812345", "scheduled"),
        ("812345", "started"),
        ("812346", "deleted"),  # cancelled before it ever got a node
        ("812347", "started"),  # booted; Slurm moved the start to when it really began
        ("812350", "submitted"),
    ]
    by = {(e.job_id, e.kind): e for e in events}
    assert by["812290", "finished"].status == "COMPLETED" and by["812290", "finished"].ts == 1741705500000
    assert by["812305", "preempted"].status == "REQUEUED" and by["812305", "preempted"].ts == NOW + 60_000
    assert by["812310", "preempted"].ts == 1741704870000 and by["812310", "preempted"].node == "gpu021"
    assert by["812346", "deleted"].ts == 1741703321000 and by["812346", "deleted"].node is None
    assert by["812347", "started"].ts == 1741702244000
    # an older snapshot after a newer one (slurmdbd lags slurmctld) brings nothing back
    assert squeue_to_events(load("squeue_v0041_t0.json"), state, NOW + 120_000) == []


def test_sacct_2405_and_squeue_share_one_state() -> None:
    state: dict[str, JobSeen] = {}
    squeue_to_events(load("squeue_v0041_t0.json"), state, NOW)
    events = checked(sacct_to_events(load("sacct_v0041.json"), state, NOW + 30_000))
    finished = {e.job_id: e.status for e in events if e.kind == "finished"}
    assert finished == {"812280": "FAILED", "812281": "TIMEOUT", "812282": "OUT_OF_MEMORY", "812290": "COMPLETED"}
    assert ("812310", "preempted") in kinds(events) and ("812346", "deleted") in kinds(events)
    assert not any(e.job_id == "812300" for e in events)  # still running, already known
    oom = next(e for e in events if e.job_id == "812282")
    assert (oom.requested_gpus, oom.requested_cpus, oom.requested_memory_bytes, oom.gpu_model) == (1.0, 32.0, 256 * GIB, "a100")
    assert oom.user == "erin" and oom.priority == "13800"
    later = checked(squeue_to_events(load("squeue_v0041_t1.json"), state, NOW + 60_000))
    assert ("812290", "finished") not in kinds(later) and ("812310", "preempted") not in kinds(later)
    assert ("812346", "deleted") not in kinds(later) and ("812345", "started") in kinds(later)


def test_squeue_2302_plain_integers_and_string_states() -> None:
    events = checked(squeue_to_events(load("squeue_v0039.json"), {}, NOW))
    assert kinds(events) == [
        ("700099", "submitted"),
        ("700099", "scheduled"),
        ("700099", "started"),
        ("700099", "finished"),
        ("700101", "submitted"),
        ("700101", "scheduled"),
        ("700101", "started"),
        ("700102", "submitted"),
    ]
    assert events[3].status == "FAILED" and events[3].ts == 1741611345000 and events[3].node == "a100-[05-06]"
    assert (events[5].requested_gpus, events[5].requested_cpus, events[5].priority) == (32.0, 512.0, "4294901600")


def test_sacct_2205_string_state() -> None:
    events = checked(sacct_to_events(load("sacct_v0038.json"), {}, NOW))
    assert kinds(events) == [("700098", k) for k in ("submitted", "scheduled", "started", "finished")] + [
        ("700097", k) for k in ("submitted", "scheduled", "started", "finished")
    ]
    assert events[3].status == "CANCELLED"  # it ran before it was cancelled: finished, not deleted
    assert events[0].requested_gpus == 8.0 and events[4].requested_gpus == 0.0
    assert events[0].requested_memory_bytes == 512_000 * 2**20 and events[0].user == "gina"


def test_a_malformed_record_is_skipped_and_the_rest_kept() -> None:
    doc = load("squeue_v0041_t0.json")
    broken = copy.deepcopy(doc["jobs"][0])
    broken["job_id"] = None
    doc["jobs"] = [broken, "not a job", {"job_id": 5, "job_state": 17, "tres_req_str": "cpu=x"}, *doc["jobs"]]
    events = checked(squeue_to_events(doc, {}, NOW))
    assert ("5", "submitted") in kinds(events) and len([e for e in events if e.job_id == "812300"]) == 3
    assert squeue_to_events({}, {}, NOW) == [] and squeue_to_events({"jobs": None}, {}, NOW) == []


def test_node_inventory_from_scontrol() -> None:
    inv = nodes_to_inventory(load("scontrol_nodes_v0041.json"), NOW)
    assert [(i.node, i.gpu_count, i.gpu_model, i.pool) for i in inv] == [
        ("gpu017", 8, "h100", "gpu"),
        ("gpu021", 4, "a100", "gpu-spot"),
        ("cpu-cloud-003", 0, None, "cpu-cloud"),
    ]
    assert inv[0].cpus == 192.0 and inv[0].memory_bytes == 2_000_000 * 2**20 and inv[0].labels["features"] == "h100,ib,nvlink"
    assert NODE_INVENTORY.codec.decode(NODE_INVENTORY.codec.encode(inv)) == inv
    doc = load("scontrol_nodes_v0041.json")
    doc["nodes"] += [{"name": None, "cpus": 8}, "junk"]
    assert nodes_to_inventory(doc, NOW) == inv  # unreadable nodes are skipped, the others kept


def test_collector_says_when_slurm_is_missing() -> None:
    with pytest.raises(FileNotFoundError, match="not on PATH"):
        SlurmCollector(SlurmConfig(squeue="no-such-squeue-here"))


def script(tmp_path: Path, name: str, fixture: str | None) -> str:
    path = tmp_path / name
    body = (
        f"cat '{DATA / fixture}'" if fixture else "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1"
    )
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.mark.skipif(os.name != "posix", reason="fake Slurm commands are shell scripts")
def test_collector_polls_on_its_own_schedule(tmp_path: Path) -> None:
    cfg = SlurmConfig(
        poll_s=30,
        squeue=script(tmp_path, "squeue", "squeue_v0041_t0.json"),
        sacct=script(tmp_path, "sacct", "sacct_v0041.json"),
        scontrol=script(tmp_path, "scontrol", "scontrol_nodes_v0041.json"),
    )
    with SlurmCollector(cfg) as collector:
        first = collector.sample(NOW)
        assert collector.sample(NOW + 1000) == []  # not due yet
        assert collector.sample(NOW + 30_000) == []  # due, but nothing changed
    inventory = [r for r in first if isinstance(r, NodeInventory)]
    events = checked([r for r in first if isinstance(r, SchedulerEvent)])
    assert len(inventory) == 3 and len(events) == len({(e.job_id, e.kind) for e in events})
    assert ("812347", "scheduled") in kinds(events) and ("812282", "finished") in kinds(events)


def test_collector_survives_a_failing_command(tmp_path: Path) -> None:
    cfg = SlurmConfig(
        squeue=script(tmp_path, "squeue", None),
        sacct=script(tmp_path, "sacct", "sacct_v0038.json"),
        scontrol=script(tmp_path, "scontrol", None),
    )
    with SlurmCollector(cfg) as collector:
        events = collector.sample(NOW)
    assert collector.errors == 2 and {e.job_id for e in events} == {"700097", "700098"}
