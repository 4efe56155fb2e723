"""Browser tests: the real server in a thread, driven by real headless Chromium (selenium).

Skipped only when no Chromium is installed and ``$CI`` is unset; in CI a missing browser fails.
``browser_run`` is the one place that decides which embeddings run the tests look at. Set
``UNET_LENS_SCREENSHOTS=<dir>`` to keep a screenshot of each step.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.webapp import built_app

CHROMIUM = os.environ.get("UNET_LENS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("UNET_LENS_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--window-size=1400,1000",
    # WebGL (the maps are Scattergl) in software: without a GPU Chromium needs this opt-in
    "--enable-unsafe-swiftshader",
)
TIMEOUT = float(os.environ.get("UNET_LENS_BROWSER_TIMEOUT", "30"))
LARGE_MAP = '[id*=\'"index":"large"\'][id*=\'explore-map\'] .js-plotly-plot'


def _chromium_present() -> bool:
    return (Path(CHROMIUM).exists() or shutil.which("chromium") is not None) and (
        Path(CHROMEDRIVER).exists() or shutil.which("chromedriver") is not None
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(embeddings folder, run id) the browser tests use: the shipped demo, what a user sees.

    The demo is committed; should it be missing (a broken checkout), fall back to a generated
    fixture run so the failure shows in the demo's own tests, not here.
    """
    from app import config

    if (config.EMBEDDINGS_DIR / config.DEMO_EMBEDDINGS_RUN / "manifest.json").is_file():
        return config.EMBEDDINGS_DIR, config.DEMO_EMBEDDINGS_RUN
    from tests.fixture_run import make_fixture_run

    root = tmp_path_factory.mktemp("browser-embeddings")
    return root, make_fixture_run(root, n=300, seed=0)


@pytest.fixture(scope="session")
def live_server(browser_run: tuple[Path, str], tmp_path_factory) -> Iterator[str]:
    """The real app (``create_app``) on a free 127.0.0.1 port, served by werkzeug in a thread."""
    from werkzeug.serving import make_server

    root, run_id = browser_run
    cache_dir = tmp_path_factory.mktemp("browser-cache")
    app = built_app(embeddings_run=run_id, embeddings_root=root,
                     cache_config={"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": str(cache_dir)})
    assert app.server.debug is False
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def driver() -> Iterator[Any]:
    """One headless Chromium for the session (console log captured)."""
    if not _chromium_present():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium ({CHROMIUM}) or ChromeDriver ({CHROMEDRIVER}) is missing in CI")
        pytest.skip(f"no Chromium at {CHROMIUM} / ChromeDriver at {CHROMEDRIVER}: "
                    "apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver"))
    drv = webdriver.Chrome(service=service, options=opts)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()


class Browser:
    """Small helpers over the selenium driver for the dashboard's pages."""

    POINT_JS = """
        var gd = arguments[0], i = arguments[1];
        var fl = gd._fullLayout, xa = fl.xaxis, ya = fl.yaxis, tr = gd._fullData[0];
        var r = gd.getBoundingClientRect();
        return [r.left + xa._offset + xa.d2p(tr.x[i]), r.top + ya._offset + ya.d2p(tr.y[i]),
                tr.customdata ? tr.customdata[i] : null];
    """

    def __init__(self, driver: Any, base: str, shots: Path | None) -> None:
        self.d = driver
        self.base = base
        self.shots = shots

    # ------------------------------------------------------------------ basics
    def open(self, path: str) -> None:
        self.d.get(self.base + path)
        self.wait(lambda: self.d.execute_script("return document.readyState") == "complete")

    def wait(self, cond: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
        deadline = time.time() + timeout
        last_exc: Exception | None = None
        while time.time() < deadline:
            try:
                value = cond()
                if value:
                    return value
            except Exception as exc:  # element not there yet, stale, ...
                last_exc = exc
            time.sleep(0.1)
        self.shot("timeout")
        raise AssertionError(f"timed out waiting for {what or cond}" + (f": {last_exc}" if last_exc else ""))

    def css(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.d.find_elements(By.CSS_SELECTOR, selector)

    def js(self, script: str, *args: Any) -> Any:
        return self.d.execute_script(script, *args)

    def severe(self) -> list[str]:
        """SEVERE browser console entries since the last call."""
        return [e["message"] for e in self.d.get_log("browser") if e["level"] == "SEVERE"]

    def shot(self, name: str) -> None:
        if self.shots is not None:
            self.shots.mkdir(parents=True, exist_ok=True)
            self.d.save_screenshot(str(self.shots / f"{name}.png"))

    def images_loaded(self, selector: str) -> bool:
        return bool(self.js(
            "var imgs = document.querySelectorAll(arguments[0]);"
            "return imgs.length > 0 && Array.from(imgs).every(i => i.complete && i.naturalWidth > 0);",
            selector))

    # ------------------------------------------------------------------ plotly
    def graph(self, selector: str) -> Any:
        """The plotly graph div under ``selector`` once its first trace has points."""
        def ready():
            return self.js(
                "var gd = document.querySelector(arguments[0]);"
                "return gd && gd._fullData && gd._fullData[0] && gd._fullData[0].x"
                " && gd._fullData[0].x.length > 0 ? gd : null;", selector)
        return self.wait(ready, what=f"plotted points in {selector}")

    def point(self, gd: Any, i: int) -> tuple[float, float, str | None]:
        """Viewport pixel position (and id) of point ``i`` of trace 0, scrolled into view."""
        self.js("arguments[0].scrollIntoView({block: 'center'});", gd)
        time.sleep(0.3)
        x, y, tid = self.js(self.POINT_JS, gd, i)
        return x, y, tid

    def pointer(self, x: float, y: float, click: bool = False) -> None:
        from selenium.webdriver.common.actions.action_builder import ActionBuilder

        ab = ActionBuilder(self.d)
        ab.pointer_action.move_to_location(int(round(x)), int(round(y)))
        if click:
            ab.pointer_action.click()
        ab.perform()

    def select_points(self, gd: Any, rows: list[int]) -> list[str]:
        """Emit ``plotly_selected`` for these points of trace 0 (as a lasso would); their ids."""
        return self.js("""
            var gd = arguments[0], rows = arguments[1], tr = gd._fullData[0];
            var pts = rows.map(function(i) { return {curveNumber: 0, pointNumber: i,
                pointIndex: i, x: tr.x[i], y: tr.y[i], customdata: tr.customdata[i]}; });
            gd.emit('plotly_selected', {points: pts});
            return pts.map(function(p) { return p.customdata; });
        """, gd, rows)


@pytest.fixture()
def browser(driver: Any, live_server: str) -> Browser:
    shots = os.environ.get("UNET_LENS_SCREENSHOTS")
    b = Browser(driver, live_server, Path(shots) if shots else None)
    driver.get_log("browser")  # drop entries of earlier tests
    return b
