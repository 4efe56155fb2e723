"""Explain page in real Chromium: Grad-CAM of a stored tile, a box target, the channel explorer."""

from __future__ import annotations

import pytest

from tests.browser.conftest import Browser
from tests.browser.lens_fixtures import lens_model  # noqa: F401 - fixture

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("lens_model")]

MODEL_TIMEOUT = 120
HEAT = "#explain-heat"


def _first_tile(browser_run) -> str:
    from app.artifacts import EmbeddingsRun

    root, run_id = browser_run
    return str(EmbeddingsRun.open(run_id, root, check_model=False).tiles["tile_id"].iat[1])


def test_grad_cam_button_shows_a_heat_map(browser: Browser, browser_run) -> None:
    tile = _first_tile(browser_run)
    browser.open(f"/explain?tile={tile}")
    browser.wait(lambda: browser.js(
        "var g = document.querySelector('#explain-image-figure .js-plotly-plot');"
        "return g && g._fullLayout && g._fullLayout.images && g._fullLayout.images.length"),
        what="the tile in the image figure")
    src = browser.js("return document.querySelector('#explain-image-figure .js-plotly-plot')"
                     "._fullLayout.images[0].source")
    assert f"/image/{tile}" in src
    browser.wait(lambda: browser.images_loaded("#explain-truth img"), what="ground truth")
    browser.css("#explain-run")[0].click()
    browser.wait(lambda: browser.images_loaded(HEAT), timeout=MODEL_TIMEOUT, what="heat map")
    assert browser.js(f"return document.querySelector('{HEAT}').naturalWidth") > 0
    status = browser.css("#explain-status")[0].text
    assert "Seg-Grad-CAM" in status and ("computed in" in status or "from cache" in status)
    assert "(CPU)" in status or "(GPU)" in status or "on CPU" in status or "on GPU" in status
    browser.wait(lambda: browser.images_loaded("#explain-overlay img"), what="overlay images")
    # the opacity slider changes the top image in the browser
    browser.js("document.getElementById('explain-overlay-top').style.opacity = '0.6'")
    browser.shot("explain-grad-cam")
    assert browser.severe() == []


def test_box_target_and_other_methods(browser: Browser, browser_run) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    tile = _first_tile(browser_run)
    browser.open(f"/explain?tile={tile}")
    browser.wait(lambda: browser.css("#explain-target label"), what="target options")
    [lab for lab in browser.css("#explain-target label") if lab.text.strip() == "Box"][0].click()
    drag = browser.wait(lambda: browser.js(
        "var g = document.querySelector('#explain-image-figure .js-plotly-plot');"
        "return g && g._fullLayout.dragmode === 'drawrect' && "
        "document.querySelector('#explain-image-figure .nsewdrag')"), what="box drawing mode")
    size = browser.js("var r = arguments[0].getBoundingClientRect(); return [r.width, r.height]",
                      drag)
    ActionChains(browser.d).move_to_element_with_offset(
        drag, int(-size[0] * 0.3), int(-size[1] * 0.3)).click_and_hold().move_by_offset(
        60, 50).release().perform()
    browser.wait(lambda: browser.css("#explain-target-store-note")[0].text.startswith("Box:"),
                 what="the box target")
    browser.css("#explain-run")[0].click()
    browser.wait(lambda: "· box" in browser.css("#explain-status")[0].text,
                 timeout=MODEL_TIMEOUT, what="a box explanation")
    [lab for lab in browser.css("#explain-method label")
     if lab.text.strip() == "Guided Grad-CAM"][0].click()
    browser.wait(lambda: "Guided Grad-CAM" in browser.css("#explain-status")[0].text,
                 timeout=MODEL_TIMEOUT, what="guided Grad-CAM")
    assert browser.images_loaded(HEAT) or browser.css("#explain-message .lens-msg")
    browser.wait(lambda: len(browser.css("#explain-channel-explorer-tiles img")) == 8,
                 what="channel explorer tiles")
    browser.shot("explain-box")
    assert browser.severe() == []
