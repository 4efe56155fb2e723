"""Explain (``/explain``): why does the U-Net call these pixels buildings?

Pick an image (``?tile=<id>`` from the explore / clusters pages, the tile dropdown, a suggested
tile or an upload), a method (Seg-Grad-CAM, Grad-CAM++, mean or single-channel activations,
saliency, guided Grad-CAM), a layer and a target (the predicted mask, the whole image, a box
drawn on the image or a clicked pixel), then "Explain". The image, its ground truth, the
prediction and the heat map are shown side by side, and the heat map over the image with an
opacity slider (two stacked images, opacity set in the browser). An empty target shows
``CamResult.message``, never a blank or NaN map. The status line says how long the map took on
which device and whether it came from the cache (``app.ml.inference.RESULTS``).

The channel explorer lists, for a channel of the embeddings run's layer, the stored tiles
that activate it most (from the stored vectors: ``gap`` vectors are channel means; ``avgmax``
and ``spp`` start with them; ``flatten`` has no per-channel values) and computes an
activation-maximisation image in a background callback with a progress bar.
"""

from __future__ import annotations

import time
from typing import Any

import dash
from dash import ALL, Input, Output, State, callback, clientside_callback, ctx, dcc, html, no_update

from app import config
from app.ml import registry
from app.ml.inference import image_sha256
from app.web import components, figures, ids, images, runs, theme, uploads
from app.web.background import MANAGER
from app.web.cache import cache
from app.web.images import img_url
from app.web.logic import explain as xp
from app.web.logic.segment import small_copy

dash.register_page(__name__, path="/explain", name="Explain", title="Explain · U-Net Lens",
                   order=2)

ACTMAX_SIZE = 128
ACTMAX_STEPS = 64
OPACITY = 0.6
IMAGE_HEIGHT = 420


# --------------------------------------------------------------------------- layout


def layout(tile: str | None = None, **_: Any) -> html.Div:
    """Controls on the left, image / truth / prediction / heat map and the overlay on the right,
    the channel explorer below. ``?tile=<id>`` picks a stored tile."""
    tile = tile if isinstance(tile, str) else None
    controls = html.Div([
        components.control("Image", dcc.RadioItems(
            id=ids.XP_SOURCE, options=[{"label": "Stored tile", "value": "tile"},
                                       {"label": "Upload", "value": "upload"}],
            value="tile", inline=True, className="segmented")),
        html.Div([
            dcc.Dropdown(id=ids.XP_TILE, options=[{"label": tile, "value": tile}] if tile else [],
                         value=tile, placeholder="Search a tile id…", clearable=False,
                         className="dd-tile"),
            html.Div("Suggestions", className="control-label suggest-label"),
            html.Div(id=ids.XP_SUGGEST, className="suggest-grid"),
        ], id=ids.XP_TILE_ROW),
        html.Div([
            components.upload_box(
                ids.XP_UPLOAD, ids.XP_UPLOAD_MSG,
                html.Div([html.Span("Drop an image or "), html.A("choose a file")],
                         title=f"{components.upload_formats_text()}, up to "
                               f"{uploads.fmt_bytes(config.MAX_UPLOAD_BYTES)}"),
                cls="upload-box upload-compact"),
            html.Div(id=ids.XP_UPLOAD_MSG),
        ], id=ids.XP_UPLOAD_ROW, style={"display": "none"}),
        components.control("Method", dcc.RadioItems(
            id=ids.XP_METHOD, options=theme.explainer_options(),
            value="seg-grad-cam", className="radio-list")),
        components.control("Layer", dcc.Dropdown(id=ids.XP_LAYER, options=[], value="bottleneck",
                                              clearable=False, searchable=False)),
        components.control("Channel", dcc.Input(id=ids.XP_CHANNEL, type="number", min=0, step=1,
                                             value=0, debounce=True, className="num-input"),
                        cid=ids.XP_CHANNEL_ROW),
        components.control("Target", dcc.RadioItems(
            id=ids.XP_TARGET, options=[{"label": v, "value": k} for k, v in xp.TARGETS.items()],
            value="predicted", inline=True, className="segmented segmented-wrap")),
        html.Div(xp.TARGET_HINTS["predicted"], id=ids.XP_TARGET_HINT, className="control-hint"),
        html.Button("Explain", id=ids.XP_RUN, n_clicks=0, className="btn btn-primary btn-wide"),
    ], className="panel explain-controls")
    image_graph = dcc.Graph(
        id=ids.XP_IMAGE_FIG, figure=figures.empty_figure("Pick a tile", IMAGE_HEIGHT),
        config={**figures.SMALL_GRAPH_CONFIG, "displayModeBar": "hover",
                "modeBarButtonsToRemove": ["lasso2d", "select2d", "autoScale2d"]},
        style={"height": f"{IMAGE_HEIGHT}px"})
    results = html.Div([
        html.Div(id=ids.XP_OOD),
        html.Div([
            components.panel("Image", image_graph, cls="image-panel",
                          hint=html.Span("", id=f"{ids.XP_IMAGE_FIG}-caption")),
            components.panel("Heat map over the image", html.Div([
                html.Div(html.Div("press Explain", className="lens-img lens-placeholder"),
                         id=ids.XP_OVERLAY, className="overlay-box"),
                html.Div([
                    html.Span("Opacity", className="control-label"),
                    html.Div(dcc.Slider(id=ids.XP_OPACITY, min=0, max=1, step=0.05,
                                        value=OPACITY, marks={0: "0", 0.5: "0.5", 1: "1"}),
                             className="opacity-slider"),
                ], className="opacity-row"),
            ]), cls="overlay-panel"),
        ], className="lens-row-2 lens-row-even xp-big"),
        html.Div([
            html.Div(components.placeholder("ground truth"), id=ids.XP_TRUTH),
            html.Div(components.placeholder("prediction", "press Explain"), id=ids.XP_PRED),
            dcc.Loading(html.Div(components.placeholder("heat map", "press Explain"),
                                 id=f"{ids.XP_HEAT}-box"), type="dot", delay_show=150,
                        parent_className="lens-loading"),
            html.Div([
                html.Div(html.Span("Press Explain to compute a map.", className="status-about"),
                         id=ids.XP_STATUS, className="status-line"),
                html.Div(id=ids.XP_MESSAGE),
                html.Div(id=ids.XP_TARGET_STORE + "-note", className="control-hint"),
            ], className="panel status-panel"),
        ], className="lens-grid lens-grid-4"),
    ], className="explain-results")
    explorer = components.panel("Channel explorer", html.Div([
        html.Div([
            components.control("Channel", dcc.Input(id=ids.XP_CH_CHANNEL, type="number", min=0,
                                                 step=1, value=0, debounce=True,
                                                 className="num-input")),
            html.Div(id=ids.XP_CH_NOTE, className="control-hint ch-note"),
        ], className="ch-controls"),
        html.Div([
            html.Div([html.Div("Stored tiles that activate it most", className="subhead"),
                      html.Div(id=ids.XP_CH_TILES, className="card-grid lens-cards")],
                     className="ch-tiles"),
            html.Div([
                html.Div("Activation maximisation", className="subhead"),
                html.Div(components.placeholder("", "an input that excites the channel"),
                         id=ids.XP_AM_IMAGE, className="am-image"),
                components.progress_box(ids.XP_AM_PROGRESS, f"{ids.XP_AM_PROGRESS}-label",
                                     f"{ids.XP_AM_PROGRESS}-box"),
                html.Div([
                    html.Button("Compute", id=ids.XP_AM_RUN, n_clicks=0,
                                className="btn btn-secondary"),
                    html.Button("Cancel", id=ids.XP_AM_CANCEL, n_clicks=0, disabled=True,
                                className="btn btn-ghost"),
                ], className="btn-row"),
                html.Div(id=ids.XP_AM_STATUS, className="control-hint"),
            ], className="ch-actmax"),
        ], className="ch-body"),
    ]), hint="what one channel of the embeddings layer responds to", cls="channel-panel")
    return html.Div([
        html.Div([
            html.Div([html.H1("Explain a prediction"),
                      html.P(id=ids.XP_SUBTITLE, className="subtitle")], className="page-title"),
        ], className="page-head"),
        html.Div(id=ids.XP_WARNING),
        html.Div(id=ids.XP_EMPTY),
        html.Div([html.Div([controls, results], className="explain-main"), explorer],
                 id=ids.XP_CONTENT),
        dcc.Store(id=ids.XP_UPLOAD_KEY, data=None),
        dcc.Store(id=ids.XP_TARGET_STORE, data={}),
    ], className="page-lens page-explain")


# --------------------------------------------------------------------------- callbacks


@callback(
    Output(ids.XP_SUBTITLE, "children"),
    Output(ids.XP_WARNING, "children"),
    Output(ids.XP_EMPTY, "children"),
    Output(ids.XP_CONTENT, "style"),
    Output(ids.XP_LAYER, "options"),
    Output(ids.XP_LAYER, "value"),
    Output(ids.XP_SUGGEST, "children"),
    Output(ids.XP_CH_CHANNEL, "max"),
    Output(ids.XP_CH_NOTE, "children"),
    Input(ids.RUN, "value"),
    State(ids.XP_LAYER, "value"),
)
def setup(run_id: str | None, layer: str | None) -> tuple:
    """Model, layers, suggestions and channel range for the picked run."""
    run = runs.get_run(run_id)
    info = runs.model_for(run)
    empty = components.run_gate(run, "explain", info=info)
    if empty is not None:
        return ("", None, empty, components.HIDDEN, [], None, [], 0, "")
    layers = info.service.conv_layers()
    default = info.service.default_layer  # bottleneck, or an imported model's embedding layer
    layer = layer if layer in layers else (default if default in layers else layers[-1])
    version = runs.run_version(run)
    cards = [components.tile_card(run.run_id, version, t, html.Span(note, className="card-note"),
                             cls="lens-card",
                               cid={"type": ids.XP_SUGGEST_CARD, "index": t})
             for t, note in xp.suggested_tiles(run)]
    channels, note = xp.channel_info(run)
    subtitle = (f"Model {info.run_id} ({info.service.device}) · tiles of {run.run_id} · every "
                "map is normalised to [0, 1] on its image")
    warning = components.message(info.warning, "warn") if info.warning else None
    return (subtitle, warning, None, {}, [{"label": n, "value": n} for n in layers], layer,
            cards, max(0, channels - 1), note)


@callback(
    Output(ids.XP_CHANNEL, "max"),
    Input(ids.XP_LAYER, "value"),
    State(ids.RUN, "value"),
)
def channel_range(layer: str | None, run_id: str | None) -> Any:
    """The channel input's range follows the layer."""
    info = runs.model_for(runs.get_run(run_id))
    if not info.ok or not layer or layer not in info.service.conv_layers():
        return no_update
    return max(0, info.service.channels(layer) - 1)


@callback(
    Output(ids.XP_TILE, "options"),
    Input(ids.XP_TILE, "search_value"),
    State(ids.XP_TILE, "value"),
    State(ids.RUN, "value"),
)
def search_tiles(search: str | None, current: str | None, run_id: str | None) -> Any:
    """Tile ids matching what is typed (searched on the server: runs hold 10⁵ tiles)."""
    run = runs.get_run(run_id)
    if run is None:
        return []
    return xp.tile_options(run, search, current)


@callback(
    Output(ids.XP_TILE, "value"),
    Output(ids.XP_SOURCE, "value"),
    Input({"type": ids.XP_SUGGEST_CARD, "index": ALL}, "n_clicks"),
    Input(ids.RUN, "value"),
    State(ids.XP_TILE, "value"),
)
def pick_tile(_clicks: list, run_id: str | None, current: str | None) -> tuple:
    """A suggestion card picks its tile; a run without the current tile picks its first."""
    run = runs.get_run(run_id)
    trig = ctx.triggered_id
    if run is None:
        return no_update, no_update
    if isinstance(trig, dict) and ctx.triggered and ctx.triggered[0]["value"]:
        tid = str(trig.get("index"))
        return (tid, "tile") if tid in run.index else (no_update, no_update)
    if current in run.index:
        return no_update, no_update
    suggested = xp.suggested_tiles(run, 1)
    return (suggested[0][0] if suggested else no_update), no_update


@callback(
    Output(ids.XP_TILE_ROW, "style"),
    Output(ids.XP_UPLOAD_ROW, "style"),
    Output(ids.XP_CHANNEL_ROW, "style"),
    Output(ids.XP_TARGET_HINT, "children"),
    Output(ids.XP_TARGET, "options"),
    Input(ids.XP_SOURCE, "value"),
    Input(ids.XP_METHOD, "value"),
    Input(ids.XP_TARGET, "value"),
)
def control_visibility(source: str, method: str, target: str) -> tuple:
    """Show the controls that apply: tile or upload, channel, target hint."""
    spec = registry.EXPLAINERS.get(method)
    activation = spec is not None and not spec.uses_target
    opts = [{"label": v, "value": k, "disabled": activation} for k, v in xp.TARGETS.items()]
    hint = ("Activations need no target: they show what the layer responds to."
            if activation else xp.TARGET_HINTS.get(target, ""))
    return ({} if source == "tile" else {"display": "none"},
            {} if source == "upload" else {"display": "none"},
            {} if spec is not None and spec.uses_channel else {"display": "none"}, hint, opts)


@callback(
    Output(ids.XP_UPLOAD_KEY, "data"),
    Output(ids.XP_UPLOAD_MSG, "children"),
    Input(ids.XP_UPLOAD, "contents"),
    State(ids.XP_UPLOAD, "filename"),
    State(ids.RUN, "value"),
    prevent_initial_call=True,
)
def take_upload(contents: Any, filename: Any, run_id: str | None) -> tuple:
    """Decode and check an uploaded image (≤1024 px copy kept in the shared cache, with the
    out-of-distribution verdict on it)."""
    try:
        up = uploads.parse_upload(contents, filename)
    except uploads.UploadError as exc:
        return no_update, components.message(str(exc))
    small = small_copy(up.image, xp.MAX_SIDE)
    key = image_sha256(small)
    run = runs.get_run(run_id)
    verdict = xp.upload_verdict(run, runs.model_for(run), small)
    cache.set(f"explain-upload:{key}", {"image": small, "name": up.name, "ood": verdict},
              timeout=3600)
    notes = up.describe()
    if small.shape != up.image.shape:
        notes.append(f"explained at {small.shape[1]}×{small.shape[0]}")
    text = f"{up.name}: {up.shape[1]}×{up.shape[0]} px" + (f" ({'; '.join(notes)})" if notes else "")
    return {"key": key, "name": up.name}, components.message(text, "ok")


@callback(
    Output(ids.XP_IMAGE_FIG, "figure"),
    Output(f"{ids.XP_IMAGE_FIG}-caption", "children"),
    Output(ids.XP_TRUTH, "children"),
    Output(ids.XP_OOD, "children"),
    Input(ids.XP_SOURCE, "value"),
    Input(ids.XP_TILE, "value"),
    Input(ids.XP_UPLOAD_KEY, "data"),
    Input(ids.XP_TARGET, "value"),
    Input(ids.XP_TARGET_STORE, "data"),
    State(ids.RUN, "value"),
)
def show_image(source: str, tile: str | None, upload: dict | None, target: str,
               target_data: dict | None, run_id: str | None) -> tuple:
    """The picked image (box drawing / pixel clicking), its ground truth, and above them what
    the model was trained on with the image's out-of-distribution verdict."""
    run = runs.get_run(run_id)
    image, desc = xp.load_image(run, source, tile, upload)
    if image is None:
        return (figures.empty_figure(desc["message"], IMAGE_HEIGHT), "image",
                components.placeholder("ground truth"), None)
    h, w = image.shape[:2]
    if desc["kind"] == "tile":
        src = img_url(run.run_id, "image", desc["tile"], runs.run_version(run))
        caption = f"{desc['tile']} · {w}×{h}"
    else:
        src = images.data_uri(image, "JPEG", max_side=max(h, w))
        caption = f"{desc['name']} · {w}×{h}"
    hint = {"box": " · drag to draw a box", "pixel": " · click a pixel"}.get(target, "")
    return (figures.image_figure(src, w, h, target, target_data), [caption, html.Span(hint, className=
                                                                                "fig-note")],
            xp.truth_figure(run, desc), components.ood_block(xp.ood_verdict(run, desc)))


@callback(
    Output(ids.XP_TARGET_STORE, "data"),
    Output(ids.XP_TARGET_STORE + "-note", "children"),
    Input(ids.XP_IMAGE_FIG, "relayoutData"),
    Input(ids.XP_IMAGE_FIG, "clickData"),
    Input(ids.XP_TILE, "value"),
    Input(ids.XP_UPLOAD_KEY, "data"),
    State(ids.XP_TARGET, "value"),
    State(ids.XP_TARGET_STORE, "data"),
    prevent_initial_call=True,
)
def pick_target(relayout: Any, click: Any, _tile: Any, _upload: Any, target: str,
                data: dict | None) -> tuple:
    """A drawn box or a clicked pixel becomes the target region (a new image clears it)."""
    trig = ctx.triggered_id
    if trig in (ids.XP_TILE, ids.XP_UPLOAD_KEY):
        return {}, ""
    data = dict(data or {})
    if trig == ids.XP_IMAGE_FIG and ctx.triggered and ctx.triggered[0]["prop_id"].endswith(
            "relayoutData"):
        box = xp.parse_box(relayout)
        if box is None or target != "box":
            return no_update, no_update
        x0, x1 = sorted((box[0], box[2]))
        y0, y1 = sorted((box[1], box[3]))
        data["box"] = [round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)]
        return data, f"Box: x {x0:.0f}–{x1:.0f}, y {y0:.0f}–{y1:.0f}"
    pixel = xp.parse_pixel(click)
    if pixel is None or target != "pixel":
        return no_update, no_update
    data["pixel"] = pixel
    return data, f"Pixel: x {pixel[0]:.0f}, y {pixel[1]:.0f}"


@callback(
    Output(ids.XP_PRED, "children"),
    Output(f"{ids.XP_HEAT}-box", "children"),
    Output(ids.XP_OVERLAY, "children"),
    Output(ids.XP_STATUS, "children"),
    Output(ids.XP_MESSAGE, "children"),
    Input(ids.XP_RUN, "n_clicks"),
    Input(ids.XP_METHOD, "value"),
    Input(ids.XP_LAYER, "value"),
    Input(ids.XP_CHANNEL, "value"),
    Input(ids.XP_TARGET, "value"),
    Input(ids.XP_TARGET_STORE, "data"),
    Input(ids.XP_TILE, "value"),
    Input(ids.XP_UPLOAD_KEY, "data"),
    State(ids.XP_SOURCE, "value"),
    State(ids.XP_OPACITY, "value"),
    State(ids.RUN, "value"),
)
def run_explain(n_clicks: int, method: str, layer: str | None, channel: Any, target: str,
                target_data: dict | None, tile: str | None, upload: dict | None, source: str,
                opacity: float | None, run_id: str | None) -> tuple:
    """The explanation of the picked image (after the first "Explain", every change re-runs)."""
    if not n_clicks:
        return (no_update,) * 5
    run = runs.get_run(run_id)
    info = runs.model_for(run)
    if run is None or not info.ok or not layer:
        return (no_update,) * 4 + (components.message(info.message or "No run."),)
    image, desc = xp.load_image(run, source, tile, upload)
    if image is None:
        return (no_update,) * 4 + (components.message(desc["message"], "info"),)
    out = xp.explain_outputs(run, info, image, desc, method, layer, channel, target, target_data,
                          OPACITY if opacity is None else float(opacity))
    if "heat" not in out:
        return no_update, no_update, no_update, no_update, out["message"]
    return out["pred"], out["heat"], out["overlay"], out["status"], out["message"]


clientside_callback(
    """
    function(opacity) {
        var img = document.getElementById('OVERLAY_TOP');
        if (img) { img.style.opacity = opacity; }
        return window.dash_clientside.no_update;
    }
    """.replace("OVERLAY_TOP", ids.XP_OVERLAY_TOP),
    Output(ids.XP_OPACITY, "className"),
    Input(ids.XP_OPACITY, "value"),
    prevent_initial_call=True,
)


# --------------------------------------------------------------------------- channel explorer


@callback(
    Output(ids.XP_CH_TILES, "children"),
    Input(ids.XP_CH_CHANNEL, "value"),
    Input(ids.RUN, "value"),
)
def channel_tiles(channel: Any, run_id: str | None) -> Any:
    """The stored tiles with the highest mean activation of the channel."""
    run = runs.get_run(run_id)
    if run is None:
        return []
    channels, note = xp.channel_info(run)
    if channels == 0:
        return components.empty_state("No per-channel values", note)
    try:
        ch = int(channel)
    except (TypeError, ValueError):
        ch = 0
    if not 0 <= ch < channels:
        return components.empty_state("No such channel", f"Pick a channel in 0–{channels - 1}.")
    version = runs.run_version(run)
    return [components.tile_card(run.run_id, version, t, html.Span(f"mean act. {v:.3g}", className="card-note"),
                             cls="lens-card",
                              href=components.explain_href(run.run_id, t))
            for t, v in xp.top_tiles_for_channel(run, ch)]


@callback(
    Output(ids.XP_AM_IMAGE, "children"),
    Output(ids.XP_AM_STATUS, "children"),
    Input(ids.XP_AM_RUN, "n_clicks"),
    State(ids.XP_CH_CHANNEL, "value"),
    State(ids.RUN, "value"),
    background=True,
    manager=MANAGER,
    progress=[Output(ids.XP_AM_PROGRESS, "value"), Output(ids.XP_AM_PROGRESS, "max"),
              Output(f"{ids.XP_AM_PROGRESS}-label", "children")],
    progress_default=["0", str(ACTMAX_STEPS), ""],
    running=[(Output(f"{ids.XP_AM_PROGRESS}-box", "style"), {"display": "flex"},
              {"display": "none"}),
             (Output(ids.XP_AM_RUN, "disabled"), True, False),
             (Output(ids.XP_AM_CANCEL, "disabled"), False, True)],
    cancel=[Input(ids.XP_AM_CANCEL, "n_clicks")],
    prevent_initial_call=True,
    interval=400,
)
def activation_maximisation(set_progress: Any, n_clicks: int, channel: Any,
                            run_id: str | None) -> tuple:
    """Gradient ascent on the input for one channel of the embeddings layer (background)."""
    if not n_clicks:
        return no_update, no_update
    run = runs.get_run(run_id)
    info = runs.model_for(run)
    if run is None or not info.ok:
        return no_update, components.message(info.message or "No run.")
    layer = run.layer if run.layer in info.service.conv_layers() else info.service.default_layer
    try:
        ch = int(channel)
    except (TypeError, ValueError):
        return no_update, components.message("Pick a channel number first.")
    n_channels = info.service.channels(layer)
    if not 0 <= ch < n_channels:
        return no_update, components.message(f"Layer {layer} has channels 0–{n_channels - 1}.")

    def progress(step: int, steps: int) -> None:
        set_progress((str(step), str(steps), f"step {step}/{steps}"))

    started = time.perf_counter()
    image = info.service.activation_maximisation(layer, ch, size=ACTMAX_SIZE, steps=ACTMAX_STEPS,
                                                 progress=progress)
    ms = (time.perf_counter() - started) * 1000
    fig = components.figure(images.data_uri(image), f"channel {ch} of {layer}",
                         note=f" · {ACTMAX_STEPS} steps, {ACTMAX_SIZE}² px")
    return fig, f"{ms:,.0f} ms ({info.service.device})"

