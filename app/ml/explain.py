"""Explanations for the building-segmentation U-Net: Seg-Grad-CAM, Grad-CAM++, activations,
saliency, guided Grad-CAM and activation maximisation.

Every function takes one image (H, W, 3) in 0..255 (uint8 or float), exactly what the model
eats, and never mutates the model it is given. Gradients come from eager ``tf.GradientTape``
over a multi-output model ``[layer activations, logits]`` built once per (model, layer) and
cached weakly per model (:func:`explain_model`), so repeated clicks in the UI do not rebuild
graphs and dropping a model frees its cache.

Targets (what is explained) follow Seg-Grad-CAM (Vinogradova et al., 2020, "Towards
Interpretable Semantic Segmentation via Gradient-weighted Class Activation Mapping"): the
score is ``y = sum of the building logits over a region R`` where R is

- ``"predicted"``: pixels with ``prob >= threshold`` (the rule ``app.ml.metrics`` uses);
- ``"image"``: the whole image;
- ``"box"``: ``box=(x0, y0, x1, y1)`` in image pixels, x = column, y = row, half-open
  ``[x0, x1) x [y0, y1)``; float corners are widened to whole pixels, reversed corners sorted;
- ``"pixel"``: ``pixel=(x, y)``, a single clicked pixel.

Maps are normalised to [0, 1] by their maximum only when it is meaningfully above zero;
otherwise the heatmap is all zeros, ``empty=True`` and ``message`` says why and what to try.
Nothing returns NaN.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from scipy.ndimage import gaussian_filter

from app.ml.unet import named_conv_layers

__all__ = [
    "CamResult",
    "TARGETS",
    "activation_map",
    "activation_maximisation",
    "clear_cache",
    "explain_model",
    "grad_cam_pp",
    "guided_grad_cam",
    "saliency",
    "seg_grad_cam",
]

TARGETS: tuple[str, ...] = ("predicted", "image", "box", "pixel")

_LOGITS = "logits"
_EPS = 1e-12  # absolute floor; see _safe_max_normalise for the relative one

# model -> {key: derived keras.Model}. Weak keys: models are unhashable by value, ``id`` can be
# reused after garbage collection, and the derived models do not keep the original alive.
_CACHE: weakref.WeakKeyDictionary[keras.Model, dict[tuple, keras.Model]] = (
    weakref.WeakKeyDictionary()
)
_CACHE_LOCK = threading.RLock()


@dataclass
class CamResult:
    """One explanation map plus what the UI needs to caption it."""

    heatmap: np.ndarray  # (H, W) float32 in [0, 1], image resolution
    raw: np.ndarray  # map at the layer's resolution, not normalised (diagnostics, tests)
    prob: np.ndarray  # (H, W) float32 predicted building probability
    empty: bool  # True: nothing to show (heatmap all zeros), see ``message``
    message: str  # why the map is empty, or ""
    method: str  # "seg-grad-cam", "grad-cam++", "activation", "saliency", "guided-grad-cam"
    layer: str
    target: str
    seconds: float  # wall time of the call
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. region size, box, guided RGB


# --------------------------------------------------------------------------- model plumbing


def clear_cache(model: keras.Model | None = None) -> None:
    """Forget derived models (all, or one model's), e.g. after replacing layers in place."""
    with _CACHE_LOCK:
        if model is None:
            _CACHE.clear()
        else:
            _CACHE.pop(model, None)


def _cached(model: keras.Model, key: tuple, build: Callable[[], keras.Model]) -> keras.Model:
    with _CACHE_LOCK:
        per_model = _CACHE.setdefault(model, {})
        if key not in per_model:
            per_model[key] = build()
        return per_model[key]


def _model_input(model: keras.Model):
    if len(model.inputs) != 1:
        raise ValueError(
            f"The 'model' parameter must have exactly one input. Got {len(model.inputs)} instead."
        )
    return model.inputs[0]


def _spatial_layer_names(model: keras.Model) -> list[str]:
    return [
        lyr.name
        for lyr in model.layers
        if not isinstance(lyr, layers.InputLayer) and len(getattr(lyr.output, "shape", ())) == 4
    ]


def _get_layer(model: keras.Model, layer: str) -> layers.Layer:
    names = _spatial_layer_names(model)
    if not isinstance(layer, str) or layer not in names:
        suggested = named_conv_layers(model) or names
        raise ValueError(
            f"The 'layer' parameter must be one of {suggested} (or another 4-D layer of the "
            f"model). Got {layer!r} instead."
        )
    return model.get_layer(layer)


def _logits_layer(model: keras.Model) -> layers.Layer:
    try:
        return model.get_layer(_LOGITS)
    except ValueError:
        raise ValueError(
            "The 'model' parameter must have a layer named 'logits' (the pre-sigmoid output); "
            f"model {model.name!r} has none."
        ) from None


def explain_model(model: keras.Model, layer: str) -> keras.Model:
    """Cached ``keras.Model`` mapping the image to ``[activations of layer, logits]``.

    Shares the original layers (and so always its current weights) without modifying them.
    """
    _get_layer(model, layer)
    _logits_layer(model)

    def build() -> keras.Model:
        return keras.Model(
            _model_input(model),
            [model.get_layer(layer).output, model.get_layer(_LOGITS).output],
            name=f"{model.name}_explain_{layer}",
        )

    return _cached(model, ("explain", layer), build)


def _activation_model(model: keras.Model, layer: str) -> keras.Model:
    """Image -> activations only: activation maximisation need not run the decoder."""
    _get_layer(model, layer)
    return _cached(
        model,
        ("activation", layer),
        lambda: keras.Model(
            _model_input(model), model.get_layer(layer).output, name=f"{model.name}_act_{layer}"
        ),
    )


def _size_factor(model: keras.Model) -> int:
    """Spatial divisor a fully convolutional model needs (product of pooling strides); 1 for
    an imported model's canonical wrapper, which pads or resizes inside."""
    from app.ml.adapter import lens_info

    if lens_info(model) is not None:
        return 1
    factor = 1
    for lyr in model.layers:
        if isinstance(lyr, layers.MaxPooling2D | layers.AveragePooling2D):
            factor *= int(lyr.strides[0])
    return factor


def _check_size(model: keras.Model, height: int, width: int, what: str = "image") -> None:
    shape = tuple(_model_input(model).shape)
    want_h, want_w = shape[1], shape[2]
    if (want_h is not None and want_h != height) or (want_w is not None and want_w != width):
        raise ValueError(
            f"The '{what}' parameter must be {want_h}x{want_w} pixels for model "
            f"{model.name!r}. Got {height}x{width} instead."
        )
    factor = _size_factor(model)
    if height % factor or width % factor:
        raise ValueError(
            f"The '{what}' parameter must have height and width divisible by {factor} for "
            f"model {model.name!r}. Got {height}x{width} instead."
        )


def _prepare_image(model: keras.Model, image: object) -> tf.Tensor:
    """(H, W[, C]) 0..255 -> float32 (1, H, W, C) matching the model's channels."""
    arr = np.asarray(image)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(
            f"The 'image' parameter must be a numeric array in 0..255. Got dtype {arr.dtype}."
        )
    channels = int(_model_input(model).shape[-1])
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(
            "The 'image' parameter must be one image of shape (H, W) or (H, W, C). "
            f"Got shape {np.asarray(image).shape} instead."
        )
    if arr.shape[-1] == 1 and channels > 1:
        arr = np.repeat(arr, channels, axis=-1)
    elif arr.shape[-1] == 4 and channels == 3:
        arr = arr[..., :3]  # drop alpha
    if arr.shape[-1] != channels:
        raise ValueError(
            f"The 'image' parameter must have {channels} channels for model {model.name!r}. "
            f"Got shape {np.asarray(image).shape} instead."
        )
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("The 'image' parameter must not contain NaN or infinite values.")
    _check_size(model, arr.shape[0], arr.shape[1])
    return tf.convert_to_tensor(arr[None])


# --------------------------------------------------------------------------- targets


def _region(target: str, box: object, pixel: object, height: int, width: int) -> np.ndarray | None:
    """Float32 (H, W) 0/1 target mask; None for "predicted" (known only after the forward)."""
    if target not in TARGETS:
        raise ValueError(
            f"The 'target' parameter must be one of {list(TARGETS)}. Got {target!r} instead."
        )
    if target == "predicted":
        return None
    region = np.zeros((height, width), dtype=np.float32)
    if target == "image":
        region[:] = 1.0
    elif target == "box":
        ok = box is not None and np.shape(box) == (4,)
        vals = np.asarray(box, dtype=float) if ok else None
        if not ok or not np.all(np.isfinite(vals)):
            raise ValueError(
                "The 'box' parameter must be (x0, y0, x1, y1) in image pixels when "
                f"target='box'. Got {box!r} instead."
            )
        x0, x1 = sorted(vals[[0, 2]])
        y0, y1 = sorted(vals[[1, 3]])
        c0, r0 = max(math.floor(x0), 0), max(math.floor(y0), 0)
        c1 = min(max(math.ceil(x1), math.floor(x0) + 1), width)  # at least one pixel wide
        r1 = min(max(math.ceil(y1), math.floor(y0) + 1), height)
        if c0 >= c1 or r0 >= r1:
            raise ValueError(
                f"The 'box' parameter must overlap the {width}x{height} image. Got {box!r} instead."
            )
        region[r0:r1, c0:c1] = 1.0
    else:  # pixel
        ok = pixel is not None and np.shape(pixel) == (2,)
        vals = np.asarray(pixel, dtype=float) if ok else None
        if not ok or not np.all(np.isfinite(vals)):
            raise ValueError(
                "The 'pixel' parameter must be (x, y) in image pixels when target='pixel'. "
                f"Got {pixel!r} instead."
            )
        col, row = math.floor(vals[0]), math.floor(vals[1])
        if not (0 <= col < width and 0 <= row < height):
            raise ValueError(
                f"The 'pixel' parameter must lie inside the {width}x{height} image. "
                f"Got {pixel!r} instead."
            )
        region[row, col] = 1.0
    return region


class _Pass(NamedTuple):
    acts: np.ndarray  # (h, w, K) float32 activations of the layer
    grads: np.ndarray  # (h, w, K) float32 d y / d activations
    prob: np.ndarray  # (H, W) float32
    region: np.ndarray  # (H, W) float32 0/1


def _check_threshold(threshold: object) -> float:
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, Real)
        or not 0.0 <= float(threshold) <= 1.0
    ):
        raise ValueError(
            f"The 'threshold' parameter must be a float in [0, 1]. Got {threshold!r} instead."
        )
    return float(threshold)


def _region_score_fn(forward: Callable, channels: int, key: tuple, model: keras.Model,
                     wrt_input: bool) -> Callable:
    """Cached ``tf.function`` of one forward + backward pass for the region score
    ``sum(logits * R)``, R the fixed target or, when ``use_fixed`` is false, ``prob >= t``.

    Traced once per (model, layer) for any image size (``[1, None, None, C]``): eager Keras
    dispatches every layer op from Python, which costs more than the arithmetic at 256².
    Returns (activations or None, gradient w.r.t. activations or the input, prob, region).
    """

    def build() -> Callable:
        @tf.function(
            input_signature=[
                tf.TensorSpec([1, None, None, channels], tf.float32),
                tf.TensorSpec([None, None], tf.float32),
                tf.TensorSpec([], tf.bool),
                tf.TensorSpec([], tf.float32),
            ],
            reduce_retracing=True,
        )
        def run(x, fixed, use_fixed, threshold):
            with tf.GradientTape() as tape:
                tape.watch(x)  # records the graph even for frozen (non-trainable) models
                out = forward(x)
                acts, logits = (None, out) if wrt_input else out
                logits = tf.cast(logits[0, ..., 0], tf.float32)
                prob = tf.sigmoid(logits)
                region = tf.where(use_fixed, fixed, tf.cast(prob >= threshold, tf.float32))
                score = tf.reduce_sum(logits * region)
            source = x if wrt_input else acts
            grads = tape.gradient(score, source,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return (tf.zeros([0]) if wrt_input else tf.cast(acts[0], tf.float32),
                    tf.cast(grads[0], tf.float32), prob, region)

        return run

    return _cached(model, key, build)


def _run_region_pass(fn: Callable, x: tf.Tensor, fixed: np.ndarray | None,
                     threshold: float) -> tuple[np.ndarray, ...]:
    height, width = int(x.shape[1]), int(x.shape[2])
    region_in = np.zeros((height, width), np.float32) if fixed is None else fixed
    acts, grads, prob, region = fn(
        x, tf.constant(region_in, tf.float32), tf.constant(fixed is not None),
        tf.constant(threshold, tf.float32),
    )
    return acts.numpy(), grads.numpy(), prob.numpy(), region.numpy()


def _target_pass(
    model: keras.Model,
    image: object,
    layer: str,
    target: str,
    box: object,
    pixel: object,
    threshold: object,
) -> _Pass:
    """One forward + backward: activations of ``layer`` and d(sum of logits over R)/d them."""
    threshold = _check_threshold(threshold)
    sub = explain_model(model, layer)
    x = _prepare_image(model, image)
    fixed = _region(target, box, pixel, int(x.shape[1]), int(x.shape[2]))
    fn = _region_score_fn(lambda t: sub(t, training=False), int(x.shape[-1]),
                          ("explain-pass", layer), model, wrt_input=False)
    acts, grads, prob, region = _run_region_pass(fn, x, fixed, threshold)
    return _Pass(acts, grads, prob, region.astype(np.float32))


def _upsample(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (half-pixel centres) resize of an (h, w) map to the image size."""
    if cam.shape == (height, width):
        return cam.astype(np.float32)
    out = tf.image.resize(cam[None, ..., None].astype(np.float32), (height, width), "bilinear")
    return out.numpy()[0, ..., 0]


def _safe_max_normalise(cam: np.ndarray, scale: float) -> tuple[np.ndarray, bool]:
    """``cam / max`` when the max is above round-off of the terms (``scale``); else zeros."""
    peak = float(np.max(cam)) if cam.size else 0.0
    if not np.isfinite(peak) or peak <= max(_EPS, 1e-6 * scale):
        return np.zeros(cam.shape, dtype=np.float32), True
    return np.clip(cam / peak, 0.0, 1.0).astype(np.float32), False


def _empty_target_message(threshold: float) -> str:
    return (
        f"No predicted building pixels in this tile (threshold {threshold:.2f}): the "
        "Seg-Grad-CAM target is empty. Pick 'whole image', a box or a pixel."
    )


def _zero_map_message(method: str, layer: str) -> str:
    return (
        f"The {method} map is zero everywhere at layer '{layer}': the layer holds no positive "
        "evidence for this target. Try another layer or target."
    )


def _cam_from_weights(
    p: _Pass,
    weights: np.ndarray,
    *,
    method: str,
    layer: str,
    target: str,
    threshold: float,
    started: float,
    extra: dict[str, Any],
) -> CamResult:
    """ReLU(sum_k w_k A^k), upsampled and safely normalised, packed as a CamResult."""
    terms = p.acts * weights[None, None, :]
    raw = np.maximum(terms.sum(axis=-1), 0.0).astype(np.float32)
    height, width = p.prob.shape
    region_pixels = int(p.region.sum())
    extra = {"region_pixels": region_pixels, **extra}
    if region_pixels == 0:
        heatmap, empty = np.zeros((height, width), np.float32), True
        message = _empty_target_message(threshold)
    else:
        _, empty = _safe_max_normalise(raw, float(np.abs(terms).sum(axis=-1).max(initial=0.0)))
        heatmap = np.zeros((height, width), np.float32)
        if not empty:
            heatmap, empty = _safe_max_normalise(_upsample(raw, height, width), 0.0)
        message = _zero_map_message(method, layer) if empty else ""
    return CamResult(
        heatmap=heatmap,
        raw=raw,
        prob=p.prob.astype(np.float32),
        empty=empty,
        message=message,
        method=method,
        layer=layer,
        target=target,
        seconds=time.perf_counter() - started,
        extra=extra,
    )


def _target_extra(target: str, box: object, pixel: object) -> dict[str, Any]:
    if target == "box":
        return {"box": tuple(float(v) for v in box)}
    if target == "pixel":
        return {"pixel": tuple(float(v) for v in pixel)}
    return {}


def _weighted_cam(method: str, weights_of: Callable[[_Pass], np.ndarray], model: keras.Model,
                  image: object, where: dict[str, Any]) -> CamResult:
    """The CAM methods' shared tail: one target pass (``where``: layer, target, box, pixel,
    threshold), its channel weights, the weighted map."""
    started = time.perf_counter()
    p = _target_pass(model, image, **where)
    return _cam_from_weights(
        p,
        weights_of(p),
        method=method,
        layer=where["layer"],
        target=where["target"],
        threshold=float(where["threshold"]),
        started=started,
        extra=_target_extra(where["target"], where["box"], where["pixel"]),
    )


# --------------------------------------------------------------------------- CAM methods


def seg_grad_cam(
    model: keras.Model,
    image: object,
    *,
    layer: str = "bottleneck",
    target: str = "predicted",
    box: object = None,
    pixel: object = None,
    threshold: float = 0.5,
) -> CamResult:
    """Seg-Grad-CAM (Vinogradova et al., 2020) for the building logits over a target region.

    ``alpha_k = mean_ij d y / d A^k_ij``, ``cam = ReLU(sum_k alpha_k A^k)``, bilinearly
    upsampled; see the module docstring for targets and the empty-map convention.
    """
    return _weighted_cam("seg-grad-cam", lambda p: p.grads.mean(axis=(0, 1)), model, image, {
        "layer": layer, "target": target, "box": box, "pixel": pixel, "threshold": threshold})


def grad_cam_pp(
    model: keras.Model,
    image: object,
    *,
    layer: str = "bottleneck",
    target: str = "predicted",
    box: object = None,
    pixel: object = None,
    threshold: float = 0.5,
) -> CamResult:
    """Grad-CAM++ (Chattopadhay et al., 2018) with the Seg-Grad-CAM target.

    Uses the paper's closed form for an exponential score ``Y = exp(S)`` (their Eq. 19): the
    2nd/3rd derivatives become powers of ``g = dS/dA``, so
    ``a_ij^k = g^2 / (2 g^2 + sum_ab A^k_ab g^3)`` (0 where the denominator is 0) and
    ``w_k = sum_ij a_ij^k ReLU(g_ij^k)``; the common ``exp(S)`` factor cancels in the
    normalisation. This is the ``grads**2`` / ``grads**3`` form of the authors' code.
    """
    return _weighted_cam("grad-cam++", _grad_cam_pp_weights, model, image, {
        "layer": layer, "target": target, "box": box, "pixel": pixel, "threshold": threshold})


def _grad_cam_pp_weights(p: _Pass) -> np.ndarray:
    """Grad-CAM++'s channel weights from the target pass's gradients and activations."""
    g = p.grads.astype(np.float64)
    g2, g3 = g**2, g**3
    sum_a = p.acts.astype(np.float64).sum(axis=(0, 1))
    denom = 2.0 * g2 + sum_a[None, None, :] * g3
    alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=denom != 0)
    return (alpha * np.maximum(g, 0.0)).sum(axis=(0, 1)).astype(np.float32)


def activation_map(
    model: keras.Model,
    image: object,
    *,
    layer: str = "bottleneck",
    channel: int | None = None,
) -> CamResult:
    """Mean activation over channels (``channel=None``) or one channel, min-max normalised.

    A constant map (e.g. a dead channel) gives zeros and ``empty=True``.
    """
    started = time.perf_counter()
    sub = explain_model(model, layer)
    x = _prepare_image(model, image)

    def build() -> Callable:
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, x.shape[-1]], tf.float32)],
                     reduce_retracing=True)
        def run(t):
            acts, logits = sub(t, training=False)
            return (tf.cast(acts[0], tf.float32),
                    tf.sigmoid(tf.cast(logits[0, ..., 0], tf.float32)))

        return run

    acts, prob = _cached(model, ("activation-pass", layer), build)(x)
    acts, prob = acts.numpy(), prob.numpy()
    n_channels = acts.shape[-1]
    if channel is None:
        raw, what = acts.mean(axis=-1), "mean of channels"
    else:
        if (
            isinstance(channel, bool)
            or not isinstance(channel, Integral)
            or not (0 <= channel < n_channels)
        ):
            raise ValueError(
                f"The 'channel' parameter must be an int in [0, {n_channels - 1}] or None for "
                f"layer '{layer}'. Got {channel!r} instead."
            )
        raw, what = acts[..., int(channel)], f"channel {int(channel)}"
    raw = raw.astype(np.float32)
    up = _upsample(raw, *prob.shape)
    low, high = float(up.min()), float(up.max())
    spread = high - low
    empty = not spread > max(_EPS, 1e-6 * max(abs(low), abs(high)))
    heatmap = np.zeros_like(up) if empty else np.clip((up - low) / spread, 0, 1)
    message = (
        f"The {what} of layer '{layer}' is constant ({low:.3g}) on this image: nothing to show."
        if empty
        else ""
    )
    return CamResult(
        heatmap=heatmap.astype(np.float32),
        raw=raw,
        prob=prob.astype(np.float32),
        empty=empty,
        message=message,
        method="activation",
        layer=layer,
        target=what,
        seconds=time.perf_counter() - started,
        extra={"min": low, "max": high, "channels": n_channels},
    )


def _input_gradient(
    model: keras.Model, guided: bool, x: tf.Tensor, region: np.ndarray | None, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d(sum of logits over R)/d image (through the guided-ReLU copy when ``guided``), plus
    prob and the region actually used. The traced pass is cached under ``model`` itself: a
    value that referred to its own weak key would never be freed."""
    logits_model = _guided_logits_model(model) if guided else _logits_model(model)
    fn = _region_score_fn(lambda t: logits_model(t, training=False), int(x.shape[-1]),
                          ("input-gradient", guided), model, wrt_input=True)
    _, grad, prob, reg = _run_region_pass(fn, x, region, threshold)
    return grad.astype(np.float32), prob, reg.astype(np.float32)


def _logits_model(model: keras.Model) -> keras.Model:
    _logits_layer(model)
    return _cached(
        model,
        ("logits",),
        lambda: keras.Model(
            _model_input(model), model.get_layer(_LOGITS).output, name=f"{model.name}_logits"
        ),
    )


def saliency(
    model: keras.Model,
    image: object,
    *,
    target: str = "predicted",
    box: object = None,
    pixel: object = None,
    threshold: float = 0.5,
) -> CamResult:
    """Vanilla gradient saliency: ``max_c |d y / d x_c|`` for the target score, max-normalised."""
    started = time.perf_counter()
    threshold = _check_threshold(threshold)
    x = _prepare_image(model, image)
    height, width = int(x.shape[1]), int(x.shape[2])
    fixed = _region(target, box, pixel, height, width)
    grad, prob, region = _input_gradient(model, False, x, fixed, threshold)
    raw = np.abs(grad).max(axis=-1)
    extra = {"region_pixels": int(region.sum()), **_target_extra(target, box, pixel)}
    if extra["region_pixels"] == 0:
        heatmap, empty, message = np.zeros_like(raw), True, _empty_target_message(threshold)
    else:
        heatmap, empty = _safe_max_normalise(raw, 0.0)
        message = _zero_map_message("saliency", "image") if empty else ""
    return CamResult(
        heatmap=heatmap,
        raw=raw,
        prob=prob,
        empty=empty,
        message=message,
        method="saliency",
        layer="image",
        target=target,
        seconds=time.perf_counter() - started,
        extra=extra,
    )


# --------------------------------------------------------------------------- guided backprop


@tf.custom_gradient
def _guided_relu_op(x):
    """ReLU whose gradient passes only positive gradients at positive inputs (guided backprop,
    Springenberg et al., 2015)."""

    def grad(dy):
        return dy * tf.cast(dy > 0, dy.dtype) * tf.cast(x > 0, dy.dtype)

    return tf.nn.relu(x), grad


def _guided_relu(x):
    return _guided_relu_op(x)


class _GuidedReLU(layers.Layer):
    """Stand-in for a ReLU activation layer in the guided copy (no weights)."""

    def call(self, inputs):
        return _guided_relu(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


def _guided_clone_layer(layer: layers.Layer) -> layers.Layer:
    """``clone_model`` hook: a fresh layer, ReLUs swapped for guided ReLUs."""
    relu = keras.activations.relu
    if isinstance(layer, layers.Activation) and layer.activation is relu:
        return _GuidedReLU(name=layer.name, dtype=layer.dtype_policy)
    if isinstance(layer, layers.ReLU):
        cfg = layer.get_config()
        if (
            cfg.get("max_value") is None
            and not cfg.get("negative_slope")
            and not cfg.get("threshold")
        ):
            return _GuidedReLU(name=layer.name, dtype=layer.dtype_policy)
    cfg = layer.get_config()
    if getattr(layer, "activation", None) is relu and "activation" in cfg:
        cfg["activation"] = _guided_relu  # a ReLU fused into a Conv/Dense layer
    return layer.__class__.from_config(cfg)


def _guided_logits_model(model: keras.Model) -> keras.Model:
    """Cached guided copy (image -> logits) with weights re-synced from ``model`` on each use.

    The copy has its own layers and variables (``clone_model``); the loaded model is never
    touched. Syncing per call keeps it right if the original is trained further.
    """
    _logits_layer(model)

    def build() -> keras.Model:
        clone = keras.models.clone_model(model, clone_function=_guided_clone_layer)
        return keras.Model(clone.inputs[0], clone.get_layer(_LOGITS).output, name="guided")

    guided = _cached(model, ("guided",), build)
    src, dst = model.weights, guided.weights
    if len(src) != len(dst) or any(
        a.path != b.path or tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst, strict=True)
    ):
        raise RuntimeError(f"The guided copy of model {model.name!r} does not match its weights.")
    for a, b in zip(src, dst, strict=True):
        b.assign(a)
    return guided


def _deprocess(grad: np.ndarray) -> np.ndarray:
    """Signed gradient image -> uint8 RGB for display (standardise, centre on grey)."""
    std = float(grad.std())
    if not std > _EPS:
        return np.full(grad.shape, 128, np.uint8)
    out = (grad - grad.mean()) / std * 0.15 + 0.5
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def guided_grad_cam(
    model: keras.Model,
    image: object,
    *,
    layer: str = "bottleneck",
    target: str = "predicted",
    box: object = None,
    pixel: object = None,
    threshold: float = 0.5,
) -> CamResult:
    """Guided Grad-CAM (Selvaraju et al., 2017): guided backprop x upsampled Seg-Grad-CAM.

    ``heatmap`` is ``max_c |guided gradient| * cam`` max-normalised; ``extra["rgb"]`` is the
    usual colour visualisation (uint8) and ``extra["cam"]`` the Seg-Grad-CAM heatmap.
    """
    started = time.perf_counter()
    cam = seg_grad_cam(
        model, image, layer=layer, target=target, box=box, pixel=pixel, threshold=threshold
    )
    x = _prepare_image(model, image)
    height, width = cam.heatmap.shape
    extra = dict(cam.extra)
    extra["cam"] = cam.heatmap
    if cam.empty:
        extra["rgb"] = np.full((height, width, 3), 128, np.uint8)
        heatmap, empty, message = cam.heatmap, True, cam.message
        raw = np.zeros((height, width), np.float32)
    else:
        # Same region as the CAM (the predicted mask of the unmodified model).
        region = _region(target, box, pixel, height, width)
        if region is None:
            region = (cam.prob >= float(threshold)).astype(np.float32)
        grad, _, _ = _input_gradient(model, True, x, region, float(threshold))
        weighted = grad * cam.heatmap[..., None]
        extra["rgb"] = _deprocess(weighted)
        raw = np.abs(weighted).max(axis=-1).astype(np.float32)
        heatmap, empty = _safe_max_normalise(raw, 0.0)
        message = _zero_map_message("guided Grad-CAM", layer) if empty else ""
    return CamResult(
        heatmap=heatmap,
        raw=raw,
        prob=cam.prob,
        empty=empty,
        message=message,
        method="guided-grad-cam",
        layer=layer,
        target=target,
        seconds=time.perf_counter() - started,
        extra=extra,
    )


# --------------------------------------------------------------------------- feature visualisation


def activation_maximisation(
    model: keras.Model,
    *,
    layer: str = "bottleneck",
    channel: int,
    size: int = 128,
    steps: int = 64,
    lr: float = 4.0,
    l2: float = 1e-2,
    blur_sigma: float = 0.5,
    blur_every: int = 4,
    random_state: int | None = 0,
    progress: Callable[[int, int], object] | None = None,
) -> np.ndarray:
    """Image (size, size, C) uint8 that excites ``channel`` of ``layer`` (gradient ascent).

    Starts from seeded noise around grey and ascends the mean activation of the channel minus
    ``l2`` times the mean squared deviation from grey (in [-1, 1] units). Each step moves
    ``lr`` grey levels per unit of standardised gradient (scale-free across layers); a Gaussian
    blur every ``blur_every`` steps keeps high frequencies down. ``progress(step, steps)`` is
    called after every step (1..steps); an exception raised there stops the run (cancel).
    """
    act_model = _activation_model(model, layer)
    n_channels = int(act_model.output.shape[-1])
    if (
        isinstance(channel, bool)
        or not isinstance(channel, Integral)
        or not (0 <= channel < n_channels)
    ):
        raise ValueError(
            f"The 'channel' parameter must be an int in [0, {n_channels - 1}] for layer "
            f"'{layer}'. Got {channel!r} instead."
        )
    if isinstance(size, bool) or not isinstance(size, Integral) or size <= 0:
        raise ValueError(f"The 'size' parameter must be a positive int. Got {size!r} instead.")
    _check_size(model, int(size), int(size), what="size")
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
        raise ValueError(f"The 'steps' parameter must be an int >= 1. Got {steps!r} instead.")
    for name, value in (("lr", lr), ("l2", l2), ("blur_sigma", blur_sigma)):
        if (
            isinstance(value, bool)
            or not isinstance(value, Real)
            or not (np.isfinite(value) and value >= 0)
        ):
            raise ValueError(
                f"The '{name}' parameter must be a non-negative float. Got {value!r} instead."
            )
    if isinstance(blur_every, bool) or not isinstance(blur_every, Integral) or blur_every < 0:
        raise ValueError(
            f"The 'blur_every' parameter must be an int >= 0 (0 = never). Got {blur_every!r}."
        )
    channels = int(_model_input(model).shape[-1])
    rng = np.random.default_rng(random_state)
    start = 127.5 + rng.normal(0.0, 8.0, size=(1, size, size, channels))
    x = tf.Variable(np.clip(start, 0, 255).astype(np.float32), trainable=False)
    for step in range(1, int(steps) + 1):
        with tf.GradientTape() as tape:
            tape.watch(x)
            acts = tf.cast(act_model(x, training=False), tf.float32)
            deviation = (x - 127.5) / 127.5
            objective = tf.reduce_mean(acts[..., int(channel)]) - l2 * tf.reduce_mean(deviation**2)
        grad = tape.gradient(objective, x)
        grad = grad / (tf.math.reduce_std(grad) + 1e-8)
        x.assign(tf.clip_by_value(x + lr * grad, 0.0, 255.0))
        if blur_every and blur_sigma > 0 and step % blur_every == 0:
            x.assign(gaussian_filter(x.numpy(), sigma=(0, blur_sigma, blur_sigma, 0)))
        if progress is not None:
            progress(step, int(steps))
    return np.rint(x.numpy()[0]).astype(np.uint8)
