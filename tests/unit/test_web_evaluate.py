"""The Evaluate page's back end (logic/evaluate, ml/evaluate) and callbacks on a tiny U-Net."""

from __future__ import annotations

import shutil
import sys
from typing import Any

import numpy as np
import pytest

from app.ml import evaluate as scoring
from app.ml.inference import ModelService
from app.ml.metrics import pixel_confusion
from app.web import figures, images, runs
from app.web.logic import evaluate as ev
from tests.unit.lens_helpers import (  # noqa: F401 - fixtures
    fixture_small_fixture,
    flask_app_fixture,
    svc_fixture,
    unet_fixture,
)
from tests.unit.lens_helpers import to_json as _json


@pytest.fixture(scope="module")
def evaluated(fixture_small: Any, svc: ModelService) -> scoring.Evaluation:
    return ev.run_evaluation(fixture_small, svc, version="v", model_run="tiny")



def test_evaluation_uses_test_tiles_with_truth(fixture_small: Any, evaluated: scoring.Evaluation) -> None:
    ids, source, n = ev.evaluation_tiles(fixture_small)
    assert source == "test split" and ids == evaluated.tile_ids and n == len(ids) > 0
    tiles = fixture_small.tiles.set_index("tile_id")
    assert set(tiles.loc[ids, "split"]) == {"test"}
    sample, what, n_all = ev.evaluation_tiles(fixture_small, max_tiles=3)
    assert len(sample) == 3 and "seeded sample of 3" in what and n_all == n


def test_evaluation_counts_match_direct_confusion(fixture_small: Any, svc: ModelService,
                                                  evaluated: scoring.Evaluation) -> None:
    n_pixels = sum(runs.tile_truth(fixture_small, t).size for t in evaluated.tile_ids)
    assert evaluated.positive.sum() + evaluated.negative.sum() == n_pixels
    conf = scoring.tile_confusion(evaluated, 0.5)
    for i, tid in enumerate(evaluated.tile_ids[:5]):
        truth = runs.tile_truth(fixture_small, tid)
        prob = images.resize_prob(svc.predict_tile(runs.tile_image(fixture_small, tid)),
                                    truth.shape)
        direct = pixel_confusion(truth, prob, 0.5)
        assert {k: int(conf[k][i]) for k in direct} == direct
    total = scoring.pixel_summary(evaluated, 0.5)
    assert total["tp"] == int(conf["tp"].sum()) and total["fp"] == int(conf["fp"].sum())
    assert "stored masks (64×64" in evaluated.resolution


def test_evaluation_summaries_are_finite(fixture_small: Any, evaluated: scoring.Evaluation) -> None:
    for t in (0.05, 0.37, 0.5, 0.95):
        rows = ev.tile_rows(evaluated, fixture_small, t)
        assert len(rows) == len(evaluated.tile_ids) and rows[0]["id"] == rows[0]["tile_id"]
        assert all(np.isfinite(r[k]) for r in rows for k in ("precision", "recall", "iou"))
        b = scoring.building_summary(evaluated, t)
        assert b["threshold"] in scoring.BUILDING_THRESHOLDS and 0 <= b["f1"] <= 1
    assert scoring.building_summary(evaluated, 0.37)["threshold"] == 0.4
    groups = ev.group_rows(evaluated, fixture_small, 0.5)
    assert sum(g["tiles"] for g in groups) == len(evaluated.tile_ids)
    for fig in (figures.pr_figure(evaluated, 0.5), figures.threshold_figure(evaluated, 0.3),
                figures.confusion_figure(scoring.pixel_summary(evaluated, 0.5))):
        assert fig.to_plotly_json()["data"]


def test_damage_recall_is_the_count_weighted_tile_recall() -> None:
    import pandas as pd

    class Run:
        tiles = pd.DataFrame({"tile_id": ["a", "b", "c"], "dmg_destroyed": [2, 0, 2],
                              "dmg_no_damage": [0, 3, 1]})
        index = {"a": 0, "b": 1, "c": 2}

    n = len(scoring.BUILDING_THRESHOLDS)
    b = np.zeros((3, n, 3), np.int32)
    b[:, :, 0] = [[1], [3], [0]]  # tp
    b[:, :, 2] = [[1], [0], [3]]  # fn → recall a 0.5, b 1.0, c 0.0
    fake = scoring.Evaluation("r", "v", "m", "0" * 64, ["a", "b", "c"], "", "", np.zeros(1001),
                         np.zeros(1001), np.zeros((3, 101)), np.zeros((3, 101)), b, 0.0, "CPU")
    rows = {r["damage"]: r for r in ev.damage_rows(fake, Run(), 0.5)}
    assert rows["destroyed"]["recall"] == pytest.approx((2 * 0.5 + 2 * 0.0) / 4)
    assert rows["no-damage"]["recall"] == pytest.approx((3 * 1.0 + 1 * 0.0) / 4)
    assert rows["destroyed"]["buildings"] == 4 and rows["no-damage"]["tiles"] == 2


def test_evaluate_callbacks(flask_app: Any) -> None:
    evp = sys.modules["app.web.pages.evaluate"]
    run = runs.get_run(runs.default_run_id())
    with flask_app.server.app_context():
        info = runs.model_for(run)
        result = evp.ensure_evaluation(run, info)
        ready = {"key": ev.cache_key(run.run_id, result.version, result.model_sha),
                 "run": run.run_id}
        out = evp.update_metrics(ready, 0.5)
        assert len(out[7]) == len(result.tile_ids) and out[2].to_plotly_json()["data"]
        detail = evp.row_detail({"rowId": result.tile_ids[0], "colId": "tile_id"}, 0.4, ready)
        assert "data:image/png;base64" in _json(detail) and "errors at t = 0.40" in _json(detail)
        assert evp.update_metrics(None, 0.5)[0] is not None  # no_update




def test_page_headline_is_the_whole_scene_score(flask_app: Any, tmp_path: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose dataset is on disk: cards, curves and groups show ``evaluate_dataset``'s
    numbers (the CLI's), the per-tile table stays per tile."""
    from app import config
    from app.data.base import Scene
    from app.data.dataset import write_dataset
    from app.pipeline import run_embed

    evp = sys.modules["app.web.pages.evaluate"]
    rng = np.random.default_rng(3)
    mask = np.zeros((56, 80), np.uint8)
    mask[10:30, 20:50] = 1
    image = rng.integers(0, 255, (56, 80, 3)).astype(np.uint8)
    dataset = write_dataset([Scene("s0", "synthetic", image, mask, [], {"phase": "pre"})],
                            tmp_path / "datasets" / "small", name="small", source="synthetic",
                            tile_size=32, overlap=8, fractions=(1.0, 0.0, 0.0), progress=False)
    monkeypatch.setattr(config, "DATASETS_DIR", dataset.parent)
    root = runs.embeddings_root()
    run_embed("fixture-model", dataset, "small-run", embeddings_root=root, progress=False)
    try:
        run = runs.get_run("small-run")
        with flask_app.server.app_context():
            info = runs.model_for(run)
            score, key, note = evp.ensure_scene_score(run, info)
            assert key and not note and score.n_pixels == 56 * 80
            direct = scoring.evaluate_dataset(info.service, dataset, splits=None)
            assert score.to_dict()["overall"] == direct.to_dict()["overall"]
            assert evp.ensure_scene_score(run, info)[1] == key  # cached
            monkeypatch.setattr(ev, "MAX_SCENE_TILES", 5)  # 6 tiles: too many to score here
            assert ev.run_scene_evaluation(run, info.service) is None
            _, subtitle, *_ = evp.evaluate_run(lambda _: None, "small-run")
            assert subtitle.startswith("6 tiles") and "scene tiles are more than the page " \
                "scores (5)" in subtitle
            monkeypatch.setattr(ev, "MAX_SCENE_TILES", 4000)
            progress: list[tuple] = []
            ready, subtitle, empty, _, style = evp.evaluate_run(progress.append, "small-run")
            assert ready["scene_key"] == key and empty is None and style == {}
            assert subtitle.startswith("Scores: 1 whole scene (train, val, test) of dataset small")
            assert "per-tile table: 6 tiles (all tiles with ground truth" in subtitle
            assert subtitle.endswith(" · model fixture-model · its training data is not recorded")
            out = evp.update_metrics(ready, 0.5)
    finally:
        shutil.rmtree(root / "small-run")
    s = direct.scores(0.5)
    cards = _json(out[0])
    assert f"{s['f1']:.3f}" in cards and f"{s['iou']:.3f}" in cards and f"{56 * 80:,}" in cards
    assert "summed over whole scenes" in _json(out[1]) and "Scenes" in _json(out[5])
    assert len(out[7]) == 6  # the per-tile table is still per tile: 3 x 2 overlapping tiles
