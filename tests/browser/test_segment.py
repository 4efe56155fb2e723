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


# --------------------------------------------------------------------------- out-of-distribution


def _guarded_run(browser_run: tuple[Path, str]) -> None:
    from app.artifacts import EmbeddingsRun

    root, run_id = browser_run
    problem = EmbeddingsRun.open(run_id, root, check_model=False).ood_problem()
    if problem:
        pytest.skip(f"the served run has no out-of-distribution guard: {problem}")


def write_unlike(path: Path, size: int = 384) -> Path:
    """Unlike every synthetic scene (committed-safe, generated): saturated magenta ground with
    cyan stripes and a red checkerboard, as no aerial scene looks."""
    import numpy as np
    from PIL import Image

    img = np.zeros((size, size, 3), np.uint8)
    img[...] = (255, 0, 255)
    img[::12] = (0, 255, 255)
    yy, xx = np.mgrid[:size, :size]
    img[((yy // 32 + xx // 32) % 2 == 0) & (xx > size // 2)] = (255, 0, 0)
    Image.fromarray(img).save(path)
    return path


def write_held_out_scene(path: Path) -> Path:
    """A scene of a location the demo model never trained on: location 7 of the demo's seed,
    which its split holds out for testing (regenerated, deterministic)."""
    from PIL import Image

    from app.data.synthetic import iter_synthetic

    scene = next(s for s in iter_synthetic(8, seed=0, size=1024) if s.scene_id.endswith("07_pre"))
    Image.fromarray(scene.image).save(path)
    return path


def test_unlike_image_warns_and_a_held_out_scene_does_not(browser: Browser, tmp_path: Path,
                                                           browser_run) -> None:
    _guarded_run(browser_run)
    browser.open("/segment")
    _upload(browser, write_unlike(tmp_path / "stripes.png"))
    browser.wait(lambda: browser.css("#ood-warning"), timeout=MODEL_TIMEOUT,
                 what="the out-of-distribution warning")
    warning = browser.css("#ood-warning")[0]
    assert "unlike every tile the model was trained on: its mask is unreliable" in warning.text
    assert "nearest training tiles are" in warning.text
    # above the result: the warning comes before the stats of the upload
    assert browser.js("var w = document.querySelector('#ood-warning'), "
                      "s = document.querySelector('#segment-summary .stats');"
                      "return w.getBoundingClientRect().top < s.getBoundingClientRect().top")
    assert "trained on" in browser.css("#ood-line")[0].text
    browser.shot("segment-ood-warning")
    _upload(browser, write_held_out_scene(tmp_path / "held-out.png"))
    browser.wait(lambda: "Segmented held-out.png" in browser.css("#segment-message")[0].text,
                 timeout=MODEL_TIMEOUT, what="the held-out scene's result")
    browser.wait(lambda: "out-of-distribution score" in browser.css("#ood-line")[0].text,
                 what="the score line")
    assert browser.css("#ood-warning") == []
    assert "trained on" in browser.css("#ood-line")[0].text
    assert browser.severe() == []
