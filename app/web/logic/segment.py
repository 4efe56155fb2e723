"""What the segment page computes for an upload, as plain functions (no Dash callbacks).

:func:`analyse` segments a decoded upload with ``ModelService.segment`` (tiled, blended),
counts buildings (``metrics.count_buildings``, watershed), runs the Otsu and K-means colour
baselines on a ≤1024 px copy, places the upload on the run's maps (:func:`place_upload`) and
keeps what later callbacks need (the ≤1024 px copy for Grad-CAM, the mask PNG for the
download) in the shared flask-caching cache under the image's SHA-256.

:func:`segment_upload` is the page's whole job behind the worker's model gate
(:data:`app.web.gate.INFERENCE`, shared with ``/api/segment``): decode (downscaled to
``config.MAX_INFER_PIXELS``) and analyse, or :class:`~app.web.gate.Busy` when the gate is full.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app import config
from app.ml.apply import place_new
from app.ml.inference import (
    SIZE_FACTOR,
    image_sha256,
    kmeans_colour_baseline,
    otsu_baseline,
    resize_rgb,
    tile_origins,
)
from app.ml.metrics import count_buildings
from app.web import gate, images, runs, uploads
from app.web.cache import cache
from app.web.logic import ood as ood_logic
from app.web.logic.tiles import (
    ColourSpec,
    available_methods,
    colour_options,
    colour_spec,
    map_coords,
    nearest,
)

TILE = 256
OVERLAP = 32
THRESHOLD = 0.5
#: Grad-CAM, the baselines and the embedding run on a copy whose longer side is at most this.
EXPLAIN_MAX_SIDE = 1024
N_NEIGHBOURS = 8
CACHE_TIMEOUT = 3600


def tiling_description(width: int, height: int, tile: int = TILE, overlap: int = OVERLAP,
                       single_pass_max_pixels: int | None = None) -> str:
    """How ``ModelService.segment`` covers an image of this size, in words."""
    if single_pass_max_pixels is None:
        single_pass_max_pixels = config.SINGLE_PASS_MAX_PIXELS
    ph = math.ceil(height / SIZE_FACTOR) * SIZE_FACTOR
    pw = math.ceil(width / SIZE_FACTOR) * SIZE_FACTOR
    if (ph <= tile and pw <= tile) or ph * pw <= single_pass_max_pixels:
        return "one pass (padded to /16)" if (ph, pw) != (height, width) else "one pass"
    stride = max(SIZE_FACTOR, (tile - overlap) // SIZE_FACTOR * SIZE_FACTOR)
    n = len(tile_origins(ph, min(tile, ph), stride)) * len(tile_origins(pw, min(tile, pw), stride))
    return f"{n} tiles of {tile} px, {tile - stride} px overlap, blended"


def cache_key(image_key: str) -> str:
    """Where :func:`analyse` keeps an upload's small copy and mask PNG."""
    return f"segment-upload:{image_key}"


@dataclass
class SegmentResult:
    """Everything the page shows for one upload (arrays stay on the server)."""

    key: str
    name: str
    width: int
    height: int
    notes: list[str]
    image: np.ndarray  # display copy (≤ DISPLAY_MAX_SIDE)
    prob: np.ndarray  # display copy
    mask: np.ndarray  # full resolution, bool
    n_buildings: int
    building_pixels: int
    mean_area: float
    seconds: float
    device: str
    cached: bool
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    placement: dict[str, Any] = field(default_factory=dict)
    #: ``app.web.logic.ood.check_image``: the out-of-distribution verdict and "trained on".
    ood: dict[str, Any] = field(default_factory=dict)


def small_copy(image: np.ndarray, max_side: int = EXPLAIN_MAX_SIDE) -> np.ndarray:
    """The image downscaled (area) so its longer side is at most ``max_side``."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    return resize_rgb(image, max(16, round(h * s)), max(16, round(w * s)))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (1.0 when both are empty)."""
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def baselines(image_small: np.ndarray, unet_small: np.ndarray) -> dict[str, dict[str, Any]]:
    """Otsu and K-means masks of the ≤1024 px copy, with their agreement with the U-Net."""
    out: dict[str, dict[str, Any]] = {}
    for key, label, fn in (("otsu", "Otsu threshold", otsu_baseline),
                           ("kmeans", "K-means colours (k = 4)",
                            lambda im: kmeans_colour_baseline(im, k=4, random_state=0))):
        started = time.perf_counter()
        mask = fn(image_small)
        out[key] = {"label": label, "mask": mask, "fraction": float(mask.mean()),
                    "iou": mask_iou(mask, unet_small), "ms": (time.perf_counter() - started) * 1e3}
    return out


def place_upload(run: Any, service: Any, image: np.ndarray) -> dict[str, Any]:
    """Where the upload falls on the run's maps and its nearest stored tiles.

    ``{"coords": {method: [x, y]}, "approx": bool, "neighbours": [(tile_id, cos)], "note": str}``;
    ``approx`` when the run stores no reducers (then the upload sits at the mean map position
    of its 5 nearest neighbours); ``note`` says why something is missing.
    """
    out: dict[str, Any] = {"coords": {}, "approx": False, "neighbours": [], "note": ""}
    try:
        vec, notes = service.embed_image(image, run)
    except (ValueError, KeyError) as exc:
        out["note"] = f"Cannot embed the upload for run {run.run_id}: {exc}"
        return out
    vectors = runs.vectors(run)
    if vec.shape[0] != vectors.data.shape[1]:
        out["note"] = (f"The model gives {vec.shape[0]}-d vectors but run {run.run_id} stores "
                       f"{vectors.data.shape[1]}-d ones (another model or representation), so "
                       "the upload cannot be placed on its maps.")
        return out
    near = nearest(vectors, vec, N_NEIGHBOURS)
    tiles = run.tiles
    out["neighbours"] = [(str(tiles["tile_id"].iat[r]), s) for r, s in near]
    methods = available_methods(tiles)
    try:
        placed = place_new(run, vec)
        out["coords"] = {m: [float(v[0]), float(v[1])] for m, v in placed.items() if m in methods}
    except Exception as exc:  # noqa: BLE001 - no reducers, unreadable reducer, ...
        rows = [r for r, _ in near[:5]]
        out["coords"] = {m: [float(np.nanmean(tiles[f"{m}_x"].to_numpy()[rows])),
                             float(np.nanmean(tiles[f"{m}_y"].to_numpy()[rows]))]
                         for m in methods}
        out["approx"] = True
        out["note"] = (f"Approximate position: {str(exc).rstrip('.')}. The upload is drawn at "
                       "the mean position of its 5 nearest stored tiles.")
    if notes.get("resized"):
        out["note"] = (out["note"] + " " if out["note"] else "") + \
            f"Embedded at {notes['resized']} ({notes['representation']} of {notes['layer']})."
    return out


def map_points(run: Any, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, ColourSpec]:
    """(x, y, tile ids, colouring) of a run's map for the placement figure: coloured by
    cluster when the run has clusters, else by its first colouring, else one grey."""
    tiles = run.tiles
    x, y = map_coords(tiles, method)
    options = [o["value"] for o in colour_options(tiles)]
    colour = "cluster" if "cluster" in options else (options[0] if options else None)
    spec = colour_spec(tiles, colour) if colour else ColourSpec(
        "none", "", "categorical", np.zeros(len(tiles), np.int16), categories=["tile"],
        colours=["#9aa5b1"], counts=[len(tiles)], cmin=-0.5, cmax=0.5)
    return x, y, tiles["tile_id"].to_numpy(dtype=object), spec


def analyse(upload: uploads.Upload, run: Any, service: Any,
            progress: Any = None) -> SegmentResult:
    """Segment an upload and compute everything the page shows (no Dash)."""
    image = upload.image
    h, w = image.shape[:2]
    key = image_sha256(image)
    started = time.perf_counter()
    prob, hit = service.segment(image, tile=TILE, overlap=OVERLAP,
                                progress=(lambda d, t: progress(d, t, "Segmenting"))
                                if progress else None)
    seconds = time.perf_counter() - started
    mask = prob >= THRESHOLD
    if progress:
        progress(1, 1, "Counting buildings")
    count = count_buildings(mask, split_touching=True, min_area=10)
    areas = count.areas
    small = small_copy(image)
    unet_small = images.resize_mask(mask, small.shape[:2])
    if progress:
        progress(1, 1, "Baselines")
    base = baselines(small, unet_small)
    placement: dict[str, Any] = {}
    if run is not None:
        if progress:
            progress(1, 1, "Placing on the maps")
        placement = place_upload(run, service, small)
    if progress:
        progress(1, 1, "Comparing with the training tiles")
    verdict = ood_logic.check_image(run, service, small)
    disp = images.fit_display(image)
    cache.set(cache_key(key), {"image": small, "mask_png": images.png_bytes(mask),
                                        "name": upload.name}, timeout=CACHE_TIMEOUT)
    return SegmentResult(
        key=key, name=upload.name, width=w, height=h, notes=upload.describe(),
        image=disp, prob=images.resize_prob(prob, disp.shape[:2]), mask=mask,
        n_buildings=int(count.n), building_pixels=int(np.count_nonzero(mask)),
        mean_area=float(areas.mean()) if len(areas) else 0.0, seconds=seconds,
        device=service.device, cached=hit, baselines=base, placement=placement,
        ood=verdict,
    )


class ModelUnavailable(Exception):
    """The run's model cannot be used; ``str(exc)`` is the page's message."""


def busy_message(exc: gate.Busy) -> str:
    """What the page says when the worker's model slots are all taken."""
    return (f"{exc} Each server process segments {gate.INFERENCE.slots} image"
            f"{'s' if gate.INFERENCE.slots != 1 else ''} at a time; nothing was lost, upload the "
            "file again then.")


def segment_upload(contents: Any, filename: Any, model_info: Any, run: Any,
                   progress: Any = None) -> SegmentResult:
    """Decode and analyse an upload while holding one of the worker's model slots.

    Raises :class:`uploads.UploadError` for a bad file, :class:`gate.Busy` when no slot frees up
    within ``config.INFER_WAIT_S``, and :class:`ModelUnavailable` with the model's message
    when ``model_info`` says it cannot be used.
    """
    if progress:
        progress(0, 1, "Waiting for a free model slot")
    with gate.INFERENCE.slot():
        if progress:
            progress(0, 1, "Decoding")
        upload = uploads.parse_upload(contents, filename)
        if not model_info.ok:
            raise ModelUnavailable(model_info.message)
        return analyse(upload, run, model_info.service, progress=progress)


__all__ = [
    "OVERLAP", "THRESHOLD", "TILE", "ModelUnavailable", "SegmentResult", "analyse", "baselines",
    "busy_message", "cache_key", "map_points",
    "mask_iou", "place_upload", "segment_upload", "small_copy", "tiling_description",
]
