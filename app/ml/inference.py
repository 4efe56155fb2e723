"""Run the stored U-Net on new images: tiles, any-size images, explanations, embeddings and two
classical baselines. Plain Python (no Dash, no Flask); TensorFlow is imported on first use, so
importing this module (the dashboard's pages do) stays cheap.

- :class:`ModelService` holds one loaded Keras model per process (``get_service`` keeps one per
  model run), loaded lazily under a lock with ``artifacts.load_model`` (hash-checked,
  ``safe_mode``, no compile). Its ``sha256`` is the model file's (or, for an in-memory model, a
  hash of its weights) and keys every cached result.
- :meth:`ModelService.segment_large` tiles an image of any size with overlap and stitches the
  tiles' probabilities with a raised-cosine blending window (weights never reach 0, and every
  pixel is divided by the sum of its weights), so there are no seams. Tile origins are
  multiples of 16, the U-Net's pooling factor, so each tile sees the same pooling grid as the
  whole image would. Images are padded (reflect) to a multiple of 16; an image that fits in one
  tile, or in ``config.SINGLE_PASS_MAX_PIXELS`` (1024² by default), is predicted in one
  whole-image pass (no seams at all, and at 1024² half the work of 25 overlapping tiles).
- :meth:`ModelService.warm_up` traces the forward and Grad-CAM graphs once, so the first
  request of a served dashboard costs what every later new image costs.
- :func:`otsu_baseline` and :func:`kmeans_colour_baseline` are the classical baselines shown
  beside the U-Net.
- Results are cached in an **in-process LRU** (:data:`RESULTS`, bounded in bytes) keyed by
  ``(model sha256, image sha256, method, layer, target, params)``. In-process because the values
  are large numpy arrays tied to the model loaded in this process (pickling them to the shared
  flask-caching store would cost about what recomputing a tile costs); each gunicorn worker has
  its own.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from app import artifacts, config
from app.ml import registry

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from app.artifacts import EmbeddingsRun
    from app.ml.explain import CamResult

__all__ = [
    "RESULTS",
    "SIZE_FACTOR",
    "ExplainOutcome",
    "ModelService",
    "ResultCache",
    "blend_window",
    "forget_services",
    "get_service",
    "image_sha256",
    "kmeans_colour_baseline",
    "otsu_baseline",
    "pad_to_multiple",
    "resize_rgb",
    "tile_origins",
]

#: Spatial divisor of the U-Net (2**depth): inputs are padded to a multiple of it.
SIZE_FACTOR = 16



# --------------------------------------------------------------------------- result cache


class ResultCache:
    """Thread-safe LRU of computed results, bounded by the total bytes of their arrays."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> tuple[bool, Any]:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return True, self._data[key][0]
            self.misses += 1
            return False, None

    def put(self, key: Hashable, value: Any) -> None:
        size = _nbytes(value)
        if size > self.max_bytes:
            return  # never evict everything for one giant value
        with self._lock:
            if key in self._data:
                self._bytes -= self._data.pop(key)[1]
            self._data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._data:
                _, (_, old) = self._data.popitem(last=False)
                self._bytes -= old

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """``(value, hit)``: the cached value, or ``compute()`` stored under ``key``."""
        hit, value = self.get(key)
        if hit:
            return value, True
        value = compute()
        self.put(key, value)
        return value, False

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


def _nbytes(value: Any, depth: int = 0) -> int:
    """Approximate memory of a result (arrays counted exactly, the rest ~64 bytes)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if depth > 3:
        return 64
    if isinstance(value, dict):
        return 64 + sum(_nbytes(v, depth + 1) for v in value.values())
    if isinstance(value, list | tuple):
        return 64 + sum(_nbytes(v, depth + 1) for v in value)
    if hasattr(value, "__dict__"):
        return 64 + sum(_nbytes(v, depth + 1) for v in vars(value).values())
    return 64


#: The process's result cache (Grad-CAM maps, stitched probabilities, embeddings, baselines).
RESULTS = ResultCache()


def image_sha256(image: np.ndarray) -> str:
    """SHA-256 of an image's pixels, shape and dtype (the cache's image key)."""
    arr = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{arr.shape}|{arr.dtype}|".encode())
    digest.update(memoryview(arr).cast("B"))
    return digest.hexdigest()


def _freeze(params: dict[str, Any] | None) -> tuple:
    """A hashable, order-independent form of a parameter dict (for cache keys)."""
    out = []
    for key, value in sorted((params or {}).items()):
        if isinstance(value, np.ndarray):
            value = tuple(value.ravel().tolist())
        elif isinstance(value, list | tuple):
            value = tuple(float(v) if isinstance(v, float | np.floating) else v for v in value)
        elif isinstance(value, np.generic):
            value = value.item()
        out.append((key, value))
    return tuple(out)


# --------------------------------------------------------------------------- geometry


def pad_to_multiple(
    image: np.ndarray, multiple: int = SIZE_FACTOR, min_size: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """Pad (H, W[, C]) at the bottom and right by reflection to a multiple of ``multiple`` (and at
    least ``min_size``). numpy reflects repeatedly when the padding is longer than the side."""
    h, w = image.shape[:2]
    th = max(math.ceil(h / multiple) * multiple, min_size[0])
    tw = max(math.ceil(w / multiple) * multiple, min_size[1])
    if (th, tw) == (h, w):
        return image
    pad = [(0, th - h), (0, tw - w)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, mode="reflect")


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` (last one flush with the
    end). With ``length`` and ``stride`` multiples of 16 every origin is one too."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def blend_window(length: int, ramp: int) -> np.ndarray:
    """1-D raised-cosine window: rises over ``ramp`` pixels at each end, 1 in the middle, and
    strictly positive everywhere (so a pixel covered by one tile keeps its value exactly)."""
    w = np.ones(length, np.float32)
    ramp = int(min(max(ramp, 0), length // 2))
    if ramp:
        i = np.arange(ramp, dtype=np.float32)
        rise = 0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / ramp)
        w[:ramp] = rise
        w[length - ramp:] = rise[::-1]
    return w


def _as_rgb(image: object) -> np.ndarray:
    """(H, W, 3) array of 0..255 values from (H, W), (H, W, 1|3|4); dtype kept (uint8/float)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(
            "The 'image' parameter must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4). "
            f"Got {arr.shape} instead."
        )
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"The 'image' parameter must be numeric 0..255. Got dtype {arr.dtype}.")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"The 'image' parameter must not be empty. Got shape {arr.shape}.")
    return arr


# --------------------------------------------------------------------------- model service


@dataclass
class ExplainOutcome:
    """One explanation with where it came from: ``cached`` and the wall time of this call."""

    result: CamResult
    cached: bool
    ms: float  # this call (a lookup when cached)
    compute_ms: float  # the computation (the original one when cached)
    device: str
    notes: dict[str, Any] = field(default_factory=dict)


class ModelService:
    """One Keras model per process, loaded lazily and thread-safely, with cached inference.

    ``ModelService("demo-light")`` loads ``model_store/demo-light`` on first use;
    ``ModelService(model=m)`` wraps an in-memory model (tests).
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        store: Path | None = None,
        model: keras.Model | None = None,
        cache: ResultCache | None = None,
    ) -> None:
        if run_id is None and model is None:
            raise ValueError("The 'run_id' or 'model' parameter must be given.")
        self.run_id = run_id
        self.store = store
        self.cache = cache if cache is not None else RESULTS
        self._model = model
        self._sha: str | None = None
        self._manifest: dict | None = None
        self._lock = threading.Lock()
        self._forward: Any = None
        self.warmed = False

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        with self._lock:
            if self._model is not None and self._sha is not None:
                return
            if self._model is None:
                _, sha = artifacts.verify_model_file(self.run_id, self.store)
                manifest = artifacts.read_model_manifest(self.run_id, self.store)
                model = artifacts.load_model(self.run_id, self.store)
                self._manifest, self._sha, self._model = manifest, sha, model
            else:
                self._sha = _weights_sha256(self._model)

    @property
    def model(self) -> keras.Model:
        """The Keras model (loaded on first access)."""
        if self._model is None or self._sha is None:
            self._load()
        return self._model

    @property
    def cache_id(self) -> str:
        """What keys this model's cached results: its ``sha256``, and for an imported run also
        its adapter (one file imported twice with other settings gives other results)."""
        adapter = self.manifest.get("adapter") if self.run_id is not None else None
        if not adapter:
            return self.sha256
        blob = json.dumps(adapter, sort_keys=True, default=str)
        return hashlib.sha256(f"{self.sha256}|{blob}".encode()).hexdigest()

    @property
    def sha256(self) -> str:
        """The model file's SHA-256 (or a hash of an in-memory model's weights)."""
        if self._sha is None:
            self._load()
        return str(self._sha)

    @property
    def loaded(self) -> bool:
        return self._model is not None and self._sha is not None

    @property
    def manifest(self) -> dict:
        if self._manifest is None and self.run_id is not None and self._model is None:
            self._load()
        return self._manifest or {}

    @property
    def device(self) -> str:
        """"GPU" when TensorFlow sees one, else "CPU"."""
        return _device()

    @property
    def default_layer(self) -> str:
        """The layer embeddings and Grad-CAM use unless told otherwise: an imported model's
        ``embedding_layer`` (its deepest spatial layer, or the one the user chose), else
        ``bottleneck``."""
        if self.run_id is None and self._model is not None:  # in-memory model (tests)
            from app.ml.adapter import lens_info  # lazy: TensorFlow

            info = lens_info(self._model)
            return info.default_layer if info is not None else "bottleneck"
        return artifacts.model_default_layer(self.manifest)

    def conv_layers(self) -> list[str]:
        """Layer names offered for explanations (enc*, bottleneck, dec*, logits; an imported
        model's candidate layers, then logits)."""
        from app.ml.unet import named_conv_layers  # lazy: unet imports keras (TensorFlow)

        return named_conv_layers(self.model)

    def channels(self, layer: str) -> int:
        """Number of channels of a named layer's output."""
        return int(self.model.get_layer(layer).output.shape[-1])

    # ------------------------------------------------------------------ prediction
    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) float32 → (B, H, W) float32 probabilities, one traced graph."""
        if self._forward is None:
            import tensorflow as tf  # lazy: importing this module must not load TensorFlow

            model = self.model
            with self._lock:
                if self._forward is None:
                    self._forward = tf.function(
                        lambda t: model(t, training=False),
                        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
                        reduce_retracing=True,
                    )
        out = self._forward(np.ascontiguousarray(batch, dtype=np.float32))
        return np.asarray(out)[..., 0].astype(np.float32)

    def predict_tile(self, image: object, *, use_cache: bool = True) -> np.ndarray:
        """Probability map (H, W) float32 of one image in one pass (padded to /16, cropped)."""
        arr = _as_rgb(image)
        h, w = arr.shape[:2]

        def compute() -> np.ndarray:
            padded = pad_to_multiple(arr)
            return np.ascontiguousarray(
                self.predict_batch(padded[None].astype(np.float32))[0, :h, :w])

        if not use_cache:
            return compute()
        key = (self.cache_id, image_sha256(arr), "predict", "", "", ())
        prob, _ = self.cache.get_or_compute(key, compute)
        return prob

    def segment_large(self, image: object, *args: Any, **kwargs: Any) -> np.ndarray:
        """Probability map (H, W) float32 of an image of any size, tiled and seamlessly stitched:
        :meth:`segment`'s map without the cache flag (same parameters)."""
        prob, _ = self.segment(image, *args, **kwargs)
        return prob

    def segment(
        self,
        image: object,
        tile: int = 256,
        overlap: int = 32,
        *,
        batch_size: int = 4,
        progress: Callable[[int, int], object] | None = None,
        use_cache: bool = True,
        single_pass_max_pixels: int | None = None,
    ) -> tuple[np.ndarray, bool]:
        """(probability map (H, W) float32 of an image of any size, tiled and seamlessly
        stitched; whether it came from the cache).

        ``tile`` must be a positive multiple of 16; the stride ``tile - overlap`` is rounded
        down to a multiple of 16 (so the effective overlap may grow by < 16 pixels).
        ``progress(done, total)`` is called after each batch of tiles. An image of at most
        ``single_pass_max_pixels`` padded pixels (default ``config.SINGLE_PASS_MAX_PIXELS``; 0
        always tiles) is predicted in one pass instead.
        """
        arr = _as_rgb(image)
        if single_pass_max_pixels is None:
            single_pass_max_pixels = config.SINGLE_PASS_MAX_PIXELS
        if (isinstance(single_pass_max_pixels, bool) or not isinstance(single_pass_max_pixels, int)
                or single_pass_max_pixels < 0):
            raise ValueError("The 'single_pass_max_pixels' parameter must be an int >= 0. "
                             f"Got {single_pass_max_pixels!r} instead.")
        if isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0 or tile % SIZE_FACTOR:
            raise ValueError(
                f"The 'tile' parameter must be a positive multiple of {SIZE_FACTOR}. "
                f"Got {tile!r} instead."
            )
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
            raise ValueError(
                f"The 'overlap' parameter must be an int in [0, {tile - 1}]. Got {overlap!r}."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"The 'batch_size' parameter must be an int >= 1. Got {batch_size!r}.")
        stride = max(SIZE_FACTOR, (tile - overlap) // SIZE_FACTOR * SIZE_FACTOR)

        padded_pixels = (math.ceil(arr.shape[0] / SIZE_FACTOR) * SIZE_FACTOR
                         * math.ceil(arr.shape[1] / SIZE_FACTOR) * SIZE_FACTOR)
        if padded_pixels <= single_pass_max_pixels:
            tile, stride = 0, 0  # one whole-image pass (the cache key says so)

        def compute() -> np.ndarray:
            if tile == 0:
                if progress is not None:
                    progress(0, 1)
                prob = self.predict_tile(arr, use_cache=False)
                if progress is not None:
                    progress(1, 1)
                return prob
            return self._segment(arr, tile, stride, batch_size, progress)

        if not use_cache:
            return compute(), False
        key = (self.cache_id, image_sha256(arr), "segment", "", "",
               _freeze({"tile": tile, "stride": stride}))
        return self.cache.get_or_compute(key, compute)

    def _segment(self, arr: np.ndarray, tile: int, stride: int, batch_size: int,
                 progress: Callable[[int, int], object] | None) -> np.ndarray:
        h, w = arr.shape[:2]
        padded = pad_to_multiple(arr)
        ph, pw = padded.shape[:2]
        if ph <= tile and pw <= tile:
            prob = self.predict_batch(padded[None].astype(np.float32))[0]
            if progress is not None:
                progress(1, 1)
            return np.ascontiguousarray(prob[:h, :w])
        th, tw = min(tile, ph), min(tile, pw)
        ys, xs = tile_origins(ph, th, stride), tile_origins(pw, tw, stride)
        ramp = tile - stride
        wy = blend_window(th, ramp if len(ys) > 1 else 0)
        wx = blend_window(tw, ramp if len(xs) > 1 else 0)
        weight = wy[:, None] * wx[None, :]
        acc = np.zeros((ph, pw), np.float32)
        norm = np.zeros((ph, pw), np.float32)
        origins = [(y, x) for y in ys for x in xs]
        total = len(origins)
        for start in range(0, total, batch_size):
            chunk = origins[start:start + batch_size]
            batch = np.stack([padded[y:y + th, x:x + tw] for y, x in chunk]).astype(np.float32)
            probs = self.predict_batch(batch)
            for (y, x), p in zip(chunk, probs, strict=True):
                acc[y:y + th, x:x + tw] += p * weight
                norm[y:y + th, x:x + tw] += weight
            if progress is not None:
                progress(min(start + batch_size, total), total)
        np.divide(acc, norm, out=acc, where=norm > 0)
        return np.ascontiguousarray(np.clip(acc[:h, :w], 0.0, 1.0))

    # ------------------------------------------------------------------ warm-up
    def warm_up(self, sizes: tuple[int, ...] = (256, 1024), layer: str | None = None) -> dict:
        """Load the model and trace the forward pass at each size and the Seg-Grad-CAM pass of
        ``layer`` once, on a grey image, caching nothing; returns seconds per step.

        A served dashboard calls this in a background thread at start, so the first person's
        first click pays what every new image pays (graph tracing and oneDNN's first-run
        set-up cost ~1-2 s on CPU) instead of several seconds.
        """
        from app.ml import explain as ex  # lazy: explain imports TensorFlow

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.sha256  # noqa: B018 - loads (and hash-checks) the model
        timings["load"] = time.perf_counter() - t0
        layer = layer or self.default_layer
        for size in sizes:
            t0 = time.perf_counter()
            self.predict_batch(np.full((1, size, size, 3), 128.0, np.float32))
            timings[f"predict_{size}"] = time.perf_counter() - t0
        small = min(sizes) if sizes else 256
        t0 = time.perf_counter()
        ex.seg_grad_cam(self.model, np.full((small, small, 3), 128, np.uint8), layer=layer,
                        target="image")
        timings[f"grad_cam_{small}"] = time.perf_counter() - t0
        self.warmed = True
        return timings

    # ------------------------------------------------------------------ explanations
    def explain(
        self,
        image: object,
        method: str = "seg-grad-cam",
        *,
        layer: str | None = None,
        target: str = "predicted",
        box: tuple[float, float, float, float] | None = None,
        pixel: tuple[float, float] | None = None,
        channel: int | None = None,
        threshold: float = 0.5,
        image_key: str | None = None,
    ) -> ExplainOutcome:
        """The map of registered explainer ``method`` (``app.ml.registry.EXPLAINERS``) of
        ``image`` (any size: padded to /16, maps cropped back), cached by (model, image, method,
        layer, target, params). What the method uses (a layer, a target, a channel) comes from
        its registry entry."""
        spec = registry.explainer(method)
        arr = _as_rgb(image)
        started = time.perf_counter()
        layer = layer or self.default_layer
        channel = channel if spec.uses_channel else None
        if not spec.uses_target:
            target = "channel" if spec.uses_channel else "mean"
            params: dict[str, Any] = {"channel": channel}
        else:
            params = {"threshold": round(float(threshold), 4)}
            if target == "box":
                params["box"] = tuple(round(float(v), 2) for v in (box or ()))
            elif target == "pixel":
                params["pixel"] = tuple(round(float(v), 2) for v in (pixel or ()))
        if not spec.uses_layer:
            layer = "image"
        key = (self.cache_id, image_key or image_sha256(arr), method, layer, target, _freeze(params))
        result, hit = self.cache.get_or_compute(
            key, lambda: self._explain(arr, spec, layer, target, box, pixel, channel, threshold)
        )
        ms = (time.perf_counter() - started) * 1000
        return ExplainOutcome(result=result, cached=hit, ms=ms,
                              compute_ms=float(result.seconds) * 1000, device=self.device)

    def _explain(self, arr: np.ndarray, spec: registry.ExplainerSpec, layer: str, target: str,
                 box: Any, pixel: Any, channel: int | None, threshold: float) -> CamResult:
        h, w = arr.shape[:2]
        padded = pad_to_multiple(arr).astype(np.float32)
        if (padded.shape[0], padded.shape[1]) != (h, w) and target == "image":
            target_used, box = "box", (0, 0, w, h)  # the whole image, not the padding
        else:
            target_used = target
        offered = {"layer": layer, "target": target_used, "box": box, "pixel": pixel,
                   "threshold": threshold, "channel": channel}
        if not spec.uses_layer:
            offered.pop("layer")
        if not spec.uses_target:
            for name in ("target", "box", "pixel", "threshold"):
                offered.pop(name)
        function = spec.callable()
        res = function(self.model, padded, **_declared(function, offered))
        if spec.uses_target:
            res.target = target
        return _crop_result(res, h, w)

    def activation_maximisation(
        self, layer: str, channel: int, *, size: int = 128, steps: int = 64,
        progress: Callable[[int, int], object] | None = None,
    ) -> np.ndarray:
        """Cached ``app.ml.explain.activation_maximisation`` image (size, size, 3) uint8."""
        from app.ml import explain as ex  # lazy: explain imports TensorFlow

        key = (self.cache_id, "", "activation-maximisation", layer, str(channel),
               _freeze({"size": size, "steps": steps}))
        image, _ = self.cache.get_or_compute(
            key, lambda: ex.activation_maximisation(
                self.model, layer=layer, channel=int(channel), size=size, steps=steps,
                progress=progress))
        return image

    # ------------------------------------------------------------------ embeddings
    def embed_image(self, image: object, run: EmbeddingsRun,
                    max_side: int = 1024) -> tuple[np.ndarray, dict[str, Any]]:
        """``(vector, notes)``: the image's vector in ``run``'s representation (its manifest's
        layer and representation, its projector for flatten), cached.

        gap / avgmax / spp runs see the whole image (padded to /16; downscaled to fit
        ``max_side`` first when larger); flatten runs need the run's tile size, so the image
        is resized to it. ``notes`` says what was done.
        """
        arr = _as_rgb(image)
        representation = str(run.manifest.get("representation", "gap"))
        notes: dict[str, Any] = {"representation": representation, "layer": run.layer}
        h, w = arr.shape[:2]
        if representation == "flatten":
            sizes = sorted({int(v) for v in run.tiles["size"]}) if "size" in run.tiles else []
            side = sizes[0] if sizes else 256
            if (h, w) != (side, side):
                arr = resize_rgb(arr, side, side)
                notes["resized"] = f"{w}x{h} → {side}x{side} (flatten needs the tile size)"
        elif max(h, w) > max_side:
            scale = max_side / max(h, w)
            nh, nw = max(SIZE_FACTOR, round(h * scale)), max(SIZE_FACTOR, round(w * scale))
            arr = resize_rgb(arr, nh, nw)
            notes["resized"] = f"{w}x{h} → {nw}x{nh}"
        if representation != "flatten":
            arr = pad_to_multiple(arr)
        key = (self.cache_id, image_sha256(arr), "embed", run.layer, representation,
               _freeze({"run": run.run_id, "dims": run.manifest.get("counts", {}).get("dims")}))

        def compute() -> np.ndarray:
            # lazy: apply pulls in pandas, scipy and scikit-learn, which pages need not load
            from app.ml.apply import embed_for_run

            vec, _ = embed_for_run(run, self.model, np.asarray(arr, dtype=np.uint8))
            return np.asarray(vec, dtype=np.float32)

        vec, _ = self.cache.get_or_compute(key, compute)
        return vec, notes


def _declared(function: Callable[..., Any], offered: dict[str, Any]) -> dict[str, Any]:
    """The keywords of ``offered`` that ``function`` declares (all of them for ``**kwargs``)."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return offered
    return {name: value for name, value in offered.items() if name in parameters}


def _crop_result(res: CamResult, h: int, w: int) -> CamResult:
    """Crop the image-sized maps of a result computed on a padded image back to (h, w)."""
    if res.heatmap.shape[:2] == (h, w):
        return res
    res.heatmap = np.ascontiguousarray(res.heatmap[:h, :w])
    res.prob = np.ascontiguousarray(res.prob[:h, :w])
    for name in ("rgb", "cam"):
        value = res.extra.get(name)
        if isinstance(value, np.ndarray) and value.ndim >= 2:
            res.extra[name] = np.ascontiguousarray(value[:h, :w])
    return res


def _weights_sha256(model: keras.Model) -> str:
    digest = hashlib.sha256(model.name.encode())
    for weight in model.weights:
        arr = np.ascontiguousarray(np.asarray(weight))
        digest.update(f"{weight.path}|{arr.shape}|{arr.dtype}".encode())
        digest.update(memoryview(arr).cast("B"))
    return digest.hexdigest()


_device_name: str | None = None


def _device() -> str:
    global _device_name
    if _device_name is None:
        import tensorflow as tf  # lazy: see predict_batch

        _device_name = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    return _device_name


_services: dict[tuple[str, str], ModelService] = {}
_services_lock = threading.Lock()


def get_service(run_id: str, store: Path | None = None) -> ModelService:
    """The process's :class:`ModelService` for a model run (created once, loaded lazily)."""
    artifacts.validate_run_id(run_id)
    root = Path(store or config.MODEL_STORE)
    key = (str(root), run_id)
    with _services_lock:
        service = _services.get(key)
        if service is None:
            service = ModelService(run_id, store=root)
            _services[key] = service
    return service


def forget_services() -> None:
    """Drop every loaded model (tests; a retrained model with the same id)."""
    with _services_lock:
        _services.clear()


# --------------------------------------------------------------------------- image helpers


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W, 3) 0..255 image to (height, width) uint8 (area when shrinking)."""
    arr = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
    pil = Image.fromarray(arr)
    shrink = height < arr.shape[0] or width < arr.shape[1]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(pil.resize((int(width), int(height)), method))


# --------------------------------------------------------------------------- baselines


def _clean(mask: np.ndarray, min_area: int = 10) -> np.ndarray:
    """Open by a 3x3 square and drop components under ``min_area`` pixels (speckle)."""
    from scipy import ndimage as ndi  # lazy: ~0.5 s to import; only the baselines need it

    opened = ndi.binary_opening(mask, structure=np.ones((3, 3), bool))
    labels, n = ndi.label(opened)
    if n == 0:
        return opened
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    return keep[labels]


def otsu_baseline(image: object, *, min_area: int = 10) -> np.ndarray:
    """(H, W) bool "building" mask: the brighter class of Otsu's threshold on the luminance,
    opened and cleaned of specks. Roofs are mostly brighter than vegetation, soil and shadow,
    so this is the classic one-line segmentation a learned model must beat."""
    from skimage.filters import threshold_otsu  # lazy: scikit-image takes ~1 s to import

    arr = _as_rgb(image).astype(np.float32)
    gray = arr @ np.array([0.299, 0.587, 0.114], np.float32)
    if float(gray.max()) - float(gray.min()) < 1e-6:
        return np.zeros(gray.shape, bool)
    return _clean(gray > threshold_otsu(gray), min_area)


def kmeans_colour_baseline(
    image: object, k: int = 4, random_state: int = 0, *, sample: int = 20_000, min_area: int = 10
) -> np.ndarray:
    """(H, W) bool "building" mask from K-means on the pixels' CIELAB colours.

    ``k`` clusters are fitted on a seeded sample of at most ``sample`` pixels, every pixel
    takes its nearest centre, and the building cluster is the one whose centre is the
    brightest and least saturated (largest ``L* - chroma``: roofs and concrete are pale and
    grey, vegetation, water and soil are darker or coloured). Cleaned like :func:`otsu_baseline`.
    """
    from skimage.color import rgb2lab  # lazy: see otsu_baseline
    from sklearn.cluster import KMeans  # lazy: pages import this module; only Segment needs it

    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"The 'k' parameter must be an int >= 2. Got {k!r} instead.")
    arr = _as_rgb(image)
    h, w = arr.shape[:2]
    lab = rgb2lab(np.clip(arr, 0, 255).astype(np.uint8)).reshape(-1, 3).astype(np.float32)
    rng = np.random.default_rng(random_state)
    rows = rng.choice(lab.shape[0], sample, replace=False) if lab.shape[0] > sample else None
    fit_on = lab if rows is None else lab[rows]
    n_clusters = int(min(k, len(np.unique(fit_on.round(1), axis=0))))
    if n_clusters < 2:
        return np.zeros((h, w), bool)
    km = KMeans(n_clusters=n_clusters, n_init=3, random_state=random_state).fit(fit_on)
    centres = km.cluster_centers_.astype(np.float32)
    labels = np.empty(lab.shape[0], np.int32)
    step = 1 << 18
    c2 = (centres**2).sum(axis=1)
    for start in range(0, lab.shape[0], step):
        chunk = lab[start:start + step]
        labels[start:start + step] = np.argmin(c2[None, :] - 2 * chunk @ centres.T, axis=1)
    chroma = np.hypot(centres[:, 1], centres[:, 2])
    building = int(np.argmax(centres[:, 0] - chroma))
    return _clean((labels == building).reshape(h, w), min_area)
