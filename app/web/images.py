"""How images reach the browser: stored tiles by id, computed images as data URIs.

Stored tiles: ``GET /img/<run_id>/<kind>/<tile_id>``.

The browser names a run, a kind and a tile id; each is checked against what the server knows (the
run must be listed, the kind one of ``THUMB_KINDS``, the id a key of the run's index) and the file
path comes from ``EmbeddingsRun.file_for``, never from the URL. Anything else is a 404. Files are
immutable within a run version, and image URLs carry ``?v=<run version>`` so a rebuilt run gets
new URLs; responses are cacheable for a day with an ETag.

Computed images (heat maps, probability maps, mask overlays, previews of an upload) are PNG/JPEG
data URIs built by :func:`data_uri`, so any gunicorn worker can render any result without shared
state; the helpers here resize, colour and outline arrays for them.
"""

from __future__ import annotations

import base64
import io
from urllib.parse import quote

import numpy as np
import plotly.colors as pc
from flask import Blueprint, Response, abort, send_file
from PIL import Image

from app.artifacts import THUMB_KINDS
from app.ml.evaluate import resize_prob
from app.ml.metrics import mask_edges
from app.web import runs

bp = Blueprint("unet_lens_images", __name__)

CACHE_CONTROL = "public, max-age=86400, immutable"
#: Longest side of a computed image sent to the browser (bigger ones are downscaled).
DISPLAY_MAX_SIDE = 768
_MIMETYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


@bp.get("/img/<run_id>/<kind>/<tile_id>")
def tile_image(run_id: str, kind: str, tile_id: str) -> Response:
    """Serve one stored image of a tile, or 404."""
    if kind not in THUMB_KINDS:
        abort(404)
    run = runs.get_run(run_id)
    if run is None:
        abort(404)
    path = run.file_for(kind, tile_id)
    if path is None:
        abort(404)
    response = send_file(
        path,
        mimetype=_MIMETYPES.get(path.suffix.lower(), "application/octet-stream"),
        conditional=True,
        etag=True,
        max_age=86400,
    )
    response.headers["Cache-Control"] = CACHE_CONTROL
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/img/")
@bp.get("/img/<path:_rest>")
def not_an_image(_rest: str = "") -> Response:
    """Any other path under /img/ is a plain 404 (not the dashboard's page fallback)."""
    abort(404)


def img_url(run_id: str, kind: str, tile_id: str, version: str = "") -> str:
    """The URL of a tile image (ids are percent-encoded; the route validates them anyway)."""
    url = f"/img/{quote(run_id, safe='')}/{quote(kind, safe='')}/{quote(tile_id, safe='')}"
    return f"{url}?v={quote(version, safe='')}" if version else url



def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (h, w)."""
    if mask.shape == tuple(shape):
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(im.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 127


# --------------------------------------------------------------------------- computed images


def _lut(name: str) -> np.ndarray:
    """A (256, 3) uint8 lookup table from a plotly sequential colour scale."""
    scale = pc.get_colorscale(name)
    xs = np.array([s[0] for s in scale], dtype=float)
    cols = np.array([pc.unlabel_rgb(pc.convert_colors_to_same_type(s[1], "rgb")[0][0])
                     for s in scale], dtype=float)
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, xs, cols[:, i]) for i in range(3)], axis=1).round().astype(
        np.uint8)


_LUTS: dict[str, np.ndarray] = {}


def colourise(values: np.ndarray, scale: str = "Inferno") -> np.ndarray:
    """(H, W) values in [0, 1] → (H, W, 3) uint8 through a plotly colour scale."""
    if scale not in _LUTS:
        _LUTS[scale] = _lut(scale)
    idx = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)) * 255, 0, 255)
    return _LUTS[scale][idx.astype(np.uint8)]


def heat_rgba(heatmap: np.ndarray, scale: str = "Inferno") -> np.ndarray:
    """(H, W, 4) uint8 heat map whose alpha follows the heat (cold areas see-through), for
    stacking on the image."""
    rgb = colourise(heatmap, scale)
    alpha = (np.clip(np.asarray(heatmap, np.float32), 0, 1) ** 0.6 * 235 + 20).astype(np.uint8)
    return np.dstack([rgb, alpha])


def mask_overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 196, 0),
                 alpha: float = 0.45) -> np.ndarray:
    """The image with ``mask`` tinted and outlined in ``colour``."""
    out = np.asarray(image, dtype=np.float32).copy()
    m = np.asarray(mask, dtype=bool)
    out[m] = out[m] * (1 - alpha) + np.asarray(colour, np.float32) * alpha
    out[mask_edges(m)] = colour
    return np.clip(out, 0, 255).astype(np.uint8)


def fit_display(arr: np.ndarray, max_side: int = DISPLAY_MAX_SIDE, nearest: bool = False) -> np.ndarray:
    """Downscale an image array so its longer side is at most ``max_side``."""
    h, w = arr.shape[:2]
    if max(h, w) <= max_side:
        return arr
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BOX
    return np.asarray(Image.fromarray(arr).resize(size, method))


def data_uri(arr: np.ndarray, fmt: str = "PNG", max_side: int = DISPLAY_MAX_SIDE,
             nearest: bool = False) -> str:
    """A computed image (uint8 (H, W), (H, W, 3) or (H, W, 4), or bool) as a data URI."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    a = fit_display(np.ascontiguousarray(a.astype(np.uint8)), max_side, nearest)
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        Image.fromarray(a[..., :3] if a.ndim == 3 else a).save(buf, "JPEG", quality=88)
        mime = "image/jpeg"
    else:
        Image.fromarray(a).save(buf, "PNG", compress_level=3)
        mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_bytes(mask: np.ndarray) -> bytes:
    """A bool mask as an 8-bit 0/255 PNG (the "Download mask PNG" file)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L").save(
        buf, "PNG", optimize=True)
    return buf.getvalue()


__all__ = [
    "CACHE_CONTROL", "DISPLAY_MAX_SIDE", "bp", "colourise", "data_uri", "fit_display",
    "heat_rgba", "img_url", "mask_overlay", "not_an_image", "png_bytes", "resize_mask",
    "resize_prob", "tile_image",
]
