"""JSON API beside the pages: ``GET /api/points`` and ``POST /api/segment``.

- ``GET /api/points?run=<id>&method=pca|tsne|umap[&k=<2..10>]``: a map's tile ids, coordinates
  and K-means cluster as compact JSON (parallel arrays, coordinates rounded to 1e-4 of the
  map's span). ``run`` defaults to the default run, ``method`` to ``umap``; ``k`` picks another
  clustering than the stored one (memoized in the shared cache). Responses carry an ETag of the
  run version, so a client revalidates with 304.
- ``POST /api/segment[?format=png][&threshold=0.5][&model=<run>]``: an image as a multipart
  ``file`` field or as the raw request body (whatever its declared Content-Type, so
  ``curl --data-binary @a.png`` works) → building statistics and the mask as a base64
  PNG, or the mask PNG itself with ``format=png``. Also ``trained_on`` (what the model was
  trained on) and ``ood`` (``app.web.logic.ood.check_image``: ``available``, ``score`` 0-100,
  ``ood``, ``percentile``, ``nearest`` [[training tile id, distance]], ``message``); with
  ``format=png`` the headers ``X-OOD`` (in-distribution / out-of-distribution / unavailable),
  ``X-OOD-Score`` and ``X-OOD-Nearest``. Decoded by ``app.data.imageio.decode_image``
  (same formats, limits and messages as the pages), segmented by
  ``app.ml.inference.ModelService.segment_large``. An image over ``config.MAX_INFER_PIXELS``
  is downscaled to fit first; ``downscaled`` in the JSON (``X-Downscaled`` with ``format=png``)
  says from and to what size. Decode and inference run behind the worker's
  :data:`app.web.gate.INFERENCE` gate.

Errors are JSON ``{"error": "..."}``: 400 bad input, 404 unknown run / id / path, 413 a body
over ``MAX_CONTENT_LENGTH``, 429 with ``Retry-After`` when the worker's model slots and queue
are full, 503 no usable model. Ids from the request are validated as slugs
and looked up among the listed runs; nothing from a request ever becomes a path, and uploads
are held in memory only (see ``app.web.main.InMemoryUploadRequest``).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
from flask import Blueprint, Response, abort, jsonify, request
from scipy import ndimage as ndi

from app import artifacts, config
from app.artifacts import ArtifactError
from app.data.base import DatasetError
from app.data.imageio import decode_image
from app.ml import inference, registry
from app.web import gate, health, runs
from app.web.images import png_bytes
from app.web.logic import clusters
from app.web.logic import ood as ood_logic
from app.web.logic import tiles as tile_logic
from app.web.uploads import describe_downscale, safe_name

log = logging.getLogger(__name__)

bp = Blueprint("unet_lens_api", __name__, url_prefix="/api")

#: Connected components smaller than this many pixels are not counted as buildings.
MIN_BUILDING_PIXELS = 10
_POINTS_CACHE_ENTRIES = 32


class _Payloads:
    """A small in-process LRU of encoded ``/api/points`` bodies (they are immutable per run
    version, and encoding 10^5 points costs more than looking them up)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple, value: bytes) -> None:
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.size:
                self._data.popitem(last=False)


_payloads = _Payloads(_POINTS_CACHE_ENTRIES)


def error(status: int, message: str) -> Response:
    """A JSON error response."""
    response = jsonify({"error": message})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


# --------------------------------------------------------------------------- points


def _rounded(values: np.ndarray) -> list[float | None]:
    """Coordinates rounded to 1e-4 of their span (short JSON), NaN as null."""
    finite = values[np.isfinite(values)]
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    decimals = 4 if span <= 0 else int(min(8, max(0, 4 - math.floor(math.log10(span)))))
    out = (np.round(values.astype(np.float64), decimals) + 0.0).tolist()  # no -0.0
    if finite.size != values.size:
        out = [v if math.isfinite(v) else None for v in out]
    return out


def points_payload(run: artifacts.EmbeddingsRun, method: str, k: int | None = None) -> bytes:
    """The encoded body of ``/api/points`` for a run, map and optional k."""
    tiles = run.tiles
    x, y = tile_logic.map_coords(tiles, method)
    version = runs.run_version(run)
    if k is not None:
        labelled = clusters.cached_labels(run.run_id, version, k)
        cluster = None if labelled is None else np.asarray(labelled[0]).astype(int).tolist()
    elif "cluster" in tiles:
        cluster = tiles["cluster"].to_numpy(dtype=np.int64).tolist()
    else:
        cluster = None
    body = {
        "run": run.run_id, "version": version, "method": method, "n": len(tiles), "k": k,
        "ids": tiles["tile_id"].astype(str).tolist(), "x": _rounded(x), "y": _rounded(y),
        "cluster": cluster,
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


@bp.get("/points")
def points() -> Response:
    """A map's ids, coordinates and clusters (see the module docstring)."""
    run_id = request.args.get("run") or runs.default_run_id()
    method = request.args.get("method", "umap")
    if method not in registry.REDUCERS:
        return error(400, f"method must be one of {', '.join(registry.reducer_names())}.")
    k_arg = request.args.get("k")
    k: int | None = None
    if k_arg is not None:
        if not k_arg.isdigit() or int(k_arg) not in clusters.K_RANGE:
            return error(400, f"k must be an integer from {clusters.K_RANGE[0]} to "
                              f"{clusters.K_RANGE[-1]}.")
        k = int(k_arg)
    run = runs.get_run(run_id)
    if run is None:
        return error(404, "unknown embeddings run.")
    if method not in tile_logic.available_methods(run.tiles):
        return error(404, f"run {run.run_id} has no {method} map; compute it with "
                          f"`python -m app reduce {run.run_id}`.")
    version = runs.run_version(run)
    etag = f"{version}-{method}-{k or 0}"
    if request.if_none_match.contains(etag):
        response = Response(status=304)
        response.set_etag(etag)
        return response
    key = (run.run_id, version, method, k)
    body = _payloads.get(key)
    if body is None:
        body = points_payload(run, method, k)
        _payloads.put(key, body)
    response = Response(body, mimetype="application/json")
    response.set_etag(etag)
    response.headers["Cache-Control"] = "no-cache"
    return response


# --------------------------------------------------------------------------- segment


def _upload() -> tuple[bytes | None, str]:
    """The uploaded bytes and a readable display name: a multipart ``file`` (or the only file
    part), else the raw body whatever its Content-Type (``curl --data-binary`` declares
    ``application/x-www-form-urlencoded``; the body is never parsed as a form). ``None`` for a
    multipart request without a file part. Held in memory only."""
    if request.mimetype == "multipart/form-data":
        if not request.files:
            return None, "upload"
        part = request.files.get("file") or next(iter(request.files.values()))
        return part.read(), safe_name(part.filename)[:100]
    return request.get_data(cache=False, parse_form_data=False), "upload"


def _model_service(model_arg: str | None) -> tuple[Any | None, Response | None]:
    """The ``ModelService`` to segment with, or an error response."""
    available = artifacts.list_runs(config.MODEL_STORE)
    if model_arg is not None:
        try:
            artifacts.validate_run_id(model_arg)
        except ArtifactError:
            return None, error(404, "unknown model run.")
        if model_arg not in available:
            return None, error(404, "unknown model run.")
        run_id: str | None = model_arg
    else:
        run_id = runs.model_run_for(runs.get_run(runs.default_run_id()))
    if run_id is None:
        return None, error(503, "no model run is available to segment with; train one with "
                                "`python -m app train`.")
    try:
        sha = health.check_model(run_id)  # cheap (hash remembered per stat), no TensorFlow
        service = inference.get_service(run_id)
        if service.loaded and service.sha256 != sha:  # the run was rebuilt while serving
            inference.forget_services()
            service = inference.get_service(run_id)
        _ = service.sha256  # loads the model (hash-checked, safe_mode) on first use
    except (ArtifactError, OSError, ValueError) as exc:
        return None, error(503, f"model run {run_id} cannot be used: "
                                f"{health.tidy(str(exc)).splitlines()[0]}")
    return service, None


def building_stats(prob: np.ndarray, threshold: float,
                   min_pixels: int = MIN_BUILDING_PIXELS) -> tuple[np.ndarray, dict[str, Any]]:
    """``(mask, stats)`` of a probability map: pixels over ``threshold``, and the count and sizes
    of connected buildings (4-connected, at least ``min_pixels``)."""

    mask = np.asarray(prob) >= threshold
    labels, n = ndi.label(mask)
    sizes = np.bincount(labels.ravel())[1:] if n else np.zeros(0, np.int64)
    kept = sizes[sizes >= min_pixels]
    h, w = mask.shape
    pixels = int(mask.sum())
    stats = {
        "width": int(w), "height": int(h), "threshold": float(threshold),
        "building_pixels": pixels, "building_fraction": pixels / float(h * w),
        "building_count": int(kept.size),
        "mean_building_pixels": float(kept.mean()) if kept.size else 0.0,
        "largest_building_pixels": int(kept.max()) if kept.size else 0,
        "mean_probability": float(np.mean(prob)),
        "min_building_pixels": int(min_pixels),
    }
    return mask, stats


@bp.post("/segment")
def segment() -> Response:
    """Segment an uploaded image (see the module docstring)."""
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "png"):
        return error(400, "format must be json or png.")
    try:
        threshold = float(request.args.get("threshold", "0.5"))
    except ValueError:
        threshold = float("nan")
    if not 0.0 < threshold < 1.0:
        return error(400, "threshold must be a number between 0 and 1.")
    data, name = _upload()
    if data is None:
        return error(400, "no image: the multipart request has no file part; send the image as "
                          "a multipart 'file' field or as the raw request body.")
    if not data:
        return error(400, f"{name}: the file is empty (0 bytes); send a PNG, JPEG, TIFF, BMP or WebP image "
                          "as a multipart 'file' field or as the raw request body.")
    try:
        with gate.INFERENCE.slot():
            return _segment(data, name, request.args.get("model"), threshold, fmt)
    except gate.Busy as exc:
        response = error(429, f"{exc} Each worker segments {gate.INFERENCE.slots} image"
                              f"{'s' if gate.INFERENCE.slots != 1 else ''} at a time.")
        response.headers["Retry-After"] = str(exc.retry_after)
        return response


def _segment(data: bytes, name: str, model_arg: str | None, threshold: float,
             fmt: str) -> Response:
    """Decode (downscaled to ``config.MAX_INFER_PIXELS``), segment and answer; runs inside the
    gate, so at most ``INFER_SLOTS`` of these hold a full decode at once. The image is checked
    before the model: a file that is no image is a 400 whether or not a model is there."""
    try:
        rgb, notes = decode_image(bytes(data), name=name, max_pixels=config.MAX_IMAGE_PIXELS,
                                  fit_pixels=config.MAX_INFER_PIXELS)
    except DatasetError as exc:
        return error(400, str(exc))
    except Exception:  # noqa: BLE001 - a decoder bug on hostile input is still a bad upload
        log.warning("decoder failed on an upload", exc_info=True)
        return error(400, f"{name}: not a readable image; expected a PNG, JPEG, TIFF, BMP or WebP image.")
    del data
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        log.warning("decoder returned an array of shape %s for an upload", rgb.shape)
        return error(400, f"{name}: not a readable image; expected a PNG, JPEG, TIFF, BMP or WebP image.")
    service, failure = _model_service(model_arg)
    if failure is not None:
        return failure
    started = time.perf_counter()
    prob = service.segment_large(rgb)
    mask, stats = building_stats(prob, threshold)
    verdict = ood_logic.check_image(runs.get_run(runs.default_run_id()), service, rgb)
    png = png_bytes(mask)
    downscaled = None
    if "downscaled_from" in notes:
        src_w, src_h = (int(v) for v in str(notes["downscaled_from"]).split("x"))
        downscaled = {"from_width": src_w, "from_height": src_h,
                      "max_infer_pixels": config.MAX_INFER_PIXELS,
                      "message": describe_downscale(notes)}
    stats.update({
        "model": {"run": service.run_id, "sha256": service.sha256[:12]},
        "device": service.device, "ms": round((time.perf_counter() - started) * 1000, 1),
        "downscaled": downscaled,
        "notes": {k: v for k, v in notes.items() if isinstance(v, str | int | float | bool)},
        "trained_on": verdict["trained_on"],
        "ood": {k: verdict[k] for k in ("available", "score", "ood", "percentile", "nearest",
                                        "message")},
    })
    if fmt == "png":
        response = Response(png, mimetype="image/png")
        response.headers["X-Building-Count"] = str(stats["building_count"])
        response.headers["X-Building-Fraction"] = f"{stats['building_fraction']:.6f}"
        response.headers["X-Model-Run"] = str(service.run_id)
        response.headers.update(ood_logic.headers(verdict))
        if downscaled is not None:
            response.headers["X-Downscaled"] = (f"{notes['downscaled_from']} to "
                                                f"{notes['downscaled_to']}")
    else:
        stats["mask_png_base64"] = base64.b64encode(png).decode("ascii")
        response = jsonify(stats)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
@bp.route("/<path:_rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
def not_found(_rest: str = "") -> Response:
    """Any other path under /api/ is a JSON 404 (never the dashboard's page fallback)."""
    abort(404)


__all__ = ["bp", "building_stats", "error", "not_found", "points", "points_payload",
           "segment"]
