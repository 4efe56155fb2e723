"""Evaluate (``/evaluate``): how good is the model on the run's evaluation tiles?

On the first visit for a (run, model) the model runs once over the evaluation tiles in a
background callback with a progress bar (:func:`app.web.logic.evaluate.run_evaluation`); the
counts it keeps are cached, so every later visit and every threshold is instant. Shown at the
threshold slider's value: pixel precision, recall, F1 and IoU, building-level precision /
recall / F1 at IoU ≥ 0.5, the PR curve, IoU and F1 vs threshold, the pixel
confusion matrix, scores per disaster, approximate building recall per damage class, and a
sortable, filterable per-tile table (dash-ag-grid); clicking a row shows the tile with its TP / FP / FN
overlay (``metrics.error_overlay`` colours).

With the run's dataset on disk the headline scores (cards, curves, confusion matrix, per-disaster
table) are those of whole scenes, every scene pixel once, from the same function as
``python -m app evaluate`` (:func:`app.web.logic.evaluate.run_scene_evaluation`); the per-tile
table and damage recall stay per tile.
"""

from __future__ import annotations

from typing import Any

import dash
import dash_ag_grid as dag
from dash import Input, Output, State, callback, dcc, html, no_update

from app.ml import evaluate as scoring
from app.ml.metrics import error_overlay
from app.web import components, figures, ids, images, runs
from app.web.background import MANAGER
from app.web.cache import cache
from app.web.images import img_url
from app.web.logic import evaluate as ev
from app.web.logic import ood as ood_logic

dash.register_page(__name__, path="/evaluate", name="Evaluate", title="Evaluate · U-Net Lens",
                   order=3)

GRAPH_HEIGHT = 300
PAGE_SIZE = 12
DEFAULT_THRESHOLD = 0.5
GRAPH_CONFIG = {"displaylogo": False, "displayModeBar": False}


# --------------------------------------------------------------------------- plain helpers


def load(ready: dict | None, key: str = "key", kind: type = scoring.Evaluation) -> Any:
    """The cached evaluation (``kind``) the ready-store names under ``key``, or None."""
    if not isinstance(ready, dict) or not ready.get(key):
        return None
    value = cache.get(ready[key])
    return value if isinstance(value, kind) else None


def ensure_evaluation(run: Any, info: runs.ModelInfo, progress: Any = None
                      ) -> scoring.Evaluation:
    """The evaluation of ``run`` by the model: from the cache, else computed and cached."""
    version = runs.run_version(run)
    key = ev.cache_key(run.run_id, version, info.service.sha256)
    found = cache.get(key)
    if isinstance(found, scoring.Evaluation):
        return found
    result = ev.run_evaluation(run, info.service, version=version, model_run=info.run_id or "",
                               progress=progress)
    cache.set(key, result)
    return result


def ensure_scene_score(run: Any, info: runs.ModelInfo, progress: Any = None
                       ) -> tuple[scoring.DatasetScore | None, str | None, str]:
    """``(score, cache key, note)`` of the run's whole scenes (cached); ``(None, None, "")``
    when its dataset is not on disk, ``(None, None, why)`` when it has too many tiles."""
    source = ev.scene_source(run)
    if source is None:
        return None, None, ""
    if source[2] > ev.MAX_SCENE_TILES:
        return None, None, (f"scores per tile: the dataset's {source[2]:,} scene tiles are more "
                            f"than the page scores ({ev.MAX_SCENE_TILES:,}); `python -m app "
                            "evaluate` scores the whole scenes")
    key = ev.scene_cache_key(source[0], source[1], info.service.sha256)
    found = cache.get(key)
    if isinstance(found, scoring.DatasetScore):
        return found, key, ""
    score = ev.run_scene_evaluation(run, info.service, progress)
    cache.set(key, score)
    return score, key, ""


Headline = scoring.Evaluation | scoring.DatasetScore


def metric_cards(ev_: Headline, threshold: float) -> list[Any]:
    """Pixel scores and counts at the threshold."""
    s = scoring.pixel_summary(ev_, threshold)
    total = max(1, s["tp"] + s["fp"] + s["fn"] + s["tn"])
    return [
        _card("Precision", s["precision"], "of pixels predicted building, truly building"),
        _card("Recall", s["recall"], "of building pixels, found"),
        _card("F1", s["f1"], "harmonic mean of the two"),
        _card("IoU", s["iou"], "TP / (TP + FP + FN)"),
        html.Div([html.Div("Pixels", className="metric-label"),
                  html.Div(f"{total:,}", className="metric-value metric-small"),
                  html.Div(f"{(s['tp'] + s['fn']) / total:.1%} building in truth, "
                           f"{(s['tp'] + s['fp']) / total:.1%} predicted",
                           className="metric-note")], className="metric-card"),
    ]


def _card(label: str, value: float, note: str) -> html.Div:
    return html.Div([
        html.Div(label, className="metric-label"),
        html.Div(f"{value:.3f}", className="metric-value"),
        html.Div(html.Span(style={"width": f"{max(0.0, min(1.0, value)) * 100:.1f}%"}),
                 className="metric-bar"),
        html.Div(note, className="metric-note"),
    ], className="metric-card")


def building_cards(ev_: Headline, threshold: float) -> html.Div:
    """Building-level scores (IoU ≥ 0.5 matching) at the nearest stored threshold."""
    b = scoring.building_summary(ev_, threshold)
    over = "whole scenes" if isinstance(ev_, scoring.DatasetScore) else "tiles"
    note = (f"instances matched one-to-one at IoU ≥ {scoring.BUILDING_IOU}, summed over {over}; "
            f"at threshold {b['threshold']:.1f}")
    if abs(b["threshold"] - threshold) > 0.005:
        note += f" (nearest of {', '.join(f'{t:.1f}' for t in scoring.BUILDING_THRESHOLDS)})"
    return html.Div([
        html.Div([
            components.stat("Bldg precision", f"{b['precision']:.3f}"),
            components.stat("Bldg recall", f"{b['recall']:.3f}"),
            components.stat("Bldg F1", f"{b['f1']:.3f}"),
            components.stat("Matched (TP)", f"{b['tp']:,}"),
            components.stat("False (FP)", f"{b['fp']:,}"),
            components.stat("Missed (FN)", f"{b['fn']:,}"),
        ], className="stats stats-6"),
        html.Div(note, className="panel-foot"),
    ])


def group_table(rows: list[dict[str, Any]], column: str = "disaster",
                count: str = "Tiles") -> Any:
    """Per-disaster scores as a small HTML table (``count``: what the ``tiles`` key counts)."""
    if not rows:
        return components.empty_state("No groups", f"The tiles have no “{column}” column.")
    head = html.Thead(html.Tr([html.Th(column.capitalize()), html.Th(count),
                               html.Th("Px P"), html.Th("Px R"), html.Th("Px F1"),
                               html.Th("Px IoU"), html.Th("Bldg P"), html.Th("Bldg R"),
                               html.Th("Bldg F1"), html.Th("Bldg")]))
    body = [html.Tr([html.Td(r[column]), html.Td(f"{r['tiles']:,}", className="num"),
                     *[html.Td(f"{r[k]:.3f}", className="num")
                       for k in ("px_precision", "px_recall", "px_f1", "px_iou", "b_precision",
                                 "b_recall", "b_f1")],
                     html.Td(f"{r['b_true']:,}", className="num")]) for r in rows]
    return html.Div(html.Table([head, html.Tbody(body)], className="table"),
                    className="table-wrap table-wrap-tall")


#: d3-format specifiers of the table's number kinds (dash-ag-grid evaluates ``d3.format``).
_FORMATS = {"score": ".3f", "pct": ".1f"}
#: The per-tile table's IoU cell colours (CSS classes in assets/lens_pages.css).
IOU_CLASSES = {
    "iou-low": "params.value < 0.3",
    "iou-mid": "params.value >= 0.3 && params.value < 0.6",
    "iou-high": "params.value >= 0.6",
}
HEADER_TOOLTIPS = {"true_pct": "building pixels in the truth",
                   "pred_pct": "pixels predicted building at the threshold",
                   "b_tp": "buildings matched at IoU ≥ 0.5"}


def table_columns() -> list[dict[str, Any]]:
    """AG Grid column definitions of the per-tile table (worst IoU first)."""
    cols = []
    for cid, name, kind in ev.TABLE_COLUMNS:
        col: dict[str, Any] = {"field": cid, "headerName": name, "headerTooltip": name}
        if kind == "text":
            col["filter"] = "agTextColumnFilter"
            col["cellClass"] = "cell-id" if cid == "tile_id" else "cell-text"
            col["minWidth"] = 96
            if cid == "tile_id":
                col["flex"] = 3  # ids are long: the widest column
        else:
            col["filter"] = "agNumberColumnFilter"
            col["type"] = "rightAligned"
            if kind in _FORMATS:
                col["valueFormatter"] = {
                    "function": f"params.value == null ? '' : d3.format('{_FORMATS[kind]}')"
                                "(params.value)"}
        if cid == "iou":
            col["sort"] = "asc"
            col["cellClassRules"] = IOU_CLASSES
        if cid in HEADER_TOOLTIPS:
            col["headerTooltip"] = HEADER_TOOLTIPS[cid]
        cols.append(col)
    return cols


def tile_detail(run: Any, info: runs.ModelInfo, tile_id: str, threshold: float) -> Any:
    """The clicked tile with its TP / FP / FN overlay at the threshold and its scores."""
    image = runs.tile_image(run, tile_id)
    truth = runs.tile_truth(run, tile_id)
    if image is None or truth is None:
        return components.empty_state("No image or truth", f"Tile {tile_id} has none stored.")
    prob = info.service.predict_tile(image)
    truth_full = images.resize_mask(truth, prob.shape)
    overlay = error_overlay(image, truth_full, prob >= threshold, alpha=0.6)
    s = scoring.tile_scores(prob, truth, threshold)
    version = runs.run_version(run)
    return html.Div([
        html.Div([html.Span(tile_id, className="detail-id"),
                  dcc.Link("Explain this tile →", href=components.explain_href(run.run_id, tile_id),
                           className="btn btn-secondary btn-xs")], className="detail-head"),
        html.Div([
            components.figure(img_url(run.run_id, "image", tile_id, version), "tile"),
            components.figure(images.data_uri(overlay), f"errors at t = {threshold:.2f}",
                           cid=ids.EV_DETAIL + "-overlay"),
        ], className="lens-grid lens-grid-2"),
        components.overlay_legend(),
        html.Div([components.stat("Precision", f"{s['precision']:.3f}"),
                  components.stat("Recall", f"{s['recall']:.3f}"),
                  components.stat("IoU", f"{s['iou']:.3f}"),
                  components.stat("TP px", f"{s['tp']:,}"),
                  components.stat("FP px", f"{s['fp']:,}"),
                  components.stat("FN px", f"{s['fn']:,}")], className="stats"),
    ], className="ev-detail")


# --------------------------------------------------------------------------- layout


def layout(**_: Any) -> html.Div:
    """Threshold slider, metric cards, curves, group scores and the per-tile table."""
    graph = {"config": GRAPH_CONFIG, "style": {"height": f"{GRAPH_HEIGHT}px"}}
    table = dag.AgGrid(
        id=ids.EV_TABLE, columnDefs=table_columns(), rowData=[],
        getRowId="params.data.id",
        defaultColDef={"sortable": True, "filter": True, "floatingFilter": True,
                       "resizable": True, "minWidth": 84, "flex": 1,
                       "wrapHeaderText": True, "autoHeaderHeight": True},
        dashGridOptions={"pagination": True, "paginationPageSize": PAGE_SIZE,
                         "paginationPageSizeSelector": False, "domLayout": "autoHeight",
                         "tooltipShowDelay": 300, "animateRows": False},
        className="ev-grid", style={"height": None},
    )
    return html.Div([
        html.Div([
            html.Div([html.H1("Evaluate the model"),
                      html.P(id=ids.EV_SUBTITLE, className="subtitle")], className="page-title"),
            html.Div([
                components.control("Threshold", dcc.Slider(
                    id=ids.EV_THRESHOLD, min=0.05, max=0.95, step=0.01, value=DEFAULT_THRESHOLD,
                    marks={v / 10: f"{v / 10:.1f}" for v in range(1, 10, 2)},
                    tooltip={"placement": "bottom", "always_visible": False}),
                    cls="control-threshold"),
            ], className="controls"),
        ], className="page-head"),
        html.Div(id=ids.EV_WARNING),
        html.Div(id=ids.EV_EMPTY),
        components.progress_box(ids.EV_PROGRESS, ids.EV_PROGRESS_LABEL, ids.EV_PROGRESS_BOX),
        html.Div([
            html.Div(id=ids.EV_METRICS, className="metric-row"),
            components.panel("Buildings", html.Div(id=ids.EV_BUILDINGS), cls="buildings-panel"),
            html.Div([
                html.Div(dcc.Graph(id=ids.EV_PR, **graph), className="panel"),
                html.Div(dcc.Graph(id=ids.EV_CURVE, **graph), className="panel"),
                html.Div(dcc.Graph(id=ids.EV_CONFUSION, **graph), className="panel"),
            ], className="lens-row-3"),
            html.Div([
                components.panel("By disaster", html.Div(id=ids.EV_GROUPS),
                              hint="pixel (Px) and building (Bldg) scores"),
                components.panel("By damage class", html.Div(id=ids.EV_DAMAGE),
                              hint="recall of ground-truth buildings"),
            ], className="lens-row-2 lens-row-even"),
            html.Div([
                components.panel("Per tile", table, hint="click a row · sort by a header · "
                              "filter: type in a column's box (numbers: e.g. 0.5, then pick less than)", cls="table-panel"),
                components.panel("Tile", dcc.Loading(html.Div(
                    components.empty_state("Click a row", "The tile and its TP / FP / FN "
                                           "overlay appear here."), id=ids.EV_DETAIL),
                    type="dot", delay_show=200), cls="ev-detail-panel"),
            ], className="lens-row-2 ev-table-row"),
        ], id=ids.EV_CONTENT, style={"display": "none"}),
        dcc.Store(id=ids.EV_READY, data=None),
    ], className="page-lens page-evaluate")


# --------------------------------------------------------------------------- callbacks


@callback(
    Output(ids.EV_READY, "data"),
    Output(ids.EV_SUBTITLE, "children"),
    Output(ids.EV_EMPTY, "children"),
    Output(ids.EV_WARNING, "children"),
    Output(ids.EV_CONTENT, "style"),
    Input(ids.RUN, "value"),
    background=True,
    manager=MANAGER,
    progress=[Output(ids.EV_PROGRESS, "value"), Output(ids.EV_PROGRESS, "max"),
              Output(ids.EV_PROGRESS_LABEL, "children")],
    progress_default=["0", "1", ""],
    running=[(Output(ids.EV_PROGRESS_BOX, "style"), {"display": "flex"}, {"display": "none"})],
    interval=400,
)
def evaluate_run(set_progress: Any, run_id: str | None) -> tuple:
    """Run (or fetch) the evaluation pass of the picked run; a progress bar meanwhile."""
    hidden = components.HIDDEN
    run = runs.get_run(run_id)
    info = runs.model_for(run)
    empty = components.run_gate(run, "evaluate", info=info)
    if empty is not None:
        return None, "", empty, None, hidden
    ids_, _, _ = ev.evaluation_tiles(run)
    if not ids_:
        return (None, "", components.empty_state(
            "No tiles with ground truth", f"Run {run.run_id} stores no true masks."), None, hidden)
    set_progress(("0", str(len(ids_)), f"Running model {info.run_id} over {len(ids_):,} tiles…"))

    def progress(done: int, total: int) -> None:
        set_progress((str(done), str(total), f"Running model {info.run_id} over the evaluation "
                                             f"tiles… {done:,}/{total:,}"))

    result = ensure_evaluation(run, info, progress)

    def scene_progress(done: int, total: int) -> None:
        set_progress((str(done), str(total), f"Scoring the whole scenes of the run's dataset "
                                             f"(each pixel once)… {done:,}/{total:,} tiles"))

    scenes, scene_key, note = ensure_scene_score(run, info, scene_progress)
    subtitle = (f"{len(result.tile_ids):,} tiles ({result.source}) of {run.run_id} · model "
                f"{result.model_run} · scored at {result.resolution} · one pass in "
                f"{result.seconds:,.1f} s ({result.device}), cached")
    if scenes is not None:
        n = len(scenes.scene_ids)
        subtitle = (f"Scores: {n:,} whole scene{'' if n == 1 else 's'} "
                    f"({', '.join(scenes.splits)}) of dataset {scenes.dataset_name}, every scene "
                    "pixel once, as `python -m app evaluate` prints them · per-tile table: "
                    + subtitle)
    elif note:
        subtitle += f" · {note}"
    subtitle += f" · {ood_logic.trained_on(result.model_run)}"
    warning = components.message(info.warning, "warn") if info.warning else None
    ready = {"key": ev.cache_key(run.run_id, result.version, result.model_sha),
             "run": run.run_id, "scene_key": scene_key}
    return ready, subtitle, None, warning, {}


@callback(
    Output(ids.EV_METRICS, "children"),
    Output(ids.EV_BUILDINGS, "children"),
    Output(ids.EV_PR, "figure"),
    Output(ids.EV_CURVE, "figure"),
    Output(ids.EV_CONFUSION, "figure"),
    Output(ids.EV_GROUPS, "children"),
    Output(ids.EV_DAMAGE, "children"),
    Output(ids.EV_TABLE, "rowData"),
    Input(ids.EV_READY, "data"),
    Input(ids.EV_THRESHOLD, "value"),
)
def update_metrics(ready: dict | None, threshold: float | None) -> tuple:
    """Everything at the threshold, from the cached counts (no model call)."""
    result = load(ready)
    run = runs.get_run((ready or {}).get("run"))
    if result is None or run is None:
        return (no_update,) * 8
    t = float(threshold if threshold is not None else DEFAULT_THRESHOLD)
    damage = ev.damage_rows(result, run, t)
    damage_view: Any = (dcc.Graph(figure=figures.damage_figure(damage), config=GRAPH_CONFIG,
                                  style={"height": "260px"}) if damage else
                        components.empty_state("No damage labels",
                                               "The tiles carry no dmg_* counts."))
    note = ("Damage-class recall is approximate: tiles store how many buildings of each class "
            "they hold but not which instance is which, so each class's recall is the "
            "count-weighted mean of its tiles' building recall.")
    if result.skipped:
        note += f" {len(result.skipped):,} tiles without a stored image were skipped."
    scenes = load(ready, "scene_key", scoring.DatasetScore)
    head: Headline = scenes if scenes is not None else result
    groups = (group_table(ev.scene_group_rows(scenes, t), count="Scenes") if scenes is not None
              else group_table(ev.group_rows(result, run, t)))
    pixel = scoring.pixel_summary(head, t)
    return (metric_cards(head, t), building_cards(head, t),
            figures.pr_figure(head, t, GRAPH_HEIGHT), figures.threshold_figure(head, t, GRAPH_HEIGHT),
            figures.confusion_figure(pixel, GRAPH_HEIGHT), groups,
            [damage_view, html.Div(note, className="panel-foot")] if damage else damage_view,
            ev.tile_rows(result, run, t))


@callback(
    Output(ids.EV_DETAIL, "children"),
    Input(ids.EV_TABLE, "cellClicked"),
    Input(ids.EV_THRESHOLD, "value"),
    State(ids.EV_READY, "data"),
    prevent_initial_call=True,
)
def row_detail(clicked: dict | None, threshold: float | None, ready: dict | None) -> Any:
    """The clicked row's tile with its error overlay at the threshold."""
    run = runs.get_run((ready or {}).get("run"))
    tile_id = (clicked or {}).get("rowId")
    if run is None or not isinstance(tile_id, str) or tile_id not in run.index:
        return no_update
    info = runs.model_for(run)
    if not info.ok:
        return components.empty_state("No model", info.message)
    t = float(threshold if threshold is not None else DEFAULT_THRESHOLD)
    return tile_detail(run, info, tile_id, t)
