"""The background-callback manager: jobs, progress and cancel in one process, and across
"workers" (two managers, each with its own client of one real store: a ``FileSystemCache``
folder or a real ``redis-server``), a worker that dies, and the shared signing secret."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cachelib import FileSystemCache, RedisCache

from app import config
from app.web.background import LOST_MSG, JobStore, ThreadManager, store_for
from tests.serving import REPO, redis_server

# ----------------------------------------------------------------------------- helpers


def _wait(cond: Any, timeout: float = 10) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def _slow(steps: list[int], n: int) -> Callable[[Any], str]:
    """A job of ``n`` steps that reports each one (and records it in ``steps``)."""
    def slow(set_progress: Any) -> str:
        for i in range(n):
            set_progress(i)
            steps.append(i)
            time.sleep(0.01)
        return "finished"
    return slow


def _secret() -> bytes:
    return os.urandom(16).hex().encode()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(params=["files", "redis"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], JobStore]:
    """Each call: a fresh client (one per "worker") of the same shared store."""
    if request.param == "files":
        return lambda: JobStore.over(FileSystemCache(str(tmp_path / "cache")))
    import redis

    url = request.getfixturevalue("redis_url")
    prefix = f"unet-lens-{tmp_path.name}:"
    return lambda: JobStore.over(RedisCache(host=redis.Redis.from_url(url), key_prefix=prefix))


# ----------------------------------------------------------------------------- one process


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
    job = m.call_job_fn("k2", m.make_job_fn(_slow(steps, 200), progress=True), [], {})
    _wait(lambda: len(steps) > 3)
    m.terminate_job(job)
    time.sleep(0.1)
    assert not m.job_running(job) and len(steps) < 200
    assert m.get_result("k2", job) is m.UNDEFINED
    err = m.call_job_fn("k3", m.make_job_fn(lambda: 1 / 0, progress=False), [], {})
    _wait(lambda: not m.job_running(err))
    assert "division by zero" in m.get_result("k3", err)["background_callback_error"]["msg"]
    m.shutdown()


# ----------------------------------------------------------------------------- two workers


def test_a_job_started_on_one_worker_is_polled_from_another(new_store: Callable[[], JobStore]
                                                            ) -> None:
    a, b = ThreadManager(store=new_store()), ThreadManager(store=new_store())
    assert a._store().shared and b._store().shared
    go = threading.Event()

    def fn(set_progress: Any, name: str) -> list:
        from dash import ctx, html

        set_progress(("1", "3", "first"))
        ctx.set_props("elsewhere", {"children": "side"})
        go.wait(10)
        return [html.B(name), {"n": 2}]

    job = a.call_job_fn("key", a.make_job_fn(fn, progress=True), ["x"], {})
    assert b.job_running(job)
    assert _wait(lambda: b.get_progress("key") == ["1", "3", "first"])
    assert b.get_progress("key") is None  # read once
    props: dict = {}  # written just after the progress: wait for it, read once
    assert _wait(lambda: props.update(b.get_updated_props("key")) or
                 props == {"elsewhere": {"children": "side"}})
    assert b.get_updated_props("key") == {}
    assert b.get_result("key", job) is b.UNDEFINED and b.job_running(job)
    go.set()
    assert _wait(lambda: not b.job_running(job))
    assert b.result_ready("key")
    out = b.get_result("key", job)
    assert out[1] == {"n": 2} and out[0]["type"] == "B" and out[0]["props"]["children"] == "x"
    assert a.get_result("key", job) is a.UNDEFINED  # consumed: nobody gets it twice
    a.shutdown()
    b.shutdown()


def test_cancel_from_another_worker_stops_the_job(new_store: Callable[[], JobStore]) -> None:
    a = ThreadManager(store=new_store(), beat_s=0.1)
    b = ThreadManager(store=new_store())
    steps: list[int] = []
    job = a.call_job_fn("slow", a.make_job_fn(_slow(steps, 500), progress=True), [], {})
    assert _wait(lambda: len(steps) > 2)
    b.terminate_job(job)
    assert not a.job_running(job) and not b.job_running(job)
    assert _wait(lambda: not a._jobs)  # the job's thread ended
    assert len(steps) < 500
    assert b.get_result("slow", job) is b.UNDEFINED and a.get_result("slow", job) is a.UNDEFINED
    a.shutdown()
    b.shutdown()


def test_the_signing_secret_is_one_per_deployment(new_store: Callable[[], JobStore],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "SECRET_KEY", None)
    first, second = new_store(), new_store()
    secret = first.secret(_secret)
    assert len(secret) >= 32 and second.secret(_secret) == secret
    if first.secret_file is not None:
        assert stat.S_IMODE(first.secret_file.stat().st_mode) == 0o600
        assert not [p for p in first.secret_file.parent.iterdir() if p.name.startswith(".secret-")]
    monkeypatch.setattr(config, "SECRET_KEY", "from-the-environment")
    assert new_store().secret(_secret) == b"from-the-environment"


def test_workers_racing_for_the_secret_all_read_the_same(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "SECRET_KEY", None)
    stores = [JobStore.folder(tmp_path / "jobs") for _ in range(8)]
    got: list[bytes] = []
    threads = [threading.Thread(target=lambda s=s: got.append(s.secret(_secret))) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and (tmp_path / "jobs" / "secret").read_bytes() == got[0]


DEAD_WORKER = """
import sys, time
from pathlib import Path
from app.web.background import JobStore, ThreadManager
m = ThreadManager(store=JobStore.folder(Path(sys.argv[1])), lease_s=3, beat_s=0.3)
def forever(set_progress):
    while True:
        set_progress(1)
        time.sleep(0.05)
print(m.call_job_fn("dead", m.make_job_fn(forever, progress=True), [], {}), flush=True)
time.sleep(600)
"""


def test_a_job_whose_worker_died_is_reported_not_polled_forever(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", DEAD_WORKER, str(tmp_path / "jobs")],
                            cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        job = proc.stdout.readline().strip()
        b = ThreadManager(store=JobStore.folder(tmp_path / "jobs"))
        time.sleep(4)  # past the lease: the heartbeat keeps it
        assert b.job_running(job) and b.get_result("dead", job) is b.UNDEFINED
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert _wait(lambda: not b.job_running(job), timeout=15)
    assert b.get_result("dead", job) == {"background_callback_error": {"msg": LOST_MSG, "tb": ""}}
    b.shutdown()


# ----------------------------------------------------------------------------- the app's store


def test_the_store_follows_the_cache_the_app_binds(tmp_path: Path) -> None:
    from flask import Flask

    from app.web.cache import cache

    files = Flask("files")
    cache.init_app(files, config={"CACHE_TYPE": "FileSystemCache",
                                  "CACHE_DIR": str(tmp_path / "flask")})
    store = store_for(files)
    assert store.shared and store is store_for(files)
    assert store.secret_file == tmp_path / "flask-jobs" / "secret"
    assert stat.S_IMODE((tmp_path / "flask-jobs").stat().st_mode) == 0o700
    null = Flask("null")
    cache.init_app(null, config={"CACHE_TYPE": "NullCache", "CACHE_NO_NULL_WARNING": True})
    assert not store_for(null).shared
    # the manager uses the store of the app whose request it serves
    m = ThreadManager()
    with files.app_context():
        job = m.call_job_fn("app", m.make_job_fn(lambda: "done", progress=False), [], {})
        assert _wait(lambda: not m.job_running(job))
    assert ThreadManager(store=JobStore.over(
        FileSystemCache(str(tmp_path / "flask")))).get_result("app", job) == "done"
    m.shutdown()
