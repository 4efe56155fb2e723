"""The Segment page's back end (logic/segment) and callbacks on a tiny U-Net."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app import config
from app.ml.inference import ModelService
from app.web import runs, uploads
from app.web.logic import segment as seg
from tests.unit.lens_helpers import (  # noqa: F401 - fixtures
    fixture_small_fixture,
    flask_app_fixture,
    rgb,
    svc_fixture,
    unet_fixture,
)
from tests.unit.lens_helpers import to_json as _json

# ----------------------------------------------------------------------------- segmentation


def test_analyse_segments_counts_and_compares(fixture_small: Any, svc: ModelService,
                                              flask_app: Any) -> None:
    img = np.concatenate([runs.tile_image(fixture_small, t)
                          for t in fixture_small.tiles["tile_id"][:3]], axis=1)  # 96 × 288
    up = uploads.Upload(image=img, name="mosaic.png", nbytes=1)
    with flask_app.server.app_context():
        res = seg.analyse(up, fixture_small, svc)
        again = seg.analyse(up, fixture_small, svc)
        from app.web.cache import cache

        stored = cache.get(seg.cache_key(res.key))
    assert res.mask.shape == (96, 288) and res.width == 288 and not res.cached and again.cached
    assert res.n_buildings >= 0 and res.building_pixels == int(res.mask.sum())
    assert set(res.baselines) == {"otsu", "kmeans"}
    assert all(0 <= b["iou"] <= 1 for b in res.baselines.values())
    assert Image.open(io.BytesIO(stored["mask_png"])).size == (288, 96)
    # the untrained U-Net gives 256-d vectors, the fixture run holds 32-d ones
    assert "cannot be placed" in res.placement["note"] or "Cannot embed" in res.placement["note"]


def test_place_upload_falls_back_to_neighbours_without_reducers(fixture_small: Any) -> None:
    target = np.asarray(fixture_small.vectors[4], dtype=np.float32)

    class Fake:
        def embed_image(self, image: Any, run: Any) -> tuple[np.ndarray, dict]:
            return target, {"representation": "gap", "layer": "bottleneck"}

    out = seg.place_upload(fixture_small, Fake(), rgb(32, 32))
    assert out["neighbours"][0][0] == fixture_small.tiles["tile_id"].iat[4]
    assert out["neighbours"][0][1] == pytest.approx(1.0, abs=1e-3)
    assert out["approx"] and set(out["coords"]) == {"pca", "tsne", "umap"}
    assert "mean position of its 5 nearest" in out["note"]


def test_mask_iou_and_small_copy() -> None:
    a = np.zeros((4, 4), bool)
    assert seg.mask_iou(a, a) == 1.0
    b = a.copy()
    b[0, :2] = True
    assert seg.mask_iou(a, b) == 0.0 and seg.mask_iou(b, b) == 1.0
    assert seg.small_copy(rgb(3000, 1500), 1024).shape == (1024, 512, 3)


def test_segment_download_and_gradcam(flask_app: Any) -> None:
    sg = sys.modules["app.web.pages.segment"]
    run = runs.get_run(runs.default_run_id())
    info = runs.model_for(run)
    img = runs.tile_image(run, run.tiles["tile_id"].iat[0])
    with flask_app.server.app_context():
        res = seg.analyse(uploads.Upload(image=img, name="tile.png", nbytes=1), run, info.service)
        result = {"key": res.key, "name": "tile.png", "run": run.run_id,
                  "placement": res.placement}
        sent = sg.download_mask(1, result)
        assert sent["filename"] == "tile-mask.png" and sent["base64"]
        assert "data:image/png;base64" in _json(sg.upload_gradcam(result, run.run_id)) or \
            "nothing" in _json(sg.upload_gradcam(result, run.run_id)).lower()
        opts, method, cards, note = sg.placement_controls(result, None)
        assert method in ("umap", "tsne", "pca") and note
        assert sg.placement_map(method, result).to_plotly_json()["data"]


def test_no_model_gives_a_clear_message(flask_app: Any, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.setattr(config, "MODEL_STORE", tmp_path)
    info = runs.model_for(runs.get_run(runs.default_run_id()))
    assert not info.ok and "No model run 'fixture-model'" in info.message


def test_tiling_description_follows_the_single_pass_limit() -> None:
    from app.web.logic.segment import tiling_description

    assert tiling_description(1024, 1024, single_pass_max_pixels=1024 * 1024) == "one pass"
    assert tiling_description(1000, 1000, single_pass_max_pixels=1024 * 1024) == (
        "one pass (padded to /16)")
    assert tiling_description(1024, 1040, single_pass_max_pixels=1024 * 1024) == (
        "25 tiles of 256 px, 32 px overlap, blended")
    assert tiling_description(200, 100, single_pass_max_pixels=0) == "one pass (padded to /16)"

