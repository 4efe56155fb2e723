"""Evaluate page in real Chromium: metrics, curves and the per-tile table; a row opens a tile."""

from __future__ import annotations

import pytest

from tests.browser.conftest import Browser
from tests.browser.lens_fixtures import lens_model  # noqa: F401 - fixture

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("lens_model")]

MODEL_TIMEOUT = 180


def test_evaluate_loads_metrics_and_table(browser: Browser) -> None:
    browser.open("/evaluate")
    browser.wait(lambda: len(browser.css("#evaluate-table .ag-row .ag-cell[col-id=tile_id]")) > 0,
                 timeout=MODEL_TIMEOUT, what="the per-tile table")
    cards = browser.css("#evaluate-metrics .metric-card")
    assert [c.find_element("css selector", ".metric-label").text.upper() for c in cards[:4]] == [
        "PRECISION", "RECALL", "F1", "IOU"]
    for c in cards[:4]:
        value = float(c.find_element("css selector", ".metric-value").text)
        assert 0.0 <= value <= 1.0
    assert "BLDG PRECISION" in browser.css("#evaluate-buildings")[0].text.upper()
    for graph in ("#evaluate-pr", "#evaluate-iou-curve", "#evaluate-confusion"):
        browser.wait(lambda g=graph: browser.js(
            f"var g = document.querySelector('{g} .js-plotly-plot');"
            "return g && g._fullData && g._fullData.length > 0"), what=graph)
    assert "test split" in browser.css("#evaluate-subtitle")[0].text
    browser.shot("evaluate")
    # click a row: the tile and its TP / FP / FN overlay
    cell = browser.css("#evaluate-table .ag-row .ag-cell[col-id=tile_id]")[0]
    tile = cell.text
    browser.js("arguments[0].scrollIntoView({block: 'center'});", cell)
    cell.click()
    browser.wait(lambda: browser.images_loaded("#evaluate-detail img"), timeout=MODEL_TIMEOUT,
                 what="the clicked tile")
    assert tile in browser.css("#evaluate-detail")[0].text
    assert "false alarm" in browser.css("#evaluate-detail")[0].text
    browser.shot("evaluate-row")
    assert browser.severe() == []
