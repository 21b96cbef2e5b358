"""Logging helpers every component shares: librdkafka's chatter held back to one line a minute."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable


class RepeatFilter(logging.Filter):
    """Lets a message through once per ``every_s`` (digits aside: "after 0ms" and "after 3ms" are
    the same message), saying how many like it were held back since."""

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s, self._clock = every_s, clock
        self._seen: dict[str, tuple[float, int]] = {}  # message shape -> (last let through, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        shape = re.sub(r"\d+", "#", record.getMessage())
        now = self._clock()
        last = self._seen.get(shape)
        if last is not None and now - last[0] < self.every_s:
            self._seen[shape] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg, record.args = f"{record.getMessage()} ({last[1]} like it in the last {now - last[0]:.0f} s)", ()
        self._seen[shape] = (now, 0)
        if len(self._seen) > 1000:  # bounded: forget the oldest shapes
            for key in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                del self._seen[key]
        return True


def kafka_logger() -> logging.Logger:
    """The logger librdkafka's messages go to (see :meth:`KafkaSettings.client_config`)."""
    logger = logging.getLogger("hpcinsight.kafka")
    if not any(isinstance(f, RepeatFilter) for f in logger.filters):
        logger.addFilter(RepeatFilter())
    return logger
