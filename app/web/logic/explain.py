"""The Explain page's back end: picking an image and a target, and one explanation as
ready-to-show blocks.

Plain functions (no callbacks), tested without a browser. Method names, labels and
descriptions come from :mod:`app.ml.registry` (``EXPLAINERS``): an explainer registered there
is offered and explained here with no change. The explanation itself runs in
``ModelService.explain`` (``app.ml.inference``), cached per image, method, layer and target.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from dash import html

from app.ml import registry
from app.web import components, ids, images, runs
from app.web.cache import cache
from app.web.images import img_url
from app.web.logic import ood as ood_logic

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
#: Explanations and uploads run on a copy whose longer side is at most this.
MAX_SIDE = 1024
N_SUGGEST = 6
N_CHANNEL_TILES = 8
REPRESENTATION_FACTOR = {"gap": 1, "avgmax": 2, "spp": 21}


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
    col = np.asarray(runs.vectors(run).data[:, int(channel)], dtype=np.float32)
    n = min(n, len(col))
    rows = np.argpartition(-col, n - 1)[:n] if n < len(col) else np.arange(len(col))
    rows = rows[np.argsort(-col[rows], kind="stable")]
    return [(str(run.tiles["tile_id"].iat[r]), float(col[r])) for r in rows]


def load_image(run: Any, source: str, tile: str | None, upload: dict | None
               ) -> tuple[np.ndarray | None, dict[str, Any]]:
    """(pixels, description) of the picked image; None with ``description["message"]``."""
    if source == "upload":
        key = (upload or {}).get("key")
        stored = cache.get(f"explain-upload:{key}") if key else None
        if stored is None:
            return None, {"message": "Upload an image to explain (PNG, JPEG, TIFF, BMP or WebP)."}
        return stored["image"], {"kind": "upload", "key": key, "name": stored["name"],
                                 "ood": stored.get("ood")}
    if run is None or not tile or tile not in run.index:
        return None, {"message": "Pick a tile to explain."}
    image = runs.tile_image(run, tile)
    if image is None:
        return None, {"message": f"Tile {tile} has no stored image."}
    return image, {"kind": "tile", "tile": tile}


def upload_verdict(run: Any, info: runs.ModelInfo, image: np.ndarray) -> dict[str, Any]:
    """The out-of-distribution verdict on an uploaded image (``app.web.logic.ood``), or what
    the page can say without a model."""
    if not info.ok:
        return {"available": False, "trained_on": ood_logic.trained_on(info.run_id),
                "message": info.message or "No model to compare the image with."}
    return ood_logic.check_image(run, info.service, image)


def ood_verdict(run: Any, desc: dict[str, Any]) -> dict[str, Any] | None:
    """What the page says above an explained image: the upload's stored verdict, or for a
    stored tile what the model was trained on and the tile's stored score."""
    if desc.get("kind") == "upload":
        return desc.get("ood")
    if run is None or desc.get("kind") != "tile":
        return None
    out: dict[str, Any] = {"available": False, "trained_on": ood_logic.trained_on(
        runs.model_run_for(run)), "message": ""}
    tiles = run.tiles
    if "ood_score" in tiles and desc["tile"] in run.index:
        score = float(tiles["ood_score"].iat[run.index[desc["tile"]]])
        pct = float(((run.manifest.get("ood") or {}).get("params") or {}).get("percentile", 99))
        out.update(available=True, score=score, percentile=pct, ood=score > pct)
        if score > pct:
            out["message"] = (f"{ood_logic.WARNING} Stored tile {desc['tile']} is farther from "
                              f"the training tiles than {pct:g} % of held-out tiles (score "
                              f"{score:.1f}); its nearest training tile is "
                              f"{tiles['ood_nearest'].iat[run.index[desc['tile']]]}.")
    return out


def explain_outputs(run: Any, info: runs.ModelInfo, image: np.ndarray, desc: dict[str, Any],
                    method: str, layer: str, channel: Any, target: str,
                    target_data: dict | None, opacity: float) -> dict[str, Any]:
    """Truth, prediction, heat map, overlay and status for one explanation (no Dash state)."""
    data = target_data or {}
    box = data.get("box") if target == "box" else None
    pixel = data.get("pixel") if target == "pixel" else None
    spec = registry.explainer(method)
    is_activation = not spec.uses_target
    if not is_activation and target == "box" and not box:
        return {"message": components.message("Draw a box on the image first (drag on it).", "info")}
    if not is_activation and target == "pixel" and not pixel:
        return {"message": components.message("Click a pixel on the image first.", "info")}
    try:
        ch = int(channel) if spec.uses_channel else None
        out = info.service.explain(image, method, layer=layer, target=target, box=box,
                                   pixel=pixel, channel=ch, image_key=desc.get("key"))
    except (ValueError, TypeError) as exc:
        return {"message": components.message(str(exc))}
    res = out.result
    h, w = image.shape[:2]
    base = (img_url(run.run_id, "image", desc["tile"], runs.run_version(run))
            if desc["kind"] == "tile" else images.data_uri(image, "JPEG"))
    pred = images.mask_overlay(images.fit_display(image),
                                 images.resize_prob(res.prob, images.fit_display(image).shape[:2])
                                 >= 0.5)
    target_word = TARGETS.get(target, target).lower() if not is_activation else res.target
    title = f"{spec.label} · layer {res.layer} · {target_word}"
    timing = components.timing_text(out.ms, out.device, out.cached, out.compute_ms)
    status = [html.Span(title, className="status-title"),
              html.Span(timing, className="status-timing" + (" cached" if out.cached else "")),
              html.P(spec.description, className="status-about")]
    if res.empty:
        heat = components.placeholder("heat map", res.message)
        overlay = html.Div([html.Img(src=base, className="lens-img", alt="image")],
                           className="stack")
        msg = components.message(res.message, "info")
    else:
        guided = "rgb" in res.extra  # guided methods return their signed colour image
        heat_img = res.extra["rgb"] if guided else images.colourise(res.heatmap)
        heat = components.figure(images.data_uri(heat_img), "heat map", cid=ids.XP_HEAT,
                              note=colour_bar() if not guided else
                              " · guided backprop × CAM")
        overlay = components.stack(base, images.data_uri(images.heat_rgba(res.heatmap)),
                                opacity=opacity, top_id=ids.XP_OVERLAY_TOP)
        msg = None
    return {
        "pred": components.figure(images.data_uri(pred, "JPEG"), "prediction (p ≥ 0.5)",
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
        return components.figure(img_url(run.run_id, "true", desc["tile"], runs.run_version(run)),
                              "ground truth", cls="mask-fig")
    return components.placeholder("ground truth", "no ground truth for this image")




__all__ = [
    "MAX_SIDE", "N_CHANNEL_TILES", "N_SUGGEST", "TARGETS", "TARGET_HINTS", "channel_info",
    "colour_bar", "explain_outputs", "load_image", "parse_box", "parse_pixel",
    "suggested_tiles", "tile_options", "top_tiles_for_channel", "truth_figure",
]
