"""Explore page in real Chromium: maps, hover tooltip, selection gallery, tile detail."""

from __future__ import annotations

import pytest

from tests.browser.conftest import LARGE_MAP, Browser

pytestmark = pytest.mark.browser

SMALL_MAP = '[id*=\'"index":"{m}"\'][id*=\'explore-map\'] .js-plotly-plot'


def _open_explore(browser: Browser):
    browser.open("/")
    gd = browser.graph(LARGE_MAP)
    for m in ("pca", "tsne", "umap"):
        browser.graph(SMALL_MAP.format(m=m))
    return gd


def _n_tiles(browser_run) -> int:
    from app.artifacts import EmbeddingsRun

    root, run_id = browser_run
    return len(EmbeddingsRun.open(run_id, root, check_model=False).tiles)


def test_explore_loads_without_console_errors(browser: Browser, browser_run) -> None:
    gd = _open_explore(browser)
    n = browser.js("return arguments[0]._fullData[0].customdata.length", gd)
    assert n == _n_tiles(browser_run)
    assert browser.js("return arguments[0]._fullData[0].type", gd) == "scattergl"
    title = browser.css("#explore-large-title")[0].text
    assert title.startswith("UMAP map")
    assert browser.js("return arguments[0]._fullLayout.xaxis.title.text", gd) == "UMAP 1"
    pca = browser.graph(SMALL_MAP.format(m="pca"))
    assert "% var." in browser.js("return arguments[0]._fullLayout.xaxis.title.text", pca)
    browser.shot("explore")
    assert browser.severe() == []


def test_hover_shows_tooltip_with_images(browser: Browser) -> None:
    gd = _open_explore(browser)
    x, y, tid = browser.point(gd, 5)
    browser.pointer(x, y)
    browser.wait(lambda: browser.images_loaded(".tip img"), what="tooltip images")
    assert len(browser.css(".tip img")) == 2
    assert browser.css(".tip-id")[0].text == tid
    srcs = [i.get_attribute("src") for i in browser.css(".tip img")]
    assert f"/thumb/{tid}" in srcs[0] and f"/overlay/{tid}" in srcs[1]
    assert "IOU" in browser.css(".tip")[0].text.upper()
    browser.shot("explore-hover")
    assert browser.severe() == []


def test_selection_lists_tiles_in_a_paged_gallery(browser: Browser) -> None:
    gd = _open_explore(browser)
    chosen = browser.select_points(gd, list(range(30)))
    grid = "#explore-gallery-grid .tile-card"
    browser.wait(lambda: len(browser.css(grid)) == 24, what="24 gallery cards")
    browser.wait(lambda: browser.images_loaded("#explore-gallery-grid img"), what="gallery images")
    assert browser.css("#explore-gallery-title")[0].text == "Selection · 30 tiles"
    assert browser.css("#explore-gallery-page-label")[0].text.startswith("1–24 of 30")
    shown = [c.text for c in browser.css("#explore-gallery-grid .card-id")]
    assert shown == chosen[:24]
    assert browser.css("#explore-download-button")[0].is_enabled()
    browser.shot("explore-selection")
    browser.css("#explore-gallery-next")[0].click()
    browser.wait(lambda: len(browser.css(grid)) == 6, what="6 cards on page 2")
    assert [c.text for c in browser.css("#explore-gallery-grid .card-id")] == chosen[24:]
    assert browser.severe() == []


def test_click_point_shows_detail_with_neighbours(browser: Browser, browser_run) -> None:
    gd = _open_explore(browser)
    x, y, tid = browser.point(gd, 12)
    browser.pointer(x, y, click=True)
    browser.wait(lambda: browser.css(".detail-id") and browser.css(".detail-id")[0].text == tid,
                 what="detail panel of the clicked tile")
    cards = "#explore-neighbours .tile-card"
    browser.wait(lambda: len(browser.css(cards)) == 8, what="8 neighbour cards")
    browser.wait(lambda: browser.images_loaded(".detail-images img"), what="detail images")
    browser.wait(lambda: browser.images_loaded("#explore-neighbours img"), what="neighbour images")
    link = browser.css("#explain-link")[0].get_attribute("href")
    assert link.endswith(f"/explain?tile={tid}&run={browser_run[1]}")
    # the highlight ring sits on the clicked point
    ring = browser.js("var t = arguments[0]._fullData[1]; return [t.x[0], t.y[0]]", gd)
    pt = browser.js("var t = arguments[0]._fullData[0]; return [t.x[12], t.y[12]]", gd)
    assert ring == pytest.approx(pt, rel=1e-5)
    browser.shot("explore-detail")
    # a neighbour card opens that tile
    first = browser.css(cards)[0]
    neighbour = first.find_element("css selector", ".card-id").text
    browser.js("arguments[0].scrollIntoView({block: 'center'});", first)
    first.click()
    browser.wait(lambda: browser.css(".detail-id")[0].text == neighbour, what="neighbour detail")
    assert browser.severe() == []


def test_colour_by_continuous_column_shows_a_colorbar(browser: Browser) -> None:
    from selenium.webdriver.common.by import By

    gd = _open_explore(browser)
    xs_before = browser.js("return Array.from(arguments[0]._fullData[0].x.slice(0, 5))", gd)
    browser.css("#explore-colour")[0].click()
    option = browser.wait(lambda: browser.d.find_element(
        By.XPATH, "//*[@role='option' and normalize-space()='IoU']"), what="IoU option")
    option.click()
    browser.wait(lambda: browser.js("return !!arguments[0].querySelector('.colorbar')", gd),
                 what="colour bar")
    assert browser.js("return arguments[0]._fullLayout.showlegend", gd) is False
    assert "IoU" in browser.css("#explore-large-title")[0].text
    assert browser.js("return Array.from(arguments[0]._fullData[0].x.slice(0, 5))", gd) == xs_before
    browser.shot("explore-colour-iou")
    assert browser.severe() == []


def test_enlarge_switches_the_large_map(browser: Browser, browser_run) -> None:
    gd = _open_explore(browser)
    button = browser.css('[id*=\'"index":"pca"\'][id*=\'explore-enlarge\']')[0]
    browser.js("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()
    browser.wait(lambda: browser.css("#explore-large-title")[0].text.startswith("PCA map"),
                 what="PCA as the large map")
    browser.wait(lambda: "% var." in browser.js(
        "return arguments[0]._fullLayout.xaxis.title.text", gd), what="PCA axis title")
    assert browser.js("return arguments[0]._fullData[0].customdata.length", gd) == _n_tiles(
        browser_run
    )
    assert browser.severe() == []
