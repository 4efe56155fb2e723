"""Background callbacks with ``python -m app serve --workers 2`` (the Dockerfile's CMD) in real
Chromium: every Evaluate load and every Segment upload reaches its result, whichever worker
each progress poll lands on (issue 16: 7 of 13 Evaluate loads stayed blank with two workers).

The shipped demo run and model are served by real gunicorn with its own cache folder; the
background jobs' store and signing secret live beside that folder (``<cache>-jobs``).

The console is checked for failed callback requests only: under gunicorn one clientside
callback's inline script is missing from the CSP (a separate bug of the CSP hashing), which
logs a CSP violation and a renderer TypeError on every page.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app import config
from tests.browser.conftest import Browser
from tests.browser.lens_fixtures import write_png
from tests.serving import child_pids, free_port, serve_env, server_process, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOADS = 20
MODEL_TIMEOUT = 180
#: The first load runs the evaluation pass over the demo's tiles (minutes on a busy CI core).
FIRST_TIMEOUT = 300
TABLE = "#evaluate-table .ag-row .ag-cell[col-id=tile_id]"
UPLOAD = "#segment-upload input[type=file]"


@dataclass
class Served:
    """The ``serve --workers 2`` instance under test."""

    base: str
    cache: Path
    log: Path
    pid: int


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``serve --workers 2`` over the shipped demo, with its own cache folder."""
    if not (config.EMBEDDINGS_DIR / config.DEMO_EMBEDDINGS_RUN / "manifest.json").is_file():
        pytest.skip("the shipped demo run is missing")
    site = tmp_path_factory.mktemp("workers")
    port = free_port()
    env = serve_env(config.MODEL_STORE, config.EMBEDDINGS_DIR, site / "cache", port)
    argv = [sys.executable, "-m", "app", "serve", "--workers", "2"]
    with server_process(argv, env, site / "serve.log") as proc:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/healthz", timeout=MODEL_TIMEOUT, proc=proc)
        assert len(child_pids(proc.pid)) == 2, (site / "serve.log").read_text()
        yield Served(base, site / "cache", site / "serve.log", proc.pid)
        assert proc.poll() is None, (site / "serve.log").read_text()


def wait_or_explain(b: Browser, served: Served, cond: Callable[[], Any], timeout: float,
                    what: str) -> None:
    """``b.wait``; on a timeout the failure carries what is needed to tell why: the page's
    text, the console, and every worker thread's stack (``serve`` registers SIGUSR2 for it)
    with the end of the server log."""
    try:
        b.wait(cond, timeout=timeout, what=what)
    except AssertionError as exc:
        for pid in child_pids(served.pid):
            os.kill(pid, signal.SIGUSR2)
        time.sleep(2)
        page = b.js("return document.body ? document.body.innerText : ''") or ""
        console = b.d.get_log("browser")
        tail = served.log.read_text(errors="replace")[-20000:]
        raise AssertionError(f"{exc}\n--- page text ---\n{page[:3000]}\n--- console ---\n"
                             f"{console[-30:]}\n--- serve.log (end) ---\n{tail}") from None


def failed_requests(b: Browser) -> list[str]:
    """Console errors about callback requests (a 4xx/5xx answer to a poll or an upload)."""
    return [m for m in b.severe() if "_dash-update-component" in m or "status of" in m]


@pytest.fixture()
def workers_browser(driver: Any, two_workers: Served) -> Browser:
    driver.get_log("browser")
    return Browser(driver, two_workers.base, None)


def test_every_evaluate_load_reaches_its_table(workers_browser: Browser,
                                               two_workers: Served) -> None:
    b = workers_browser
    done = 0
    for i in range(LOADS):
        b.open("/evaluate")
        wait_or_explain(b, two_workers, lambda: len(b.css(TABLE)) > 0,
                        FIRST_TIMEOUT if i == 0 else MODEL_TIMEOUT,
                        f"the per-tile table of load {i + 1} ({done} of {LOADS} done)")
        assert "test split" in b.css("#evaluate-subtitle")[0].text
        done += 1
    assert done == LOADS
    assert failed_requests(b) == []
    jobs = two_workers.cache.with_name(two_workers.cache.name + "-jobs")
    assert (jobs / "secret").is_file()  # one secret for both workers, beside the cache


def test_every_segment_upload_reaches_its_result(workers_browser: Browser, two_workers: Served,
                                                 tmp_path: Path) -> None:
    b = workers_browser
    for i in range(LOADS):
        b.open("/segment")
        b.wait(lambda: b.css(UPLOAD), what="the upload input")
        name = f"scene-{i}.png"
        b.css(UPLOAD)[0].send_keys(str(write_png(tmp_path / name, 64, 96, seed=i)))
        wait_or_explain(b, two_workers, lambda n=name: f"Segmented {n}" in b.css(
            "#segment-message")[0].text and b.images_loaded("#segment-mask-image"),
            MODEL_TIMEOUT, f"the result of upload {i + 1}")
    assert failed_requests(b) == []
