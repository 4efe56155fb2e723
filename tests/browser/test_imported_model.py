"""An imported U-Net in real Chromium: Explore's maps and hover, Explain's Grad-CAM, and
``/api/segment`` of the same server.

Each of the import zoo's models (``tests/imported_models.py``) are imported, embedded and reduced
into a temporary store; each is served by its own app (werkzeug in a thread, like
``live_server``) and opened in the session's Chromium.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.conftest import LARGE_MAP, Browser
from tests.imported_models import ZOO

pytestmark = pytest.mark.browser

MODEL_TIMEOUT = 120
HEAT = "#explain-heat"


@pytest.fixture(scope="module", params=list(ZOO))
def imported(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """(base url, embeddings run, model run) of a served imported model."""
    from werkzeug.serving import make_server

    from app import artifacts, config, pipeline
    from app.ml import importer, inference
    from tests.imported_models import save_zoo_model
    from tests.unit.test_extract import make_dataset
    from tests.webapp import built_app, runs_restored

    name = request.param
    root = tmp_path_factory.mktemp(f"imported-{name}")
    store, emb = root / "models", root / "emb"
    dataset = make_dataset(root / "datasets" / "tiny")
    importer.import_model(save_zoo_model(name, root / "src"), name, store=store,
                          trained_on="tiny synthetic tiles")
    run_id = f"{name}-emb"
    pipeline.run_embed(name, dataset.path, run_id, embeddings_root=emb, model_store=store,
                       progress=False)
    pipeline.run_reduce(run_id, methods=("pca", "tsne", "umap"), k_values=range(2, 4),
                        embeddings_root=emb, progress=False)
    mp = pytest.MonkeyPatch()
    mp.setattr(config, "MODEL_STORE", store)
    inference.forget_services()
    with runs_restored():
        app = built_app(embeddings_run=run_id, embeddings_root=emb,
                        cache_config={"CACHE_TYPE": "FileSystemCache",
                                      "CACHE_DIR": str(root / "cache")})
        server = make_server("127.0.0.1", 0, app.server, threaded=True)
        thread = threading.Thread(target=server.serve_forever, name=f"imported-{name}",
                                  daemon=True)
        thread.start()
        run = artifacts.EmbeddingsRun.open(run_id, emb, model_store=store)
        try:
            yield {"base": f"http://127.0.0.1:{server.server_port}", "run": run, "name": name}
        finally:
            server.shutdown()
            thread.join(timeout=10)
            mp.undo()
            inference.forget_services()


@pytest.fixture()
def ibrowser(driver, imported: dict) -> Browser:
    shots = os.environ.get("UNET_LENS_SCREENSHOTS")
    b = Browser(driver, imported["base"], Path(shots) if shots else None)
    driver.get_log("browser")
    return b


def test_explore_maps_and_hover_of_an_imported_model(ibrowser: Browser, imported: dict) -> None:
    ibrowser.open("/")
    gd = ibrowser.graph(LARGE_MAP)
    n = ibrowser.js("return arguments[0]._fullData[0].customdata.length", gd)
    assert n == len(imported["run"].tiles)
    x, y, tid = ibrowser.point(gd, 3)
    ibrowser.pointer(x, y)
    ibrowser.wait(lambda: ibrowser.images_loaded(".tip img"), what="tooltip images")
    assert ibrowser.css(".tip-id")[0].text == tid
    ibrowser.shot(f"imported-{imported['name']}-explore")
    assert ibrowser.severe() == []


def test_api_segment_of_an_imported_model(imported: dict) -> None:
    import json
    import urllib.request

    from tests.serving import png_bytes

    req = urllib.request.Request(imported["base"] + "/api/segment", data=png_bytes(48, 64),
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.loads(resp.read())
    assert (body["width"], body["height"]) == (64, 48)
    assert body["model"]["run"] == imported["name"] and 0.0 <= body["building_fraction"] <= 1.0


def test_explain_grad_cam_of_an_imported_model(ibrowser: Browser, imported: dict) -> None:
    run = imported["run"]
    tile = str(run.tiles["tile_id"].iat[1])
    ibrowser.open(f"/explain?tile={tile}")
    ibrowser.wait(lambda: ibrowser.js(
        "var d = document.querySelector('#explain-layer');"
        "return d && d.textContent.indexOf(arguments[0]) >= 0", run.layer),
        what=f"the model's default layer {run.layer} in the layer picker")
    # Random weights predict no building at 0.5: explain the whole image, not the mask.
    ibrowser.wait(lambda: ibrowser.css("#explain-target label"), what="target options")
    [lab for lab in ibrowser.css("#explain-target label")
     if lab.text.strip() == "Whole image"][0].click()
    ibrowser.css("#explain-run")[0].click()
    ibrowser.wait(lambda: ibrowser.images_loaded(HEAT), timeout=MODEL_TIMEOUT, what="heat map")
    status = ibrowser.css("#explain-status")[0].text
    assert "Seg-Grad-CAM" in status and run.layer in status
    [lab for lab in ibrowser.css("#explain-method label")
     if lab.text.strip() == "Grad-CAM++"][0].click()
    ibrowser.wait(lambda: "Grad-CAM++" in ibrowser.css("#explain-status")[0].text,
                  timeout=MODEL_TIMEOUT, what="Grad-CAM++")
    ibrowser.shot(f"imported-{imported['name']}-explain")
    assert ibrowser.severe() == []
