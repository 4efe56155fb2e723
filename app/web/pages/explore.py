"""Explore (``/``): PCA, t-SNE and UMAP maps of the tile embeddings.

Three small maps side by side and one large (method selector); hover shows the tile in a
tooltip, lasso/box selection lists tiles in a paginated gallery (CSV download), a click opens
the tile with its nearest neighbours in the original embedding space.

Scale: coordinates and colours are float32 / int16 typed arrays and the only per-point payload
is the tile id (``customdata``) of the maps that react to the pointer. Re-colouring or moving
the highlight sends a ``Patch`` of those arrays only. Above ``SMALL_HOVER_MAX`` tiles the small
maps are overview-only (no ids, no hover) so the page carries the ids once.
"""

from __future__ import annotations

from typing import Any

import dash
from dash import (
    ALL,
    MATCH,
    Input,
    Output,
    Patch,
    State,
    callback,
    clientside_callback,
    ctx,
    dcc,
    html,
    no_update,
)

from app.ml import registry
from app.web import components, figures, ids, runs, theme
from app.web.logic import explore
from app.web.logic import ood as ood_logic
from app.web.logic import tiles as tile_logic

dash.register_page(__name__, path="/", name="Explore", title="Explore · U-Net Lens", order=0)

#: Above this many tiles the three small maps carry no ids (overview only, no hover).
SMALL_HOVER_MAX = 20_000
N_NEIGHBOURS = 8
LARGE_HEIGHT = 600
SMALL_HEIGHT = 250
G = ids.gallery_ids(ids.EX_GALLERY)
MAP_KEYS = ("large", *registry.reducer_names())


def _map_block(index: str, height: int) -> html.Div:
    return html.Div([
        dcc.Graph(
            id={"type": ids.EX_MAP, "index": index},
            figure=figures.empty_figure("Loading…", height),
            config=figures.GRAPH_CONFIG if index == "large" else figures.SMALL_GRAPH_CONFIG,
            clear_on_unhover=True, style={"height": f"{height}px"},
        ),
        dcc.Tooltip(id={"type": ids.EX_TOOLTIP, "index": index}, direction="right",
                    background_color="#ffffff", border_color="#d8dee4", loading_text="",
                    className="map-tooltip"),
    ], className="map-wrap")


def _small_panel(method: str) -> html.Div:
    return html.Div([
        html.Div([
            html.Span(theme.method_label(method), className="panel-title",
                      id={"type": ids.EX_MAP_TITLE, "index": method}),
            html.Button("Enlarge", id={"type": ids.EX_ENLARGE, "index": method}, n_clicks=0,
                        className="btn btn-ghost btn-xs"),
        ], className="panel-head"),
        _map_block(method, SMALL_HEIGHT),
    ], className="panel small-map", id={"type": ids.EX_SMALL_PANEL, "index": method})


def _control(label: str, child: Any, cls: str = "") -> html.Div:
    return html.Div([html.Label(label, className="control-label"), child],
                    className=f"control {cls}".strip())


def layout(tile: str | None = None, **_: Any) -> html.Div:
    """The page skeleton; callbacks fill it for the picked run. ``?tile=<id>`` opens a tile."""
    gallery = components.gallery_block(ids.EX_GALLERY, "Selection")
    gallery.children[0].children.insert(1, html.Button(
        "Download CSV of ids", id=ids.EX_DOWNLOAD_BTN, n_clicks=0, disabled=True,
        className="btn btn-secondary"))
    return html.Div([
        html.Div([
            html.Div([
                html.H1("Embedding maps"),
                html.P(id=ids.EX_SUBTITLE, className="subtitle"),
            ], className="page-title"),
            html.Div([
                _control("Colour by", dcc.Dropdown(id=ids.EX_COLOUR, clearable=False,
                                                   searchable=False, className="dd-colour")),
                _control("Large map", dcc.RadioItems(
                    id=ids.EX_METHOD, options=theme.method_options(registry.reducer_names()),
                    value="umap", inline=True, className="segmented")),
                _control("Neighbours by", dcc.RadioItems(
                    id=ids.EX_METRIC, options=[{"label": "cosine", "value": "cosine"},
                                               {"label": "euclidean", "value": "euclidean"}],
                    value="cosine", inline=True, className="segmented")),
            ], className="controls"),
        ], className="page-head"),
        html.Div(id=ids.EX_EMPTY),
        html.Div([
            html.Div([_small_panel(m) for m in MAP_KEYS[1:]], className="small-maps"),
            html.Div([
                html.Div([
                    html.Div([
                        html.Span(id=ids.EX_LARGE_TITLE, className="panel-title"),
                        html.Span("Hover: preview · click: inspect · lasso / box: select · "
                                  "double-click: reset", className="panel-hint"),
                    ], className="panel-head"),
                    _map_block("large", LARGE_HEIGHT),
                ], className="panel map-panel"),
                html.Div(
                    dcc.Loading(html.Div(id=ids.EX_DETAIL), type="dot", delay_show=300),
                    className="panel detail-panel",
                ),
            ], className="main-row"),
            gallery,
        ], id=ids.EX_CONTENT),
        dcc.Store(id=ids.EX_SELECTED, data=[]),
        dcc.Store(id=ids.EX_TILE, data=tile if isinstance(tile, str) else None),
        dcc.Store(id=ids.EX_BUILT, data=None),
        dcc.Download(id=ids.EX_DOWNLOAD),
    ], className="page-explore")


# --------------------------------------------------------------------------- run → controls


@callback(
    Output(ids.EX_SUBTITLE, "children"),
    Output(ids.EX_COLOUR, "options"),
    Output(ids.EX_COLOUR, "value"),
    Output(ids.EX_METHOD, "options"),
    Output(ids.EX_METHOD, "value"),
    Output(ids.EX_EMPTY, "children"),
    Output(ids.EX_CONTENT, "style"),
    Input(ids.RUN, "value"),
    State(ids.EX_COLOUR, "value"),
    State(ids.EX_METHOD, "value"),
)
def run_controls(run_id: str | None, colour: str | None, method: str | None) -> tuple:
    """Subtitle, colour options and map methods of the picked run (or an empty state)."""
    run = runs.get_run(run_id)
    empty = components.run_gate(run, "show", maps=True)
    if empty is not None:
        return "", [], None, [], None, empty, components.HIDDEN
    tiles = run.tiles
    methods = tile_logic.available_methods(tiles)
    options = tile_logic.colour_options(tiles)
    values = [o["value"] for o in options]
    colour = colour if colour in values else ("cluster" if "cluster" in values else values[0])
    method_options = theme.method_options(methods)
    method = method if method in methods else tile_logic.default_method(methods)
    problem = components.vectors_problem(run)
    dims = f"{run.vectors.shape[1]}-d " if problem is None else ""
    subtitle = (f"{len(tiles):,} tiles · {dims}{run.manifest.get('representation', '')} vectors "
                f"of layer “{run.layer}” · "
                f"{ood_logic.trained_on(run.manifest.get('model_run'))}")
    note = None if problem is None else components.message(
        f"{problem} The maps work; nearest neighbours need the vectors (rebuild them with "
        f"python -m app embed).", "warn")
    return subtitle, options, colour, method_options, method, note, {}


@callback(
    Output(ids.EX_METHOD, "value", allow_duplicate=True),
    Input({"type": ids.EX_ENLARGE, "index": ALL}, "n_clicks"),
    prevent_initial_call=True,
)
def enlarge(_clicks: list) -> Any:
    """"Enlarge" on a small map makes it the large one."""
    trig = ctx.triggered_id
    if not isinstance(trig, dict) or not ctx.triggered or not ctx.triggered[0]["value"]:
        return no_update
    return trig["index"]


clientside_callback(
    """
    function(method, panelIds) {
        return panelIds.map(function(id) {
            return 'panel small-map' + (id.index === method ? ' active' : '');
        });
    }
    """,
    Output({"type": ids.EX_SMALL_PANEL, "index": ALL}, "className"),
    Input(ids.EX_METHOD, "value"),
    State({"type": ids.EX_SMALL_PANEL, "index": ALL}, "id"),
)


# --------------------------------------------------------------------------- maps


def _lower_first(title: str) -> str:
    """"Disaster" → "disaster" inside a sentence, but "IoU" stays "IoU"."""
    word = title.split(" ", 1)[0]
    return title if any(c.isupper() for c in word[1:]) else title[:1].lower() + title[1:]


def _highlight(tiles: Any, index: dict[str, int], tile: str | None, method: str) -> tuple | None:
    if not tile or tile not in index:
        return None
    row = index[tile]
    x, y = tiles[f"{method}_x"].iat[row], tiles[f"{method}_y"].iat[row]
    return (float(x), float(y)) if x == x and y == y else None


@callback(
    *[Output({"type": ids.EX_MAP, "index": key}, "figure") for key in MAP_KEYS],
    Output(ids.EX_LARGE_TITLE, "children"),
    Output(ids.EX_BUILT, "data"),
    Input(ids.RUN, "value"),
    Input(ids.EX_METHOD, "value"),
    Input(ids.EX_COLOUR, "value"),
    Input(ids.EX_TILE, "data"),
    State(ids.EX_BUILT, "data"),
)
def update_maps(run_id: str | None, method: str | None, colour: str | None, tile: str | None,
                built: dict | None) -> tuple:
    """Build the maps for a new run; otherwise send a ``Patch``: new colours, new coordinates
    for the large map (another method), the highlight ring on the clicked tile. Tile ids
    (the bulk of the payload) only travel with a new run."""
    run = runs.get_run(run_id)
    if run is None or not method or not colour:
        return (no_update,) * (len(MAP_KEYS) + 2)
    tiles, index = run.tiles, run.index
    methods = tile_logic.available_methods(tiles)
    if method not in methods:
        return (no_update,) * (len(MAP_KEYS) + 2)
    version = runs.run_version(run)
    spec = tile_logic.colour_spec(tiles, colour)
    variance = tile_logic.explained_variance(run)
    same_run = bool(built) and built.get("run") == run.run_id and built.get("version") == version
    same_large = same_run and built.get("method") == method
    recolour = not same_run or built.get("colour") != colour
    tile_ids = tiles["tile_id"].to_numpy(dtype=object)
    n = len(tiles)
    outputs: dict[str, Any] = {}
    for key in MAP_KEYS:
        m = method if key == "large" else key
        large = key == "large"
        full = not same_run
        if m not in methods:
            outputs[key] = figures.empty_figure(f"{theme.method_label(m)} not computed", SMALL_HEIGHT) \
                if full else no_update
            continue
        point = _highlight(tiles, index, tile, m)
        # Small maps of a large run are overviews: a fixed sample of points, no ids, no hover.
        rows = None if large else tile_logic.overview_rows(n, SMALL_HOVER_MAX)
        map_spec = spec if rows is None else spec.take(rows)
        if full:
            x, y = tile_logic.map_coords(tiles, m)
            hover_ids = tile_ids
            if rows is not None:
                x, y, hover_ids = x[rows], y[rows], None
            outputs[key] = figures.map_figure(
                x, y, hover_ids, map_spec, axis_titles=tile_logic.axis_titles(m, variance),
                large=large, highlight=point, uirevision=f"{run.run_id}:{version}:{m}",
                height=LARGE_HEIGHT if large else SMALL_HEIGHT,
            )
        else:
            patch = figures.recolour_patch(map_spec, large=large) if recolour else Patch()
            if large and not same_large:  # another method: new coordinates, same ids
                x, y = tile_logic.map_coords(tiles, m)
                figures.coords_patch(x, y, tile_logic.axis_titles(m, variance),
                                     f"{run.run_id}:{version}:{m}", patch)
            outputs[key] = figures.highlight_patch(point, patch)
    title = f"{theme.method_label(method)} map · coloured by {_lower_first(spec.title)}"
    new_built = {"run": run.run_id, "version": version, "method": method, "colour": colour}
    return (*(outputs[k] for k in MAP_KEYS), title, new_built)


@callback(
    Output({"type": ids.EX_MAP_TITLE, "index": ALL}, "children"),
    Input(ids.RUN, "value"),
    State({"type": ids.EX_MAP_TITLE, "index": ALL}, "id"),
)
def small_titles(run_id: str | None, title_ids: list[dict]) -> list:
    """Small-map titles, saying when a map shows a sample of a large run."""
    run = runs.get_run(run_id)
    n = len(run.tiles) if run is not None else 0
    out = []
    for tid in title_ids:
        label = theme.method_label(tid["index"])
        if n > SMALL_HOVER_MAX:
            out.append([label, html.Span(f" · {SMALL_HOVER_MAX:,} of {n:,} tiles, no hover",
                                         className="panel-hint")])
        else:
            out.append(label)
    return out


@callback(
    Output({"type": ids.EX_TOOLTIP, "index": MATCH}, "show"),
    Output({"type": ids.EX_TOOLTIP, "index": MATCH}, "bbox"),
    Output({"type": ids.EX_TOOLTIP, "index": MATCH}, "children"),
    Input({"type": ids.EX_MAP, "index": MATCH}, "hoverData"),
    State(ids.RUN, "value"),
)
def hover(hover_data: Any, run_id: str | None) -> tuple:
    """Tooltip for the hovered point: a lookup by id, never a figure rebuild."""
    return components.hover_tooltip(hover_data, run_id)


# --------------------------------------------------------------------------- selection


clientside_callback(
    """
    function(selections, runId) {
        var c = window.dash_clientside.callback_context;
        var trig = c.triggered && c.triggered.length ? c.triggered[0] : null;
        if (!trig || trig.prop_id.indexOf('selectedData') < 0) { return []; }
        var value = trig.value;
        if (!value || !value.points) { return []; }
        var seen = {}, out = [];
        value.points.forEach(function(p) {
            var id = Array.isArray(p.customdata) ? p.customdata[0] : p.customdata;
            if (typeof id === 'string' && !seen[id]) { seen[id] = true; out.push(id); }
        });
        return out;
    }
    """,
    Output(ids.EX_SELECTED, "data"),
    Input({"type": ids.EX_MAP, "index": ALL}, "selectedData"),
    Input(ids.RUN, "value"),
    prevent_initial_call=True,
)


@callback(
    Output(G["grid"], "children"),
    Output(G["title"], "children"),
    Output(G["label"], "children"),
    Output(G["prev"], "disabled"),
    Output(G["next"], "disabled"),
    Output(G["page"], "data"),
    Output(ids.EX_DOWNLOAD_BTN, "disabled"),
    Input(ids.EX_SELECTED, "data"),
    Input(G["prev"], "n_clicks"),
    Input(G["next"], "n_clicks"),
    State(G["page"], "data"),
    State(ids.RUN, "value"),
)
def selection_gallery(selected: Any, _prev: int, _next: int, page: int | None,
                      run_id: str | None) -> tuple:
    """The selected tiles (found by id), one page of cards at a time."""
    run = runs.get_run(run_id)
    if run is None:
        return [], "Selection", "", True, True, 0, True
    chosen = explore.known_ids(run.index, selected)
    if not chosen:
        hint = components.empty_state(
            "Nothing selected yet",
            "Lasso or box-select points on a map to list their tiles here.")
        return hint, "Selection", "", True, True, 0, True
    trig = ctx.triggered_id
    page = int(page or 0)
    page = page - 1 if trig == G["prev"] else page + 1 if trig == G["next"] else 0
    items, page, n_pages = tile_logic.page_of(chosen, page)
    version = runs.run_version(run)
    cards = [
        components.record_card(run.run_id, version, tile_logic.tile_record(run.tiles, run.index[t]), "sel")
        for t in items
    ]
    label, prev_off, next_off = components.pager_state(page, n_pages, len(chosen), tile_logic.PER_PAGE)
    title = f"Selection · {len(chosen):,} tile{'s' if len(chosen) != 1 else ''}"
    return cards, title, label, prev_off, next_off, page, False


@callback(
    Output(ids.EX_DOWNLOAD, "data"),
    Input(ids.EX_DOWNLOAD_BTN, "n_clicks"),
    State(ids.EX_SELECTED, "data"),
    State(ids.RUN, "value"),
    prevent_initial_call=True,
)
def download_selection(n_clicks: int, selected: Any, run_id: str | None) -> Any:
    """CSV of the selected tile ids (with their metadata and metrics)."""
    run = runs.get_run(run_id)
    if not n_clicks or run is None:
        return no_update
    chosen = explore.known_ids(run.index, selected)
    if not chosen:
        return no_update
    return {"content": explore.selection_csv(run.tiles, run.index, chosen),
            "filename": f"{run.run_id}-selection-{len(chosen)}.csv", "type": "text/csv"}


# --------------------------------------------------------------------------- clicked tile


@callback(
    Output(ids.EX_TILE, "data"),
    Input({"type": ids.EX_MAP, "index": ALL}, "clickData"),
    Input({"type": ids.TILE_CARD, "index": ALL}, "n_clicks"),
    State(ids.RUN, "value"),
    prevent_initial_call=True,
)
def pick_tile(_clicks: list, _cards: list, run_id: str | None) -> Any:
    """A clicked point or card (found by its id) becomes the inspected tile."""
    run = runs.get_run(run_id)
    trig = ctx.triggered_id
    if run is None or not isinstance(trig, dict) or not ctx.triggered:
        return no_update
    value = ctx.triggered[0]["value"]
    if trig.get("type") == ids.EX_MAP:
        tid = components.event_tile_id(value)
    elif trig.get("type") == ids.TILE_CARD and value:
        tid = str(trig.get("index", "")).split("|", 1)[-1]
    else:
        return no_update
    return tid if tid in run.index else no_update


@callback(
    Output(ids.EX_DETAIL, "children"),
    Input(ids.EX_TILE, "data"),
    Input(ids.EX_METRIC, "value"),
    Input(ids.RUN, "value"),
)
def tile_detail(tile: str | None, metric: str | None, run_id: str | None) -> Any:
    """The inspected tile with its nearest neighbours in the original embedding space."""
    run = runs.get_run(run_id)
    if run is None or not isinstance(tile, str) or tile not in run.index:
        return components.empty_state(
            "Click a point to inspect a tile",
            "Its image, true and predicted masks, metrics and nearest neighbours in the "
            "embedding space appear here.")
    metric = metric if metric in ("cosine", "euclidean") else "cosine"
    row = run.index[tile]
    problem = components.vectors_problem(run)
    neighbours: list[tuple[dict[str, Any], float]] = []
    dims = 0
    if problem is None:
        vec = runs.vectors(run)
        dims = int(vec.data.shape[1])
        neighbours = [
            (tile_logic.tile_record(run.tiles, r), score)
            for r, score in tile_logic.nearest_neighbours(vec, row, N_NEIGHBOURS, metric)
        ]
    detail = components.detail_panel(
        run.run_id, runs.run_version(run), tile_logic.tile_record(run.tiles, row), neighbours,
        metric=metric, dims=dims,
        has_image=run.file_for("image", tile) is not None,
        has_true=run.file_for("true", tile) is not None,
    )
    if problem is not None:
        detail.children.append(components.message(f"No neighbours: {problem}", "warn"))
    return detail
