"""A per-process admission gate for model requests (no ML here).

An upload's decode and inference cost seconds of CPU and hundreds of MB; gunicorn's threads
cost nothing until they all sit inside such work, and then ``/healthz`` and page loads wait
behind it. :class:`Gate` bounds both: at most ``slots`` requests run at once, at most ``queue``
more wait (first come, first served) for up to ``wait_s`` seconds, and anything beyond that is
refused at once with :class:`Busy`, which carries a ``Retry-After`` estimate (the recent mean
hold time times the work ahead). Only ``slots + queue`` of a worker's threads can ever be held
by model requests; the rest stay free.

``INFERENCE`` is the worker's gate, sized from ``config.INFER_SLOTS`` / ``INFER_QUEUE`` /
``INFER_WAIT_S``; the API and the Segment page share it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app import config


class Busy(Exception):
    """The gate is full; ``retry_after`` is whole seconds to wait before trying again."""

    def __init__(self, retry_after: int, running: int, waiting: int) -> None:
        self.retry_after = int(retry_after)
        self.running = running
        self.waiting = waiting
        super().__init__(f"The server is busy with {running + waiting} other image"
                         f"{'s' if running + waiting != 1 else ''}; try again in "
                         f"{self.retry_after} s.")


class Gate:
    """``slots`` at once, ``queue`` waiting up to ``wait_s`` seconds, the rest refused."""

    def __init__(self, slots: int, queue: int = 0, wait_s: float = 0.0,
                 typical_s: float = 5.0) -> None:
        if slots < 1 or queue < 0 or wait_s < 0:
            raise ValueError(f"The gate needs slots >= 1, queue >= 0 and wait_s >= 0. Got "
                             f"slots={slots!r}, queue={queue!r}, wait_s={wait_s!r} instead.")
        self.slots, self.queue, self.wait_s = int(slots), int(queue), float(wait_s)
        self._cond = threading.Condition()
        self._running = 0
        self._waiting: deque[object] = deque()
        self._mean_s = float(typical_s)  # moving mean of hold times, for Retry-After
        self.peak = 0  # most requests ever inside at once (tests, /healthz)
        self.admitted = 0
        self.refused = 0

    def retry_after(self) -> int:
        """Seconds until a new request would likely get in (at least 1)."""
        with self._cond:
            return self._retry_after()

    def _retry_after(self) -> int:
        ahead = self._running + len(self._waiting)
        return max(1, min(300, math.ceil(self._mean_s * max(1, ahead) / self.slots)))

    def _refuse(self) -> Busy:
        self.refused += 1
        return Busy(self._retry_after(), self._running, len(self._waiting))

    @contextmanager
    def slot(self, wait_s: float | None = None) -> Iterator[None]:
        """Hold a slot for the ``with`` block, waiting at most ``wait_s`` (default the gate's);
        raises :class:`Busy` when the queue is full or the wait runs out."""
        wait = self.wait_s if wait_s is None else max(0.0, float(wait_s))
        with self._cond:
            if self._running >= self.slots or self._waiting:
                if len(self._waiting) >= self.queue or wait <= 0:
                    raise self._refuse()
                ticket = object()
                self._waiting.append(ticket)
                deadline = time.monotonic() + wait
                try:
                    while self._running >= self.slots or self._waiting[0] is not ticket:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise self._refuse()
                        self._cond.wait(left)
                finally:
                    self._waiting.remove(ticket)
                    self._cond.notify_all()  # the next in line may go now
            self._running += 1
            self.admitted += 1
            self.peak = max(self.peak, self._running)
        started = time.monotonic()
        try:
            yield
        finally:
            held = time.monotonic() - started
            with self._cond:
                self._running -= 1
                self._mean_s = 0.7 * self._mean_s + 0.3 * held
                self._cond.notify_all()

    def snapshot(self) -> dict[str, Any]:
        """Sizes and counters (for /healthz or a log line)."""
        with self._cond:
            return {"slots": self.slots, "queue": self.queue, "running": self._running,
                    "waiting": len(self._waiting), "peak": self.peak,
                    "admitted": self.admitted, "refused": self.refused,
                    "retry_after_s": self._retry_after()}


INFERENCE = Gate(config.INFER_SLOTS, config.INFER_QUEUE, config.INFER_WAIT_S)

__all__ = ["INFERENCE", "Busy", "Gate"]
