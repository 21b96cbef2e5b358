"""The per-GPU stage first: while it has a backlog, the job stage waits (for a bounded time).

One worker runs both stages on one event loop. A job window is released when the window of
every GPU of the job is in, which is as the per-GPU stage's next close burst sends the next
panes: merging 10,240 GPUs' windows then held the loop 0.7 s in the middle of that burst, and
every raw message behind it, with the anomalies it completes, waited it out. The job stage waits
for its GPUs anyway (``--job-wait``); a second more changes none of its answers, as long as it is
well within that wait (docs/streams.md, "Stage priority").
"""

from __future__ import annotations

import time
from collections.abc import Callable


class GpuStageFirst:
    """Tells the job stage how long to hold off before its next message.

    The per-GPU stage reports each batch it has handled (:meth:`took`): a full one (``batch_max``
    messages) means more raw messages were waiting. While they are, :meth:`hold_s` asks the job stage to wait, a ``step_s``
    at a time, for at most ``max_wait_s`` from when it first held off; after that it goes on
    whatever the backlog (a worker catching up on hours of raw messages must not starve its job
    stage) until the per-GPU stage has drained once. A per-GPU stage that took nothing for
    ``idle_s`` after a full batch has drained too (its last batch happened to be full)."""

    def __init__(
        self,
        max_wait_s: float,
        batch_max: int,
        idle_s: float,
        step_s: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_wait_s < 0 or batch_max < 1 or idle_s <= 0 or step_s <= 0:
            raise ValueError("the job stage's longest wait must be >= 0, the batch at least 1, the idle time and the step > 0")
        self.max_wait_s, self.batch_max, self.idle_s, self.step_s = max_wait_s, batch_max, idle_s, step_s
        self._clock = clock
        self._backlog = False
        self._took_at = 0.0
        self._held_since: float | None = None  # when the job stage first held off in this backlog
        self.held_s = 0.0  # the holds asked for in all (a metric)

    def took(self, size: int) -> None:
        """The per-GPU stage has handled a batch of ``size`` messages."""
        self._backlog, self._took_at = size >= self.batch_max, self._clock()
        if not self._backlog:
            self._held_since = None

    def hold_s(self) -> float:
        """How long the job stage should wait before asking again; 0: go on now."""
        if not self._backlog or not self.max_wait_s:
            return 0.0
        now = self._clock()
        if now - self._took_at > self.idle_s:
            self._backlog, self._held_since = False, None
            return 0.0
        if self._held_since is None:
            self._held_since = now
        left = self._held_since + self.max_wait_s - now
        if left <= 0:
            return 0.0
        step = min(self.step_s, left)
        self.held_s += step
        return step
