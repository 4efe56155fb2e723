"""The Content-Security-Policy and the other security headers do not break the dashboard: every
page renders in real Chromium (WebGL maps included) with no CSP violation in the console."""

from __future__ import annotations

import urllib.request

import pytest

from tests.browser.conftest import LARGE_MAP, Browser

pytestmark = pytest.mark.browser


def _headers(url: str) -> dict[str, str]:
    with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - the local live server
        return dict(r.headers)


def test_pages_render_under_the_csp(browser: Browser, live_server: str) -> None:
    headers = _headers(live_server + "/")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert headers["X-Frame-Options"] == "SAMEORIGIN"
    browser.open("/")
    gd = browser.graph(LARGE_MAP)
    # hovering a WebGL point needs 'unsafe-eval' (regl compiles its picking shaders with
    # new Function); without it the tooltip never appears
    x, y, tid = browser.point(gd, 3)
    browser.pointer(x, y)
    browser.wait(lambda: browser.images_loaded(".tip img"), what="hover tooltip under the CSP")
    assert browser.css(".tip-id")[0].text == tid
    assert browser.js("return arguments[0]._fullData[0].type", gd) in ("scattergl", "scatter")
    # WebGL drew something: the map's canvas exists and has a size
    assert browser.js("var c = arguments[0].querySelector('canvas');"
                      "return c ? c.width * c.height : -1", gd) != 0
    browser.open("/clusters")
    browser.graph("#clusters-map .js-plotly-plot")
    browser.open("/evaluate")  # the per-tile table is dash-ag-grid: its injected styles too
    browser.wait(lambda: browser.css("#evaluate-table .ag-root-wrapper"), what="the AG Grid table")
    severe = browser.severe()
    assert not [m for m in severe if "Content Security Policy" in m or "Refused" in m], severe
    assert severe == []
