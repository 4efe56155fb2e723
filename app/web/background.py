"""A Dash background-callback manager: jobs run in threads of the worker that got the request,
and everything a progress poll needs lives in a store that every gunicorn worker shares.

Why not Dash's own managers: ``DiskcacheManager`` needs ``diskcache``, ``psutil`` and
``multiprocess`` (none installed) and runs every job in a *forked* child of the server. Our jobs
run TensorFlow (activation maximisation, the evaluation pass), and TensorFlow is not fork-safe:
a child forked after the parent has started TF's thread pools can deadlock on its first op (and
DESIGN.md says "never before a fork"). ``CeleryManager`` needs a broker and worker processes,
which a single-machine dashboard does not have.

Why a shared store: the browser polls a job with new requests, and with ``--workers 2`` (the
README's and Dockerfile's default) about half of them reach the other worker. So results,
progress, ``set_props`` updates, the "job running" state and cancellation live in a
:class:`JobStore` over the flask-caching backend the app binds (``app.web.cache``):

- ``FileSystemCache`` → its own ``FileSystemCache`` in ``<cache dir>-jobs/store`` (the app
  cache prunes its oldest entries when full; job records must not be among them);
- ``RedisCache`` → the same Redis, keys ``<prefix>bg:…``;
- ``NullCache``/anything else → this process only (logged: polls on another worker fail).

A running job's record is kept alive by a heartbeat of its worker (``lease_s``); a job whose
worker died expires and its poll is answered with an error instead of being polled forever.
Cancel (from any worker) sets a shared flag that the job's ``set_progress`` and the heartbeat
see. Values are stored as JSON (Dash callback outputs are JSON-able; components are encoded
as Dash sends them). The signing secret of the job handles is ``UNET_LENS_SECRET_KEY``, else
one generated per deployment and shared through the store (see :meth:`JobStore.secret`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachelib import FileSystemCache, RedisCache
from dash._callback_context import context_value
from dash._utils import AttributeDict, to_json
from dash.background_callback._proxy_set_props import ProxySetProps
from dash.background_callback.managers import BaseBackgroundCallbackManager
from dash.exceptions import PreventUpdate
from flask import Flask, current_app, has_app_context

from app import config

log = logging.getLogger(__name__)

#: How long a finished job's result waits for its poll, and a cancel flag stays set.
RESULT_TTL = 3600
#: Files the job store keeps before pruning expired ones (then the oldest).
STORE_THRESHOLD = 5000
#: Shown when a poll asks for a job that no worker runs any more.
LOST_MSG = ("The background job was lost: the server worker that ran it stopped. "
            "Reload the page or try again.")
EXTENSION = "unet_lens_jobs"


class JobCancelled(Exception):
    """Raised inside a job by ``set_progress`` once the job was cancelled."""


class _LocalCache:
    """A tiny thread-safe in-process cache with expiry (the fallback store: one process)."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[Any, float]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str) -> Any:
        value, expires = self._data.get(key, (None, 0.0))
        if value is not None and expires and expires < time.time():
            del self._data[key]
            return None
        return value

    def get(self, key: str) -> Any:
        with self._lock:
            return self._live(key)

    def set(self, key: str, value: Any, timeout: int | None = None) -> bool:
        with self._lock:
            self._data[key] = (value, time.time() + timeout if timeout else 0.0)
        return True

    def add(self, key: str, value: Any, timeout: int | None = None) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._data[key] = (value, time.time() + timeout if timeout else 0.0)
            return True

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._data.pop(key, None) is not None


class JobStore:
    """Job state over a cachelib backend, under a key prefix; plus the shared signing secret.

    ``shared`` says whether other processes see the same store; ``secret_file`` is where a
    file-system store keeps the generated secret (outside any cache folder: caches prune).
    """

    def __init__(self, backend: Any, *, shared: bool, where: str,
                 secret_file: Path | None = None, prefix: str = "bg:") -> None:
        self.backend = backend
        self.shared = shared
        self.where = where
        self.secret_file = secret_file
        self.prefix = prefix
        self._secret: bytes | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def local(cls, why: str = "") -> JobStore:
        """A store of this process only."""
        return cls(_LocalCache(), shared=False, where="this process" + (f" ({why})" if why else ""))

    @classmethod
    def over(cls, bound: Any) -> JobStore:
        """The store that goes with the app's bound flask-caching backend ``bound``."""
        if isinstance(bound, RedisCache):
            return cls(bound, shared=True, where="redis")
        if isinstance(bound, FileSystemCache):
            cache_dir = Path(bound._path)  # noqa: SLF001 - cachelib keeps the folder here
            return cls.folder(cache_dir.with_name(cache_dir.name + "-jobs"))
        return cls.local(f"the cache is {type(bound).__name__}")

    @classmethod
    def folder(cls, folder: Path) -> JobStore:
        """A file-system store in ``folder`` (made private to this user), or a local one."""
        from app.web.server import _unwritable  # the app cache's own check (late: no cycle)

        problem = _unwritable(folder, private=True)
        if problem is not None:
            log.warning("Background jobs are kept per worker: %s (%s); with several workers "
                        "their polls can fail.", folder, problem)
            return cls.local(problem)
        backend = FileSystemCache(str(folder / "store"), threshold=STORE_THRESHOLD,
                                  default_timeout=RESULT_TTL, mode=0o600)
        return cls(backend, shared=True, where=str(folder), secret_file=folder / "secret")

    # ------------------------------------------------------------------ values
    def get(self, key: str) -> Any:
        return self.backend.get(self.prefix + key)

    def set(self, key: str, value: Any, timeout: float) -> None:
        self.backend.set(self.prefix + key, value, timeout=max(1, int(round(timeout))))

    def delete(self, key: str) -> None:
        self.backend.delete(self.prefix + key)

    def pop(self, key: str) -> Any:
        value = self.get(key)
        if value is not None:
            self.delete(key)
        return value

    # ------------------------------------------------------------------ secret
    def secret(self, generate: Callable[[], bytes]) -> bytes:
        """The key that signs job handles: the same in every worker of a deployment.

        ``UNET_LENS_SECRET_KEY`` when set; else generated once, and kept in a 0600 file beside
        the cache (written to a temp file, then hard-linked into place, so the first worker
        wins and every other one reads the same bytes), or in Redis (``SET NX``).
        """
        if config.SECRET_KEY:
            return config.SECRET_KEY.encode("utf-8")
        with self._lock:
            if self._secret is None:
                self._secret = self._shared_secret(generate)
            return self._secret

    def _shared_secret(self, generate: Callable[[], bytes]) -> bytes:
        try:
            if self.secret_file is not None:
                return _file_secret(self.secret_file, generate)
            if self.shared:
                self.backend.add(self.prefix + "secret", generate().decode("utf-8"), timeout=0)
                value = self.backend.get(self.prefix + "secret")
                if value:
                    return str(value).encode("utf-8")
                raise OSError("the secret written to Redis could not be read back")
        except Exception as exc:  # noqa: BLE001 - OSError, Redis errors: all mean the same here
            log.error("Cannot share the background-job signing secret via %s (%s); this "
                      "worker uses its own, so polls reaching another worker fail. Set "
                      "UNET_LENS_SECRET_KEY.", self.where, exc)
        return generate()


def _file_secret(path: Path, generate: Callable[[], bytes]) -> bytes:
    """Read the secret at ``path``, creating it first (0600, atomically, first writer wins)."""
    try:
        found = path.read_bytes()
        if found:
            return found
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(generate())
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another worker was first: keep theirs
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    found = path.read_bytes()
    if not found:
        raise OSError(f"{path} is empty")
    return found


_STORES_LOCK = threading.Lock()


def store_for(app: Flask) -> JobStore:
    """The job store of ``app`` (made once per app from the cache ``app.web.cache`` binds)."""
    found = app.extensions.get(EXTENSION)
    if found is not None:
        return found
    from app.web.cache import cache

    with _STORES_LOCK:
        found = app.extensions.get(EXTENSION)
        if found is None:
            bound = app.extensions.get("cache", {}).get(cache)
            found = JobStore.over(bound) if bound is not None else JobStore.local("no cache bound")
            if not found.shared:
                log.warning("Background jobs are kept in %s: with several workers, a poll "
                            "that reaches another worker cannot see its job.", found.where)
            app.extensions[EXTENSION] = found
    return found


@dataclass
class _Local:
    """A job this process runs."""

    future: Future
    cancelled: threading.Event
    store: JobStore


def _encode(value: Any) -> str:
    return to_json(value)


class ThreadManager(BaseBackgroundCallbackManager):
    """Background callbacks in threads of this process, state in a shared :class:`JobStore`."""

    def __init__(self, max_workers: int = 1, cache_by: list | None = None,
                 store: JobStore | None = None, lease_s: float = 30.0, beat_s: float = 5.0,
                 result_ttl: float = RESULT_TTL) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dash-bg")
        self._lock = threading.Lock()
        self._fixed_store = store
        self._own_store: JobStore | None = None
        self._jobs: dict[str, _Local] = {}
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()
        self.lease_s, self.beat_s, self.result_ttl = lease_s, beat_s, result_ttl
        super().__init__(cache_by)

    def _store(self) -> JobStore:
        if self._fixed_store is not None:
            return self._fixed_store
        if has_app_context():
            return store_for(current_app)
        with self._lock:
            if self._own_store is None:
                self._own_store = JobStore.local("no app")
            return self._own_store

    # ------------------------------------------------------------------ jobs
    def make_job_fn(self, fn: Callable, progress: Any, key: str | None = None) -> Callable:
        manager = self

        def job_fn(result_key: str, job: str, args: Any, context: dict,
                   cancelled: threading.Event, store: JobStore, flask_app: Any = None) -> None:
            checked = [0.0]

            def is_cancelled() -> bool:
                if cancelled.is_set():
                    return True
                now = time.monotonic()
                if now - checked[0] > 0.5:  # a shared read at most twice a second
                    checked[0] = now
                    if store.get("cancel:" + job):
                        cancelled.set()
                return cancelled.is_set()

            def set_progress(value: Any) -> None:
                if is_cancelled():
                    raise JobCancelled()
                values = list(value) if isinstance(value, list | tuple) else [value]
                store.set("progress:" + result_key, _encode(values), manager.result_ttl)

            def set_props(_id: Any, props: dict) -> None:
                with manager._lock:  # read-modify-write of this job's own pending updates
                    raw = store.get("props:" + result_key)
                    pending = json.loads(raw) if raw else {}
                    pending[str(_id)] = {**pending.get(str(_id), {}), **json.loads(_encode(props))}
                    store.set("props:" + result_key, _encode(pending), manager.result_ttl)

            def run() -> None:
                c = AttributeDict(**context)
                c.ignore_register_page = False
                c.updated_props = ProxySetProps(set_props)
                context_value.set(c)
                head = [set_progress] if progress else []
                try:
                    if isinstance(args, dict):
                        out = fn(*head, **args)
                    elif isinstance(args, list | tuple):
                        out = fn(*head, *args)
                    else:
                        out = fn(*head, args)
                    encoded = _encode(out)
                except JobCancelled:
                    return
                except PreventUpdate:
                    encoded = _encode({"_dash_no_update": "_dash_no_update"})
                except Exception as err:  # noqa: BLE001 - reported to Dash's error handling
                    encoded = _encode({"background_callback_error": {
                        "msg": str(err), "tb": traceback.format_exc()}})
                if is_cancelled():
                    return
                store.set("result:" + job, encoded, manager.result_ttl)
                store.set("ready:" + result_key, job, manager.result_ttl)
                with manager._lock:  # not overwritten by a heartbeat of this job
                    store.set("job:" + job, "done", manager.result_ttl)
                    manager._jobs.pop(job, None)

            try:
                if flask_app is None:
                    copy_context().run(run)
                else:  # the app context of the request that started the job (flask-caching...)
                    with flask_app.app_context():
                        copy_context().run(run)
            except Exception:  # noqa: BLE001 - a store failure: the poll reports the job lost
                log.exception("background job %s failed to store its result", job)
            finally:
                with manager._lock:
                    manager._jobs.pop(job, None)

        return job_fn

    def call_job_fn(self, key: str, job_fn: Callable, args: Any, context: Any) -> str:
        job = uuid.uuid4().hex
        cancelled = threading.Event()
        store = self._store()
        flask_app = current_app._get_current_object() if has_app_context() else None
        store.delete("progress:" + key)
        store.set("job:" + job, "running", self.lease_s)  # before any poll can ask
        with self._lock:
            future = self._pool.submit(job_fn, key, job, args, dict(context), cancelled, store,
                                       flask_app)
            if not future.done():
                self._jobs[job] = _Local(future, cancelled, store)
            if self._beat is None or not self._beat.is_alive():
                self._beat = threading.Thread(target=self._heartbeat, name="dash-bg-heartbeat",
                                              daemon=True)
                self._beat.start()
        return job

    def _heartbeat(self) -> None:
        """Renew the lease of every job of this process; pass on cancels from other workers."""
        while not self._stop.wait(self.beat_s):
            with self._lock:
                if not self._jobs:
                    self._beat = None
                    return
                for job, local in list(self._jobs.items()):
                    try:
                        if local.store.get("cancel:" + job):
                            local.cancelled.set()
                            local.future.cancel()
                        elif not local.future.done():
                            local.store.set("job:" + job, "running", self.lease_s)
                    except Exception:  # noqa: BLE001 - store down: retried next beat
                        log.warning("heartbeat of background job %s failed", job, exc_info=True)

    def job_running(self, job: Any) -> bool:
        if not job:
            return False
        store = self._store()
        return store.get("job:" + str(job)) == "running" and not store.get("cancel:" + str(job))

    def terminate_job(self, job: Any) -> None:
        if not job:
            return
        job = str(job)
        store = self._store()
        store.set("cancel:" + job, 1, self.result_ttl)
        store.delete("result:" + job)
        with self._lock:
            local = self._jobs.pop(job, None)
        if local is not None:
            local.cancelled.set()
            local.future.cancel()  # only stops a job still queued; a running one stops at set_progress

    def terminate_unhealthy_job(self, job: Any) -> bool:
        return False

    # ------------------------------------------------------------------ results
    def get_progress(self, key: str) -> Any:
        raw = self._store().pop("progress:" + key)
        return json.loads(raw) if raw else None

    def result_ready(self, key: str) -> bool:
        store = self._store()
        job = store.get("ready:" + key)
        return bool(job) and store.get("result:" + job) is not None

    def get_result(self, key: str, job: Any) -> Any:
        store = self._store()
        job = str(job) if job else store.get("ready:" + key)
        if not job:
            return self.UNDEFINED
        raw = store.pop("result:" + job)
        if raw is not None:
            store.set("job:" + job, "read", self.result_ttl)
            store.delete("progress:" + key)
            return json.loads(raw)
        if store.get("cancel:" + job) or store.get("job:" + job) is not None:
            return self.UNDEFINED  # still running, cancelled, or read already
        # No record: its lease ran out, so the worker that ran it is gone.
        return {"background_callback_error": {"msg": LOST_MSG, "tb": ""}}

    def get_updated_props(self, key: str) -> dict:
        raw = self._store().pop("props:" + key)
        return json.loads(raw) if raw else {}

    def clear_cache_entry(self, key: str) -> None:
        store = self._store()
        job = store.get("ready:" + key)
        if job:
            store.delete("result:" + job)

    def get_or_create_signing_secret(self, generate: Callable[[], bytes]) -> bytes:
        return self._store().secret(generate)

    def shutdown(self) -> None:
        """Cancel every job of this process and stop the pool (tests)."""
        for job in list(self._jobs):
            self.terminate_job(job)
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


#: The manager the pages' background callbacks use (two jobs at once: an evaluation pass must not
#: hold up an activation maximisation).
MANAGER = ThreadManager(max_workers=2)

__all__ = ["LOST_MSG", "MANAGER", "JobCancelled", "JobStore", "ThreadManager", "store_for"]
