"""The floor under any Faust worker here: a do-nothing agent reading a topic, messages per second.

Run by :mod:`bench.stream` as a subprocess (``python -m bench.faust_floor worker``) with the
broker, topic and message count in the environment; prints ``FLOOR <messages/s>`` and exits once
it has seen them all. It shows how much of a worker's cost is Faust's own per-message machinery.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import faust

BOOTSTRAP, TOPIC, EXPECTED = os.environ["FLOOR_BOOTSTRAP"], os.environ["FLOOR_TOPIC"], int(os.environ["FLOOR_MESSAGES"])

app = faust.App(
    f"floor-{uuid.uuid4().hex[:8]}",
    broker=f"kafka://{BOOTSTRAP}",
    value_serializer="raw",
    key_serializer="raw",
    store="memory://",
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    datadir=os.environ.get("FLOOR_DATADIR", "/tmp/hpcinsight-faust-floor"),
)
topic = app.topic(TOPIC, key_serializer="raw", value_serializer="raw")
seen = {"n": 0, "start": 0.0}


@app.agent(topic)
async def drain(stream: faust.Stream) -> None:
    async for _event in stream.events():
        if seen["n"] == 0:
            seen["start"] = time.perf_counter()
        seen["n"] += 1
        if seen["n"] == EXPECTED:
            print(f"FLOOR {EXPECTED / (time.perf_counter() - seen['start']):.1f}", file=sys.stderr, flush=True)
            os._exit(0)


if __name__ == "__main__":
    app.main()
