"""``hpcinsight dead-letters redrive`` on a real broker: letters go back to their topics once each,
also when the run is killed, and a message refused again is not sent round and round."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import time
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer, TopicPartition

from hpcinsight.core.kafka import offsets_consumer, read_to_end, watermarks
from hpcinsight.schemas.catalog import DEAD_LETTERS, DEAD_LETTERS_REDRIVEN, GPU_SAMPLES_RAW, SCHEDULER_EVENTS
from hpcinsight.schemas.events import DeadLetter, GpuSample, Redrive, SchedulerEvent
from hpcinsight.sinks.redrive import REDRIVE_HEADER, redrive_lock
from tests.conftest import Pipeline, stop

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

T0 = (int(time.time()) - 3 * 3600) * 1000  # recent: older rows fall to the tables' TTL


def started(job: str, k: int) -> bytes:
    return SCHEDULER_EVENTS.codec.encode([SchedulerEvent(T0 + k * 1000, "slurm", job, "started", node=f"n{k}")])


#: the refused messages' offsets, past any the tests write: a letter names where its message was,
#: and a message sent back lands at the topic's end
REFUSED_AT = 1_000_000


def letter(pipeline: Pipeline, topic: str, offset: int, raw: bytes, stage: str = "sink", cut: bool = False) -> bytes:
    d = DeadLetter.of(
        ts=int(time.time() * 1000),
        source_topic=pipeline.topic(topic),
        source_partition=0,
        source_offset=REFUSED_AT + offset,
        stage=stage,
        reason="sink failed: KeyError: 'zone' (fixed in the next release)",
        raw=raw,
        key=b"job",
    )
    if cut:  # as DeadLetter.of keeps a large message: its first bytes, the size of the whole
        d = msgspec.structs.replace(d, raw=raw[:20], raw_size=len(raw))
    return DEAD_LETTERS.codec.encode([d])


def produce(pipeline: Pipeline, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    for value in values:
        producer.produce(pipeline.topic(topic), key=key, value=value)
    assert producer.flush(30) == 0


def read_batches(pipeline: Pipeline) -> dict[str, Redrive]:
    """Every batch's latest record on dead.letters.redriven, by batch."""
    out: dict[str, Redrive] = {}
    for m in read_to_end(pipeline.client_config(), pipeline.topic("dead.letters.redriven"), f"{pipeline.prefix}test-read"):
        for r in DEAD_LETTERS_REDRIVEN.codec.decode(m.value()):
            out[r.batch] = r
    return out


def sent_back(pipeline: Pipeline, topic: str) -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, the letter it came from) of every committed message of ``topic`` sent back."""
    out = []
    for m in read_to_end(pipeline.client_config(), pipeline.topic(topic), f"{pipeline.prefix}test-read"):
        of = dict(m.headers() or []).get(REDRIVE_HEADER)
        if of is not None:
            out.append((m.key(), m.value(), of.decode()))
    return out


def test_letters_go_back_once_each_and_a_message_refused_again_stays(pipeline: Pipeline) -> None:
    a, b, c = started("job-a", 1), started("job-b", 2), started("job-c", 3)
    refused = json.dumps({"schema": "scheduler_event", "v": 99, "records": [{"job_id": "job-v99"}]}).encode()
    produce(pipeline, "scheduler.events", [refused], key=b"job-v99")  # a producer ahead of this build
    produce(
        pipeline,
        "dead.letters",
        [
            letter(pipeline, "scheduler.events", 100, a),
            letter(pipeline, "scheduler.events", 101, b, stage="sink"),
            letter(pipeline, "scheduler.events", 101, b, stage="validate"),  # the worker's letter of the same message
            letter(pipeline, "scheduler.events", 102, c, cut=True),
            letter(pipeline, "gpu.samples.raw", 7, GPU_SAMPLES_RAW.codec.encode([GpuSample("n0", 0, "GPU-0", T0)])),
        ],
        key=b"scheduler.events",
    )
    sink = pipeline.start("sink", "sink", "--batch-age", "0.3")
    try:
        pipeline.wait_caught_up("clickhouse-sink", ["scheduler.events", "dead.letters"])
        pipeline.poll(lambda: len(read_to_end(pipeline.client_config(), pipeline.topic("dead.letters"), "t")) == 6, sink)

        listed = json.loads(pipeline.run("dead-letters", "list", "--format", "json").stdout)
        by_reason = {(r["topic"], r["stage"], r["reason"]): (r["letters"], r["cut"], r["sent_back"]) for r in listed}
        assert by_reason.pop(("scheduler.events", "sink", "sink failed")) == (3, 1, 0)  # a, b and the cut c
        assert by_reason.pop(("scheduler.events", "validate", "sink failed")) == (1, 0, 0)
        assert by_reason.pop(("gpu.samples.raw", "sink", "sink failed")) == (1, 0, 0)
        (v99,) = by_reason.items()  # the sink's own letter of the message of a version it does not know
        assert v99[0][:2] == ("scheduler.events", "sink") and "version 99" in v99[0][2], listed

        dry = pipeline.run("dead-letters", "redrive", "--topic", "scheduler.events", "--dry-run")
        assert "would send back 3 letter(s)" in dry.stdout, dry.stdout  # a, b once, the v99 message
        assert sent_back(pipeline, "scheduler.events") == []

        first = pipeline.run("dead-letters", "redrive", "--topic", "scheduler.events", "--by", "ops")
        assert "sent back 3 letter(s)" in first.stdout, first.stdout
        assert "1 sent back already" in first.stdout and "1 kept only their first bytes" in first.stdout, first.stdout
        got = sent_back(pipeline, "scheduler.events")
        assert sorted(v for _, v, _ in got) == sorted([a, b, refused])
        assert {k for k, _, _ in got} == {b"job", b"job-v99"}
        batches = read_batches(pipeline)
        assert [(b.state, b.by) for b in batches.values()] == [("sent", "ops")]
        assert sum(len(b.letters) for b in batches.values()) == 3

        # the sink stores a and b; it refuses the v99 message again, which a second run leaves alone
        pipeline.wait_caught_up("clickhouse-sink", ["scheduler.events"])
        pipeline.poll(lambda: len(read_to_end(pipeline.client_config(), pipeline.topic("dead.letters"), "t")) == 7, sink)
        second = pipeline.run("dead-letters", "redrive", "--topic", "scheduler.events")
        assert "sent back 0 letter(s)" in second.stdout, second.stdout
        assert "1 refused again after an earlier run sent them back" in second.stdout, second.stdout
        assert len(sent_back(pipeline, "scheduler.events")) == 3
    finally:
        assert stop(sink) == 0, pipeline.log("sink")
    jobs = pipeline.sql("SELECT job_id FROM scheduler_events ORDER BY job_id")
    assert jobs == [{"job_id": "job-a"}, {"job_id": "job-b"}]


def letters_of_jobs(pipeline: Pipeline, n: int) -> list[bytes]:
    """``n`` letters of scheduler events (a job started each) on the dead-letter topic; their raw bytes."""
    raws = [started(f"job-{k}", k) for k in range(n)]
    letters = [letter(pipeline, "scheduler.events", k, raw) for k, raw in enumerate(raws)]
    produce(pipeline, "dead.letters", letters, key=b"scheduler.events")
    return raws


def test_a_message_sent_back_and_salvaged_is_not_sent_round_again(pipeline: Pipeline) -> None:
    """The sink stores a message's good records and letters its bad ones re-encoded: the letter of
    the message sent back holds other bytes than the letter sent, and is still its own refusal."""
    good = json.loads(started("job-good", 1))["records"][0]
    bad = {**good, "job_id": "job-bad", "kind": "exploded"}  # no kind of the schema
    mixed = json.dumps({"schema": "scheduler_event", "v": 1, "records": [good, bad]}).encode()
    produce(pipeline, "dead.letters", [letter(pipeline, "scheduler.events", 5, mixed)], key=b"scheduler.events")
    sink = pipeline.start("sink", "sink", "--batch-age", "0.3")
    try:
        assert "sent back 1 letter(s)" in pipeline.run("dead-letters", "redrive").stdout
        pipeline.wait_caught_up("clickhouse-sink", ["scheduler.events"])
        dlq = pipeline.client_config(), pipeline.topic("dead.letters"), "t"
        pipeline.poll(lambda: len(read_to_end(*dlq)) == 2, sink)
        again = DEAD_LETTERS.codec.decode(read_to_end(*dlq)[1].value())[0]
        assert again.source_topic == pipeline.topic("scheduler.events") and b"job-bad" in again.raw
        assert b"job-good" not in again.raw  # other bytes than the letter sent back

        second = pipeline.run("dead-letters", "redrive")
        assert "sent back 0 letter(s)" in second.stdout, second.stdout
        assert "1 refused again after an earlier run sent them back" in second.stdout, second.stdout
    finally:
        assert stop(sink) == 0, pipeline.log("sink")
    assert len(sent_back(pipeline, "scheduler.events")) == 1
    assert pipeline.sql("SELECT job_id FROM scheduler_events") == [{"job_id": "job-good"}]


def test_a_run_killed_between_batches_sends_each_letter_once_when_run_again(pipeline: Pipeline) -> None:
    n = 2_000
    raws = letters_of_jobs(pipeline, n)
    run = pipeline.start("redrive", "dead-letters", "redrive", "--batch", "10")
    pipeline.poll(lambda: "sent back 100\n" in pipeline.log("redrive"), run)
    run.send_signal(signal.SIGKILL)  # somewhere in a later batch (recorded as sending), or between two
    run.wait(30)

    again = pipeline.run("dead-letters", "redrive", "--batch", "500")
    rest = int(re.search(r"^sent back (\d+) letter\(s\)$", again.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert 0 < rest <= n - 100, again.stdout  # the killed run had sent some, not all
    got = sent_back(pipeline, "scheduler.events")
    assert sorted(v for _, v, _ in got) == sorted(raws)  # each once: what the killed run's last batch sent was found
    assert len({of for _, _, of in got}) == n


def test_a_second_run_is_refused_while_one_is_sending_and_each_letter_goes_once(pipeline: Pipeline) -> None:
    n = 2_000
    raws = letters_of_jobs(pipeline, n)
    first = pipeline.start("redrive", "dead-letters", "redrive", "--batch", "1", "--by", "first")
    try:
        pipeline.poll(lambda: "sent back 100\n" in pipeline.log("redrive"), first)
        second = pipeline.run("dead-letters", "redrive", "--by", "second", check=False)
        assert first.poll() is None, "the first run ended before the second asked: the test proves nothing"
        assert first.wait(300) == 0, pipeline.log("redrive")
    finally:
        stop(first)
    assert second.returncode == 1, (second.stdout, second.stderr)
    assert "another redrive run is under way, held by hpcinsight-redrive:first@" in second.stderr, second.stderr
    assert "sent back" not in second.stdout, second.stdout
    got = sent_back(pipeline, "scheduler.events")
    assert sorted(v for _, v, _ in got) == sorted(raws)  # each once, all by the first run
    assert {b.by for b in read_batches(pipeline).values()} == {"first"}

    produce(pipeline, "dead.letters", [letter(pipeline, "scheduler.events", n, started("job-late", n))], key=b"scheduler.events")
    with redrive_lock(pipeline.client_config(), pipeline.prefix, "ops"):  # held here, as by a run
        dry = pipeline.run("dead-letters", "redrive", "--dry-run")  # reads only: needs no lock
        assert "would send back 1 letter(s)" in dry.stdout, dry.stdout
        refused = pipeline.run("dead-letters", "redrive", check=False)
        assert refused.returncode == 1 and "held by hpcinsight-redrive:ops@" in refused.stderr, refused.stderr
        listed = pipeline.run("dead-letters", "list").stdout
        assert "a redrive run is under way: hpcinsight-redrive:ops@" in listed, listed
    assert "sent back 1 letter(s)" in pipeline.run("dead-letters", "redrive").stdout  # let go: the next run sends
    assert "under way" not in pipeline.run("dead-letters", "list").stdout


def test_a_batch_left_half_sent_is_found_by_its_header_and_not_sent_again(pipeline: Pipeline) -> None:
    """What a run killed after sending some of a batch, before recording it as sent, leaves: the
    batch recorded as sending, with where its topic ended, and some of its messages delivered."""
    raws = [started(f"job-{k}", k) for k in range(4)]
    produce(pipeline, "scheduler.events", [started("before", 99)], key=b"job")  # the topic does not start empty
    produce(
        pipeline,
        "dead.letters",
        [letter(pipeline, "scheduler.events", k, raw) for k, raw in enumerate(raws)],
        key=b"scheduler.events",
    )
    topic, dlq = pipeline.topic("scheduler.events"), pipeline.topic("dead.letters")
    sending = Redrive(
        batch="killed",
        ts=int(time.time() * 1000),
        by="ops",
        state="sending",
        letters=[f"0:{k}" for k in range(4)],
        topics=[topic] * 4,
        sha256=[hashlib.sha256(raw).hexdigest() for raw in raws],
        starts=[f"{topic}:{p}:{end}" for p, end in enumerate(ends(pipeline, topic))],
    )
    produce(pipeline, DEAD_LETTERS_REDRIVEN.name, [DEAD_LETTERS_REDRIVEN.codec.encode([sending])], key=b"killed")
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "enable.idempotence": True})
    for k in (0, 2):  # delivered before the kill
        producer.produce(topic, key=b"job", value=raws[k], headers=[(REDRIVE_HEADER, f"{dlq}:0:{k}".encode())])
    assert producer.flush(30) == 0

    dry = pipeline.run("dead-letters", "redrive", "--dry-run")
    assert "would send back 2 letter(s)" in dry.stdout, dry.stdout
    done = pipeline.run("dead-letters", "redrive")
    assert "2 letter(s) sent by a run that was stopped before recording them" in done.stdout, done.stdout
    assert "sent back 2 letter(s)" in done.stdout, done.stdout
    got = sent_back(pipeline, "scheduler.events")
    assert sorted(v for _, v, _ in got) == sorted(raws)
    batches = read_batches(pipeline)
    assert batches["killed"].state == "sent" and batches["killed"].letters == ["0:0", "0:2"]
    assert batches["killed"].sent == [f"{topic}:{m.partition()}:{m.offset()}" for m in _with_header(pipeline, topic, (0, 2))]
    assert "sent back 0 letter(s)" in pipeline.run("dead-letters", "redrive").stdout


def ends(pipeline: Pipeline, topic: str) -> list[int]:
    with offsets_consumer(pipeline.client_config(), f"{pipeline.prefix}test-read") as consumer:
        return [watermarks(consumer, TopicPartition(topic, p), 30)[1] for p in range(SCHEDULER_EVENTS.partitions)]


def _with_header(pipeline: Pipeline, topic: str, letters: tuple[int, ...]) -> list[Any]:
    dlq = pipeline.topic("dead.letters")
    by_header = {
        dict(m.headers() or []).get(REDRIVE_HEADER): m
        for m in read_to_end(pipeline.client_config(), topic, f"{pipeline.prefix}test-read")
    }
    return [by_header[f"{dlq}:0:{k}".encode()] for k in letters]


def test_each_letter_of_a_message_of_several_goes_back(pipeline: Pipeline) -> None:
    """Every component writes a letter a message; a message of two (a foreign writer's) is two letters."""
    raws = [started("job-x", 1), started("job-y", 2)]
    letters = [DEAD_LETTERS.codec.decode(letter(pipeline, "scheduler.events", k, raw))[0] for k, raw in enumerate(raws)]
    produce(pipeline, "dead.letters", [DEAD_LETTERS.codec.encode(letters)], key=b"scheduler.events")
    assert "sent back 2 letter(s)" in pipeline.run("dead-letters", "redrive").stdout
    got = sent_back(pipeline, "scheduler.events")
    assert sorted(v for _, v, _ in got) == sorted(raws)
    assert sorted(of.rsplit(":", 1)[1] for _, _, of in got) == ["0", "0/1"]
    assert "sent back 0 letter(s)" in pipeline.run("dead-letters", "redrive").stdout


def test_a_readers_letter_of_a_message_an_earlier_run_sent_back_stays(pipeline: Pipeline) -> None:
    """The sink's and the worker's letters of one message: a run chosen by stage sends the sink's;
    the next run, choosing both, finds that the worker's is of a message sent back already."""
    raw = started("job-x", 1)
    produce(
        pipeline,
        "dead.letters",
        [  # the worker's first: a letter of the same bytes written after one sent back counts as come back
            letter(pipeline, "scheduler.events", 5, raw, stage="validate"),
            letter(pipeline, "scheduler.events", 5, raw, stage="sink"),
        ],
        key=b"scheduler.events",
    )
    first = pipeline.run("dead-letters", "redrive", "--stage", "sink")
    assert "sent back 1 letter(s)" in first.stdout, first.stdout
    second = pipeline.run("dead-letters", "redrive")
    assert "sent back 0 letter(s)" in second.stdout and "2 sent back already" in second.stdout, second.stdout
    assert [v for _, v, _ in sent_back(pipeline, "scheduler.events")] == [raw]
    listed = json.loads(pipeline.run("dead-letters", "list", "--format", "json").stdout)
    assert sorted((r["stage"], r["letters"], r["sent_back"]) for r in listed) == [("sink", 1, 1), ("validate", 1, 0)]
