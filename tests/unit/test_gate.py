"""The model gate: slots, a bounded FIFO queue, Busy with Retry-After; and the request-cost
bound for real (gunicorn, 2 workers, flat 8000² PNGs that are legal but costly)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.web.gate import Busy, Gate
from bench.cost import flat_png, post
from tests.serving import (
    free_port,
    get,
    linked_run,
    serve_env,
    server_process,
    tiny_model_run,
    wait_for,
)


@contextmanager
def held(gate: Gate) -> Iterator[threading.Event]:
    """A thread holds one of ``gate``'s slots until the block ends."""
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gate.slot():
            inside.set()
            release.wait(60)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert inside.wait(30), "the holder never got its slot"
    try:
        yield release
    finally:
        release.set()
        thread.join(30)


def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for another thread to reach a state (synchronisation, not a timing check)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.01)


def test_a_full_gate_without_a_queue_refuses_at_once_with_retry_after() -> None:
    gate = Gate(slots=1, queue=0, wait_s=30)
    with held(gate), pytest.raises(Busy) as info, gate.slot():
        pass
    busy = info.value
    assert busy.retry_after >= 1 and busy.running == 1 and busy.waiting == 0
    assert f"try again in {busy.retry_after} s" in str(busy)
    assert gate.snapshot()["refused"] == 1
    with gate.slot():  # free again once the holder left
        assert gate.snapshot()["running"] == 1


def test_waiters_are_served_in_order_and_never_more_than_the_slots() -> None:
    gate = Gate(slots=1, queue=3, wait_s=60)
    order: list[int] = []
    inside = {"now": 0, "max": 0}
    lock = threading.Lock()

    def request(i: int) -> None:
        with gate.slot():
            with lock:
                inside["now"] += 1
                inside["max"] = max(inside["max"], inside["now"])
                order.append(i)
            with lock:
                inside["now"] -= 1

    with held(gate):
        threads = []
        for i in range(3):
            t = threading.Thread(target=request, args=(i,))
            t.start()
            threads.append(t)
            until(lambda n=i + 1: gate.snapshot()["waiting"] == n, f"{i + 1} waiting")
        with pytest.raises(Busy), gate.slot():  # the queue (3) is full: the 4th is refused
            pass
    for t in threads:
        t.join(30)
    assert order == [0, 1, 2] and inside["max"] == 1 and gate.peak == 1
    snap = gate.snapshot()
    assert snap["admitted"] == 4 and snap["refused"] == 1 and snap["waiting"] == 0


def test_a_waiter_whose_wait_runs_out_is_refused_and_leaves_the_queue() -> None:
    gate = Gate(slots=1, queue=2, wait_s=0.05)
    with held(gate):
        with pytest.raises(Busy), gate.slot():
            pass
        assert gate.snapshot()["waiting"] == 0


def test_two_slots_admit_two_at_once() -> None:
    gate = Gate(slots=2, queue=0)
    with held(gate), gate.slot():
        assert gate.snapshot()["running"] == 2 and gate.peak == 2
        with pytest.raises(Busy), gate.slot():
            pass


@pytest.mark.parametrize("kwargs", [{"slots": 0}, {"slots": 1, "queue": -1},
                                    {"slots": 1, "wait_s": -1}])
def test_bad_gate_sizes_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="slots >= 1"):
        Gate(**kwargs)


# --------------------------------------------------------------------------- gunicorn


def test_costly_uploads_are_bounded_on_two_gunicorn_workers(tmp_path: Path) -> None:
    """Eight flat 8000² PNGs at once on ``serve --workers 2`` with one model slot and no queue
    per worker: every upload is either segmented (downscaled to the budget, and saying so) or
    answered 429 with Retry-After, and /healthz answers 200 all along."""
    store, emb = tmp_path / "models", tmp_path / "emb"
    model = tiny_model_run(store)
    run = linked_run(emb, store, model, n=30)
    port = free_port()
    budget = 256 * 256
    env = serve_env(store, emb, tmp_path / "cache", port, UNET_LENS_WARM_UP="0",
                    UNET_LENS_EMBEDDINGS_RUN=run, UNET_LENS_MAX_INFER_PIXELS=str(budget),
                    UNET_LENS_INFER_SLOTS="1", UNET_LENS_INFER_QUEUE="0")
    base = f"http://127.0.0.1:{port}"
    uploads = [flat_png(8000, 40 + 10 * i) for i in range(8)]
    argv = [sys.executable, "-m", "app", "serve", "--workers", "2"]
    with server_process(argv, env, tmp_path / "serve.log") as proc:
        wait_for(f"{base}/healthz", status=200, proc=proc)
        results: list[tuple[int, dict, dict]] = []
        health: list[int] = []
        done = threading.Event()
        start = threading.Barrier(len(uploads))

        def upload(data: bytes) -> None:
            start.wait(30)
            results.append(post(f"{base}/api/segment", data, timeout=300))

        def poll() -> None:
            while not done.is_set():
                health.append(get(f"{base}/healthz", timeout=60)[0])
                time.sleep(0.2)

        poller = threading.Thread(target=poll)
        poller.start()
        threads = [threading.Thread(target=upload, args=(d,)) for d in uploads]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        done.set()
        poller.join(120)
    statuses = [r[0] for r in results]
    assert len(results) == 8 and set(statuses) <= {200, 429}, statuses
    assert 200 in statuses and 429 in statuses, statuses
    for status, body, headers in results:
        if status == 429:
            assert headers["Retry-After"].isdigit() and int(headers["Retry-After"]) >= 1
            assert "try again in" in body["error"], body
        else:
            assert body["downscaled"]["from_width"] == 8000, body["downscaled"]
            assert body["width"] * body["height"] <= budget
            assert "downscaled from 8000×8000" in body["downscaled"]["message"]
    assert health and set(health) == {200}, health


# --------------------------------------------------------------------------- Segment page logic


def test_the_segment_page_job_says_busy_and_needs_a_slot(monkeypatch) -> None:
    import base64

    from app.web import gate, runs
    from app.web.logic import segment as seg
    from tests.serving import png_bytes

    full = Gate(slots=1, queue=0)
    monkeypatch.setattr(gate, "INFERENCE", full)
    contents = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    no_model = runs.ModelInfo(None, None, message="No model run 'x'.")
    with held(full), pytest.raises(Busy) as info:
        seg.segment_upload(contents, "roofs.png", no_model, None)
    text = seg.busy_message(info.value)
    assert f"try again in {info.value.retry_after} s" in text and "nothing was lost" in text
    # with a free slot the same call gets as far as the model, and says why it cannot go on
    with pytest.raises(seg.ModelUnavailable, match="No model run 'x'"):
        seg.segment_upload(contents, "roofs.png", no_model, None)
    assert full.snapshot()["running"] == 0 and full.admitted == 2
