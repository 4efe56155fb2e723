"""Segment page in real Chromium: an upload is segmented, a bad file is refused in the page."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.conftest import Browser
from tests.browser.lens_fixtures import lens_model, write_png  # noqa: F401 - fixture

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("lens_model")]

UPLOAD = "#segment-upload input[type=file]"
MODEL_TIMEOUT = 120


def _upload(browser: Browser, path: Path) -> None:
    browser.wait(lambda: browser.css(UPLOAD), what="the upload input")
    browser.css(UPLOAD)[0].send_keys(str(path))


def test_upload_is_segmented(browser: Browser, tmp_path: Path) -> None:
    browser.open("/segment")
    _upload(browser, write_png(tmp_path / "scene.png"))
    browser.wait(lambda: browser.images_loaded("#segment-mask-image"), timeout=MODEL_TIMEOUT,
                 what="the mask overlay")
    assert "Segmented scene.png" in browser.css("#segment-message")[0].text
    summary = browser.css("#segment-summary")[0].text
    assert "300 × 200 px" in summary and "BUILDINGS" in summary.upper()
    browser.wait(lambda: browser.images_loaded("#segment-images img"), what="all images")
    browser.wait(lambda: len(browser.css("#segment-baselines img")) == 3, what="3 baselines")
    browser.wait(lambda: browser.css("#segment-gradcam img") or "Grad-CAM" in
                 browser.css("#segment-gradcam")[0].text, timeout=MODEL_TIMEOUT,
                 what="the Grad-CAM")
    browser.wait(lambda: browser.js(
        "var g = document.querySelector('#segment-map .js-plotly-plot');"
        "return g && g._fullData && g._fullData.length > 0"), what="the map")
    assert browser.css("#segment-download-button")[0].is_enabled()
    browser.shot("segment")
    assert browser.severe() == []


def test_bad_file_shows_a_message_and_the_page_still_works(browser: Browser,
                                                           tmp_path: Path) -> None:
    browser.open("/segment")
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"certainly not an image")
    _upload(browser, bad)
    browser.wait(lambda: browser.js(
        "var m = document.querySelector('#segment-message .lens-msg-error');"
        "return m && m.offsetParent !== null && m.innerText"), timeout=MODEL_TIMEOUT,
        what="a visible error message")
    text = browser.css("#segment-message")[0].text
    assert "notes.png" in text and "not a recognised image" in text
    browser.shot("segment-bad-file")
    _upload(browser, write_png(tmp_path / "good.png", 160, 180, seed=1))
    browser.wait(lambda: browser.images_loaded("#segment-mask-image"), timeout=MODEL_TIMEOUT,
                 what="the mask after a good upload")
    assert "Segmented good.png" in browser.css("#segment-message")[0].text
    assert browser.severe() == []
