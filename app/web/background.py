"""A Dash background-callback manager that runs jobs in threads of the serving process.

Why not Dash's own managers: ``DiskcacheManager`` needs ``diskcache``, ``psutil`` and
``multiprocess`` (none installed) and runs every job in a *forked* child of the server. Our jobs
run TensorFlow (activation maximisation, the evaluation pass), and TensorFlow is not fork-safe:
a child forked after the parent has started TF's thread pools can deadlock on its first op (and
DESIGN.md says "never before a fork"). ``CeleryManager`` needs a broker and worker processes,
which a single-machine dashboard does not have.

:class:`ThreadManager` implements the same protocol (``background=True``, ``progress=``,
``running=``, ``cancel=``) with a small thread pool, results and progress held in memory.
Cancel sets a flag that the job's ``set_progress`` raises on (jobs stop at their next progress
report). Jobs run inside the Flask app context of the request that started them (so they can
use the flask-caching cache).

Limitation: a job's result lives in the process that ran it, so with several gunicorn workers
the browser's polling must reach the same worker (one worker with threads, or sticky sessions);
use ``CeleryManager`` for a multi-worker deployment.
"""

from __future__ import annotations

import threading
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import copy_context
from typing import Any

from dash._callback_context import context_value
from dash._utils import AttributeDict
from dash.background_callback._proxy_set_props import ProxySetProps
from dash.background_callback.managers import BaseBackgroundCallbackManager
from dash.exceptions import PreventUpdate
from flask import current_app, has_app_context


class JobCancelled(Exception):
    """Raised inside a job by ``set_progress`` once the job was cancelled."""


class ThreadManager(BaseBackgroundCallbackManager):
    """Background callbacks in a thread pool of this process (see the module docstring)."""

    def __init__(self, max_workers: int = 1, cache_by: list | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dash-bg")
        self._lock = threading.Lock()
        self._results: dict[str, Any] = {}
        self._progress: dict[str, Any] = {}
        self._props: dict[str, dict] = {}
        self._jobs: dict[str, tuple[Future, threading.Event]] = {}
        self._secret: bytes | None = None
        super().__init__(cache_by)

    # ------------------------------------------------------------------ jobs
    def make_job_fn(self, fn: Callable, progress: Any, key: str | None = None) -> Callable:
        manager = self

        def job_fn(result_key: str, args: Any, context: dict, cancelled: threading.Event,
                   flask_app: Any = None) -> None:
            def set_progress(value: Any) -> None:
                if cancelled.is_set():
                    raise JobCancelled()
                with manager._lock:
                    manager._progress[result_key] = (
                        list(value) if isinstance(value, list | tuple) else [value]
                    )

            def set_props(_id: Any, props: dict) -> None:
                with manager._lock:
                    manager._props.setdefault(result_key, {})[_id] = props

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
                except JobCancelled:
                    return
                except PreventUpdate:
                    out = {"_dash_no_update": "_dash_no_update"}
                except Exception as err:  # noqa: BLE001 - reported to Dash's error handling
                    out = {"background_callback_error": {"msg": str(err),
                                                         "tb": traceback.format_exc()}}
                if not cancelled.is_set():
                    with manager._lock:
                        manager._results[result_key] = out

            if flask_app is None:
                copy_context().run(run)
            else:  # the app context of the request that started the job (flask-caching...)
                with flask_app.app_context():
                    copy_context().run(run)

        return job_fn

    def call_job_fn(self, key: str, job_fn: Callable, args: Any, context: Any) -> str:
        job = uuid.uuid4().hex
        cancelled = threading.Event()
        flask_app = current_app._get_current_object() if has_app_context() else None
        with self._lock:
            self._results.pop(key, None)
            self._progress.pop(key, None)
            future = self._pool.submit(job_fn, key, args, dict(context), cancelled, flask_app)
            self._jobs[job] = (future, cancelled)
        return job

    def job_running(self, job: Any) -> bool:
        entry = self._jobs.get(str(job))
        return entry is not None and not entry[0].done()

    def terminate_job(self, job: Any) -> None:
        if job is None:
            return
        with self._lock:
            entry = self._jobs.pop(str(job), None)
        if entry is not None:
            future, cancelled = entry
            cancelled.set()
            future.cancel()  # only stops a job still queued; a running one stops at set_progress

    def terminate_unhealthy_job(self, job: Any) -> bool:
        return False

    # ------------------------------------------------------------------ results
    def get_progress(self, key: str) -> Any:
        with self._lock:
            return self._progress.pop(key, None)

    def result_ready(self, key: str) -> bool:
        return key in self._results

    def get_result(self, key: str, job: Any) -> Any:
        with self._lock:
            if key not in self._results:
                return self.UNDEFINED
            result = self._results.pop(key)
            self._progress.pop(key, None)
        if job:
            self.terminate_job(job)
        return result

    def get_updated_props(self, key: str) -> dict:
        with self._lock:
            return self._props.pop(key, {})

    def clear_cache_entry(self, key: str) -> None:
        with self._lock:
            self._results.pop(key, None)

    def get_or_create_signing_secret(self, generate: Callable[[], bytes]) -> bytes:
        with self._lock:
            if self._secret is None:
                self._secret = generate()
            return self._secret

    def shutdown(self) -> None:
        """Cancel every job and stop the pool (tests)."""
        for job in list(self._jobs):
            self.terminate_job(job)
        self._pool.shutdown(wait=False, cancel_futures=True)


#: The manager the pages' background callbacks use (two jobs at once: an evaluation pass must not
#: hold up an activation maximisation).
MANAGER = ThreadManager(max_workers=2)

__all__ = ["MANAGER", "JobCancelled", "ThreadManager"]
