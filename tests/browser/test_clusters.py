"""Clusters page in real Chromium: sweep plots, cluster cards, member gallery, re-clustering."""

from __future__ import annotations

import json

import pytest

from tests.browser.conftest import Browser

pytestmark = pytest.mark.browser

MAP = "#clusters-map .js-plotly-plot"


@pytest.fixture(scope="module")
def sweep(browser_run) -> dict:
    root, run_id = browser_run
    return json.loads((root / run_id / "reduced" / "sweep.json").read_text())


def _open_clusters(browser: Browser, k: int):
    browser.open("/clusters")
    gd = browser.graph(MAP)
    browser.graph("#clusters-elbow .js-plotly-plot")
    browser.graph("#clusters-silhouette-vs-k .js-plotly-plot")
    browser.graph("#clusters-silhouette-samples .js-plotly-plot")
    browser.wait(lambda: len(browser.css(".cluster-card")) == k, what=f"{k} cluster cards")
    return gd


def test_clusters_loads_without_console_errors(browser: Browser, sweep: dict) -> None:
    k = sweep["chosen_k"]
    _open_clusters(browser, k)
    rows = browser.css(".table tbody tr")
    assert len(rows) == len(sweep["k"])
    assert [r for r in rows if "current" in r.get_attribute("class")][0].text.startswith(str(k))
    browser.wait(lambda: browser.images_loaded(".cluster-thumb"), what="centroid thumbnails")
    n_bands = browser.js(
        "return document.querySelector('#clusters-silhouette-samples .js-plotly-plot')"
        "._fullData.length")
    assert n_bands == k
    browser.shot("clusters")
    assert browser.severe() == []


def test_cluster_card_shows_its_members(browser: Browser, sweep: dict, browser_run) -> None:
    import numpy as np

    root, run_id = browser_run
    k = sweep["chosen_k"]
    labels = np.load(root / run_id / "reduced" / "labels.npy")[sweep["k"].index(k)]
    _open_clusters(browser, k)
    card = browser.css(".cluster-card")[1]
    browser.js("arguments[0].scrollIntoView({block: 'center'});", card)
    card.click()
    size = int((labels == 1).sum())
    grid = "#clusters-gallery-grid .tile-card"
    browser.wait(lambda: len(browser.css(grid)) == min(24, size), what="member cards")
    assert f"Cluster 1 · {size} tiles" in browser.css("#clusters-gallery-title")[0].text
    browser.wait(lambda: browser.images_loaded("#clusters-gallery-grid img"), what="member images")
    assert "selected" in browser.css(".cluster-card")[1].get_attribute("class")
    browser.shot("clusters-members")
    assert browser.severe() == []


def test_clicking_a_point_lists_its_cluster(browser: Browser, sweep: dict, browser_run) -> None:
    import numpy as np

    root, run_id = browser_run
    k = sweep["chosen_k"]
    labels = np.load(root / run_id / "reduced" / "labels.npy")[sweep["k"].index(k)]
    gd = _open_clusters(browser, k)
    x, y, tid = browser.point(gd, 40)
    browser.pointer(x, y, click=True)
    cluster = int(labels[40])
    browser.wait(lambda: f"Cluster {cluster} ·" in browser.css("#clusters-gallery-title")[0].text,
                 what="gallery of the clicked point's cluster")
    # the other clusters are dimmed (selectedpoints = members)
    selected = browser.js("return arguments[0]._fullData[0].selectedpoints.length", gd)
    assert selected == int((labels == cluster).sum())
    assert browser.severe() == []


def test_changing_k_reclusters(browser: Browser, sweep: dict) -> None:
    """A new k gives k cluster cards: stored labels when the sweep has k, else re-clustered."""
    from selenium.webdriver.common.keys import Keys

    outside = [k for k in range(10, 1, -1) if k not in sweep["k"]]
    k_new = outside[0] if outside else next(k for k in range(10, 1, -1) if k != sweep["chosen_k"])
    _open_clusters(browser, sweep["chosen_k"])
    box = browser.css("#clusters-k input[type=number]")[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(k_new), Keys.TAB)  # the box commits on blur
    browser.wait(lambda: len(browser.css(".cluster-card")) == k_new, timeout=60,
                 what=f"{k_new} cluster cards")
    if outside:
        assert "re-clustered" in browser.css("#clusters-note")[0].text
    browser.shot("clusters-recluster")
    assert browser.severe() == []


def test_member_card_opens_the_tile_on_explore(browser: Browser, sweep: dict) -> None:
    _open_clusters(browser, sweep["chosen_k"])
    card = browser.css(".cluster-card")[0]
    browser.js("arguments[0].scrollIntoView({block: 'center'});", card)
    card.click()
    browser.wait(lambda: browser.css("#clusters-gallery-grid .tile-card"), what="member cards")
    member = browser.css("#clusters-gallery-grid .tile-card")[0]
    tid = member.find_element("css selector", ".card-id").text
    browser.js("arguments[0].scrollIntoView({block: 'center'});", member)
    member.click()
    browser.wait(lambda: browser.css(".detail-id") and browser.css(".detail-id")[0].text == tid,
                 what="explore detail of the member")
    assert browser.severe() == []
