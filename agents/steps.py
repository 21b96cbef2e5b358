"""Per-rank training step times, shipped to Kafka without slowing the training loop.

A loop is timed with ``with rec.step():`` (and optionally ``with rec.phase("forward"):`` inside
it). The loop's thread only reads clocks and appends a tuple to a bounded ``collections.deque``
(atomic under the GIL, so no lock); a daemon thread builds the :class:`StepMetric` records,
batches them and hands them to the sink. Telemetry must never hurt training: a full queue drops
its oldest entries, a failing sink is logged, retried once and then dropped, all counted in
``StepRecorder.dropped``; nothing blocks or raises into the loop. No torch import: identity
comes from the variables torchrun and Slurm set. One recorder per training thread; steps do
not nest.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from operator import index
from time import perf_counter_ns, time_ns
from typing import Any

from hpcinsight.core.settings import Settings, load
from hpcinsight.schemas.catalog import STEP_METRICS_RAW
from hpcinsight.schemas.codec import DecodeError
from hpcinsight.schemas.events import StepMetric

log = logging.getLogger(__name__)

Sink = Callable[[list[StepMetric]], None]
BATCH = 1000  # records per sink call; a flush is also due as soon as this many are pending
_LAUNCHERS = (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))
_JOB_VARS = ("HPCINSIGHT_JOB_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "JOB_ID")


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    try:
        return int(value) if value else None
    except ValueError:  # a malformed variable must not stop training: say so and ignore it
        log.warning("ignoring %s=%r: not an integer", name, value)
        return None


def from_env(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """This process's identity as StepRecorder arguments: job_id, rank, world_size, local_rank, node.

    torchrun's variables win over Slurm's (under ``srun torchrun`` a Slurm task is a node, not
    a rank), and one launcher's set is used whole so values never mix. Without either, the
    process is rank 0 of 1; without a job id it is ``local-<host>-<pid>``, unique so unrelated
    runs never collapse into one another in the table keyed by (job_id, rank, step).
    """
    node = socket.gethostname() or "unknown"
    rank = world = local = None
    for names in _LAUNCHERS:
        if env.get(names[0], "").strip():
            rank, world, local = (_int(env, name) for name in names)
            break
    if rank is None or world is None:
        log.info("no RANK/WORLD_SIZE nor SLURM_PROCID/SLURM_NTASKS: recording as rank %d of %d", rank or 0, world or 1)
    job_id = next((v for var in _JOB_VARS if (v := env.get(var, "").strip()) and v != "none"), None)
    if job_id is None:
        job_id = f"local-{node}-{os.getpid()}"
        log.info("no HPCINSIGHT_JOB_ID, SLURM_JOB_ID, TORCHELASTIC_RUN_ID nor JOB_ID: job id %s", job_id)
    return {"job_id": job_id, "rank": rank or 0, "world_size": world or 1, "local_rank": local, "node": node}


class _Step:
    """The context manager of ``StepRecorder.step``, reused for every step so timing one
    allocates nothing but the queued tuple."""

    __slots__ = ("_rec", "_step", "_start")

    def __init__(self, rec: StepRecorder) -> None:
        self._rec, self._step, self._start = rec, 0, 0

    def __enter__(self) -> _Step:
        if self._rec._phases:  # phases belong to the step that encloses them
            self._rec._phases = {}
        self._start = perf_counter_ns()
        return self

    def __exit__(self, _type: object, _value: object, _tb: object) -> None:
        end = perf_counter_ns()
        rec = self._rec
        phases = rec._phases
        if phases:  # the dict goes with the entry; an empty one stays for the next step
            rec._phases = {}
        rec._next_step = self._step + 1
        rec._queue.append((next(rec._seq), self._step, time_ns(), (end - self._start) / 1e9, phases or None))


class _Phase:
    """The context manager of ``StepRecorder.phase``; phases may nest, so one per use."""

    __slots__ = ("_rec", "_name", "_start")

    def __init__(self, rec: StepRecorder, name: str) -> None:
        self._rec, self._name, self._start = rec, name, 0

    def __enter__(self) -> _Phase:
        self._start = perf_counter_ns()
        return self

    def __exit__(self, _type: object, _value: object, _tb: object) -> None:
        phases = self._rec._phases
        phases[self._name] = phases.get(self._name, 0.0) + (perf_counter_ns() - self._start) / 1e9


class StepRecorder:
    """Times training steps of one rank and ships them as StepMetric events in the background.

    Identity not given comes from :func:`from_env`. An identity the pipeline would refuse (empty
    job id, rank outside the world) raises ValueError here, at start, rather than vanish later.
    """

    def __init__(
        self,
        job_id: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        local_rank: int | None = None,
        node: str | None = None,
        sink: Sink | None = None,
        flush_interval_s: float = 1.0,
        max_queue: int = 100_000,
    ) -> None:
        given = {"job_id": job_id, "rank": rank, "world_size": world_size, "local_rank": local_rank, "node": node}
        ident = {**from_env(), **{k: v for k, v in given.items() if v is not None}}
        self.job_id, self.rank, self.world_size = ident["job_id"], ident["rank"], ident["world_size"]
        self.local_rank, self.node = ident["local_rank"], ident["node"]
        probe = StepMetric(
            self.job_id, self.rank, self.world_size, 0, time_ns() // 1_000_000, 0.0, node=self.node, local_rank=self.local_rank
        )
        try:
            STEP_METRICS_RAW.codec.decode(STEP_METRICS_RAW.codec.encode([probe]))
            if not 0 <= self.rank < self.world_size:
                raise DecodeError(f"rank {self.rank} is outside a world of {self.world_size}")
        except DecodeError as err:
            raise ValueError(f"StepRecorder identity: {err}") from None
        if sink is None:
            try:
                sink = kafka_sink()
            except Exception as err:  # noqa: BLE001 - no broker configured: train anyway, count what is lost
                log.warning("step metrics will be dropped: no Kafka sink (%s)", err)
        self._sink, self._interval = sink, flush_interval_s
        self._batch = max(1, min(BATCH, max_queue // 2))
        self._queue: deque[tuple[int, Any, int, Any, dict[str, float] | None]] = deque(maxlen=max_queue)
        self._seq = itertools.count()  # numbers every entry; gaps the thread sees fell off the queue
        self._taken = self._seen = self._failed = self._sink_errors = self._next_step = 0
        self._retry: list[StepMetric] | None = None
        self._phases: dict[str, float] = {}
        self._timer = _Step(self)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpcinsight-steps", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @property
    def dropped(self) -> int:
        """Records lost: pushed off the full queue, refused twice by the sink, invalid, or
        reported undelivered by Kafka."""
        return self._seen - self._taken + self._failed + getattr(self._sink, "undelivered", 0)

    def step(self, step: int | None = None) -> _Step:
        """Time one step: ``with rec.step(): ...``. Unnumbered steps continue from the last one."""
        self._timer._step = self._next_step if step is None else step
        return self._timer

    def phase(self, name: str) -> _Phase:
        """Time part of a step: ``with rec.phase("forward"): ...``; repeats of a name add up."""
        return _Phase(self, name)

    def record(self, step: int, duration_s: float, phases: dict[str, float] | None = None) -> None:
        """Record a step timed elsewhere; without ``phases`` it takes those timed since the last step."""
        if phases is None:
            phases, self._phases = self._phases or None, {}
        else:
            phases = dict(phases)  # the caller may reuse its dict for the next step
        self._next_step = step + 1
        self._queue.append((next(self._seq), step, time_ns(), duration_s, phases))

    def close(self, timeout: float = 10.0) -> None:
        """Ship everything recorded, stop the thread and close the sink; safe to call twice."""
        atexit.unregister(self.close)
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("step metrics thread still busy after %.1f s; %d records may be lost", timeout, len(self._queue))
            return
        try:
            if callable(close := getattr(self._sink, "close", None)):
                close(timeout)
        except Exception as err:  # noqa: BLE001 - training must never fail on its telemetry
            log.warning("closing the step metrics sink failed: %s", err)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(min(self._interval, 0.05)):
            if len(self._queue) >= self._batch or time.monotonic() - last >= self._interval:
                self._flush()
                last = time.monotonic()
        self._flush()
        if self._retry is not None:  # closing: the one retry is now or never
            self._ship(self._retry, retried=True)

    def _flush(self) -> None:
        retry, self._retry = self._retry, None
        if retry is not None:
            self._ship(retry, retried=True)
        queue = self._queue
        while queue:
            batch: list[StepMetric] = []
            while queue and len(batch) < self._batch:
                seq, step, ts_ns, duration, phases = queue.popleft()
                self._taken, self._seen = self._taken + 1, max(self._seen, seq + 1)
                try:  # record() takes anything: coerce here, off the hot path, or drop
                    phases = {str(k): float(v) for k, v in phases.items()} if phases else {}
                    duration = float(duration)
                    if index(step) < 0 or not math.isfinite(duration) or not all(map(math.isfinite, phases.values())):
                        raise ValueError("negative step or non-finite time")
                    batch.append(
                        StepMetric(
                            self.job_id,
                            self.rank,
                            self.world_size,
                            step,
                            ts_ns // 1_000_000,
                            duration,
                            node=self.node,
                            local_rank=self.local_rank,
                            phases=phases,
                        )
                    )
                except (TypeError, ValueError) as err:
                    self._failed += 1
                    log.warning("dropping step %r of rank %d: %s", step, self.rank, err)
            if batch:
                self._ship(batch, retried=False)

    def _ship(self, batch: list[StepMetric], retried: bool) -> None:
        """Give one batch to the sink; a failed batch is kept for one retry (at most one is kept)."""
        if self._sink is None:
            self._failed += len(batch)
            return
        try:
            self._sink(batch)
        except Exception as err:  # telemetry failing must never reach the training loop
            if retried or self._retry is not None:
                self._failed += len(batch)
                log.warning("dropped %d step metrics: the sink failed again: %s", len(batch), err)
            else:
                self._retry = batch
                log.warning("step metrics sink failed, will retry once: %s", err, exc_info=not self._sink_errors)
            self._sink_errors += 1


class _KafkaSink:
    """Produces each batch as one message keyed by job id; ``close`` waits for the acks."""

    def __init__(self, client_config: dict[str, Any], topic: str) -> None:
        from hpcinsight.core.kafka import new_producer  # only when shipping to Kafka

        extra = {
            "compression.type": "zstd",
            "linger.ms": 50,
            "partitioner": "murmur2_random",
        }  # as Faust partitions: see hpcinsight.agents.delivery
        self._producer, self._topic = new_producer(client_config, extra=extra), topic
        self.in_flight = 0  # records produced, neither acknowledged nor refused yet
        self.undelivered = 0  # records the broker never acknowledged

    def __call__(self, batch: list[StepMetric]) -> None:
        def on_delivery(err: Any, _msg: Any, n: int = len(batch)) -> None:
            self.in_flight -= n
            if err is not None:
                self.undelivered += n
                log.warning("%d step metrics not delivered: %s", n, err)

        value = STEP_METRICS_RAW.codec.encode(batch)
        self._producer.produce(self._topic, key=batch[0].job_id.encode(), value=value, on_delivery=on_delivery)
        self.in_flight += len(batch)
        self._producer.poll(0)

    def close(self, timeout: float = 10.0) -> None:
        if self._producer.flush(timeout):
            log.warning("%d step metrics not acknowledged before close; counted as dropped", self.in_flight)
            self.undelivered, self.in_flight = self.undelivered + self.in_flight, 0


def kafka_sink(settings: Settings | None = None) -> Sink:
    """A sink producing to the step.metrics.raw topic, configured by :func:`hpcinsight.core.settings.load`."""
    settings = settings or load()
    return _KafkaSink(settings.kafka.client_config(), settings.topic(STEP_METRICS_RAW.name))
