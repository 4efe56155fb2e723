"""The out-of-distribution verdict on an upload and the "trained on" line, for every page and
the API that shows a result (Segment, Explain's upload, ``/api/segment``, Evaluate).

:func:`check_image` scores an image with the run's stored guard (``app.ml.ood``) and says in
words what it means; :func:`trained_on` says what the model was trained on, from its manifest.
Plain functions, no Dash.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from app import artifacts
from app.artifacts import ArtifactError
from app.ml import ood as ood_lib

log = logging.getLogger(__name__)

WARNING = "This image is unlike every tile the model was trained on: its mask is unreliable."
N_NAMED = 3
#: Uploads are compared on a copy whose longer side is at most this (as pages embed them).
MAX_SIDE = 1024

_trained_on: dict[tuple[str, int], str] = {}
_lock = threading.Lock()


def trained_on(model_run: str | None) -> str:
    """"demo model · trained on 448 tiles of 14 synthetic locations …" for a stored model run
    (re-read when its manifest changes); a plain message when it cannot be read."""
    if not model_run:
        return "no model"
    try:
        path = artifacts.model_dir(model_run) / artifacts.MANIFEST
        key = (model_run, path.stat().st_mtime_ns)
    except (ArtifactError, OSError):
        return f"model {model_run} · its manifest cannot be read"
    cached = _trained_on.get(key)
    if cached is None:
        try:
            cached = ood_lib.trained_on(artifacts.read_model_manifest(model_run))
        except ArtifactError:
            cached = f"model {model_run} · its manifest cannot be read"
        with _lock:
            _trained_on[key] = cached
    return cached


def check_image(run: Any, service: Any, image: np.ndarray) -> dict[str, Any]:
    """The guard's verdict on ``image`` (RGB, ≤1024 px is enough: it is scored in the run's tile
    size) as JSON-friendly fields:

    ``available`` (False: ``message`` says why: no run, no guard, another model),
    ``score`` (percentile 0-100 of its k-NN distance among held-out tiles), ``ood``
    (above ``percentile``), ``nearest`` ([tile id, distance] of the nearest training tiles),
    ``message`` (the warning, or a plain sentence), and ``trained_on``.
    """
    out: dict[str, Any] = {"available": False, "score": None, "ood": None, "percentile": None,
                           "nearest": [], "message": "",
                           "trained_on": trained_on(getattr(service, "run_id", None))}
    if run is None:
        out["message"] = "No embeddings run: the image cannot be compared with the training tiles."
        return out
    problem = run.ood_problem()
    if problem:
        out["message"] = problem[0].upper() + problem[1:]
        return out
    if getattr(service, "run_id", None) != run.model_run or (
            getattr(service, "sha256", None) != run.manifest.get("model_sha256")):
        out["message"] = (f"The out-of-distribution guard of run {run.run_id} belongs to model "
                          f"{run.model_run}, not to model {getattr(service, 'run_id', None)}; "
                          "the image was not compared with the training tiles.")
        return out
    try:
        index = ood_lib.load_ood(run)
        verdict = ood_lib.score_image(index, run, service.model, _fit(image))
    except (ArtifactError, ValueError) as exc:
        log.warning("OOD check of run %s failed: %s", run.run_id, exc)
        out["message"] = f"The out-of-distribution check failed: {exc}"
        return out
    names = [tid for tid, _ in verdict["nearest"]]
    out.update(available=True, score=verdict["score"], ood=verdict["ood"],
               percentile=verdict["percentile"], distance=verdict["distance"],
               tiles=verdict["tiles"], metric=verdict["metric"],
               nearest=[[tid, round(d, 6)] for tid, d in verdict["nearest"]])
    if verdict["ood"]:
        out["message"] = (f"{WARNING} Its distance to the training tiles is above the "
                          f"{verdict['percentile']:g}th percentile of tiles the model never saw "
                          f"(score {verdict['score']:.1f}); the nearest training tiles are "
                          f"{', '.join(names[:N_NAMED])}.")
    else:
        out["message"] = (f"Out-of-distribution score {verdict['score']:.1f} of 100: farther "
                          f"from the training tiles than {verdict['score']:.0f} % of the held-out "
                          "tiles the model never saw (the warning starts above "
                          f"{verdict['percentile']:g}).")
    return out


def _fit(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """The image downscaled (area) so its longer side is at most ``max_side``, as the pages
    embed uploads."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    from app.ml.inference import resize_rgb  # lazy: the module is large

    s = max_side / max(h, w)
    return resize_rgb(image, max(16, round(h * s)), max(16, round(w * s)))


def headers(verdict: dict[str, Any]) -> dict[str, str]:
    """The response headers of ``/api/segment?format=png`` for a verdict."""
    if not verdict.get("available"):
        return {"X-OOD": "unavailable"}
    return {"X-OOD-Score": f"{verdict['score']:.2f}",
            "X-OOD": "out-of-distribution" if verdict["ood"] else "in-distribution",
            "X-OOD-Nearest": ",".join(t for t, _ in verdict["nearest"][:N_NAMED])}


__all__ = ["WARNING", "check_image", "headers", "trained_on"]
