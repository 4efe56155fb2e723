"""The thread-based background-callback manager: jobs, progress and cancel."""

from __future__ import annotations

import threading
import time
from typing import Any

from app.web.background import ThreadManager

# ----------------------------------------------------------------------------- background manager


def _wait(cond: Any, timeout: float = 10) -> None:
    end = time.time() + timeout
    while time.time() < end and not cond():
        time.sleep(0.02)


def test_thread_manager_runs_jobs_with_progress() -> None:
    m = ThreadManager(max_workers=1)
    seen = threading.Event()

    def fn(set_progress: Any, x: int) -> int:
        set_progress((1, 2))
        seen.set()
        return x * 2

    job_fn = m.make_job_fn(fn, progress=True)
    job = m.call_job_fn("k1", job_fn, [21], {})
    _wait(lambda: not m.job_running(job))
    assert seen.is_set() and m.get_progress("k1") == [1, 2]
    assert m.get_result("k1", job) == 42 and m.get_result("k1", job) is m.UNDEFINED
    m.shutdown()


def test_thread_manager_cancel_stops_at_the_next_progress() -> None:
    m = ThreadManager(max_workers=1)
    steps: list[int] = []

    def slow(set_progress: Any) -> str:
        for i in range(200):
            set_progress(i)
            steps.append(i)
            time.sleep(0.01)
        return "finished"

    job = m.call_job_fn("k2", m.make_job_fn(slow, progress=True), [], {})
    _wait(lambda: len(steps) > 3)
    m.terminate_job(job)
    time.sleep(0.1)
    assert not m.job_running(job) and len(steps) < 200
    assert m.get_result("k2", job) is m.UNDEFINED
    err = m.call_job_fn("k3", m.make_job_fn(lambda: 1 / 0, progress=False), [], {})
    _wait(lambda: not m.job_running(err))
    assert "division by zero" in m.get_result("k3", err)["background_callback_error"]["msg"]
    m.shutdown()


