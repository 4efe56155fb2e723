"""Segment (``/segment``): upload an aerial image and see what the U-Net makes of it.

The upload (PNG / JPEG / TIFF, 8/16-bit, grayscale, RGBA, palette, CMYK, up to
``config.MAX_UPLOAD_BYTES``) is decoded by :func:`app.web.uploads.parse_upload`; a bad file is a
clear message in the page and nothing else changes. A good one is segmented in one whole-image
pass up to ``config.SINGLE_PASS_MAX_PIXELS`` (1024² by default), else tile by tile (256 px
tiles, 32 px overlap, raised-cosine blending: ``ModelService.segment_large``), in a
background callback with a progress bar, then shown as a mask overlay and a probability map
with the building count and area (``metrics.count_buildings``, watershed), Otsu and K-means
colour baselines beside the U-Net, a Grad-CAM of the upload, a "Download mask PNG" button and
the upload placed on the run's PCA / t-SNE / UMAP maps (``ml.apply.place_new``) with its nearest
stored tiles.

Between callbacks the decoded upload lives in the shared flask-caching cache under its
SHA-256 (a ≤1024 px copy for Grad-CAM, the mask PNG for the download), so the browser never
sends the file twice.
"""

from __future__ import annotations

import math
from typing import Any

import dash
from dash import Input, Output, State, callback, dcc, html, no_update

from app import config
from app.web import components, figures, gate, ids, images, runs, theme, uploads
from app.web.background import MANAGER
from app.web.cache import cache
from app.web.logic import segment as seg
from app.web.logic import tiles as tile_logic

dash.register_page(__name__, path="/segment", name="Segment", title="Segment · U-Net Lens",
                   order=4)

TILE, OVERLAP, THRESHOLD = seg.TILE, seg.OVERLAP, seg.THRESHOLD
MAP_HEIGHT = 420
MAP_MAX_POINTS = 20_000
MASK_COLOUR = (255, 196, 0)
BASELINE_COLOUR = (0, 170, 255)


# --------------------------------------------------------------------------- rendering


def summary_block(res: seg.SegmentResult) -> html.Div:
    """Stats strip: size, buildings, area, timing and what the decoder did."""
    total = res.width * res.height
    timing = ("from cache" if res.cached else f"{res.seconds * 1000:,.0f} ms") + f" ({res.device})"
    how = seg.tiling_description(res.width, res.height)
    chips = [html.Span(n, className="chip chip-note") for n in res.notes]
    return html.Div([
        *components.ood_block(res.ood),
        html.Div([html.Span(res.name, className="result-name"),
                  html.Span(f"{res.width:,} × {res.height:,} px", className="chip"),
                  *chips], className="result-head"),
        html.Div([
            components.stat("Buildings", f"{res.n_buildings:,}"),
            components.stat("Building area", f"{res.building_pixels:,} px"),
            components.stat("Area share", f"{res.building_pixels / max(total, 1):.1%}"),
            components.stat("Mean size", f"{res.mean_area:,.0f} px" if res.n_buildings else "–"),
            components.stat("Segmented in", timing),
            components.stat("Method", how),
        ], className="stats stats-6"),
    ])


def image_block(res: seg.SegmentResult) -> list[Any]:
    """Upload, mask overlay and probability map (the Grad-CAM beside them is filled later)."""
    mask_disp = images.resize_mask(res.mask, res.image.shape[:2])
    legend = html.Span([html.Span("0"), html.Span(className="prob-bar"), html.Span("1")],
                       className="prob-legend")
    overlay = images.mask_overlay(res.image, mask_disp, MASK_COLOUR)
    return [
        components.figure(images.data_uri(res.image, "JPEG"), "upload"),
        components.figure(images.data_uri(overlay, "JPEG"), f"U-Net mask (p ≥ {THRESHOLD})",
                       cid=ids.SG_MASK_IMG),
        components.figure(images.data_uri(images.colourise(res.prob, "Viridis")),
                       "building probability", note=legend),
    ]


def baseline_block(res: seg.SegmentResult) -> list[Any]:
    """U-Net vs Otsu vs K-means, each with its building share and IoU with the U-Net."""
    shape = res.image.shape[:2]
    unet = images.resize_mask(res.mask, shape)
    cards = [components.figure(
        images.data_uri(images.mask_overlay(res.image, unet, MASK_COLOUR), "JPEG"), "U-Net",
        note=f" · {unet.mean():.1%} building")]
    for b in res.baselines.values():
        m = images.resize_mask(b["mask"], shape)
        cards.append(components.figure(
            images.data_uri(images.mask_overlay(res.image, m, BASELINE_COLOUR), "JPEG"),
            b["label"], note=f" · {b['fraction']:.1%} building · IoU with U-Net {b['iou']:.2f}"))
    return cards


# --------------------------------------------------------------------------- layout


def _single_pass_side() -> str:
    """The single-pass limit in words: "1024²" for a square number of pixels."""
    side = math.isqrt(config.SINGLE_PASS_MAX_PIXELS)
    if side * side == config.SINGLE_PASS_MAX_PIXELS:
        return f"{side}²"
    return f"{config.SINGLE_PASS_MAX_PIXELS / 1e6:.1f} MP"


def layout(**_: Any) -> html.Div:
    """The page skeleton: upload box, then the results of the last good upload."""
    limit = uploads.fmt_bytes(config.MAX_UPLOAD_BYTES)
    upload = components.upload_box(
        ids.SG_UPLOAD, ids.SG_MESSAGE,
        html.Div([
            html.Div("⇪", className="upload-icon", **{"aria-hidden": "true"}),
            html.Div([html.Span("Drop an aerial image here or "), html.A("choose a file")],
                     className="upload-title"),
            html.Div(f"{components.upload_formats_text()} · 8/16-bit · RGB, grayscale, RGBA, "
                     f"palette or CMYK · up to {limit}", className="upload-hint"),
        ]),
    )
    progress = components.progress_box(ids.SG_PROGRESS, f"{ids.SG_PROGRESS}-label",
                                    ids.SG_PROGRESS_BOX)
    return html.Div([
        html.Div([
            html.Div([
                html.H1("Segment an image"),
                html.P(["Upload an aerial image: the U-Net segments it in one pass up to "
                        f"{_single_pass_side()} px, larger ones in {TILE} px tiles with "
                        f"{OVERLAP} px overlap, blended without seams; classical baselines and "
                        "the image's place among the stored tiles appear beside it."],
                       className="subtitle"),
            ], className="page-title"),
        ], className="page-head"),
        html.Div(id=ids.SG_WARNING),
        html.Div(id=ids.SG_EMPTY),
        html.Div([upload, progress, html.Div(id=ids.SG_MESSAGE, role="status",
                                             **{"aria-live": "polite"})],
                 className="panel upload-panel"),
        html.Div([
            html.Div([
                html.Div(id=ids.SG_SUMMARY, className="result-summary"),
                html.Button("Download mask PNG", id=ids.SG_DOWNLOAD_BTN, n_clicks=0,
                            className="btn btn-primary"),
            ], className="panel result-panel"),
            html.Div([
                html.Div(id=ids.SG_IMAGES, className="lens-contents"),
                dcc.Loading(html.Div(components.placeholder("Grad-CAM (bottleneck)", "computing…"),
                                     id=ids.SG_GRADCAM), type="dot", delay_show=200,
                            parent_className="lens-loading"),
            ], className="lens-grid lens-grid-4"),
            components.panel("U-Net vs classical baselines", html.Div(id=ids.SG_BASELINES,
                                                            className="lens-grid lens-grid-3"),
                   hint="Otsu: brighter class of the luminance · K-means: palest, least "
                        "saturated colour cluster"),
            html.Div([
                components.panel("Where the upload falls on the stored maps", html.Div([
                    dcc.RadioItems(id=ids.SG_MAP_METHOD, options=[], value=None, inline=True,
                                   className="segmented"),
                    dcc.Graph(id=ids.SG_MAP, figure=figures.empty_figure("", MAP_HEIGHT),
                              config=figures.GRAPH_CONFIG, style={"height": f"{MAP_HEIGHT}px"}),
                    html.Div(id=ids.SG_MAP_NOTE, className="panel-foot"),
                ]), cls="map-panel"),
                components.panel("Nearest stored tiles", html.Div(id=ids.SG_NEIGHBOURS,
                                                        className="card-grid lens-cards"),
                       hint="cosine similarity in the embedding space"),
            ], className="lens-row-2"),
        ], id=ids.SG_CONTENT, style={"display": "none"}),
        dcc.Store(id=ids.SG_RESULT, data=None),
        dcc.Download(id=ids.SG_DOWNLOAD),
    ], className="page-lens page-segment")


# --------------------------------------------------------------------------- callbacks


@callback(
    Output(ids.SG_EMPTY, "children"),
    Output(ids.SG_WARNING, "children"),
    Input(ids.RUN, "value"),
)
def check_model(run_id: str | None) -> tuple:
    """Say up front when there is no model to segment with."""
    run = runs.get_run(run_id)
    info = runs.model_for(run)
    empty = components.run_gate(run, "segment", info=info, need_run=False)
    if empty is not None:
        return empty, None
    warn = components.message(info.warning, "warn") if info.warning else None
    return None, warn


@callback(
    Output(ids.SG_MESSAGE, "children"),
    Output(ids.SG_RESULT, "data"),
    Output(ids.SG_SUMMARY, "children"),
    Output(ids.SG_IMAGES, "children"),
    Output(ids.SG_BASELINES, "children"),
    Output(ids.SG_CONTENT, "style"),
    Input(ids.SG_UPLOAD, "contents"),
    State(ids.SG_UPLOAD, "filename"),
    State(ids.RUN, "value"),
    background=True,
    manager=MANAGER,
    progress=[Output(ids.SG_PROGRESS, "value"), Output(ids.SG_PROGRESS, "max"),
              Output(f"{ids.SG_PROGRESS}-label", "children")],
    progress_default=["0", "1", ""],
    running=[(Output(ids.SG_PROGRESS_BOX, "style"), {"display": "flex"}, {"display": "none"}),
             (Output(ids.SG_UPLOAD, "disabled"), True, False)],
    prevent_initial_call=True,
    interval=400,
)
def segment_upload(set_progress: Any, contents: Any, filename: Any, run_id: str | None) -> tuple:
    """Decode, check and segment the upload; a bad file only changes the message."""
    keep = (no_update,) * 5
    if not contents:
        return (no_update, *keep)
    run = runs.get_run(run_id)
    info = runs.model_for(run)

    def report(done: int, total: int, what: str) -> None:
        set_progress((str(done), str(max(total, 1)),
                      f"{what} {done}/{total}" if total > 1 else f"{what}…"))

    try:
        res = seg.segment_upload(contents, filename, info, run, progress=report)
    except uploads.UploadError as exc:
        return (components.message(str(exc)), *keep)
    except gate.Busy as exc:
        return (components.message(seg.busy_message(exc), "warn"), *keep)
    except seg.ModelUnavailable as exc:
        return (components.message(str(exc)), *keep)
    shrunk = next((n for n in res.notes if n.startswith("downscaled")), None)
    ok = components.message(f"Segmented {res.name}: {res.n_buildings:,} buildings found"
                            + (f" ({shrunk})." if shrunk else "."), "ok")
    stored = {"key": res.key, "name": res.name, "run": run.run_id if run else None,
              "placement": res.placement, "width": res.width, "height": res.height}
    return (ok, stored, summary_block(res), image_block(res), baseline_block(res), {})


@callback(
    Output(ids.SG_GRADCAM, "children"),
    Input(ids.SG_RESULT, "data"),
    State(ids.RUN, "value"),
    prevent_initial_call=True,
)
def upload_gradcam(result: dict | None, run_id: str | None) -> Any:
    """Seg-Grad-CAM (bottleneck, predicted mask) of the upload's ≤1024 px copy."""
    if not isinstance(result, dict) or not result.get("key"):
        return no_update
    stored = cache.get(seg.cache_key(result["key"]))
    info = runs.model_for(runs.get_run(run_id))
    if not stored or not info.ok:
        return components.placeholder("Grad-CAM (bottleneck)", "unavailable: upload the image again")
    layer = info.service.default_layer  # bottleneck, or an imported model's embedding layer
    out = info.service.explain(stored["image"], "seg-grad-cam", layer=layer, target="predicted")
    res = out.result
    caption = f"Grad-CAM ({layer})"
    timing = components.timing_text(out.ms, out.device, out.cached, out.compute_ms)
    if res.empty:
        return components.placeholder(caption, res.message)
    disp = images.fit_display(stored["image"])
    heat = images.resize_prob(res.heatmap, disp.shape[:2])
    return html.Figure([
        components.stack(images.data_uri(disp, "JPEG"), images.data_uri(images.heat_rgba(heat)),
                      opacity=0.75),
        html.Figcaption([caption, html.Span(f" · {timing}", className="fig-note")]),
    ], className="lens-fig")


@callback(
    Output(ids.SG_MAP_METHOD, "options"),
    Output(ids.SG_MAP_METHOD, "value"),
    Output(ids.SG_NEIGHBOURS, "children"),
    Output(ids.SG_MAP_NOTE, "children"),
    Input(ids.SG_RESULT, "data"),
    State(ids.SG_MAP_METHOD, "value"),
    prevent_initial_call=True,
)
def placement_controls(result: dict | None, method: str | None) -> tuple:
    """Map methods of the run and the neighbour cards of the upload."""
    run = runs.get_run((result or {}).get("run"))
    if run is None:
        return [], None, components.empty_state("No embeddings run"), ""
    methods = tile_logic.available_methods(run.tiles)
    placement = result.get("placement") or {}
    version = runs.run_version(run)
    cards = [components.tile_card(run.run_id, version, t, html.Span(f"cos {s:.3f}", className="card-note"),
                             cls="lens-card",
                               href=components.explain_href(run.run_id, t))
             for t, s in placement.get("neighbours", []) if t in run.index]
    note = placement.get("note", "")
    if not cards:
        cards = components.empty_state("No neighbours", note or "Nothing to compare with.")
    options = theme.method_options(methods)
    method = method if method in methods else (methods[-1] if methods else None)
    return options, method, cards, note


@callback(
    Output(ids.SG_MAP, "figure"),
    Input(ids.SG_MAP_METHOD, "value"),
    State(ids.SG_RESULT, "data"),
    prevent_initial_call=True,
)
def placement_map(method: str | None, result: dict | None) -> Any:
    """The stored map with the upload starred."""
    run = runs.get_run((result or {}).get("run"))
    if run is None or not method:
        return figures.empty_figure("No map for this run.", MAP_HEIGHT)
    placement = (result or {}).get("placement") or {}
    x, y, tile_ids, spec = seg.map_points(run, method)
    index = run.index
    return figures.placement_figure(
        x, y, tile_ids, spec,
        axis_titles=tile_logic.axis_titles(method, tile_logic.explained_variance(run)),
        neighbour_rows=[index[t] for t, _ in placement.get("neighbours", []) if t in index],
        point=placement.get("coords", {}).get(method), approx=bool(placement.get("approx")),
        uirevision=f"segment:{run.run_id}:{method}", height=MAP_HEIGHT,
        max_points=MAP_MAX_POINTS)


@callback(
    Output(ids.SG_DOWNLOAD, "data"),
    Input(ids.SG_DOWNLOAD_BTN, "n_clicks"),
    State(ids.SG_RESULT, "data"),
    prevent_initial_call=True,
)
def download_mask(n_clicks: int, result: dict | None) -> Any:
    """The U-Net mask (0/255 PNG, the upload's full size)."""
    if not n_clicks or not isinstance(result, dict) or not result.get("key"):
        return no_update
    stored = cache.get(seg.cache_key(result["key"]))
    if not stored:
        return no_update
    stem = str(result.get("name") or "upload").rsplit(".", 1)[0] or "upload"
    return dcc.send_bytes(stored["mask_png"], f"{stem}-mask.png")
