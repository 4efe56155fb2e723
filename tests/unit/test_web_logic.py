"""Plain helpers of the explore and clusters pages: colouring, neighbours, paging, clusters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.artifacts import EmbeddingsRun
from app.ml import apply, registry
from app.web import runs, theme
from app.web.logic import clusters, explore
from app.web.logic import tiles as tile_logic
from tests.fixture_run import shared_fixture_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingsRun:
    root = tmp_path_factory.getbasetemp() / "web-fixture"
    run_id = shared_fixture_run(root)
    return EmbeddingsRun.open(run_id, root, check_model=False)


@pytest.fixture()
def run_copy(run: EmbeddingsRun, tmp_path: Path) -> EmbeddingsRun:
    shutil.copytree(run.path, tmp_path / run.run_id)
    return EmbeddingsRun.open(run.run_id, tmp_path, check_model=False)


# --------------------------------------------------------------------------- maps


def test_methods_axis_titles_and_pca_variance(run: EmbeddingsRun) -> None:
    assert tile_logic.available_methods(run.tiles) == ["pca", "tsne", "umap"]
    variance = tile_logic.explained_variance(run)
    assert variance is not None and len(variance) == 2 and 0 < variance[1] <= variance[0] < 1
    x_title, y_title = tile_logic.axis_titles("pca", variance)
    assert x_title == f"PCA 1 ({variance[0] * 100:.0f} % var.)"
    assert y_title.startswith("PCA 2 (")
    assert tile_logic.axis_titles("tsne", variance) == ("t-SNE 1", "t-SNE 2")
    assert tile_logic.axis_titles("pca", None) == ("PCA 1", "PCA 2")
    x, y = tile_logic.map_coords(run.tiles, "umap")
    assert x.dtype == np.float32 and len(x) == len(run.tiles)


def test_overview_rows_are_a_fixed_sample() -> None:
    assert tile_logic.overview_rows(100, 200) is None
    a, b = tile_logic.overview_rows(1000, 100), tile_logic.overview_rows(1000, 100)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 100 and (np.diff(a) > 0).all()


# --------------------------------------------------------------------------- colouring


def test_colour_options_follow_the_columns(run: EmbeddingsRun) -> None:
    values = [o["value"] for o in tile_logic.colour_options(run.tiles)]
    assert values[0] == "cluster"
    for key in ("disaster", "phase", "damage", "true_fraction", "pred_fraction", "iou",
                "silhouette", "split", "source"):
        assert key in values
    bare = pd.DataFrame({"tile_id": ["a"], "iou": [np.nan]})
    assert tile_logic.colour_options(bare) == []


def test_categorical_spec_orders_and_counts() -> None:
    tiles = pd.DataFrame({"phase": ["post", "pre", None, "pre"], "cluster": [2, 0, 2, 1]})
    spec = tile_logic.colour_spec(tiles, "phase")
    assert spec.kind == "categorical"
    assert spec.categories == ["pre", "post", "unknown"]  # fixed order, missing last
    assert spec.counts == [2, 1, 1]
    assert [spec.categories[c] for c in spec.values] == ["post", "pre", "unknown", "pre"]
    assert spec.colours[2] == theme.GREY
    clusters = tile_logic.colour_spec(tiles, "cluster")
    assert clusters.categories == ["Cluster 0", "Cluster 1", "Cluster 2"]
    assert clusters.colours == [theme.cluster_colour(c) for c in (0, 1, 2)]
    relabelled = tile_logic.colour_spec(tiles, "cluster", labels=np.array([1, 1, 0, 0]))
    assert relabelled.counts == [2, 2]


def test_many_categories_fold_into_other() -> None:
    tiles = pd.DataFrame({"disaster": [f"d{i:02d}" for i in range(30)] + ["d00"] * 5})
    spec = tile_logic.colour_spec(tiles, "disaster")
    assert len(spec.categories) == tile_logic.MAX_CATEGORIES and spec.categories[-1] == "other"
    assert spec.categories[0] == "d00" and sum(spec.counts) == 35


def test_continuous_spec_ranges() -> None:
    tiles = pd.DataFrame({"iou": [0.2, np.nan, 0.4], "silhouette": [-0.1, 0.3, 0.2],
                          "true_fraction": [0.0, 0.05, 0.1]})
    iou = tile_logic.colour_spec(tiles, "iou")
    assert (iou.cmin, iou.cmax) == (0.0, 1.0) and np.isnan(iou.values[1])
    sil = tile_logic.colour_spec(tiles, "silhouette")
    assert sil.cmin == pytest.approx(-0.3) and sil.cmax == pytest.approx(0.3)
    assert sil.colorscale == "RdBu"
    frac = tile_logic.colour_spec(tiles, "true_fraction")
    assert frac.cmin == 0.0 and frac.cmax == pytest.approx(0.1) and frac.tickformat == ".0%"
    with pytest.raises(KeyError):
        tile_logic.colour_spec(tiles, "nope")


def test_dominant_damage() -> None:
    tiles = pd.DataFrame({"dmg_no_damage": [3, 0, 0], "dmg_destroyed": [1, 2, 0]})
    assert tile_logic.dominant_damage(tiles).tolist() == ["no-damage", "destroyed", "none"]
    spec = tile_logic.colour_spec(tiles, "damage")
    assert spec.categories == ["no-damage", "destroyed", "none"]
    assert spec.colours[1] == theme.DAMAGE_COLOURS["destroyed"]


# --------------------------------------------------------------------------- tiles


def test_tile_record_is_json_friendly(run: EmbeddingsRun) -> None:
    rec = tile_logic.tile_record(run.tiles, 0)
    json.dumps(rec)
    assert rec["tile_id"] == run.tiles["tile_id"].iat[0]
    assert set(rec["damage"]) == {"no-damage", "minor-damage", "major-damage", "destroyed",
                                  "un-classified"}
    tiles = run.tiles.copy()
    tiles.loc[0, "iou"] = np.nan
    assert tile_logic.tile_record(tiles, 0)["iou"] is None


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_neighbours_match_brute_force(run: EmbeddingsRun, metric: str) -> None:
    vec = runs.Vectors(
        data=np.asarray(run.vectors, np.float32),
        norms=np.linalg.norm(np.asarray(run.vectors, np.float32), axis=1),
        sqnorms=np.sum(np.asarray(run.vectors, np.float32) ** 2, axis=1),
    )
    row = 17
    got = tile_logic.nearest_neighbours(vec, row, 8, metric)
    data = vec.data.astype(np.float64)
    if metric == "cosine":
        unit = data / np.linalg.norm(data, axis=1, keepdims=True)
        score = unit @ unit[row]
        order = np.argsort(-score)
    else:
        score = np.linalg.norm(data - data[row], axis=1)
        order = np.argsort(score)
    expected = [int(i) for i in order if i != row][:8]
    assert [r for r, _ in got] == expected
    np.testing.assert_allclose([s for _, s in got], score[expected], rtol=1e-4, atol=1e-4)
    assert row not in [r for r, _ in got]
    with pytest.raises(ValueError):
        tile_logic.nearest_neighbours(vec, row, 3, "manhattan")


def test_neighbours_are_clamped_to_the_run() -> None:
    data = np.eye(3, dtype=np.float32)
    vec = runs.Vectors(data=data, norms=np.ones(3, np.float32), sqnorms=np.ones(3, np.float32))
    assert len(tile_logic.nearest_neighbours(vec, 0, 10)) == 2
    one = runs.Vectors(data=data[:1], norms=np.ones(1, np.float32), sqnorms=np.ones(1, np.float32))
    assert tile_logic.nearest_neighbours(one, 0, 5) == []


def test_paging_and_selection_helpers(run: EmbeddingsRun) -> None:
    items = list(range(50))
    assert tile_logic.page_of(items, 0) == (items[:24], 0, 3)
    assert tile_logic.page_of(items, 2) == (items[48:], 2, 3)
    assert tile_logic.page_of(items, 99)[1] == 2 and tile_logic.page_of(items, -3)[1] == 0
    assert tile_logic.page_of([], 0) == ([], 0, 1)
    ids = run.tiles["tile_id"].tolist()
    chosen = explore.known_ids(run.index, [ids[3], "nope", ids[3], 7, None, ids[1]])
    assert chosen == [ids[3], ids[1]]
    assert explore.known_ids(run.index, "not a list") == []
    csv = explore.selection_csv(run.tiles, run.index, chosen + ["../etc/passwd"])
    lines = csv.strip().splitlines()
    assert lines[0].split(",")[0] == "tile_id" and "iou" in lines[0]
    assert [line.split(",")[0] for line in lines[1:]] == chosen


# --------------------------------------------------------------------------- clusters


def test_labels_come_from_the_sweep_then_recluster(run: EmbeddingsRun, monkeypatch) -> None:
    sweep = run.sweep
    k0 = sweep["k"][0]
    labels, source = clusters.labels_for_k(run, k0)
    np.testing.assert_array_equal(labels, run.sweep_labels[0])
    assert source == "stored sweep"
    calls = []

    def fake_recluster(r, k):
        calls.append(k)
        return np.arange(len(r.tiles)) % k

    monkeypatch.setattr(clusters, "recluster", fake_recluster)
    labels, source = clusters.labels_for_k(run, 9)
    assert calls == [9] and source == "re-clustered" and labels.max() == 8


def test_a_k_outside_the_sweep_is_fitted_like_the_sweep(run: EmbeddingsRun) -> None:
    labels, source = clusters.labels_for_k(run, 7)
    assert source == "re-clustered" and len(np.unique(labels)) == 7
    np.testing.assert_array_equal(labels, apply.recluster(run, 7))  # the one K-means fit
    assert len(labels) == len(run.tiles)
    assert 7 in clusters.k_choices(run) and 10 in clusters.k_choices(run)
    assert clusters.default_k(run) == run.sweep["chosen_k"]


def test_silhouette_stored_or_sampled(run: EmbeddingsRun) -> None:
    from sklearn.metrics import silhouette_score

    chosen = clusters.labels_for_k(run, run.sweep["chosen_k"])[0]
    rows, values, exact = clusters.silhouette_values(run, chosen, run.sweep["chosen_k"])
    assert exact and len(rows) == len(run.tiles)
    np.testing.assert_allclose(values, run.tiles["silhouette"].to_numpy(), rtol=1e-6)
    other = clusters.labels_for_k(run, run.sweep["k"][0])[0]
    rows, values, exact = clusters.silhouette_values(run, other, 2)
    assert exact and float(values.mean()) == pytest.approx(
        silhouette_score(np.asarray(run.vectors, np.float32), other), abs=1e-4)
    rows, values, exact = clusters.silhouette_values(run, other, 2, max_samples=100)
    assert not exact and len(rows) == 100 == len(values)
    assert values.min() >= -1 and values.max() <= 1


def test_cluster_summaries(run: EmbeddingsRun) -> None:
    labels = clusters.labels_for_k(run, 4)[0]
    data = np.asarray(run.vectors, np.float32)
    summaries = clusters.cluster_summaries(run.tiles, labels, data, n_nearest=3)
    assert [s["cluster"] for s in summaries] == sorted(set(labels.tolist()))
    assert sum(s["size"] for s in summaries) == len(run.tiles)
    for s in summaries:
        members = data[s["order"]]
        dist = np.linalg.norm(members - members.mean(axis=0), axis=1)
        assert (np.diff(dist) >= -1e-5).all()  # nearest the centroid first
        assert s["nearest"] == run.tiles["tile_id"].iloc[s["order"][:3]].tolist()
        assert 0 <= s["means"]["iou"] <= 1
        assert set(s["damage"]) >= {"no-damage", "destroyed"}
        json.dumps({k: v for k, v in s.items()})


def test_agreement_tables_stored_or_computed(run_copy: EmbeddingsRun) -> None:
    stored = clusters.agreement_tables(run_copy)
    assert set(stored) == {"has_building", "phase"}
    assert [r["k"] for r in stored["has_building"]] == run_copy.sweep["k"]
    assert {"precision", "recall", "ari", "nmi"} <= set(stored["phase"][0])
    sweep_path = run_copy.path / "reduced" / "sweep.json"
    sweep = json.loads(sweep_path.read_text())
    del sweep["agreement"]
    sweep_path.write_text(json.dumps(sweep))
    fresh = EmbeddingsRun.open(run_copy.run_id, run_copy.path.parent, check_model=False)
    computed = clusters.agreement_tables(fresh)
    assert list(computed) == ["has_building"]
    for a, b in zip(stored["has_building"], computed["has_building"], strict=True):
        assert a["k"] == b["k"]
        assert a["precision"] == pytest.approx(b["precision"])
        assert a["recall"] == pytest.approx(b["recall"])
        assert b["silhouette"] == pytest.approx(a["silhouette"])
    # a plain list of rows is accepted too
    sweep["agreement"] = [{"k": 2, "label": "phase", "precision": 0.5}]
    sweep_path.write_text(json.dumps(sweep))
    fresh = EmbeddingsRun.open(run_copy.run_id, run_copy.path.parent, check_model=False)
    assert clusters.agreement_tables(fresh) == {"phase": sweep["agreement"]}


def test_pca_variance_from_the_reducer_file(run_copy: EmbeddingsRun) -> None:
    sweep_path = run_copy.path / "reduced" / "sweep.json"
    sweep = json.loads(sweep_path.read_text())
    del sweep["diagnostics"]
    sweep_path.write_text(json.dumps(sweep))
    fresh = EmbeddingsRun.open(run_copy.run_id, run_copy.path.parent, check_model=False)
    assert tile_logic.explained_variance(fresh) is None
    fresh.reducer_dir().mkdir(parents=True)
    np.savez(fresh.reducer_dir() / "pca.npz", explained_variance_ratio=np.array([0.5, 0.25]))
    assert tile_logic.explained_variance(fresh) == [0.5, 0.25]
    assert tile_logic.axis_titles("pca", [0.5, 0.25]) == ("PCA 1 (50 % var.)", "PCA 2 (25 % var.)")


# --------------------------------------------------------------------------- registries


def test_a_registered_reducer_and_explainer_appear_on_the_pages() -> None:
    """One registration each: the pages list, label and offer the new methods."""
    registry.register_reducer(registry.ReducerSpec(
        name="dummy", label="Dummy map", description="test", fit=lambda X, **_: None))
    registry.register_explainer(registry.ExplainerSpec(
        name="dummy-cam", label="Dummy CAM", description="test", function=lambda *a, **k: None))
    try:
        frame = pd.DataFrame({"dummy_x": [0.0, 1.0], "dummy_y": [1.0, 0.0]})
        assert tile_logic.available_methods(frame) == ["dummy"]
        assert theme.method_options(["dummy"]) == [{"label": "Dummy map", "value": "dummy"}]
        assert tile_logic.axis_titles("dummy") == ("Dummy map 1", "Dummy map 2")
        assert {"label": "Dummy CAM", "value": "dummy-cam"} in theme.explainer_options()
    finally:
        registry.unregister("dummy")
        registry.unregister("dummy-cam")
    assert "dummy" not in [o["value"] for o in theme.method_options(registry.reducer_names())]
