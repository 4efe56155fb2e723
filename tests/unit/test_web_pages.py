"""Callbacks of the explore and clusters pages, called as Dash calls them (with ``ctx``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from dash import Patch, no_update

from app.web import ids, runs
from tests.fixture_run import shared_fixture_run
from tests.unit.lens_helpers import call
from tests.webapp import built_app


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    """(explore module, clusters module, run id, app) for an app over the fixture run."""
    root = tmp_path_factory.getbasetemp() / "web-fixture"
    run_id = shared_fixture_run(root)
    app = built_app(embeddings_run=run_id, embeddings_root=root,
                     cache_config={"CACHE_TYPE": "SimpleCache"})
    return (sys.modules["app.web.pages.explore"], sys.modules["app.web.pages.clusters"], run_id,
            app)


def _text(component: Any) -> str:
    return json.dumps(component.to_plotly_json() if hasattr(component, "to_plotly_json")
                      else component, default=lambda o: o.to_plotly_json())


def _count(component: Any, cls: str) -> int:
    return _text(component).count(f'"className": "{cls}"') + _text(component).count(
        f'"className": "{cls} ')


# --------------------------------------------------------------------------- explore


def test_run_controls(env) -> None:
    explore, _, run_id, _ = env
    subtitle, options, colour, methods, method, empty, style = explore.run_controls(
        run_id, None, None)
    assert "300 tiles" in subtitle and "32-d" in subtitle
    assert colour == "cluster" and method == "umap" and empty is None and style == {}
    assert [m["value"] for m in methods] == ["pca", "tsne", "umap"]
    out = explore.run_controls("no-such-run", None, None)
    assert out[-1] == {"display": "none"} and "No embeddings run" in _text(out[-2])


def test_maps_build_once_then_patch(env) -> None:
    explore, _, run_id, _ = env
    run = runs.get_run(run_id)
    *figs, title, built = explore.update_maps(run_id, "umap", "cluster", None, None)
    assert all(not isinstance(f, Patch) for f in figs)
    assert figs[0].data[0].type == "scattergl" and len(figs[0].data[0].customdata) == 300
    assert "UMAP" in title and built["method"] == "umap"
    # new colouring: patches only, no coordinates
    *patches, _, built2 = explore.update_maps(run_id, "umap", "iou", None, built)
    assert all(isinstance(p, Patch) for p in patches) and built2["colour"] == "iou"
    ops = json.loads(json.dumps(patches[0].to_plotly_json()))["operations"]
    assert not any(op["location"][:2] == ["data", 0] and op["location"][-1] in ("x", "y", "customdata")
                   for op in ops)
    # click → highlight ring on every map
    tid = run.tiles["tile_id"].iat[7]
    *patches, _, _ = explore.update_maps(run_id, "umap", "iou", tid, built2)
    ops = patches[0].to_plotly_json()["operations"]
    ring = next(op for op in ops if op["location"] == ["data", 1, "x"])
    assert ring["params"]["value"] == [pytest.approx(float(run.tiles["umap_x"].iat[7]))]
    # another large method: new coordinates, still a patch (ids stay in the browser)
    *patches, _, built3 = explore.update_maps(run_id, "pca", "iou", tid, built2)
    ops = patches[0].to_plotly_json()["operations"]
    assert ["data", 0, "x"] in [op["location"] for op in ops] and built3["method"] == "pca"
    assert patches[1] is not no_update
    # unknown run: nothing changes
    assert explore.update_maps("nope", "umap", "iou", None, None) == (no_update,) * 6


def test_hover_returns_tooltip_or_hides(env) -> None:
    explore, _, run_id, _ = env
    tid = runs.get_run(run_id).tiles["tile_id"].iat[0]
    bbox = {"x0": 1, "x1": 2, "y0": 3, "y1": 4}
    show, got_bbox, children = explore.hover({"points": [{"customdata": tid, "bbox": bbox}]}, run_id)
    assert show is True and got_bbox == bbox
    text = _text(children)
    assert f"/img/{run_id}/thumb/{tid}?v=" in text and f"/img/{run_id}/overlay/{tid}?v=" in text
    assert "IoU" in text and "Precision" in text and tid in text
    assert explore.hover(None, run_id)[0] is False
    assert explore.hover({"points": [{"customdata": "../x", "bbox": bbox}]}, run_id)[0] is False
    assert explore.hover({"points": [{"customdata": [tid], "bbox": bbox}]}, run_id)[0] is True


def test_selection_gallery_pages_and_csv(env) -> None:
    explore, _, run_id, _ = env
    ids_ = runs.get_run(run_id).tiles["tile_id"].tolist()[:30]
    g = explore.G
    out = call(explore.selection_gallery, ids_ + ["evil"], 0, 0, 0, run_id,
               triggered=((ids.EX_SELECTED, "data", ids_),))
    cards, title, label, prev_off, next_off, page, download_off = out
    assert len(cards) == 24 and title == "Selection · 30 tiles"
    assert label.startswith("1–24 of 30") and prev_off and not next_off and page == 0
    assert not download_off
    out = call(explore.selection_gallery, ids_, 0, 1, 0, run_id, triggered=((g["next"], "n_clicks", 1),))
    assert len(out[0]) == 6 and out[5] == 1 and out[4] is True
    out = call(explore.selection_gallery, [], 0, 0, 0, run_id, triggered=((ids.EX_SELECTED, "data", []),))
    assert "Nothing selected" in _text(out[0]) and out[6] is True
    sent = explore.download_selection(1, ids_[:5], run_id)
    assert sent["filename"].endswith("-5.csv") and sent["content"].count("\n") == 6
    assert explore.download_selection(1, [], run_id) is no_update


def test_pick_tile_from_points_and_cards(env) -> None:
    explore, _, run_id, _ = env
    tid = runs.get_run(run_id).tiles["tile_id"].iat[11]
    click = {"points": [{"customdata": tid}]}
    map_id = {"type": ids.EX_MAP, "index": "tsne"}
    assert call(explore.pick_tile, [click], [], run_id, triggered=((map_id, "clickData", click),)) == tid
    card = {"type": ids.TILE_CARD, "index": f"nb|{tid}"}
    assert call(explore.pick_tile, [], [1], run_id, triggered=((card, "n_clicks", 1),)) == tid
    # a card that just appeared (n_clicks 0) or an unknown id changes nothing
    assert call(explore.pick_tile, [], [0], run_id, triggered=((card, "n_clicks", 0),)) is no_update
    bad = {"type": ids.TILE_CARD, "index": "nb|../../etc"}
    assert call(explore.pick_tile, [], [1], run_id, triggered=((bad, "n_clicks", 1),)) is no_update


def test_detail_panel_with_neighbours(env) -> None:
    explore, _, run_id, _ = env
    tid = runs.get_run(run_id).tiles["tile_id"].iat[5]
    panel = explore.tile_detail(tid, "cosine", run_id)
    text = _text(panel)
    assert text.count('"type": "tile-card"') == explore.N_NEIGHBOURS
    assert f"/img/{run_id}/image/{tid}" in text and f"/img/{run_id}/true/{tid}" in text
    assert f"/explain?tile={tid}" in text and "cosine" in text
    assert "euclidean" in _text(explore.tile_detail(tid, "euclidean", run_id))
    assert "Click a point" in _text(explore.tile_detail(None, "cosine", run_id))
    assert "Click a point" in _text(explore.tile_detail("nope", "cosine", run_id))


def test_enlarge_and_small_titles(env) -> None:
    explore, _, run_id, _ = env
    button = {"type": ids.EX_ENLARGE, "index": "pca"}
    assert call(explore.enlarge, [1, 0, 0], triggered=((button, "n_clicks", 1),)) == "pca"
    assert call(explore.enlarge, [0, 0, 0], triggered=((button, "n_clicks", 0),)) is no_update
    titles = explore.small_titles(run_id, [{"type": ids.EX_MAP_TITLE, "index": m}
                                           for m in ("pca", "tsne", "umap")])
    assert titles == ["PCA", "t-SNE", "UMAP"]


# --------------------------------------------------------------------------- clusters


def test_cluster_page_views(env) -> None:
    _, clusters, run_id, app = env
    run = runs.get_run(run_id)
    k = run.sweep["chosen_k"]
    out = clusters.run_controls(run_id, None, None)
    assert out[4] == k and out[1] == 2 and out[2] == 10 and out[6] == "umap"
    assert "best k by silhouette" in out[0]
    assert [o["value"] for o in out[9]] == ["has_building", "phase"] and out[10] == "has_building"
    elbow, sil, table = clusters.sweep_views(run_id, k, "phase")
    assert list(elbow.data[0].x) == run.sweep["k"]
    assert elbow.layout.shapes[0].x0 == k
    text = _text(table)
    assert "current" in text and "NMI" in text and "inertia" not in text
    assert text.count('"type": "Tr"') == len(run.sweep["k"]) + 1
    with app.server.test_request_context():
        fig, built = clusters.cluster_map(run_id, k, "umap", None, None)
        assert len(fig.data[0].customdata) == 300 and built["k"] == k
        patch, built = clusters.cluster_map(run_id, 3, "umap", {"k": 3, "cluster": 1}, built)
        assert isinstance(patch, Patch)
        locations = [op["location"] for op in patch.to_plotly_json()["operations"]]
        assert ["data", 0, "selectedpoints"] in locations and ["data", 0, "x"] not in locations
        silfig = clusters.silhouette_plot(run_id, k)
        assert len(silfig.data) == k
        cards, note = clusters.cluster_cards(run_id, k, None)
        assert len(cards) == k and "stored" in note
        cards, note = clusters.cluster_cards(run_id, 8, {"k": 8, "cluster": 2})
        assert len(cards) == 8 and "re-clustered" in note
        assert "selected" in cards[2].className


def test_pick_cluster_and_member_gallery(env) -> None:
    _, clusters, run_id, app = env
    run = runs.get_run(run_id)
    k = run.sweep["chosen_k"]
    card = {"type": ids.CLUSTER_CARD, "index": 1}
    with app.server.test_request_context():
        picked = call(clusters.pick_cluster, [0, 1], None, run_id, k,
                      triggered=((card, "n_clicks", 1),))
        assert picked == {"k": k, "cluster": 1}
        assert call(clusters.pick_cluster, [0, 0], None, run_id, k,
                    triggered=((card, "n_clicks", 0),)) is no_update
        assert call(clusters.pick_cluster, [], None, run_id, 3,
                    triggered=((ids.CL_K, "value", 3),)) is None
        tid = run.tiles["tile_id"].iat[4]
        click = {"points": [{"customdata": tid}]}
        got = call(clusters.pick_cluster, [], click, run_id, k, triggered=((ids.CL_MAP, "clickData", click),))
        assert got == {"k": k, "cluster": int(run.tiles["cluster"].iat[4])}
        size = int((run.tiles["cluster"] == 1).sum())
        cards, title, label, prev_off, next_off, page = call(
            clusters.member_gallery, picked, 0, 0, 0, run_id,
            triggered=((ids.CL_CLUSTER, "data", picked),))
        assert len(cards) == min(24, size) and f"{size} tiles" in _text(title)
        assert all(c.href.startswith("/?") for c in cards)
        hint = call(clusters.member_gallery, None, 0, 0, 0, run_id,
                    triggered=((ids.CL_CLUSTER, "data", None),))
        assert "No cluster picked" in _text(hint[0])


def test_cached_helpers_use_the_flask_cache(env, monkeypatch) -> None:
    from app.web.logic import clusters

    _, _, run_id, app = env
    run = runs.get_run(run_id)
    calls = []
    real = clusters.labels_for_k

    def counting(r, k):
        calls.append(k)
        return real(r, k)

    monkeypatch.setattr(clusters, "labels_for_k", counting)
    with app.server.test_request_context():
        version = runs.run_version(run)
        first = clusters.cached_labels(run_id, version, 6)
        second = clusters.cached_labels(run_id, version, 6)
        assert calls == [6]
        assert (first[0] == second[0]).all()
        clusters.cached_labels(run_id, "other-version", 6)
        assert calls == [6, 6]


def test_empty_embeddings_folder_gives_empty_states(tmp_path: Path) -> None:
    built_app(embeddings_root=tmp_path, cache_config={"CACHE_TYPE": "SimpleCache"})
    explore = sys.modules["app.web.pages.explore"]
    clusters = sys.modules["app.web.pages.clusters"]
    assert runs.default_run_id() is None
    assert explore.run_controls(None, None, None)[-1] == {"display": "none"}
    assert clusters.run_controls(None, None, None)[-3] == {"display": "none"}


def test_missing_vectors_give_messages_not_spinners(tmp_path: Path) -> None:
    """Without vectors.npy the Explore maps still build (they need only tiles.parquet) with a
    warning that names the file (no absolute path), the detail says why there are no
    neighbours, and Clusters shows an empty state instead of its "Loading…" graphs."""
    from tests.fixture_run import make_fixture_run

    run_id = make_fixture_run(tmp_path, n=40, seed=3, run_id="no-vectors")
    (tmp_path / run_id / "vectors.npy").unlink()
    built_app(embeddings_run=run_id, embeddings_root=tmp_path,
              cache_config={"CACHE_TYPE": "SimpleCache"})
    explore = sys.modules["app.web.pages.explore"]
    clusters = sys.modules["app.web.pages.clusters"]
    subtitle, _, colour, _, method, note, style = explore.run_controls(run_id, None, None)
    assert style == {} and colour and method and "40 tiles" in subtitle
    text = _text(note)
    assert "vectors.npy is missing" in text and "lens-msg-warn" in text
    assert str(tmp_path) not in text and "embeddings/no-vectors/vectors.npy" in text
    *figs, _, built = explore.update_maps(run_id, method, colour, None, None)
    assert len(figs[0].data[0].x) == 40 and built["run"] == run_id
    tid = runs.get_run(run_id).tiles["tile_id"].iat[0]
    detail = _text(explore.tile_detail(tid, "cosine", run_id))
    assert "No neighbours" in detail and "vectors.npy is missing" in detail
    out = clusters.run_controls(run_id, None, None)
    assert out[-3] == {"display": "none"} and "no readable vectors" in _text(out[-4])
    assert str(tmp_path) not in _text(out[-4])
    assert clusters.cluster_map(run_id, 2, "umap", None, None) == (no_update, no_update)
    assert clusters.silhouette_plot(run_id, 2) is no_update
