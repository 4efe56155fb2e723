"""Clusters (``/clusters``): the K-means sweep and the clusters of any k.

Elbow and silhouette-vs-k curves, the cluster-vs-label table, a k selector (stored sweep labels,
else re-clustered on request and cached per run and k), the classic per-sample silhouette plot,
the map coloured by cluster, one card per cluster and a paginated gallery of a cluster's tiles
(nearest the centroid first).
"""

from __future__ import annotations

from typing import Any

import dash
from dash import ALL, Input, Output, Patch, State, callback, ctx, dcc, html, no_update

from app.ml import registry
from app.web import components, figures, ids, runs, theme
from app.web.logic import clusters
from app.web.logic import tiles as tile_logic

dash.register_page(__name__, path="/clusters", name="Clusters", title="Clusters · U-Net Lens",
                   order=1)

G = ids.gallery_ids(ids.CL_GALLERY)
MAP_HEIGHT = 460
SWEEP_HEIGHT = 250


def _panel(title: str, child: Any, cls: str = "", hint: str = "") -> html.Div:
    head = [html.Span(title, className="panel-title")]
    if hint:
        head.append(html.Span(hint, className="panel-hint"))
    return html.Div([html.Div(head, className="panel-head"), child], className=f"panel {cls}".strip())


def layout(**_: Any) -> html.Div:
    """The page skeleton; callbacks fill it for the picked run."""
    graph = {"config": figures.SMALL_GRAPH_CONFIG}
    return html.Div([
        html.Div([
            html.Div([html.H1("Clusters"), html.P(id=ids.CL_SUBTITLE, className="subtitle")],
                     className="page-title"),
            html.Div([
                html.Div([
                    html.Label("Number of clusters k", className="control-label"),
                    dcc.Slider(id=ids.CL_K, min=2, max=10, step=1, value=4,
                               marks={k: str(k) for k in range(2, 11)}, className="k-slider"),
                ], className="control control-k"),
                html.Div([
                    html.Label("Map", className="control-label"),
                    dcc.RadioItems(id=ids.CL_METHOD, inline=True, className="segmented",
                                   options=theme.method_options(registry.reducer_names()),
                                   value="umap"),
                ], className="control"),
            ], className="controls"),
        ], className="page-head"),
        html.Div(id=ids.CL_EMPTY),
        html.Div([
            html.Div([
                html.Div(dcc.Graph(id=ids.CL_ELBOW, style={"height": f"{SWEEP_HEIGHT}px"},
                                   figure=figures.empty_figure("Loading…", SWEEP_HEIGHT), **graph),
                         className="panel"),
                html.Div(dcc.Graph(id=ids.CL_SIL_K, style={"height": f"{SWEEP_HEIGHT}px"},
                                   figure=figures.empty_figure("Loading…", SWEEP_HEIGHT), **graph),
                         className="panel"),
                html.Div([
                    html.Div([
                        html.Span("Clusters vs", className="panel-title"),
                        dcc.Dropdown(id=ids.CL_LABEL, clearable=False, searchable=False,
                                     className="dd-label"),
                    ], className="panel-head table-head"),
                    html.Div(id=ids.CL_TABLE),
                    html.Div("Each cluster is mapped to its majority label; macro precision and "
                             "recall of that mapping, per k.", className="panel-foot"),
                ], className="panel table-panel"),
            ], className="sweep-row"),
            html.Div([
                _panel("Map coloured by cluster", html.Div([
                    dcc.Graph(id=ids.CL_MAP, figure=figures.empty_figure("Loading…", MAP_HEIGHT),
                              config=figures.GRAPH_CONFIG, clear_on_unhover=True,
                              style={"height": f"{MAP_HEIGHT}px"}),
                    dcc.Tooltip(id=ids.CL_MAP_TOOLTIP, direction="right", loading_text="",
                                background_color="#ffffff", border_color="#d8dee4"),
                ], className="map-wrap"), "map-panel", "click a point to list its cluster"),
                html.Div(dcc.Loading(dcc.Graph(
                    id=ids.CL_SIL_SAMPLES, style={"height": f"{MAP_HEIGHT + 34}px"},
                    figure=figures.empty_figure("Loading…", MAP_HEIGHT), **graph),
                    type="dot", delay_show=300), className="panel"),
            ], className="cluster-row"),
            html.Div([
                html.Div([html.Span("Clusters", className="panel-title"),
                          html.Span(id=ids.CL_NOTE, className="panel-hint")], className="panel-head"),
                dcc.Loading(html.Div(id=ids.CL_CARDS, className="cluster-grid"), type="dot",
                            delay_show=300),
            ], className="panel"),
            components.gallery_block(ids.CL_GALLERY, "Cluster members"),
        ], id=ids.CL_CONTENT),
        dcc.Store(id=ids.CL_CLUSTER, data=None),
        dcc.Store(id=ids.CL_BUILT, data=None),
    ], className="page-clusters")


# --------------------------------------------------------------------------- run → controls


@callback(
    Output(ids.CL_SUBTITLE, "children"),
    Output(ids.CL_K, "min"),
    Output(ids.CL_K, "max"),
    Output(ids.CL_K, "marks"),
    Output(ids.CL_K, "value"),
    Output(ids.CL_METHOD, "options"),
    Output(ids.CL_METHOD, "value"),
    Output(ids.CL_EMPTY, "children"),
    Output(ids.CL_CONTENT, "style"),
    Output(ids.CL_LABEL, "options"),
    Output(ids.CL_LABEL, "value"),
    Input(ids.RUN, "value"),
    State(ids.CL_METHOD, "value"),
    State(ids.CL_LABEL, "value"),
)
def run_controls(run_id: str | None, method: str | None, label: str | None) -> tuple:
    """k range (stored sweep k in bold), default k, map methods, truth labels to compare
    clusters with, or an empty state."""
    run = runs.get_run(run_id)
    empty = components.run_gate(run, "cluster", maps=True)
    problem = components.vectors_problem(run) if empty is None else None
    if problem is not None:  # K-means, silhouettes and the cards all work on the vectors
        empty = components.empty_state(
            f"Run {run.run_id} has no readable vectors",
            [problem, " Clustering needs them: rebuild them with ",
             html.Code("python -m app embed …"), "."])
    if empty is not None:
        return "", 2, 10, {}, 2, [], None, empty, components.HIDDEN, [], None
    methods = tile_logic.available_methods(run.tiles)
    ks = clusters.k_choices(run)
    stored = {int(k) for k in (run.sweep or {}).get("k", [])}
    marks = {k: {"label": str(k), "style": {"fontWeight": 700 if k in stored else 400}} for k in ks}
    sweep = run.sweep or {}
    parts = [f"K-means on the {run.vectors.shape[1]}-d “{run.layer}” vectors of {len(run.tiles):,} tiles"]
    if sweep.get("best_k") is not None:
        parts.append(f"best k by silhouette = {sweep['best_k']}")
    if sweep.get("chosen_k") is not None:
        parts.append(f"chosen k = {sweep['chosen_k']}")
    parts.append("bold k: stored labels, others re-clustered on request")
    method = method if method in methods else tile_logic.default_method(methods)
    tables = clusters.agreement_tables(run)
    labels = [{"label": clusters.LABEL_NAMES.get(name, name.replace("_", " ")), "value": name}
              for name in tables]
    names = list(tables)
    label = label if label in names else ("has_building" if "has_building" in names
                                          else names[0] if names else None)
    return (" · ".join(parts), min(ks), max(ks), marks, clusters.default_k(run),
            theme.method_options(methods), method, None, {},
            labels, label)


@callback(
    Output(ids.CL_ELBOW, "figure"),
    Output(ids.CL_SIL_K, "figure"),
    Output(ids.CL_TABLE, "children"),
    Input(ids.RUN, "value"),
    Input(ids.CL_K, "value"),
    Input(ids.CL_LABEL, "value"),
)
def sweep_views(run_id: str | None, k: int | None, label: str | None) -> tuple:
    """Elbow and silhouette-vs-k curves and the cluster-vs-label table, k marked."""
    run = runs.get_run(run_id)
    if run is None:
        return (no_update,) * 3
    sweep = run.sweep or {}
    rows = clusters.agreement_tables(run).get(label or "", [])
    return (figures.elbow_figure(sweep, k, SWEEP_HEIGHT),
            figures.silhouette_k_figure(sweep, k, SWEEP_HEIGHT),
            components.agreement_table(rows, k))


# --------------------------------------------------------------------------- clusters of k


def _labels(run_id: str | None, k: int | None) -> tuple[Any, str, Any] | None:
    """(run, version, (labels, source)) for a run and k, from the cache; None when unknown."""
    run = runs.get_run(run_id)
    if run is None or not isinstance(k, int) or not 2 <= k <= max(clusters.k_choices(run)):
        return None
    if components.vectors_problem(run) is not None:  # said once, by run_controls
        return None
    version = runs.run_version(run)
    labelled = clusters.cached_labels(run.run_id, version, k)
    return None if labelled is None else (run, version, labelled)


@callback(
    Output(ids.CL_MAP, "figure"),
    Output(ids.CL_BUILT, "data"),
    Input(ids.RUN, "value"),
    Input(ids.CL_K, "value"),
    Input(ids.CL_METHOD, "value"),
    Input(ids.CL_CLUSTER, "data"),
    State(ids.CL_BUILT, "data"),
)
def cluster_map(run_id: str | None, k: int | None, method: str | None, picked: dict | None,
                built: dict | None) -> tuple:
    """The map coloured by the clusters of k; a picked cluster stays bright, the rest dim.
    A new k or a picked cluster is a ``Patch``; coordinates only travel for a new map."""
    got = _labels(run_id, k)
    if got is None or method not in registry.reducer_names():
        return no_update, no_update
    run, version, (labels, _) = got
    if method not in tile_logic.available_methods(run.tiles):
        return no_update, no_update
    spec = tile_logic.colour_spec(run.tiles, "cluster", labels)
    rows = None
    if isinstance(picked, dict) and picked.get("k") == k:
        rows = [int(r) for r in (labels == picked.get("cluster")).nonzero()[0]]
    same_map = bool(built) and built.get("run") == run.run_id and built.get("version") == version \
        and built.get("method") == method
    new_built = {"run": run.run_id, "version": version, "method": method, "k": k}
    if same_map:
        patch = figures.recolour_patch(spec) if built.get("k") != k else Patch()
        return figures.selection_patch(rows, patch), new_built
    x, y = tile_logic.map_coords(run.tiles, method)
    fig = figures.map_figure(
        x, y, run.tiles["tile_id"].to_numpy(dtype=object), spec,
        axis_titles=tile_logic.axis_titles(method, tile_logic.explained_variance(run)),
        uirevision=f"{run.run_id}:{version}:{method}", height=MAP_HEIGHT,
    )
    if rows is not None:
        fig.update_traces(selectedpoints=rows, selector={"name": "tiles"})
    return fig, new_built


@callback(
    Output(ids.CL_MAP_TOOLTIP, "show"),
    Output(ids.CL_MAP_TOOLTIP, "bbox"),
    Output(ids.CL_MAP_TOOLTIP, "children"),
    Input(ids.CL_MAP, "hoverData"),
    State(ids.RUN, "value"),
)
def hover(hover_data: Any, run_id: str | None) -> tuple:
    """Tooltip for the hovered point (a lookup by id)."""
    return components.hover_tooltip(hover_data, run_id)


@callback(
    Output(ids.CL_SIL_SAMPLES, "figure"),
    Input(ids.RUN, "value"),
    Input(ids.CL_K, "value"),
)
def silhouette_plot(run_id: str | None, k: int | None) -> Any:
    """The per-sample silhouette plot of k (computed on a sample for large runs; cached)."""
    got = _labels(run_id, k)
    if got is None:
        return no_update
    run, version, (labels, _) = got
    sil = clusters.cached_silhouette(run.run_id, version, k)
    if sil is None:
        return figures.empty_figure("No silhouette for this k.", MAP_HEIGHT)
    rows, values, exact = sil
    return figures.silhouette_samples_figure(labels[rows], values, k=k, exact=exact,
                                             n_total=len(labels), height=MAP_HEIGHT + 34)


@callback(
    Output(ids.CL_CARDS, "children"),
    Output(ids.CL_NOTE, "children"),
    Input(ids.RUN, "value"),
    Input(ids.CL_K, "value"),
    Input(ids.CL_CLUSTER, "data"),
)
def cluster_cards(run_id: str | None, k: int | None, picked: dict | None) -> tuple:
    """One card per cluster: size, mean metrics, damage mix, tiles nearest the centroid."""
    got = _labels(run_id, k)
    if got is None:
        return no_update, no_update
    run, version, (_, source) = got
    summaries = clusters.cached_summaries(run.run_id, version, k) or []
    chosen = picked.get("cluster") if isinstance(picked, dict) and picked.get("k") == k else None
    cards = [components.cluster_card(s, run.run_id, version, selected=s["cluster"] == chosen)
             for s in summaries]
    note = (f"k = {k} ({source} labels) · thumbnails: tiles nearest the centroid · "
            "click a card to list its tiles")
    return cards, note


@callback(
    Output(ids.CL_CLUSTER, "data"),
    Input({"type": ids.CLUSTER_CARD, "index": ALL}, "n_clicks"),
    Input(ids.CL_MAP, "clickData"),
    Input(ids.RUN, "value"),
    Input(ids.CL_K, "value"),
    prevent_initial_call=True,
)
def pick_cluster(_cards: list, click: Any, run_id: str | None, k: int | None) -> Any:
    """A clicked card, or the cluster of a clicked point (found by id); reset on a new k/run."""
    trig = ctx.triggered_id
    if trig in (ids.RUN, ids.CL_K):
        return None
    if isinstance(trig, dict) and trig.get("type") == ids.CLUSTER_CARD:
        if not ctx.triggered or not ctx.triggered[0]["value"]:
            return no_update
        return {"k": k, "cluster": int(trig["index"])}
    if trig == ids.CL_MAP:
        got = _labels(run_id, k)
        tid = components.event_tile_id(click)
        if got is None or tid is None or tid not in got[0].index:
            return no_update
        run, _, (labels, _) = got
        return {"k": k, "cluster": int(labels[run.index[tid]])}
    return no_update


@callback(
    Output(G["grid"], "children"),
    Output(G["title"], "children"),
    Output(G["label"], "children"),
    Output(G["prev"], "disabled"),
    Output(G["next"], "disabled"),
    Output(G["page"], "data"),
    Input(ids.CL_CLUSTER, "data"),
    Input(G["prev"], "n_clicks"),
    Input(G["next"], "n_clicks"),
    State(G["page"], "data"),
    State(ids.RUN, "value"),
)
def member_gallery(picked: dict | None, _prev: int, _next: int, page: int | None,
                   run_id: str | None) -> tuple:
    """The tiles of the picked cluster, nearest the centroid first, a page at a time."""
    k = picked.get("k") if isinstance(picked, dict) else None
    got = _labels(run_id, k)
    if got is None:
        hint = components.empty_state("No cluster picked",
                                      "Click a cluster card or a point on the map to list its tiles.")
        return hint, "Cluster members", "", True, True, 0
    run, version, _ = got
    summaries = clusters.cached_summaries(run.run_id, version, k) or []
    summary = next((s for s in summaries if s["cluster"] == picked.get("cluster")), None)
    if summary is None:
        return [], "Cluster members", "", True, True, 0
    trig = ctx.triggered_id
    page = int(page or 0)
    page = page - 1 if trig == G["prev"] else page + 1 if trig == G["next"] else 0
    items, page, n_pages = tile_logic.page_of(summary["order"], page)
    cards = [components.record_link_card(run.run_id, version, tile_logic.tile_record(run.tiles, r))
             for r in items]
    label, prev_off, next_off = components.pager_state(page, n_pages, summary["size"],
                                                       tile_logic.PER_PAGE)
    title = html.Span([
        html.Span(className="swatch", style={"background": theme.cluster_colour(summary["cluster"])}),
        f"Cluster {summary['cluster']} · {summary['size']:,} tiles, nearest the centroid first",
    ])
    return cards, title, label, prev_off, next_off, page
