"""The out-of-distribution guard: index, calibration and score (``app.ml.ood``), its storage in
``ood/`` (``app.artifacts``, ``app.pipeline.run_ood``, ``python -m app ood``), a run without it,
and the verdict the pages and ``/api/segment`` give on an upload (``app.web.logic.ood``)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app import artifacts, cli, config
from app.artifacts import ArtifactError, EmbeddingsRun
from app.ml import ood
from app.pipeline import run_ood
from app.web.logic import tiles as tile_logic
from tests.fixture_run import make_fixture_run


def _blobs(n_train: int = 120, n_cal: int = 40, dims: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (n_train + n_cal, dims)).astype(np.float32) + 3.0
    ids = [f"t{i:04d}" for i in range(len(X))]
    splits = ["train"] * n_train + ["val", "test"] * (n_cal // 2)
    return X, ids, splits


# --------------------------------------------------------------------------- index and score


@pytest.mark.parametrize("metric", ood.METRICS)
def test_far_vectors_score_high_and_held_out_ones_spread(metric: str) -> None:
    X, ids, splits = _blobs()
    index, scores = ood.fit_ood_index(X, ids, splits, k=5, metric=metric)
    assert index.train_vectors.shape == (120, 8) and len(index.calibration) == 40
    assert (np.diff(index.calibration) >= 0).all()
    held = scores.score[120:]
    assert held.min() < 20 and held.max() > 80  # the calibration tiles spread over 0..100
    assert (scores.distance[:120] > 0).all()  # training tiles leave themselves out
    assert all(str(index.train_ids[r]) != ids[i] for i, r in enumerate(scores.nearest[:120, 0]))
    rng = np.random.default_rng(1)
    far = rng.normal(0, 1, (5, 8)).astype(np.float32) * 4 - 20
    if metric == "cosine":
        far = -X[:5]  # the opposite direction
    out = index.score(far)
    assert (out.score == 100).all() and all(index.is_ood(s) for s in out.score)
    near = index.score(X[:3] + 0.01)
    assert near.nearest.shape == (3, 5) and (np.diff(near.nearest_distance, axis=1) >= 0).all()
    assert (near.nearest[:, 0] == [0, 1, 2]).all()  # a training tile's copy finds it first
    one, _ = ood.fit_ood_index(X, ids, splits, k=1, metric=metric)
    assert (one.score(X[:3] + 0.01).score < 10).all()


def test_percentile_counts_ties_half_and_bounds() -> None:
    X, ids, splits = _blobs()
    index, _ = ood.fit_ood_index(X, ids, splits)
    cal = index.calibration
    assert index.percentile_of(np.array([cal[0] - 1]))[0] == 0
    assert index.percentile_of(np.array([cal[-1] + 1]))[0] == 100
    assert index.percentile_of(np.array([cal[19]]))[0] == pytest.approx(100 * 39 / 80)


def test_search_in_chunks_gives_the_same_neighbours(monkeypatch) -> None:
    X, ids, splits = _blobs()
    whole, whole_scores = ood.fit_ood_index(X, ids, splits)
    monkeypatch.setattr(ood, "_CHUNK_CELLS", 120 * 16)  # 16 queries at a time
    chunked, chunked_scores = ood.fit_ood_index(X, ids, splits)
    np.testing.assert_array_equal(whole_scores.nearest, chunked_scores.nearest)
    np.testing.assert_allclose(whole.calibration, chunked.calibration, rtol=1e-5)


def test_max_train_samples_the_index_with_the_seed() -> None:
    X, ids, splits = _blobs(n_train=200)
    a, _ = ood.fit_ood_index(X, ids, splits, max_train=50, random_state=3)
    b, _ = ood.fit_ood_index(X, ids, splits, max_train=50, random_state=3)
    assert len(a.train_ids) == 50 and a.info["train_sampled"]
    assert (a.train_ids == b.train_ids).all()


@pytest.mark.parametrize(("params", "needle"), [
    ({"k": 0}, "The 'k' parameter must be an int in [1, 50]. Got 0 instead."),
    ({"k": "5"}, "'k' parameter"),
    ({"k": True}, "'k' parameter"),
    ({"metric": "manhattan"}, "The 'metric' parameter must be one of"),
    ({"representation": "spp"}, "'representation' parameter"),
    ({"percentile": 100}, "The 'percentile' parameter must be a number in [50, 100)"),
    ({"train_splits": "train"}, "'train_splits' parameter"),
    ({"calibration_splits": ["train"]}, "must not share"),
    ({"max_train": 3}, "'max_train' parameter"),
    ({"random_state": 1.5}, "'random_state' parameter"),
    ({"kk": 3}, "Unknown OOD parameter"),
])
def test_bad_parameters_are_named(params: dict, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        ood.validate_params(params)
    assert needle in str(err.value)


def test_too_few_tiles_and_bad_vectors_say_what_is_needed() -> None:
    X, ids, splits = _blobs(n_train=120, n_cal=6)
    with pytest.raises(ValueError, match="at least 10 held-out tiles"):
        ood.fit_ood_index(X, ids, splits)
    X, ids, splits = _blobs(n_train=4)
    with pytest.raises(ValueError, match="more than k = 5 tiles"):
        ood.fit_ood_index(X, ids, splits)
    X, ids, splits = _blobs()
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ood.fit_ood_index(X, ids, splits)
    X, ids, splits = _blobs()
    index, _ = ood.fit_ood_index(X, ids, splits)
    with pytest.raises(ValueError, match="must have 8 values"):
        index.score(np.zeros((1, 5), np.float32))


def test_image_tiles_cover_the_image_in_tile_size() -> None:
    img = np.zeros((300, 200, 3), np.uint8)
    tiles = ood.image_tiles(img, 128)
    assert len(tiles) == 3 * 2 and {t.shape for t in tiles} == {(128, 128, 3)}
    small = ood.image_tiles(np.zeros((40, 50, 3), np.uint8), 128)
    assert len(small) == 1 and small[0].shape == (48, 64, 3)  # padded to /16, kept whole


def test_trained_on_says_what_the_manifest_says() -> None:
    demo = json.loads((config.MODEL_STORE / "demo-light" / artifacts.MANIFEST).read_text())
    assert ood.trained_on(demo) == ("demo model · trained on 448 tiles of 14 synthetic "
                                    "locations (6 more held out)")
    assert ood.trained_on({"run_id": "mine", "imported": {"source_name": "u.keras"}}) == (
        "imported model mine (u.keras) · its training data is not recorded")
    assert "trained on 80 xbd tiles" in ood.trained_on(
        {"run_id": "x", "dataset": {"source": "xbd", "counts": {"train": 80}}})
    assert "not recorded" in ood.trained_on(None)


# --------------------------------------------------------------------------- storage


@pytest.fixture()
def fixture_root(tmp_path: Path) -> tuple[Path, str]:
    run_id = make_fixture_run(tmp_path, n=60, seed=0, run_id="ood-run", images=False)
    return tmp_path, run_id


def test_run_ood_stores_index_scores_and_manifest(fixture_root) -> None:
    root, run_id = fixture_root
    entry = run_ood(run_id, {"k": 3, "metric": "euclidean"}, embeddings_root=root, progress=False)
    run = EmbeddingsRun.open(run_id, root, check_model=False)
    assert run.ood_problem() is None
    assert set(entry["files"]) == {"ood/index.npz", "ood/scores.parquet"}
    assert run.manifest["ood"]["params"]["k"] == 3 and entry["params"]["representation"] == "gap"
    assert entry["info"]["n_train"] == 20 and entry["info"]["n_calibration"] == 40
    tiles = run.tiles
    assert {"ood_score", "ood_distance", "ood_nearest"} <= set(tiles.columns)
    assert tiles["ood_score"].between(0, 100).all()
    index = ood.load_ood(run)
    assert "train_vectors" not in run.ood_arrays()  # the run's own vectors are not copied
    held = tiles["split"].isin(["val", "test"]).to_numpy()
    again = index.score(run.vectors_float32()[held])
    np.testing.assert_allclose(again.distance, tiles["ood_distance"].to_numpy()[held], rtol=1e-4)
    # float noise of another batch shape may move a distance past its neighbour in the ranking
    np.testing.assert_allclose(again.score, tiles["ood_score"].to_numpy()[held], atol=1.26)
    # the score is offered on the maps and in the hover card
    assert "ood_score" in [o["value"] for o in tile_logic.colour_options(tiles)]
    spec = tile_logic.colour_spec(tiles, "ood_score")
    assert (spec.cmin, spec.cmax) == (0.0, 100.0)
    rec = tile_logic.tile_record(tiles, 0)
    assert rec["ood_score"] == pytest.approx(float(tiles["ood_score"].iat[0]))
    assert rec["ood_nearest"] in set(index.train_ids)


def test_stored_index_is_hash_checked_and_loaded_without_pickle(fixture_root) -> None:
    root, run_id = fixture_root
    run_ood(run_id, {"metric": "mahalanobis"}, embeddings_root=root, progress=False)
    path = root / run_id / artifacts.OOD_DIR / artifacts.OOD_INDEX_FILE
    first = path.read_bytes()
    run_ood(run_id, {"metric": "mahalanobis"}, embeddings_root=root, progress=False)
    assert path.read_bytes() == first  # deterministic bytes (a committed demo stays stable)
    run = EmbeddingsRun.open(run_id, root, check_model=False)
    index = ood.load_ood(run)
    assert index.whiten is not None and index.params["metric"] == "mahalanobis"
    path.write_bytes(first[:-10] + b"0123456789")
    fresh = EmbeddingsRun.open(run_id, root, check_model=False)
    with pytest.raises(ArtifactError, match="SHA-256 mismatch"):
        ood.load_ood(fresh)
    with np.load(io.BytesIO(first), allow_pickle=False) as npz:
        assert {"train_ids", "train_rows", "calibration", "mean", "whiten"} <= set(npz.files)


def test_a_run_without_ood_files_degrades_with_a_message(fixture_root) -> None:
    from app.web.logic import ood as ood_logic

    root, run_id = fixture_root
    run = EmbeddingsRun.open(run_id, root, check_model=False)
    problem = run.ood_problem()
    assert problem and f"python -m app ood {run_id}" in problem
    assert "ood_score" not in run.tiles
    assert "ood_score" not in [o["value"] for o in tile_logic.colour_options(run.tiles)]
    with pytest.raises(ArtifactError, match="no out-of-distribution guard"):
        ood.load_ood(run)
    verdict = ood_logic.check_image(run, object(), np.zeros((32, 32, 3), np.uint8))
    assert verdict["available"] is False and "python -m app ood" in verdict["message"]
    # a run the guard cannot be fitted on records why (reduce goes on)
    entry = run_ood(run_id, {"calibration_splits": ["nope"]}, embeddings_root=root,
                    progress=False, skip_unfit=True)
    assert "held-out" in entry["skipped"]
    run = EmbeddingsRun.open(run_id, root, check_model=False)
    assert "held-out" in run.ood_problem()
    with pytest.raises(ValueError, match="held-out"):
        run_ood(run_id, {"calibration_splits": ["nope"]}, embeddings_root=root, progress=False)


def test_a_stale_scores_table_is_left_out(fixture_root) -> None:
    root, run_id = fixture_root
    run_ood(run_id, embeddings_root=root, progress=False)
    path = root / run_id / artifacts.OOD_DIR / artifacts.OOD_SCORES_FILE
    pd.read_parquet(path).iloc[:10].to_parquet(path)
    run = EmbeddingsRun.open(run_id, root, check_model=False)
    assert "ood_score" not in run.tiles and len(run.tiles) == 60


def test_cli_ood_fits_and_rejects_bad_parameters(fixture_root, monkeypatch, capsys) -> None:
    root, run_id = fixture_root
    monkeypatch.setattr(config, "EMBEDDINGS_DIR", root)
    assert cli.main(["ood", run_id, "--k", "4", "--metric", "cosine"]) == 0
    out = capsys.readouterr().out
    assert "20 training tiles indexed, 40 held-out tiles" in out and "k = 4" in out
    assert cli.main(["ood", run_id, "--k", "0"]) == 2
    assert "The 'k' parameter must be an int in [1, 50]. Got 0 instead." in capsys.readouterr().err
    manifest = json.loads((root / run_id / artifacts.MANIFEST).read_text())
    assert manifest["ood"]["params"]["k"] == 4  # the failed call changed nothing


# --------------------------------------------------------------------------- uploads


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, str, Any]:
    """A tiny untrained U-Net, a small synthetic dataset embedded with it, reduced to PCA, with
    its guard: (store, root, model run, embeddings run, dataset)."""
    from app.data.dataset import TileDataset
    from app.pipeline import run_embed, run_reduce
    from tests.serving import tiny_model_run

    base = tmp_path_factory.mktemp("ood-real")
    store, root, ds = base / "models", base / "emb", base / "ds"
    model_run = tiny_model_run(store)
    assert cli.main(["make-dataset", "--source", "synthetic", "--n-locations", "6",
                     "--scene-size", "128", "--tile-size", "64", "--seed", "3",
                     "--name", "tiny", "--out", str(ds)]) == 0
    run_embed(model_run, ds, "tiny-emb", embeddings_root=root, model_store=store,
              batch_size=32, progress=False)
    run_reduce("tiny-emb", methods=["pca"], also_3d=False, k_values=[2, 3],
               embeddings_root=root, model_store=store, progress=False)
    return store, root, model_run, "tiny-emb", TileDataset.open(ds)


def _far_image() -> np.ndarray:
    """Unlike any synthetic scene: saturated magenta and cyan stripes."""
    img = np.zeros((128, 128, 3), np.uint8)
    img[:, :, 0] = 255
    img[:, :, 2] = 255
    img[::8] = (0, 255, 255)
    return img


def test_reduce_fits_the_guard_and_uploads_get_a_verdict(real_run, monkeypatch) -> None:
    from app.ml.inference import ModelService, ResultCache
    from app.web.logic import ood as ood_logic

    store, root, model_run, run_id, ds = real_run
    monkeypatch.setattr(config, "MODEL_STORE", store)
    run = EmbeddingsRun.open(run_id, root, model_store=store)
    assert run.manifest["ood"]["params"]["metric"] == ood.DEFAULTS["metric"]
    assert "ood_score" in run.tiles
    service = ModelService(model_run, store=store, cache=ResultCache())
    far = ood_logic.check_image(run, service, _far_image())
    assert far["available"] and far["ood"] is True and far["score"] > 99
    assert far["message"].startswith(ood_logic.WARNING)
    assert far["nearest"] and far["nearest"][0][0] in far["message"]
    assert far["trained_on"].startswith(f"model {model_run}")
    train_tile = run.tiles.loc[run.tiles["split"] == "train", "tile_id"].iat[0]
    seen = ood_logic.check_image(run, service, ds.image(train_tile))
    assert seen["available"] and seen["ood"] is False and seen["score"] < 50
    assert seen["message"].startswith("Out-of-distribution score")
    assert ood_logic.headers(far)["X-OOD"] == "out-of-distribution"
    other = ModelService(model=service.model, cache=ResultCache())  # not the run's model file
    wrong = ood_logic.check_image(run, other, _far_image())
    assert wrong["available"] is False and "belongs to model" in wrong["message"]


def test_another_pooling_is_recomputed_from_the_stored_tiles(real_run, monkeypatch) -> None:
    """``representation="avgmax"`` re-embeds the run's stored tiles with its model, stores those
    vectors with the index (the run holds GAP), and scores uploads the same way."""
    from app.ml.inference import ModelService, ResultCache
    from app.web.logic import ood as ood_logic

    store, root, model_run, run_id, ds = real_run
    monkeypatch.setattr(config, "MODEL_STORE", store)
    try:
        entry = run_ood(run_id, {"representation": "avgmax", "metric": "cosine"},
                        embeddings_root=root, model_store=store, progress=False)
        run = EmbeddingsRun.open(run_id, root, model_store=store)
        dims = run.manifest["counts"]["dims"]
        assert entry["params"]["representation"] == "avgmax"
        assert entry["params"]["dims"] == 2 * dims
        arrays = run.ood_arrays()
        assert arrays["train_vectors"].shape[1] == 2 * dims
        service = ModelService(model_run, store=store, cache=ResultCache())
        far = ood_logic.check_image(run, service, _far_image())
        assert far["available"] and far["ood"] is True
        train_tile = run.tiles.loc[run.tiles["split"] == "train", "tile_id"].iat[0]
        seen = ood_logic.check_image(run, service, ds.image(train_tile))
        assert seen["available"] and seen["score"] < 50
    finally:  # the other tests of the module expect the default guard
        run_ood(run_id, embeddings_root=root, model_store=store, progress=False)


def test_hover_card_shows_the_score(fixture_root) -> None:
    from app.web.components import tooltip

    root, run_id = fixture_root
    run_ood(run_id, embeddings_root=root, progress=False)
    run = EmbeddingsRun.open(run_id, root, check_model=False)
    rec = tile_logic.tile_record(run.tiles, 5)
    text = json.dumps(tooltip(run_id, "v", rec), default=lambda o: o.to_plotly_json())
    assert "OOD score" in text and f"{rec['ood_score']:.0f}" in text


def test_segment_page_and_api_show_the_warning(real_run, monkeypatch) -> None:
    from PIL import Image

    from app.ml import inference
    from app.web import uploads
    from app.web.components import ood_block
    from app.web.logic import segment as seg
    from tests.webapp import built_app

    store, root, model_run, run_id, _ = real_run
    monkeypatch.setattr(config, "MODEL_STORE", store)
    inference.forget_services()
    app = built_app(embeddings_run=run_id, embeddings_root=root,
                    cache_config={"CACHE_TYPE": "SimpleCache"})
    client = app.server.test_client()
    buf = io.BytesIO()
    Image.fromarray(_far_image()).save(buf, "PNG")
    r = client.post("/api/segment", data=buf.getvalue(), content_type="image/png")
    assert r.status_code == 200, r.json
    body = r.json
    assert body["ood"]["available"] and body["ood"]["ood"] is True
    assert body["ood"]["score"] > 99 and body["ood"]["nearest"]
    assert body["trained_on"].startswith(f"model {model_run}")
    r = client.post("/api/segment?format=png", data=buf.getvalue(), content_type="image/png")
    assert r.headers["X-OOD"] == "out-of-distribution" and float(r.headers["X-OOD-Score"]) > 99
    assert r.headers["X-OOD-Nearest"]
    with app.server.app_context():
        from app.web import runs

        run = runs.get_run(run_id)
        info = runs.model_for(run)
        up = uploads.Upload(image=_far_image(), name="stripes.png", nbytes=100)
        res = seg.analyse(up, run, info.service)
    assert res.ood["ood"] is True
    block = json.dumps(ood_block(res.ood), default=lambda o: o.to_plotly_json(),
                       ensure_ascii=False)
    assert "unlike every tile the model was trained on" in block
    assert f"model {model_run}" in block
    inference.forget_services()


def test_ood_block_without_a_guard_still_says_what_the_model_was_trained_on() -> None:
    from app.web.components import ood_block

    block = ood_block({"available": False, "trained_on": "demo model · trained on x",
                       "message": "No guard."})
    text = json.dumps(block, default=lambda o: o.to_plotly_json(), ensure_ascii=False)
    assert "demo model · trained on x" in text and "No guard." in text
    assert "ood-warning" not in text
    assert ood_block(None) == []


def test_api_field_is_there_without_a_guard(tmp_path: Path, monkeypatch) -> None:
    """``/api/segment`` still answers (``ood.available`` false, a message) on a run whose
    guard was never built."""
    from tests.serving import linked_run, png_bytes, tiny_model_run
    from tests.webapp import built_app

    store, root = tmp_path / "m", tmp_path / "e"
    model_run = tiny_model_run(store)
    run_id = linked_run(root, store, model_run, n=40)
    monkeypatch.setattr(config, "MODEL_STORE", store)
    from app.ml import inference

    inference.forget_services()
    app = built_app(embeddings_run=run_id, embeddings_root=root,
                    cache_config={"CACHE_TYPE": "SimpleCache"})
    r = app.server.test_client().post("/api/segment", data=png_bytes(32, 32),
                                      content_type="image/png")
    assert r.status_code == 200
    assert r.json["ood"]["available"] is False and "python -m app ood" in r.json["ood"]["message"]
    assert base64.b64decode(r.json["mask_png_base64"])
    inference.forget_services()


def test_bench_evaluates_every_configuration_without_xbd() -> None:
    """``bench.ood``'s measurement on made-up vectors: one row per configuration, AUROCs in
    [0, 1], and a markdown table (the xBD part needs the real data; it is not run here)."""
    from bench import ood as bench_ood

    rng = np.random.default_rng(0)

    def made(n: int, shift: float, splits: list[str], prefix: str) -> Any:
        vec = np.abs(rng.normal(1 + shift, 1, (n, 16))).astype(np.float32)
        tiles = pd.DataFrame({
            "tile_id": [f"{prefix}{i}" for i in range(n)], "split": splits,
            "scene_id": [f"{prefix}s{i // 4}" for i in range(n)],
            "f1": rng.uniform(0, 1, n)})
        return bench_ood.Embedded(vec, tiles)

    runs = {"demo-synthetic": made(80, 0, ["train"] * 56 + ["val", "test"] * 12, "d"),
            "synth-new": made(24, 0, ["train"] * 24, "n"),
            "xbd": made(32, 3, ["train"] * 32, "x")}
    rows = bench_ood.evaluate(runs)
    assert len(rows) == (len(bench_ood.REPRESENTATIONS) * len(bench_ood.TRANSFORMS)
                         * len(bench_ood.METRICS) * len(bench_ood.KS))
    assert all(0 <= r["auroc_real"] <= 1 and 0 <= r["auroc_f1"] <= 1 for r in rows)
    table = bench_ood.markdown(rows, runs)
    assert table.count("\n| GAP | ") == len(rows) // 2
