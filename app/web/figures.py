"""Every Plotly figure of the dashboard, built from plain arrays (no Dash state, no I/O).

Maps (explore, clusters, segment's placement), the clusters page's sweep and silhouette plots,
Explain's clickable image and Evaluate's curves, confusion matrix and damage bars; colours and
the template come from :mod:`app.web.theme`.

Maps are one WebGL ``Scattergl`` trace of all tiles (trace 0) whose ``customdata`` is the tile
id, a highlight ring (trace 1) and ``MAX_LEGEND`` legend-only traces (categorical colouring).
Coordinates and colours travel as float32 / int16 typed arrays (base64, ~5.3 bytes per value),
and re-colouring or moving the highlight is a ``dash.Patch`` that touches only those arrays.
No figure ever embeds an image.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.colors as pcolors
import plotly.graph_objects as go
from dash import Patch

from app.ml import evaluate
from app.web.logic.tiles import MAX_CATEGORIES, ColourSpec, overview_rows
from app.web.theme import DAMAGE_COLOURS, INK, MUTED, NAN_COLOUR, TEMPLATE, cluster_colour

MAX_LEGEND = MAX_CATEGORIES
MAIN, HIGHLIGHT, LEGEND0 = 0, 1, 2
#: Share of a continuous colour bar given to "no value" (grey, below the minimum).
NAN_BAND = 0.06
GRAPH_CONFIG: dict[str, Any] = {
    "displaylogo": False,
    "scrollZoom": True,
    "modeBarButtonsToRemove": ["autoScale2d"],
    "toImageButtonOptions": {"format": "png", "scale": 2},
}
SMALL_GRAPH_CONFIG: dict[str, Any] = {**GRAPH_CONFIG, "displayModeBar": False}


def typed(arr: np.ndarray) -> dict[str, str]:
    """A numpy array as a plotly.js typed-array spec (what Plotly does for figures; needed in
    ``Patch`` values, which skip Plotly's validators)."""
    arr = np.ascontiguousarray(arr)
    dtype = {"float32": "f4", "float64": "f8", "int8": "i1", "int16": "i2", "int32": "i4",
             "uint8": "u1", "uint16": "u2", "uint32": "u4"}[str(arr.dtype)]
    return {"dtype": dtype, "bdata": base64.b64encode(arr.tobytes()).decode("ascii")}


def marker_size(n: int, large: bool = True) -> float:
    """Point size shrinking with the number of points (8 px at 100 points, 3 px at 100 000)."""
    size = 11.0 - 1.7 * np.log10(max(n, 10))
    return float(np.clip(size if large else size - 1.5, 2.0, 8.0))


def nice_ticks(lo: float, hi: float, target: int = 5) -> np.ndarray:
    """Round tick values (steps of 1, 2, 2.5 or 5 × 10^k) covering [lo, hi]."""
    span = hi - lo
    if not np.isfinite(span) or span <= 0:
        return np.array([lo])
    raw = span / max(target, 1)
    mag = 10 ** np.floor(np.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks = np.arange(np.ceil(lo / step) * step, hi + step * 1e-9, step)
    return ticks[(ticks >= lo - step * 1e-9) & (ticks <= hi + step * 1e-9)]


def colour_codes(spec: ColourSpec) -> np.ndarray:
    """uint8 colour codes: category numbers, or values quantised to 1..255 (0 = no value).

    One byte per point on the wire; 254 levels are more than a colour scale can show.
    """
    if spec.kind == "categorical":
        return spec.values.astype(np.uint8)
    values = spec.values.astype(np.float64)
    scaled = (values - spec.cmin) / (spec.cmax - spec.cmin)
    codes = 1 + np.rint(np.clip(scaled, 0.0, 1.0) * 254)
    return np.where(np.isfinite(values), codes, 0).astype(np.uint8)


def _colour_marker(spec: ColourSpec, show_scale: bool) -> dict[str, Any]:
    """marker.* for a colouring: discrete colour steps for categories, a colour scale over
    quantised values (with a grey "n/a" band at the bottom when some tiles have no value)."""
    codes = colour_codes(spec)
    if spec.kind == "categorical":
        m = max(len(spec.colours), 1)
        steps: list[list[Any]] = []
        for i, colour in enumerate(spec.colours or [NAN_COLOUR]):
            steps += [[i / m, colour], [(i + 1) / m, colour]]
        return {"color": codes, "colorscale": steps, "cmin": -0.5, "cmax": m - 0.5,
                "showscale": False}
    scale = [[float(p), c] for p, c in pcolors.get_colorscale(spec.colorscale)]
    ticks = nice_ticks(spec.cmin, spec.cmax)
    tickvals = [float(1 + 254 * (t - spec.cmin) / (spec.cmax - spec.cmin)) for t in ticks]
    ticktext = [format(float(t), spec.tickformat.lstrip(":")) for t in ticks]
    has_missing = bool((codes == 0).any())
    if has_missing:
        # code 0 (no value) is grey; codes 1..255 span the colour scale
        scale = [[0.0, NAN_COLOUR], [0.5 / 255, NAN_COLOUR]] + [
            [(1 + 254 * p) / 255, c] for p, c in scale
        ]
        tickvals, ticktext = [0.0, *tickvals], ["n/a", *ticktext]
    colorbar = {"title": {"text": spec.title, "side": "right", "font": {"size": 12}},
                "thickness": 12, "len": 0.85, "outlinewidth": 0, "x": 1.01,
                "tickmode": "array", "tickvals": tickvals, "ticktext": ticktext}
    return {"color": codes, "colorscale": scale, "cmin": 0 if has_missing else 1, "cmax": 255,
            "showscale": show_scale, "colorbar": colorbar}


def _legend_slots(spec: ColourSpec | None, show: bool) -> list[dict[str, Any]]:
    """``MAX_LEGEND`` legend entries (name, colour, visible) for a categorical colouring."""
    slots = []
    cats = spec.categories if spec is not None and spec.kind == "categorical" else []
    for i in range(MAX_LEGEND):
        if show and i < len(cats):
            count = spec.counts[i] if spec and i < len(spec.counts) else None
            name = f"{cats[i]}  ({count:,})" if count is not None else cats[i]
            slots.append({"name": name, "colour": spec.colours[i], "visible": True})
        else:
            slots.append({"name": "", "colour": NAN_COLOUR, "visible": False})
    return slots


def map_figure(
    x: np.ndarray,
    y: np.ndarray,
    tile_ids: Sequence[str] | np.ndarray | None,
    spec: ColourSpec,
    *,
    title: str = "",
    axis_titles: tuple[str, str] = ("", ""),
    large: bool = True,
    highlight: tuple[float, float] | None = None,
    uirevision: str = "",
    height: int | None = None,
) -> go.Figure:
    """A 2-D embedding map: one WebGL trace of every tile, coloured by ``spec``.

    ``tile_ids`` become ``customdata`` (hover, click and selection find tiles by id); pass None
    for an overview map that does not react to the pointer. The large map carries the legend
    (categorical) or colour bar (continuous); small maps carry neither.
    """
    n = len(x)
    marker = {"size": marker_size(n, large), "opacity": 0.85 if n < 20000 else 0.6,
              "line": {"width": 0}, **_colour_marker(spec, show_scale=large)}
    main = go.Scattergl(
        x=np.asarray(x, dtype=np.float32), y=np.asarray(y, dtype=np.float32),
        mode="markers", marker=marker, name="tiles", showlegend=False,
        customdata=np.asarray(tile_ids, dtype=object) if tile_ids is not None else None,
        hoverinfo="none" if tile_ids is not None else "skip",
        selected={"marker": {"opacity": 1.0}},
        unselected={"marker": {"opacity": 0.12}},
    )
    hx, hy = ([highlight[0]], [highlight[1]]) if highlight else ([], [])
    ring = go.Scatter(
        x=hx, y=hy, mode="markers", hoverinfo="skip", showlegend=False, name="selected tile",
        marker={"size": 20 if large else 14, "color": "rgba(0,0,0,0)", "symbol": "circle",
                "line": {"color": "#111827", "width": 2.5}},
    )
    legend = [
        go.Scatter(
            x=[None], y=[None], mode="markers", name=slot["name"], visible=slot["visible"],
            showlegend=slot["visible"], hoverinfo="skip",
            marker={"size": 10, "color": slot["colour"], "symbol": "circle"},
        )
        for slot in _legend_slots(spec, show=large)
    ]
    fig = go.Figure([main, ring, *legend])
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title} if title else None,
        margin={"l": 48, "r": 12, "t": 56 if title else 34, "b": 40} if large
        else {"l": 28, "r": 6, "t": 6, "b": 28},
        xaxis={"title": {"text": axis_titles[0], "standoff": 6}, "showticklabels": large},
        yaxis={"title": {"text": axis_titles[1], "standoff": 6}, "showticklabels": large},
        dragmode="lasso",
        hovermode="closest",
        showlegend=large and spec.kind == "categorical",
        legend={"title": {"text": spec.title}, "itemclick": False, "itemdoubleclick": False,
                "bgcolor": "rgba(255,255,255,0.85)", "borderwidth": 0, "y": 1, "yanchor": "top",
                "font": {"size": 12}},
        uirevision=uirevision or None,
        height=height,
    )
    if not large:
        fig.update_xaxes(title_font={"size": 11})
        fig.update_yaxes(title_font={"size": 11})
    return fig


def recolour_patch(spec: ColourSpec, large: bool = True, patch: Patch | None = None) -> Patch:
    """A ``Patch`` switching a map built by ``map_figure`` to another colouring.

    Only marker colours, the colour scale and the legend entries travel; the coordinates and
    ids stay in the browser. Operations are added to ``patch`` when given.
    """
    patch = Patch() if patch is None else patch
    marker = _colour_marker(spec, show_scale=large)
    for key in ("colorscale", "cmin", "cmax", "showscale"):
        patch["data"][MAIN]["marker"][key] = marker[key]
    patch["data"][MAIN]["marker"]["color"] = typed(np.asarray(marker["color"]))
    if "colorbar" in marker:
        patch["data"][MAIN]["marker"]["colorbar"] = marker["colorbar"]
    for i, slot in enumerate(_legend_slots(spec, show=large)):
        trace = patch["data"][LEGEND0 + i]
        trace["name"] = slot["name"]
        trace["visible"] = slot["visible"]
        trace["showlegend"] = slot["visible"]
        trace["marker"]["color"] = slot["colour"]
    patch["layout"]["showlegend"] = large and spec.kind == "categorical"
    patch["layout"]["legend"]["title"]["text"] = spec.title
    return patch


def coords_patch(
    x: np.ndarray, y: np.ndarray, axis_titles: tuple[str, str], uirevision: str,
    patch: Patch | None = None,
) -> Patch:
    """A ``Patch`` moving a map's points to another 2-D embedding of the same tiles (ids and
    colours stay; the axes re-fit)."""
    patch = Patch() if patch is None else patch
    patch["data"][MAIN]["x"] = typed(np.asarray(x, dtype=np.float32))
    patch["data"][MAIN]["y"] = typed(np.asarray(y, dtype=np.float32))
    patch["data"][MAIN]["selectedpoints"] = None
    for axis, title in zip(("xaxis", "yaxis"), axis_titles, strict=True):
        patch["layout"][axis]["title"]["text"] = title
        patch["layout"][axis]["autorange"] = True
    patch["layout"]["uirevision"] = uirevision
    return patch


def highlight_patch(point: tuple[float, float] | None, patch: Patch | None = None) -> Patch:
    """A ``Patch`` moving the highlight ring to ``point`` (None hides it)."""
    patch = Patch() if patch is None else patch
    patch["data"][HIGHLIGHT]["x"] = [point[0]] if point else []
    patch["data"][HIGHLIGHT]["y"] = [point[1]] if point else []
    return patch


def selection_patch(rows: Sequence[int] | None, patch: Patch | None = None) -> Patch:
    """A ``Patch`` marking these point indices as selected (None clears the selection)."""
    patch = Patch() if patch is None else patch
    patch["data"][MAIN]["selectedpoints"] = (
        typed(np.asarray(rows, dtype=np.int32)) if rows is not None else None
    )
    return patch


def empty_figure(message: str, height: int | None = None) -> go.Figure:
    """A blank figure with a centred message."""
    fig = go.Figure()
    fig.update_layout(
        template=TEMPLATE, height=height, margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis={"visible": False}, yaxis={"visible": False},
        annotations=[{"text": message, "showarrow": False, "xref": "paper", "yref": "paper",
                      "x": 0.5, "y": 0.5, "font": {"size": 13, "color": MUTED}}],
    )
    return fig


def placement_figure(
    x: np.ndarray, y: np.ndarray, tile_ids: np.ndarray, spec: ColourSpec, *,
    axis_titles: tuple[str, str], neighbour_rows: Sequence[int], point: Sequence[float] | None,
    approx: bool, uirevision: str, height: int, max_points: int,
) -> go.Figure:
    """A run's map with an upload starred at ``point`` and its nearest tiles ringed; runs of
    more than ``max_points`` tiles draw a fixed sample."""
    rows = overview_rows(len(x), max_points)
    fig = map_figure(x if rows is None else x[rows], y if rows is None else y[rows],
                     tile_ids if rows is None else tile_ids[rows],
                     spec if rows is None else spec.take(rows),
                     axis_titles=axis_titles, large=True, uirevision=uirevision, height=height)
    nrows = list(neighbour_rows)
    if nrows:
        fig.add_trace(go.Scatter(
            x=x[nrows], y=y[nrows], mode="markers", name="nearest tiles", hoverinfo="skip",
            marker={"size": 13, "color": "rgba(0,0,0,0)",
                    "line": {"color": "#111827", "width": 1.8}}, showlegend=True))
    if point:
        label = "upload (approx.)" if approx else "upload"
        fig.add_trace(go.Scatter(
            x=[point[0]], y=[point[1]], mode="markers", name=label, showlegend=True,
            marker={"symbol": "star", "size": 22, "color": "#ffd400",
                    "line": {"color": "#111827", "width": 1.6}},
            hovertemplate=f"{label}<extra></extra>"))
    fig.update_layout(dragmode="pan", showlegend=True)
    return fig


def _k_line(fig: go.Figure, k: int | None, label: str) -> None:
    if k is not None:
        fig.add_vline(x=k, line={"color": "#111827", "width": 1.2, "dash": "dot"},
                      annotation={"text": label, "font": {"size": 11, "color": INK},
                                  "bgcolor": "rgba(255,255,255,0.8)"},
                      annotation_position="top right")


def _sweep_figure(ks: list, ys: list, *, name: str, colour: str, hover: str, title: str,
                  y_axis: dict[str, Any], current_k: int | None, height: int) -> go.Figure:
    """A per-k curve of the K-means sweep with the current k marked."""
    fig = go.Figure(go.Scatter(
        x=ks, y=ys, mode="lines+markers", name=name,
        line={"color": colour, "width": 2}, marker={"size": 7},
        hovertemplate=f"k = %{{x}}<br>{hover}<extra></extra>",
    ))
    _k_line(fig, current_k, f"k = {current_k}")
    fig.update_layout(
        template=TEMPLATE, height=height, title={"text": title},
        margin={"l": 60, "r": 14, "t": 40, "b": 44}, showlegend=False,
        xaxis={"title": {"text": "k (number of clusters)"}, "dtick": 1}, yaxis=y_axis,
    )
    return fig


def elbow_figure(sweep: dict, current_k: int | None = None, height: int = 260) -> go.Figure:
    """Inertia vs k (the elbow curve), with the current k marked."""
    ks, inertia = list(sweep.get("k", [])), list(sweep.get("inertia", []))
    if not ks or len(ks) != len(inertia):
        return empty_figure("No K-means sweep stored for this run.", height)
    return _sweep_figure(
        ks, inertia, name="inertia", colour="#4e79a7", hover="inertia = %{y:,.4g}",
        title="Elbow: inertia vs k", current_k=current_k, height=height,
        y_axis={"title": {"text": "Inertia (within-cluster SS)"}, "tickformat": ".3s"})


def silhouette_k_figure(sweep: dict, current_k: int | None = None, height: int = 260) -> go.Figure:
    """Mean silhouette vs k, the best k starred and the current k marked."""
    ks, sil = list(sweep.get("k", [])), list(sweep.get("silhouette", []))
    if not ks or len(ks) != len(sil):
        return empty_figure("No silhouette sweep stored for this run.", height)
    fig = _sweep_figure(
        ks, sil, name="mean silhouette", colour="#59a14f", hover="mean silhouette = %{y:.3f}",
        title="Mean silhouette vs k  (★ best)", current_k=current_k, height=height,
        y_axis={"title": {"text": "Mean silhouette"}})
    best = sweep.get("best_k")
    if best in ks:
        fig.add_trace(go.Scatter(
            x=[best], y=[sil[ks.index(best)]], mode="markers", name="best k",
            marker={"symbol": "star", "size": 15, "color": "#edc948",
                    "line": {"color": "#8a6d00", "width": 1}},
            hovertemplate="best k = %{x}<extra></extra>",
        ))
    return fig


def silhouette_samples_figure(
    labels: np.ndarray, values: np.ndarray, *, k: int, exact: bool = True, n_total: int | None = None,
    height: int = 420,
) -> go.Figure:
    """The classic per-sample silhouette plot: per cluster, its samples' silhouettes sorted and
    drawn as a filled band; the dashed line is the mean."""
    labels, values = np.asarray(labels), np.asarray(values, dtype=float)
    if values.size == 0:
        return empty_figure("No silhouette values.", height)
    fig = go.Figure()
    gap = max(2, int(len(values) * 0.02))
    y0 = gap
    for c in sorted(int(v) for v in np.unique(labels)):
        v = np.sort(values[labels == c])
        ys = np.arange(y0, y0 + len(v), dtype=float)
        colour = cluster_colour(c)
        fig.add_trace(go.Scatter(
            x=np.concatenate([[0.0], v, [0.0]]).astype(np.float32),
            y=np.concatenate([[ys[0]], ys, [ys[-1]]]).astype(np.float32),
            mode="lines", fill="toself", fillcolor=colour, line={"color": colour, "width": 0.5},
            name=f"Cluster {c}", hoverinfo="text",
            text=f"Cluster {c}: {len(v):,} tiles, mean {v.mean():.3f}",
        ))
        fig.add_annotation(x=0, y=y0 + len(v) / 2, text=f"<b>{c}</b>", showarrow=False,
                           xanchor="right", xshift=-4, font={"size": 11, "color": colour})
        y0 += len(v) + gap
    mean = float(values.mean())
    fig.add_vline(x=mean, line={"color": "#e15759", "dash": "dash", "width": 1.5},
                  annotation={"text": f"mean {mean:.3f}", "font": {"size": 11, "color": "#b03030"}},
                  annotation_position="top right")
    note = "" if exact else f" · sample of {len(values):,} / {n_total or len(values):,} tiles"
    fig.update_layout(
        template=TEMPLATE, height=height, showlegend=False,
        title={"text": f"Per-sample silhouette, k = {k}{note}"},
        margin={"l": 40, "r": 14, "t": 40, "b": 44},
        xaxis={"title": {"text": "Silhouette coefficient"}, "range": [min(-0.2, values.min() - 0.05),
                                                                    max(1.0, values.max())]},
        yaxis={"title": {"text": "Tiles, grouped by cluster"}, "showticklabels": False,
               "showgrid": False, "range": [0, y0]},
    )
    return fig


# --------------------------------------------------------------------------- explain

#: Click / hover resolution of Explain's image figure: one cell per pixel up to this many per side.
CLICK_GRID_MAX = 256


def image_figure(src: str, width: int, height: int, target: str,
                 target_data: dict | None, fig_height: int = 420) -> go.Figure:
    """The picked image in a Plotly figure (x = column, y = row, both in image pixels): a
    layout image (the ``/img/...`` URL of a stored tile) under a transparent heat-map trace
    that turns hovers and clicks into pixel coordinates. Draw a box in "box" mode, click a
    pixel in "pixel" mode; the current box / pixel is drawn on it."""
    # One transparent cell per pixel up to CLICK_GRID_MAX per side, coarser beyond.
    step = max(1, int(np.ceil(max(width, height) / CLICK_GRID_MAX)))
    gw, gh = int(np.ceil(width / step)), int(np.ceil(height / step))
    fig = go.Figure(go.Heatmap(
        z=np.zeros((gh, gw), np.uint8), x0=(step - 1) / 2, dx=step, y0=(step - 1) / 2, dy=step,
        colorscale=[[0, "rgba(0,0,0,0)"], [1, "rgba(0,0,0,0)"]], showscale=False,
        hovertemplate="x %{x:.0f}, y %{y:.0f}<extra></extra>", name="image"))
    shapes = []
    data = target_data or {}
    if target == "box" and data.get("box"):
        x0, y0, x1, y1 = data["box"]
        shapes.append({"type": "rect", "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                       "line": {"color": "#ffd400", "width": 2.5},
                       "fillcolor": "rgba(255,212,0,0.12)", "editable": True})
    if target == "pixel" and data.get("pixel"):
        x, y = data["pixel"]
        r = max(width, height) / 60
        shapes.append({"type": "circle", "x0": x - r, "y0": y - r, "x1": x + r, "y1": y + r,
                       "line": {"color": "#ffd400", "width": 2.5}})
    fig.update_layout(
        template=TEMPLATE, height=fig_height, margin={"l": 0, "r": 0, "t": 0, "b": 0},
        xaxis={"visible": False, "range": [-0.5, width - 0.5], "constrain": "domain",
               "showgrid": False},
        yaxis={"visible": False, "range": [height - 0.5, -0.5], "scaleanchor": "x",
               "constrain": "domain", "showgrid": False},
        images=[{"source": src, "xref": "x", "yref": "y", "x": -0.5, "y": -0.5,
                 "sizex": width, "sizey": height, "sizing": "stretch", "layer": "below",
                 "xanchor": "left", "yanchor": "top"}],
        dragmode="drawrect" if target == "box" else "zoom", shapes=shapes,
        newshape={"line": {"color": "#ffd400", "width": 2.5},
                  "fillcolor": "rgba(255,212,0,0.12)"},
        uirevision=src, plot_bgcolor="#0b0f14", hovermode="closest",
    )
    return fig


# --------------------------------------------------------------------------- evaluate


def pr_figure(ev: evaluate.Evaluation | evaluate.DatasetScore, threshold: float, height: int = 300) -> go.Figure:
    """Pixel precision vs recall over thresholds, the current threshold marked."""
    c = evaluate.curves(ev)
    cur = evaluate.pixel_summary(ev, threshold)
    fig = go.Figure(go.Scatter(
        x=c["recall"], y=c["precision"], mode="lines", line={"color": "#2f6fde", "width": 2.2},
        customdata=c["threshold"], name="PR",
        hovertemplate="threshold %{customdata:.2f}<br>recall %{x:.3f}<br>"
                      "precision %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=[cur["recall"]], y=[cur["precision"]], mode="markers", name="current",
        marker={"size": 12, "color": "#e15759", "line": {"color": "#fff", "width": 2}},
        hovertemplate=f"threshold {threshold:.2f}<br>recall %{{x:.3f}}<br>precision %{{y:.3f}}"
                      "<extra></extra>"))
    fig.update_layout(
        template=TEMPLATE, height=height, showlegend=False,
        title={"text": "Precision–recall (pixels)"},
        margin={"l": 54, "r": 14, "t": 40, "b": 44},
        xaxis={"title": {"text": "Recall"}, "range": [0, 1.02]},
        yaxis={"title": {"text": "Precision"}, "range": [0, 1.02]})
    return fig


def threshold_figure(ev: evaluate.Evaluation | evaluate.DatasetScore, threshold: float, height: int = 300) -> go.Figure:
    """IoU and F1 vs threshold, the current threshold and the best-IoU one marked."""
    c = evaluate.curves(ev)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=c["threshold"], y=c["iou"], mode="lines", name="IoU",
                             line={"color": "#59a14f", "width": 2.2},
                             hovertemplate="threshold %{x:.2f}<br>IoU %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=c["threshold"], y=c["f1"], mode="lines", name="F1",
                             line={"color": "#f28e2b", "width": 1.6, "dash": "dot"},
                             hovertemplate="threshold %{x:.2f}<br>F1 %{y:.3f}<extra></extra>"))
    best = float(c["threshold"][int(np.argmax(c["iou"]))])
    fig.add_vline(x=threshold, line={"color": "#e15759", "width": 1.5},
                  annotation={"text": f"t = {threshold:.2f}", "font": {"size": 11}},
                  annotation_position="top right")
    if abs(best - threshold) > 0.015:
        fig.add_vline(x=best, line={"color": "#8a96a3", "width": 1, "dash": "dash"},
                      annotation={"text": f"best IoU at {best:.2f}", "font": {"size": 10,
                                                                               "color": "#66727f"}},
                      annotation_position="bottom left")
    fig.update_layout(
        template=TEMPLATE, height=height, title={"text": "IoU and F1 vs threshold"},
        margin={"l": 54, "r": 14, "t": 40, "b": 44},
        legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.13},
        xaxis={"title": {"text": "Threshold"}, "range": [0, 1]},
        yaxis={"title": {"text": "Score"}, "range": [0, 1.02]})
    return fig


def confusion_figure(summary: dict[str, Any], height: int = 300) -> go.Figure:
    """2×2 pixel confusion matrix with counts and shares."""
    tp, fp, fn, tn = (int(summary[k]) for k in ("tp", "fp", "fn", "tn"))
    total = max(1, tp + fp + fn + tn)
    z = [[tp, fn], [fp, tn]]
    names = [["TP", "FN"], ["FP", "TN"]]
    text = [[f"<b>{names[i][k]}</b><br>{z[i][k]:,}<br>{z[i][k] / total:.1%}" for k in range(2)]
            for i in range(2)]
    fig = go.Figure(go.Heatmap(
        z=np.log10(np.asarray(z, float) + 1), x=["building", "background"],
        y=["building", "background"], text=text, texttemplate="%{text}",
        textfont={"size": 13}, colorscale=[[0, "#f4f7fb"], [1, "#2f6fde"]], showscale=False,
        hovertemplate="truth %{y} · predicted %{x}<extra></extra>", xgap=3, ygap=3))
    fig.update_layout(
        template=TEMPLATE, height=height, title={"text": "Confusion matrix (pixels)"},
        margin={"l": 90, "r": 14, "t": 40, "b": 54},
        xaxis={"title": {"text": "Predicted"}, "side": "bottom", "showgrid": False},
        yaxis={"title": {"text": "Truth"}, "autorange": "reversed", "showgrid": False})
    return fig


def damage_figure(rows: list[dict[str, Any]], height: int = 260) -> go.Figure:
    """Approximate building recall per damage class (bars labelled with building counts)."""
    rows = [r for r in rows if r.get("recall") is not None]
    names = [r["damage"] for r in rows]
    fig = go.Figure(go.Bar(
        x=names, y=[r["recall"] for r in rows],
        marker={"color": [DAMAGE_COLOURS.get(n, "#9c755f") for n in names]},
        text=[f"{r['recall']:.2f}<br><span style='font-size:10px'>{r['buildings']:,} bldg</span>"
              for r in rows],
        textposition="outside", cliponaxis=False,
        hovertemplate="%{x}: recall ≈ %{y:.3f}<extra></extra>"))
    fig.update_layout(
        template=TEMPLATE, height=height, showlegend=False,
        title={"text": "Building recall by damage class (approx.)"},
        margin={"l": 54, "r": 14, "t": 40, "b": 44},
        yaxis={"title": {"text": "Recall"}, "range": [0, 1.18]})
    return fig


__all__ = [
    "GRAPH_CONFIG", "SMALL_GRAPH_CONFIG", "colour_codes", "coords_patch", "elbow_figure", "empty_figure", "highlight_patch",
    "map_figure", "marker_size", "recolour_patch", "selection_patch", "silhouette_k_figure",
    "silhouette_samples_figure", "typed",
]
