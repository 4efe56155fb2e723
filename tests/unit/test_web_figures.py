"""Pure Plotly builders: structure, compact payload, patches, no embedded images."""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from dash import Patch
from dash._utils import to_json

from app.web import figures
from app.web.logic import tiles as tile_logic
from app.web.logic.tiles import ColourSpec


def _tiles(n: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    iou = rng.uniform(0, 1, n)
    iou[:3] = np.nan
    return pd.DataFrame({
        "tile_id": [f"t{i:05d}" for i in range(n)],
        "cluster": rng.integers(0, 4, n),
        "phase": rng.choice(["pre", "post"], n),
        "iou": iou,
        "umap_x": rng.normal(size=n).astype(np.float32),
        "umap_y": rng.normal(size=n).astype(np.float32),
    })


def _decode(obj: dict) -> np.ndarray:
    dtypes = {"f4": np.float32, "i2": np.int16, "u1": np.uint8, "i4": np.int32, "f8": np.float64,
              "i1": np.int8}
    return np.frombuffer(base64.b64decode(obj["bdata"]), dtype=dtypes[obj["dtype"]])


def test_map_is_one_webgl_trace_with_ids_as_customdata() -> None:
    tiles = _tiles()
    x, y = tile_logic.map_coords(tiles, "umap")
    fig = figures.map_figure(x, y, tiles["tile_id"].to_numpy(), tile_logic.colour_spec(tiles, "cluster"),
                             axis_titles=("UMAP 1", "UMAP 2"))
    main = fig.data[figures.MAIN]
    assert isinstance(main, go.Scattergl)
    assert list(main.customdata) == tiles["tile_id"].tolist()
    assert main.hoverinfo == "none"  # events fire, the dcc.Tooltip shows the card
    assert fig.layout.xaxis.title.text == "UMAP 1" and fig.layout.yaxis.title.text == "UMAP 2"
    payload = json.loads(to_json(fig))
    assert payload["data"][0]["x"]["dtype"] == "f4"  # typed array, not a list of floats
    np.testing.assert_array_equal(_decode(payload["data"][0]["x"]), x)
    assert "data:image" not in to_json(fig) and "base64," not in to_json(fig)


def test_categorical_colouring_has_a_self_explaining_legend() -> None:
    tiles = _tiles()
    spec = tile_logic.colour_spec(tiles, "phase")
    fig = figures.map_figure(*tile_logic.map_coords(tiles, "umap"), tiles["tile_id"], spec)
    legend = [t for t in fig.data[figures.LEGEND0:] if t.showlegend]
    counts = tiles["phase"].value_counts()
    assert [t.name for t in legend] == [f"pre  ({counts['pre']:,})", f"post  ({counts['post']:,})"]
    assert fig.layout.showlegend and fig.layout.legend.title.text == "Phase (pre / post)"
    codes = np.asarray(fig.data[0].marker.color)
    assert codes.dtype == np.uint8
    assert set(codes) == {0, 1}
    assert [legend[c].marker.color for c in codes[:5]] == [
        spec.colours[spec.categories.index(p)] for p in tiles["phase"][:5]
    ]
    assert not fig.data[0].marker.showscale


def test_continuous_colouring_has_a_colorbar_with_na_for_missing_values() -> None:
    tiles = _tiles()
    spec = tile_logic.colour_spec(tiles, "iou")
    fig = figures.map_figure(*tile_logic.map_coords(tiles, "umap"), tiles["tile_id"], spec)
    marker = fig.data[0].marker
    assert marker.showscale and marker.colorbar.title.text == "IoU"
    assert marker.colorbar.ticktext[0] == "n/a" and "1.00" in marker.colorbar.ticktext
    codes = np.asarray(marker.color)
    assert (codes[:3] == 0).all() and (codes[3:] >= 1).all()
    assert marker.colorscale[0][1] == figures.NAN_COLOUR
    assert not fig.layout.showlegend


def test_colour_codes_quantise_to_the_colour_range() -> None:
    spec = ColourSpec("v", "v", "continuous", np.array([0.0, 0.5, 1.0, np.nan], np.float32),
                      cmin=0.0, cmax=1.0)
    np.testing.assert_array_equal(figures.colour_codes(spec), [1, 128, 255, 0])


def test_small_overview_map_has_no_ids_no_legend_and_no_colorbar() -> None:
    tiles = _tiles()
    fig = figures.map_figure(*tile_logic.map_coords(tiles, "umap"), None,
                             tile_logic.colour_spec(tiles, "iou"), large=False)
    assert fig.data[0].customdata is None and fig.data[0].hoverinfo == "skip"
    assert not fig.data[0].marker.showscale and not fig.layout.showlegend


def test_recolour_patch_sends_colours_but_never_coordinates_or_ids() -> None:
    tiles = _tiles()
    patch = figures.recolour_patch(tile_logic.colour_spec(tiles, "iou"))
    assert isinstance(patch, Patch)
    ops = json.loads(to_json(patch))["operations"]
    locations = [op["location"] for op in ops]
    assert ["data", 0, "marker", "color"] in locations
    assert not any(loc[-1] in ("x", "y", "customdata") for loc in locations)
    colour = next(op for op in ops if op["location"] == ["data", 0, "marker", "color"])
    assert colour["params"]["value"]["dtype"] == "u1"


def test_coords_and_highlight_patches() -> None:
    ops = json.loads(to_json(figures.coords_patch(
        np.zeros(3, np.float32), np.ones(3, np.float32), ("PCA 1", "PCA 2"), "rev")))["operations"]
    got = {tuple(op["location"]): op["params"]["value"] for op in ops}
    assert got[("data", 0, "x")]["dtype"] == "f4"
    assert got[("layout", "xaxis", "title", "text")] == "PCA 1"
    ops = json.loads(to_json(figures.highlight_patch((1.5, 2.5))))["operations"]
    got = {tuple(op["location"]): op["params"]["value"] for op in ops}
    assert got[("data", figures.HIGHLIGHT, "x")] == [1.5]
    ops = json.loads(to_json(figures.highlight_patch(None)))["operations"]
    assert all(op["params"]["value"] == [] for op in ops)


def test_patches_line_up_with_the_figure_structure() -> None:
    """Applying a recolour patch by hand to a built figure gives the other colouring."""
    tiles = _tiles()
    xy = tile_logic.map_coords(tiles, "umap")
    built = json.loads(to_json(figures.map_figure(*xy, tiles["tile_id"],
                                                  tile_logic.colour_spec(tiles, "cluster"))))
    target = json.loads(to_json(figures.map_figure(*xy, tiles["tile_id"],
                                                   tile_logic.colour_spec(tiles, "phase"))))
    for op in json.loads(to_json(figures.recolour_patch(tile_logic.colour_spec(tiles, "phase"))))["operations"]:
        node = built
        for key in op["location"][:-1]:
            node = node[key]
        node[op["location"][-1]] = op["params"]["value"]
    for i in range(len(target["data"])):
        for key in ("name", "visible", "showlegend"):
            assert built["data"][i].get(key) == target["data"][i].get(key), (i, key)
    assert built["data"][0]["marker"]["color"] == target["data"][0]["marker"]["color"]


def test_payload_per_point_is_compact() -> None:
    """Each tile costs x, y (base64 float32), a colour (base64 uint8) and its quoted id."""

    def size(n: int) -> int:
        tiles = _tiles(n)
        tiles["tile_id"] = [f"fx_s{i:05d}_pre_t0" for i in range(n)]  # 16 characters
        fig = figures.map_figure(*tile_logic.map_coords(tiles, "umap"), tiles["tile_id"],
                                 tile_logic.colour_spec(tiles, "iou"))
        return len(to_json(fig))

    per_point = (size(20_000) - size(10_000)) / 10_000
    # base64 is 4/3 bytes per byte, and Plotly's JSON writes "/" as "\u002f" (up to ~30 %
    # more on float32 data): ≤ 2 × 7 (x, y) + 2 (colour) + 19 ("id",) bytes
    assert per_point <= 2 * 7 + 2 + (16 + 3), per_point


def test_sweep_figures_mark_k() -> None:
    sweep = {"k": [2, 3, 4, 5], "inertia": [40.0, 20.0, 10.0, 9.0],
             "silhouette": [0.3, 0.5, 0.6, 0.4], "best_k": 4}
    elbow = figures.elbow_figure(sweep, current_k=3)
    assert list(elbow.data[0].x) == [2, 3, 4, 5] and list(elbow.data[0].y) == [40, 20, 10, 9]
    assert elbow.layout.shapes[0].x0 == 3
    assert "Inertia" in elbow.layout.yaxis.title.text
    sil = figures.silhouette_k_figure(sweep, current_k=3)
    assert list(sil.data[1].x) == [4] and sil.data[1].marker.symbol == "star"
    empty = figures.elbow_figure({}, 3)
    assert "No K-means sweep" in empty.layout.annotations[0].text


def test_silhouette_samples_plot_is_sorted_bands_per_cluster() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 90)
    values = rng.uniform(-0.2, 0.9, 90)
    fig = figures.silhouette_samples_figure(labels, values, k=3, exact=False, n_total=900)
    assert [t.name for t in fig.data] == ["Cluster 0", "Cluster 1", "Cluster 2"]
    for c, trace in enumerate(fig.data):
        band = np.asarray(trace.x)[1:-1]
        assert trace.fill == "toself"
        np.testing.assert_allclose(band, np.sort(values[labels == c]), rtol=1e-6)
    assert fig.layout.shapes[0].x0 == pytest.approx(values.mean())
    assert "sample of 90 / 900" in fig.layout.title.text


def test_nice_ticks() -> None:
    np.testing.assert_allclose(figures.nice_ticks(0, 1), [0, 0.2, 0.4, 0.6, 0.8, 1])
    np.testing.assert_allclose(figures.nice_ticks(-0.37, 0.81), [-0.25, 0, 0.25, 0.5, 0.75])
    assert list(figures.nice_ticks(2, 2)) == [2]
