"""What ``hpcinsight dead-letters redrive`` holds in memory while it weighs a flood of letters.

A producer fleet upgraded ahead of the worker has every raw message refused: an hour of a
1,280-node cluster is some 4.6 million letters, and the operator then sends them all back in one
run, on whatever host has the CLI. What the run holds a letter decides whether that works.

``redrive``: 20,000 letters of scheduler events on a real broker's ``dead.letters``. Measured with
:mod:`tracemalloc` (Python's own allocations; librdkafka's buffers are outside it):

* ``bytes_per_letter``: the peak of a dry run over all of them (every one chosen, none sent yet),
  less the baseline's, per letter;
* ``after_bytes_per_letter``: the same once a real run has sent them all back (the next run reads
  the batch records and recognises each letter as sent);
* the baseline: the peak of reading and decoding the same letters one at a time, keeping nothing
  (what any reader of the topic pays), ``baseline_bytes_per_letter`` its peak per letter.

The ratio is the baseline's peak over the dry run's. ``sent_letters_per_s``: the real run's rate.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

LETTERS = 20_000


def bench_redrive(repeats: int) -> dict[str, float]:
    from bench.run import traced_peak
    from bench.stream import _produce
    from hpcinsight.deploy.local.kafka import LocalKafka
    from hpcinsight.schemas.catalog import DEAD_LETTERS, SCHEDULER_EVENTS, ensure_topics
    from hpcinsight.schemas.events import DeadLetter, SchedulerEvent
    from hpcinsight.sinks.redrive import Selection, read_letters, redrive

    t0 = int(time.time() * 1000) - 3_600_000
    with LocalKafka() as kafka:
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        conf = {"bootstrap.servers": kafka.bootstrap}
        ensure_topics(conf, prefix)
        source = SCHEDULER_EVENTS.full_name(prefix)
        letters = []
        for k in range(LETTERS):
            raw = SCHEDULER_EVENTS.codec.encode([SchedulerEvent(t0 + k, "slurm", f"job-{k}", "started", node=f"n{k % 1280}")])
            d = DeadLetter.of(
                ts=t0 + k,
                source_topic=source,
                source_partition=k % 4,
                source_offset=k,
                stage="validate",
                reason="schema scheduler_event version 3 is newer than this build's 2",
                raw=raw,
                key=f"job-{k}".encode(),
            )
            letters.append((source.encode(), DEAD_LETTERS.codec.encode([d])))
        _produce(kafka.bootstrap, DEAD_LETTERS.full_name(prefix), letters)
        del letters

        def bare() -> int:
            return sum(1 for _ in read_letters(conf, prefix))

        def dry() -> Any:
            return redrive(conf, prefix, Selection(), "bench", dry_run=True)

        base, seen = min((traced_peak(bare) for _ in range(max(1, repeats // 2))), key=lambda r: r[0])
        assert seen == LETTERS
        first, report = min((traced_peak(dry) for _ in range(max(1, repeats // 2))), key=lambda r: r[0])
        assert report.to_send == LETTERS, report
        start = time.perf_counter()
        sent = redrive(conf, prefix, Selection(), "bench", batch=500)
        elapsed = time.perf_counter() - start
        assert sent.sent == LETTERS, sent
        after, again = traced_peak(dry)
        assert again.to_send == 0 and again.already == LETTERS, again
    return {
        "bytes_per_letter": (first - base) / LETTERS,
        "baseline_bytes_per_letter": base / LETTERS,
        "ratio": base / first,
        "after_bytes_per_letter": (after - base) / LETTERS,
        "sent_letters_per_s": LETTERS / elapsed,
        "letters": float(LETTERS),
    }
