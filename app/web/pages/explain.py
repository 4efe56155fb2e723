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

from typing import Any

import dash
import numpy as np
from dash import ALL, Input, Output, State, callback, clientside_callback, ctx, dcc, html, no_update

from app.web import components, figures, ids, services, state, uploads, widgets
from app.web.background import MANAGER
from app.web.cache import cache
from app.web.images import img_url

dash.register_page(__name__, path="/explain", name="Explain", title="Explain · U-Net Lens",
                   order=2)

METHODS: dict[str, str] = {
    "seg-grad-cam": "Seg-Grad-CAM",
    "grad-cam++": "Grad-CAM++",
    "activation": "Activations (mean)",
    "activation-channel": "Activation (one channel)",
    "saliency": "Saliency",
    "guided-grad-cam": "Guided Grad-CAM",
}
DESCRIPTIONS: dict[str, str] = {
    "seg-grad-cam": "Channels of the layer weighted by the mean gradient of the target's building "
                    "logits (Vinogradova et al., 2020): where the layer's features push the "
                    "target towards “building”.",
    "grad-cam++": "Grad-CAM++ (Chattopadhay et al., 2018) weights each channel by its positive "
                  "gradients only, so several separate buildings can all light up.",
    "activation": "The mean of the layer's channels: what the layer responds to, whatever the "
                  "target.",
    "activation-channel": "One channel of the layer, min–max normalised on this image.",
    "saliency": "The absolute gradient of the target's logits with respect to the input pixels: "
                "which pixels change the answer most.",
    "guided-grad-cam": "Guided backpropagation × Seg-Grad-CAM (Selvaraju et al., 2017): sharp "
                       "pixel-level detail inside the CAM's regions; the colour image shows the "
                       "signed guided gradients.",
}
TARGETS: dict[str, str] = {
    "predicted": "Predicted mask",
    "image": "Whole image",
    "box": "Box",
    "pixel": "Pixel",
}
TARGET_HINTS = {
    "predicted": "Explains the summed building logits over the pixels predicted p ≥ 0.5.",
    "image": "Explains the summed building logits over the whole image.",
    "box": "Drag on the image to draw a box; the map explains the logits inside it.",
    "pixel": "Click a pixel on the image; the map explains that pixel's logit.",
}
#: Explanations and uploads run on a copy whose longer side is at most this.
MAX_SIDE = 1024
IMAGE_HEIGHT = 420
#: Click / hover resolution of the image figure: one cell per pixel up to this many per side.
CLICK_GRID_MAX = 256
N_SUGGEST = 6
N_CHANNEL_TILES = 8
ACTMAX_SIZE = 128
ACTMAX_STEPS = 64
OPACITY = 0.6
REPRESENTATION_FACTOR = {"gap": 1, "avgmax": 2, "spp": 21}


# --------------------------------------------------------------------------- plain helpers


def tile_options(run: Any, search: str | None, current: str | None, limit: int = 50) -> list[dict]:
    """Dropdown options: tile ids containing ``search`` (case-insensitive), the current first."""
    all_ids = run.tiles["tile_id"].astype(str)
    if search:
        found = all_ids[all_ids.str.contains(search, case=False, regex=False)].head(limit).tolist()
    else:
        found = all_ids.head(limit).tolist()
    if current and current in run.index and current not in found:
        found.insert(0, current)
    return [{"label": t, "value": t} for t in found]


def suggested_tiles(run: Any, n: int = N_SUGGEST) -> list[tuple[str, str]]:
    """(tile id, note): tiles with the most buildings, then the lowest IoU among tiles with
    buildings (a mix of easy and hard cases)."""
    tiles = run.tiles
    out: list[tuple[str, str]] = []
    if "true_fraction" in tiles:
        frac = tiles["true_fraction"].fillna(0).to_numpy(dtype=float)
        for r in np.argsort(-frac, kind="stable")[: n // 2]:
            out.append((str(tiles["tile_id"].iat[r]), f"{frac[r]:.0%} bldg"))
        if "iou" in tiles:
            iou = tiles["iou"].to_numpy(dtype=float)
            cand = np.flatnonzero((frac > 0.02) & np.isfinite(iou))
            for r in cand[np.argsort(iou[cand], kind="stable")]:
                tid = str(tiles["tile_id"].iat[r])
                if all(tid != t for t, _ in out):
                    out.append((tid, f"IoU {iou[r]:.2f}"))
                if len(out) >= n:
                    break
    for tid in tiles["tile_id"].astype(str).head(n):
        if len(out) >= n:
            break
        if all(tid != t for t, _ in out):
            out.append((tid, ""))
    return out[:n]


def parse_box(relayout: Any) -> list[float] | None:
    """``[x0, y0, x1, y1]`` (image pixels) of the last drawn / edited rectangle in a figure's
    ``relayoutData``, or None."""
    if not isinstance(relayout, dict):
        return None
    shapes = relayout.get("shapes")
    if isinstance(shapes, list) and shapes:
        s = shapes[-1]
        try:
            return [float(s["x0"]), float(s["y0"]), float(s["x1"]), float(s["y1"])]
        except (KeyError, TypeError, ValueError):
            return None
    keys = [k for k in relayout if k.startswith("shapes[") and k.endswith((".x0", ".y0", ".x1",
                                                                            ".y1"))]
    if len(keys) == 4:
        prefix = keys[0].rsplit(".", 1)[0]
        try:
            return [float(relayout[f"{prefix}.{c}"]) for c in ("x0", "y0", "x1", "y1")]
        except (KeyError, TypeError, ValueError):
            return None
    return None


def parse_pixel(click: Any) -> list[float] | None:
    """``[x, y]`` of a click on the image figure, or None."""
    try:
        p = click["points"][0]
        return [float(p["x"]), float(p["y"])]
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def channel_info(run: Any) -> tuple[int, str]:
    """(number of channels readable from the stored vectors, note) for the channel explorer."""
    rep = str(run.manifest.get("representation", "gap"))
    dims = int(run.vectors.shape[1])
    factor = REPRESENTATION_FACTOR.get(rep)
    if factor is None or dims % factor:
        return 0, (f"This run stores “{rep}” vectors, which hold no per-channel values, so "
                   "the stored tiles cannot be ranked by a channel. Embed with "
                   "--representation gap (or avgmax / spp) to use the channel explorer.")
    channels = dims // factor
    what = {"gap": "the vectors are the channel means",
            "avgmax": "the first half of each vector is the channel means",
            "spp": "the pyramid's 1×1 level is the channel means"}[rep]
    return channels, (f"Ranked by the stored “{rep}” vectors of layer “{run.layer}” ({what}).")


def top_tiles_for_channel(run: Any, channel: int, n: int = N_CHANNEL_TILES) -> list[tuple[str, float]]:
    """The stored tiles with the highest mean activation of ``channel``: (tile id, value)."""
    col = np.asarray(state.vectors(run).data[:, int(channel)], dtype=np.float32)
    n = min(n, len(col))
    rows = np.argpartition(-col, n - 1)[:n] if n < len(col) else np.arange(len(col))
    rows = rows[np.argsort(-col[rows], kind="stable")]
    return [(str(run.tiles["tile_id"].iat[r]), float(col[r])) for r in rows]


def image_figure(src: str, width: int, height: int, target: str,
                 target_data: dict | None) -> Any:
    """The picked image in a Plotly figure (x = column, y = row, both in image pixels): a
    layout image (the ``/img/...`` URL of a stored tile) under a transparent heat-map trace
    that turns hovers and clicks into pixel coordinates. Draw a box in "box" mode, click a
    pixel in "pixel" mode; the current box / pixel is drawn on it."""
    import plotly.graph_objects as go

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
        template=figures.TEMPLATE, height=IMAGE_HEIGHT, margin={"l": 0, "r": 0, "t": 0, "b": 0},
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


def load_image(run: Any, source: str, tile: str | None, upload: dict | None
               ) -> tuple[np.ndarray | None, dict[str, Any]]:
    """(pixels, description) of the picked image; None with ``description["message"]``."""
    if source == "upload":
        key = (upload or {}).get("key")
        stored = cache.get(f"explain-upload:{key}") if key else None
        if stored is None:
            return None, {"message": "Upload an image to explain (PNG, JPEG or TIFF)."}
        return stored["image"], {"kind": "upload", "key": key, "name": stored["name"]}
    if run is None or not tile or tile not in run.index:
        return None, {"message": "Pick a tile to explain."}
    image = services.tile_image(run, tile)
    if image is None:
        return None, {"message": f"Tile {tile} has no stored image."}
    return image, {"kind": "tile", "tile": tile}


def explain_outputs(run: Any, info: services.ModelInfo, image: np.ndarray, desc: dict[str, Any],
                    method: str, layer: str, channel: Any, target: str,
                    target_data: dict | None, opacity: float) -> dict[str, Any]:
    """Truth, prediction, heat map, overlay and status for one explanation (no Dash state)."""
    data = target_data or {}
    box = data.get("box") if target == "box" else None
    pixel = data.get("pixel") if target == "pixel" else None
    is_activation = method in ("activation", "activation-channel")
    if not is_activation and target == "box" and not box:
        return {"message": widgets.message("Draw a box on the image first (drag on it).", "info")}
    if not is_activation and target == "pixel" and not pixel:
        return {"message": widgets.message("Click a pixel on the image first.", "info")}
    try:
        ch = int(channel) if method == "activation-channel" else None
        out = info.service.explain(image, method, layer=layer, target=target, box=box,
                                   pixel=pixel, channel=ch, image_key=desc.get("key"))
    except (ValueError, TypeError) as exc:
        return {"message": widgets.message(str(exc))}
    res = out.result
    h, w = image.shape[:2]
    base = (img_url(run.run_id, "image", desc["tile"], state.run_version(run))
            if desc["kind"] == "tile" else services.data_uri(image, "JPEG"))
    pred = services.mask_overlay(services.fit_display(image),
                                 services.resize_prob(res.prob, services.fit_display(image).shape[:2])
                                 >= 0.5)
    target_word = TARGETS.get(target, target).lower() if not is_activation else res.target
    title = f"{METHODS[method]} · layer {res.layer} · {target_word}"
    timing = services.timing_text(out.ms, out.device, out.cached, out.compute_ms)
    status = [html.Span(title, className="status-title"),
              html.Span(timing, className="status-timing" + (" cached" if out.cached else "")),
              html.P(DESCRIPTIONS[method], className="status-about")]
    if res.empty:
        heat = widgets.placeholder("heat map", res.message)
        overlay = html.Div([html.Img(src=base, className="lens-img", alt="image")],
                           className="stack")
        msg = widgets.message(res.message, "info")
    else:
        heat_img = (res.extra["rgb"] if method == "guided-grad-cam"
                    else services.colourise(res.heatmap))
        heat = widgets.figure(services.data_uri(heat_img), "heat map", cid=ids.XP_HEAT,
                              note=colour_bar() if method != "guided-grad-cam" else
                              " · guided backprop × CAM")
        overlay = widgets.stack(base, services.data_uri(services.heat_rgba(res.heatmap)),
                                opacity=opacity, top_id=ids.XP_OVERLAY_TOP)
        msg = None
    return {
        "pred": widgets.figure(services.data_uri(pred, "JPEG"), "prediction (p ≥ 0.5)",
                               note=f" · {float((res.prob >= 0.5).mean()):.0%} building"),
        "heat": heat, "overlay": overlay, "status": status, "message": msg,
        "size": (w, h),
    }


def colour_bar() -> html.Span:
    return html.Span([html.Span("low"), html.Span(className="heat-bar"), html.Span("high")],
                     className="prob-legend")


def truth_figure(run: Any, desc: dict[str, Any]) -> Any:
    """The stored ground truth (by id) or a placeholder."""
    if desc.get("kind") == "tile" and run.file_for("true", desc["tile"]) is not None:
        return widgets.figure(img_url(run.run_id, "true", desc["tile"], state.run_version(run)),
                              "ground truth", cls="mask-fig")
    return widgets.placeholder("ground truth", "no ground truth for this image")


# --------------------------------------------------------------------------- layout


def layout(tile: str | None = None, **_: Any) -> html.Div:
    """Controls on the left, image / truth / prediction / heat map and the overlay on the right,
    the channel explorer below. ``?tile=<id>`` picks a stored tile."""
    tile = tile if isinstance(tile, str) else None
    controls = html.Div([
        widgets.control("Image", dcc.RadioItems(
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
            dcc.Upload(id=ids.XP_UPLOAD, accept=uploads.ACCEPT_ATTR, multiple=False,
                       className="upload-box upload-compact",
                       children=html.Div([html.Span("Drop an image or "),
                                          html.A("choose a file")])),
            html.Div(id=ids.XP_UPLOAD_MSG),
        ], id=ids.XP_UPLOAD_ROW, style={"display": "none"}),
        widgets.control("Method", dcc.RadioItems(
            id=ids.XP_METHOD, options=[{"label": v, "value": k} for k, v in METHODS.items()],
            value="seg-grad-cam", className="radio-list")),
        widgets.control("Layer", dcc.Dropdown(id=ids.XP_LAYER, options=[], value="bottleneck",
                                              clearable=False, searchable=False)),
        widgets.control("Channel", dcc.Input(id=ids.XP_CHANNEL, type="number", min=0, step=1,
                                             value=0, debounce=True, className="num-input"),
                        cid=ids.XP_CHANNEL_ROW),
        widgets.control("Target", dcc.RadioItems(
            id=ids.XP_TARGET, options=[{"label": v, "value": k} for k, v in TARGETS.items()],
            value="predicted", inline=True, className="segmented segmented-wrap")),
        html.Div(TARGET_HINTS["predicted"], id=ids.XP_TARGET_HINT, className="control-hint"),
        html.Button("Explain", id=ids.XP_RUN, n_clicks=0, className="btn btn-primary btn-wide"),
    ], className="panel explain-controls")
    image_graph = dcc.Graph(
        id=ids.XP_IMAGE_FIG, figure=figures.empty_figure("Pick a tile", IMAGE_HEIGHT),
        config={**figures.SMALL_GRAPH_CONFIG, "displayModeBar": "hover",
                "modeBarButtonsToRemove": ["lasso2d", "select2d", "autoScale2d"]},
        style={"height": f"{IMAGE_HEIGHT}px"})
    results = html.Div([
        html.Div([
            widgets.panel("Image", image_graph, cls="image-panel",
                          hint=html.Span("", id=f"{ids.XP_IMAGE_FIG}-caption")),
            widgets.panel("Heat map over the image", html.Div([
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
            html.Div(widgets.placeholder("ground truth"), id=ids.XP_TRUTH),
            html.Div(widgets.placeholder("prediction", "press Explain"), id=ids.XP_PRED),
            dcc.Loading(html.Div(widgets.placeholder("heat map", "press Explain"),
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
    explorer = widgets.panel("Channel explorer", html.Div([
        html.Div([
            widgets.control("Channel", dcc.Input(id=ids.XP_CH_CHANNEL, type="number", min=0,
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
                html.Div(widgets.placeholder("", "an input that excites the channel"),
                         id=ids.XP_AM_IMAGE, className="am-image"),
                widgets.progress_box(ids.XP_AM_PROGRESS, f"{ids.XP_AM_PROGRESS}-label",
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
    run = state.get_run(run_id)
    info = services.model_for(run)
    if run is None or not info.ok:
        body = info.message if not info.ok else "Build an embeddings run first."
        return ("", None, components.empty_state("Nothing to explain yet", body),
                {"display": "none"}, [], None, [], 0, "")
    layers = info.service.conv_layers()
    layer = layer if layer in layers else ("bottleneck" if "bottleneck" in layers else layers[-1])
    version = state.run_version(run)
    cards = [widgets.tile_card(run.run_id, version, t, note,
                               cid={"type": ids.XP_SUGGEST_CARD, "index": t})
             for t, note in suggested_tiles(run)]
    channels, note = channel_info(run)
    subtitle = (f"Model {info.run_id} ({info.service.device}) · tiles of {run.run_id} · every "
                "map is normalised to [0, 1] on its image")
    warning = widgets.message(info.warning, "warn") if info.warning else None
    return (subtitle, warning, None, {}, [{"label": n, "value": n} for n in layers], layer,
            cards, max(0, channels - 1), note)


@callback(
    Output(ids.XP_CHANNEL, "max"),
    Input(ids.XP_LAYER, "value"),
    State(ids.RUN, "value"),
)
def channel_range(layer: str | None, run_id: str | None) -> Any:
    """The channel input's range follows the layer."""
    info = services.model_for(state.get_run(run_id))
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
    run = state.get_run(run_id)
    if run is None:
        return []
    return tile_options(run, search, current)


@callback(
    Output(ids.XP_TILE, "value"),
    Output(ids.XP_SOURCE, "value"),
    Input({"type": ids.XP_SUGGEST_CARD, "index": ALL}, "n_clicks"),
    Input(ids.RUN, "value"),
    State(ids.XP_TILE, "value"),
)
def pick_tile(_clicks: list, run_id: str | None, current: str | None) -> tuple:
    """A suggestion card picks its tile; a run without the current tile picks its first."""
    run = state.get_run(run_id)
    trig = ctx.triggered_id
    if run is None:
        return no_update, no_update
    if isinstance(trig, dict) and ctx.triggered and ctx.triggered[0]["value"]:
        tid = str(trig.get("index"))
        return (tid, "tile") if tid in run.index else (no_update, no_update)
    if current in run.index:
        return no_update, no_update
    suggested = suggested_tiles(run, 1)
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
    activation = method in ("activation", "activation-channel")
    opts = [{"label": v, "value": k, "disabled": activation} for k, v in TARGETS.items()]
    hint = ("Activations need no target: they show what the layer responds to."
            if activation else TARGET_HINTS.get(target, ""))
    return ({} if source == "tile" else {"display": "none"},
            {} if source == "upload" else {"display": "none"},
            {} if method == "activation-channel" else {"display": "none"}, hint, opts)


@callback(
    Output(ids.XP_UPLOAD_KEY, "data"),
    Output(ids.XP_UPLOAD_MSG, "children"),
    Input(ids.XP_UPLOAD, "contents"),
    State(ids.XP_UPLOAD, "filename"),
    prevent_initial_call=True,
)
def take_upload(contents: Any, filename: Any) -> tuple:
    """Decode and check an uploaded image (≤1024 px copy kept in the shared cache)."""
    from app.ml.inference import image_sha256
    from app.web.segmentation import small_copy

    try:
        up = uploads.parse_upload(contents, filename)
    except uploads.UploadError as exc:
        return no_update, widgets.message(str(exc))
    small = small_copy(up.image, MAX_SIDE)
    key = image_sha256(small)
    cache.set(f"explain-upload:{key}", {"image": small, "name": up.name}, timeout=3600)
    notes = up.describe()
    if small.shape != up.image.shape:
        notes.append(f"explained at {small.shape[1]}×{small.shape[0]}")
    text = f"{up.name}: {up.shape[1]}×{up.shape[0]} px" + (f" ({'; '.join(notes)})" if notes else "")
    return {"key": key, "name": up.name}, widgets.message(text, "ok")


@callback(
    Output(ids.XP_IMAGE_FIG, "figure"),
    Output(f"{ids.XP_IMAGE_FIG}-caption", "children"),
    Output(ids.XP_TRUTH, "children"),
    Input(ids.XP_SOURCE, "value"),
    Input(ids.XP_TILE, "value"),
    Input(ids.XP_UPLOAD_KEY, "data"),
    Input(ids.XP_TARGET, "value"),
    Input(ids.XP_TARGET_STORE, "data"),
    State(ids.RUN, "value"),
)
def show_image(source: str, tile: str | None, upload: dict | None, target: str,
               target_data: dict | None, run_id: str | None) -> tuple:
    """The picked image (box drawing / pixel clicking) and its ground truth."""
    run = state.get_run(run_id)
    image, desc = load_image(run, source, tile, upload)
    if image is None:
        return (figures.empty_figure(desc["message"], IMAGE_HEIGHT), "image",
                widgets.placeholder("ground truth"))
    h, w = image.shape[:2]
    if desc["kind"] == "tile":
        src = img_url(run.run_id, "image", desc["tile"], state.run_version(run))
        caption = f"{desc['tile']} · {w}×{h}"
    else:
        src = services.data_uri(image, "JPEG", max_side=max(h, w))
        caption = f"{desc['name']} · {w}×{h}"
    hint = {"box": " · drag to draw a box", "pixel": " · click a pixel"}.get(target, "")
    return (image_figure(src, w, h, target, target_data), [caption, html.Span(hint, className=
                                                                                "fig-note")],
            truth_figure(run, desc))


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
        box = parse_box(relayout)
        if box is None or target != "box":
            return no_update, no_update
        x0, x1 = sorted((box[0], box[2]))
        y0, y1 = sorted((box[1], box[3]))
        data["box"] = [round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)]
        return data, f"Box: x {x0:.0f}–{x1:.0f}, y {y0:.0f}–{y1:.0f}"
    pixel = parse_pixel(click)
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
    run = state.get_run(run_id)
    info = services.model_for(run)
    if run is None or not info.ok or not layer:
        return (no_update,) * 4 + (widgets.message(info.message or "No run."),)
    image, desc = load_image(run, source, tile, upload)
    if image is None:
        return (no_update,) * 4 + (widgets.message(desc["message"], "info"),)
    out = explain_outputs(run, info, image, desc, method, layer, channel, target, target_data,
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
    run = state.get_run(run_id)
    if run is None:
        return []
    channels, note = channel_info(run)
    if channels == 0:
        return components.empty_state("No per-channel values", note)
    try:
        ch = int(channel)
    except (TypeError, ValueError):
        ch = 0
    if not 0 <= ch < channels:
        return components.empty_state("No such channel", f"Pick a channel in 0–{channels - 1}.")
    version = state.run_version(run)
    return [widgets.tile_card(run.run_id, version, t, f"mean act. {v:.3g}",
                              href=widgets.explain_href(run.run_id, t))
            for t, v in top_tiles_for_channel(run, ch)]


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
    import time

    if not n_clicks:
        return no_update, no_update
    run = state.get_run(run_id)
    info = services.model_for(run)
    if run is None or not info.ok:
        return no_update, widgets.message(info.message or "No run.")
    layer = run.layer if run.layer in info.service.conv_layers() else "bottleneck"
    try:
        ch = int(channel)
    except (TypeError, ValueError):
        return no_update, widgets.message("Pick a channel number first.")
    n_channels = info.service.channels(layer)
    if not 0 <= ch < n_channels:
        return no_update, widgets.message(f"Layer {layer} has channels 0–{n_channels - 1}.")

    def progress(step: int, steps: int) -> None:
        set_progress((str(step), str(steps), f"step {step}/{steps}"))

    started = time.perf_counter()
    image = info.service.activation_maximisation(layer, ch, size=ACTMAX_SIZE, steps=ACTMAX_STEPS,
                                                 progress=progress)
    ms = (time.perf_counter() - started) * 1000
    fig = widgets.figure(services.data_uri(image), f"channel {ch} of {layer}",
                         note=f" · {ACTMAX_STEPS} steps, {ACTMAX_SIZE}² px")
    return fig, f"{ms:,.0f} ms ({info.service.device})"
