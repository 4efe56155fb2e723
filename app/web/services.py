"""What the explain, evaluate and segment pages share: the model for a run, stored tiles as
arrays, and computed images (heat maps, masks) as PNG data URIs.

Plain functions (no callbacks), so unit tests call them directly. Nothing here imports
TensorFlow at import time: the model is loaded by :mod:`app.ml.inference` on first use.

Model choice for an embeddings run: the model run the app was started with
(``--model-run`` / ``$UNET_LENS_MODEL_RUN``), else the run's own ``model_run``, else the
demo's, the first that exists in ``config.MODEL_STORE``. A model whose SHA-256 differs from the
run's ``model_sha256`` is used with a visible warning (its vectors and maps may not match).

Images: stored tiles reach the browser through the ``/img/...`` route only; images the server
*computes* (heat maps, probability maps, overlays, stitched masks, previews of an upload) are
PNG/JPEG data URIs, so any gunicorn worker can render any result without shared state.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app import artifacts, config
from app.artifacts import ArtifactError

if TYPE_CHECKING:  # pragma: no cover
    from app.artifacts import EmbeddingsRun
    from app.ml.inference import ModelService

log = logging.getLogger(__name__)

#: Longest side of a computed image sent to the browser (bigger ones are downscaled).
DISPLAY_MAX_SIDE = 768


# --------------------------------------------------------------------------- the model


@dataclass
class ModelInfo:
    """The model a page uses for a run, or why there is none."""

    service: ModelService | None
    run_id: str | None
    message: str = ""  # why there is no model (shown instead of the page's results)
    warning: str = ""  # the model differs from the one the embeddings were made with

    @property
    def ok(self) -> bool:
        return self.service is not None


def model_run_for(run: EmbeddingsRun | None) -> str | None:
    """The model run to use with ``run`` (see the module docstring), or None."""
    from app.web import state

    available = set(artifacts.list_runs(config.MODEL_STORE))
    candidates = (state.model_run(), run.model_run if run is not None else None,
                  config.DEMO_MODEL_RUN)
    for candidate in candidates:
        if candidate and candidate in available:
            return str(candidate)
    return None


def model_for(run: EmbeddingsRun | None) -> ModelInfo:
    """The loaded model for ``run`` (loading it on first use), or a message saying why not."""
    from app.ml import inference

    run_id = model_run_for(run)
    if run_id is None:
        wanted = run.model_run if run is not None else config.DEMO_MODEL_RUN
        return ModelInfo(None, None, message=(
            f"No model run {wanted!r} in {config.MODEL_STORE}. Train one with "
            "`python -m app train`, or start the dashboard with `--model-run <id>`."))
    service = inference.get_service(run_id)
    try:
        sha = service.sha256  # loads the model (hash-checked) on first use
    except (ArtifactError, OSError, ValueError) as exc:
        return ModelInfo(None, run_id, message=f"Cannot load model run {run_id!r}: {exc}")
    warning = ""
    if run is not None:
        expected = run.manifest.get("model_sha256")
        if run_id != run.model_run or (expected and expected != sha):
            warning = (f"Embeddings run {run.run_id} was made with model {run.model_run} "
                       f"({str(expected)[:10]}…); this page runs model {run_id} ({sha[:10]}…), "
                       "so maps and vectors may not match its outputs.")
    return ModelInfo(service, run_id, warning=warning)


def start_warm_up() -> threading.Thread | None:
    """Warm the default run's model (``ModelService.warm_up``) and its reducers in a daemon
    thread, so the first Grad-CAM or upload does not pay for graph tracing or numba's JIT. Off
    with ``UNET_LENS_WARM_UP=0``.

    Failures are logged, never raised: the pages report a missing or broken model themselves.
    """
    if not config.WARM_UP:
        return None

    def work() -> None:
        from app.web import state

        try:
            started = time.perf_counter()
            run = state.get_run(state.default_run_id())
            info = model_for(run)  # loads the model
            if info.service is None:
                log.warning("warm-up skipped: %s", info.message)
                return
            timings = {"load": time.perf_counter() - started, **{
                k: v for k, v in info.service.warm_up().items() if k != "load"}}
            if run is not None and len(run.vectors):
                # Load the reducers and compile their transforms (UMAP's numba JIT alone is
                # ~10 s): the first upload's "place on the maps" then costs what later ones do.
                from app.ml.apply import place_new

                started = time.perf_counter()
                place_new(run, np.asarray(run.vectors[0], dtype=np.float32))
                timings["reducers"] = time.perf_counter() - started
            log.info("model %s warm: %s", info.run_id,
                     ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
        except Exception:  # noqa: BLE001 - a warm-up must never take the server down
            log.exception("model warm-up failed")

    thread = threading.Thread(target=work, name="model-warm-up", daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------- stored tiles


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


_datasets: dict[str, Any] = {}
_datasets_lock = threading.Lock()


def tile_dataset(run: EmbeddingsRun) -> Any | None:
    """The run's source dataset when it is on disk (lossless tiles, full-resolution masks)."""
    name = (run.manifest.get("dataset") or {}).get("path")
    if not name or not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = config.DATASETS_DIR / name
    key = str(path)
    with _datasets_lock:
        if key not in _datasets:
            from app.data.base import DatasetError
            from app.data.dataset import TileDataset

            try:
                _datasets[key] = TileDataset.open(path) if path.is_dir() else None
            except DatasetError as exc:
                log.info("dataset %s not usable: %s", path, exc)
                _datasets[key] = None
        return _datasets[key]


def tile_image(run: EmbeddingsRun, tile_id: str) -> np.ndarray | None:
    """(H, W, 3) uint8 pixels of a stored tile: the dataset's PNG when available, else the
    run's full-size JPEG, else its thumbnail; None for an unknown id."""
    if tile_id not in run.index:
        return None
    dataset = tile_dataset(run)
    if dataset is not None:
        try:
            return dataset.image(tile_id)
        except (KeyError, OSError, ValueError):
            pass
    for kind in ("image", "thumb"):
        path = run.file_for(kind, tile_id)
        if path is not None:
            return _read_rgb(path)
    return None


def tile_truth(run: EmbeddingsRun, tile_id: str) -> np.ndarray | None:
    """(h, w) bool ground truth of a stored tile: full resolution from the dataset when it is
    on disk, else the run's stored mask (thumbnail size); None without truth."""
    if tile_id not in run.index:
        return None
    dataset = tile_dataset(run)
    if dataset is not None:
        try:
            mask = dataset.mask(tile_id)
            if mask is not None:
                return mask.astype(bool)
        except (KeyError, OSError, ValueError):
            pass
    path = run.file_for("true", tile_id)
    return _read_mask(path) if path is not None else None


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (h, w)."""
    from PIL import Image

    if mask.shape == tuple(shape):
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(im.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 127


def resize_prob(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average (shrink) or bilinear (grow) resize of a probability map to (h, w)."""
    from PIL import Image

    if prob.shape == tuple(shape):
        return prob.astype(np.float32)
    im = Image.fromarray(prob.astype(np.float32), mode="F")
    shrink = shape[0] < prob.shape[0]
    out = im.resize((shape[1], shape[0]),
                    Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


# --------------------------------------------------------------------------- computed images


def _lut(name: str) -> np.ndarray:
    """A (256, 3) uint8 lookup table from a plotly sequential colour scale."""
    import plotly.colors as pc

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
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    out[m & ~inner] = colour
    return np.clip(out, 0, 255).astype(np.uint8)


def fit_display(arr: np.ndarray, max_side: int = DISPLAY_MAX_SIDE, nearest: bool = False) -> np.ndarray:
    """Downscale an image array so its longer side is at most ``max_side``."""
    from PIL import Image

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
    from PIL import Image

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
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L").save(
        buf, "PNG", optimize=True)
    return buf.getvalue()


def timing_text(ms: float, device: str, cached: bool, compute_ms: float | None = None) -> str:
    """"computed in 123 ms (CPU)" or "from cache in 0.4 ms (computed in 123 ms on CPU)"."""
    if cached:
        extra = f" (computed in {compute_ms:,.0f} ms on {device})" if compute_ms is not None else ""
        return f"from cache in {ms:,.1f} ms{extra}"
    return f"computed in {ms:,.0f} ms ({device})"


__all__ = [
    "DISPLAY_MAX_SIDE", "ModelInfo", "colourise", "data_uri", "fit_display", "heat_rgba",
    "mask_overlay", "model_for", "model_run_for", "png_bytes", "resize_mask", "resize_prob",
    "tile_dataset", "tile_image", "tile_truth", "timing_text",
]
