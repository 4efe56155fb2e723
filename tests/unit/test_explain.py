"""Explanations on a tiny random U-Net, checked against an independent hand-written reference."""

from __future__ import annotations

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from skimage.transform import resize

from app.ml import explain
from app.ml.explain import (
    CamResult,
    activation_map,
    activation_maximisation,
    explain_model,
    grad_cam_pp,
    guided_grad_cam,
    saliency,
    seg_grad_cam,
)
from app.ml.unet import build_unet

SIZE = 32


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_unet("light", SIZE)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    img[8:20, 6:22] = (200, 190, 180)  # a bright "roof" so the map has structure
    return img


@pytest.fixture(scope="module")
def silent_model(model) -> keras.Model:
    """A clone that predicts no buildings anywhere (logits bias -100)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.get_layer("logits").bias.assign([-100.0])
    return clone


# ----------------------------------------------------------------------------- reference


def _block(model: keras.Model, h: tf.Tensor, name: str) -> tf.Tensor:
    get = model.get_layer
    for i in (1, 2):
        h = get(f"{name}_conv{i}")(h)
        h = get(f"{name}_bn{i}")(h, training=False)
        h = get(f"{name}_relu{i}" if i == 1 else name)(h)
    return h


def _manual_forward(model, x, tap: str, delta) -> tuple[tf.Tensor, tf.Tensor]:
    """The light U-Net run layer by layer by hand (not through the functional graph), adding
    ``delta`` to the output of ``tap``; returns (tap activations, logits)."""
    get = model.get_layer
    tapped = {}

    def maybe_tap(h, name):
        if name == tap:
            h = h + delta
            tapped["a"] = h
        return h

    h = get("scale")(x)
    skips = []
    for i in range(1, 5):
        h = maybe_tap(_block(model, h, f"enc{i}"), f"enc{i}")
        skips.append(h)
        h = get(f"pool{i}")(h)
    h = maybe_tap(_block(model, h, "bottleneck"), "bottleneck")
    for i in range(4, 0, -1):
        h = get(f"skip{i}")([get(f"up{i}")(h), skips[i - 1]])
        h = maybe_tap(_block(model, h, f"dec{i}"), f"dec{i}")
    return tapped["a"], get("logits")(h)[0, ..., 0]


def _reference_cam(model, image, layer, region=None, threshold=0.5):
    """Seg-Grad-CAM by hand: gradient w.r.t. an additive perturbation of the layer output."""
    x = tf.constant(image[None].astype(np.float32))
    acts0, _ = _manual_forward(model, x, layer, 0.0)
    delta = tf.zeros_like(acts0)
    with tf.GradientTape() as tape:
        tape.watch(delta)
        acts, logits = _manual_forward(model, x, layer, delta)
        if region is None:
            region = tf.cast(tf.sigmoid(logits) >= threshold, tf.float32)
        score = tf.reduce_sum(logits * region)
    grads = tape.gradient(score, delta)[0].numpy()
    alpha = grads.mean(axis=(0, 1))
    raw = np.maximum((acts[0].numpy() * alpha).sum(-1), 0)
    heat = resize(raw, image.shape[:2], order=1, mode="edge", anti_aliasing=False)
    heat = heat / heat.max() if heat.max() > 0 else heat
    return raw, heat, alpha, np.asarray(region)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _check_map(r: CamResult, shape=(SIZE, SIZE)) -> None:
    assert isinstance(r, CamResult)
    assert r.heatmap.shape == shape and r.heatmap.dtype == np.float32
    assert r.prob.shape == shape and r.prob.dtype == np.float32
    assert np.all(np.isfinite(r.heatmap)) and np.all(np.isfinite(r.raw))
    assert r.heatmap.min() >= 0.0 and r.heatmap.max() <= 1.0
    assert r.seconds >= 0


# ----------------------------------------------------------------------------- Seg-Grad-CAM


@pytest.mark.parametrize("layer", ["bottleneck", "dec3"])
def test_seg_grad_cam_matches_independent_reference(model, image, layer):
    r = seg_grad_cam(model, image, layer=layer)
    raw, heat, _, region = _reference_cam(model, image, layer)
    assert region.sum() > 0 and r.extra["region_pixels"] == int(region.sum())
    _check_map(r)
    assert not r.empty and r.message == "" and r.heatmap.max() == pytest.approx(1.0)
    assert r.method == "seg-grad-cam" and r.layer == layer and r.target == "predicted"
    assert r.raw.shape == raw.shape
    assert _corr(r.raw, raw) >= 0.99
    assert _corr(r.heatmap, heat) >= 0.99
    mask = model(image[None].astype(np.float32), training=False).numpy()[0, ..., 0]
    np.testing.assert_allclose(r.prob, mask, atol=1e-6)


def test_reference_gradients_agree_with_finite_differences(model, image):
    """Guards the reference itself: alpha_k * (h*w) = d y / d eps for A^k + eps (all pixels)."""
    region = np.ones((SIZE, SIZE), np.float32)
    _, _, alpha, _ = _reference_cam(model, image, "bottleneck", region=region)
    x = tf.constant(image[None].astype(np.float32))
    acts, _ = _manual_forward(model, x, "bottleneck", 0.0)
    h, w, k = acts.shape[1:]
    channels = np.argsort(-np.abs(alpha))[:6]
    eps = 0.05
    fd = []
    for c in channels:
        scores = []
        for sign in (1.0, -1.0):
            delta = np.zeros((1, h, w, k), np.float32)
            delta[..., c] = sign * eps
            _, logits = _manual_forward(model, x, "bottleneck", tf.constant(delta))
            scores.append(float(tf.reduce_sum(logits)))
        fd.append((scores[0] - scores[1]) / (2 * eps) / (h * w))
    np.testing.assert_allclose(fd, alpha[channels], rtol=0.05, atol=1e-3 * np.abs(alpha).max())


@pytest.mark.parametrize(
    ("target", "kwargs", "pixels"),
    [
        ("image", {}, SIZE * SIZE),
        ("box", {"box": (20.5, 10, 4, 2)}, 17 * 8),  # reversed corners, float edge widened
        ("pixel", {"pixel": (5, 7)}, 1),
    ],
)
def test_seg_grad_cam_targets(model, image, target, kwargs, pixels):
    r = seg_grad_cam(model, image, layer="dec3", target=target, **kwargs)
    _check_map(r)
    assert not r.empty and r.raw.shape == (8, 8)
    assert r.target == target and r.extra["region_pixels"] == pixels
    region = np.zeros((SIZE, SIZE), np.float32)
    if target == "image":
        region[:] = 1
    elif target == "box":
        region[2:10, 4:21] = 1
    else:
        region[7, 5] = 1
    raw, heat, _, _ = _reference_cam(model, image, "dec3", region=region)
    assert _corr(r.raw, raw) >= 0.99
    assert _corr(r.heatmap, heat) >= 0.99


def test_zero_map_is_empty_not_nan():
    """All-negative evidence (ReLU kills everything) or round-off only: zeros, flagged."""
    zeros, empty = explain._safe_max_normalise(np.zeros((4, 4), np.float32), 10.0)
    assert empty and not zeros.any()
    noise, empty = explain._safe_max_normalise(np.full((4, 4), 1e-9, np.float32), 10.0)
    assert empty and not noise.any()
    ok, empty = explain._safe_max_normalise(np.array([[0.0, 2.0]], np.float32), 10.0)
    assert not empty and ok.tolist() == [[0.0, 1.0]]


def test_empty_prediction_gives_zeros_and_message(silent_model, image):
    for fn in (seg_grad_cam, grad_cam_pp, saliency, guided_grad_cam):
        r = fn(silent_model, image)
        _check_map(r)
        assert r.empty is True
        assert "No predicted building pixels" in r.message and "whole image" in r.message
        assert not r.heatmap.any()
        assert r.prob.max() < 0.5
    # The same model still explains a user-chosen target, without NaN.
    r = seg_grad_cam(silent_model, image, target="image")
    _check_map(r)
    assert r.empty or r.heatmap.max() == pytest.approx(1.0)


def test_grad_cam_pp_against_reference_weights(model, image):
    r = grad_cam_pp(model, image, layer="dec3")
    _check_map(r)
    assert r.method == "grad-cam++" and not r.empty
    # Reference: the authors' grads**2 / grads**3 formula written out with the hand gradients.
    x = tf.constant(image[None].astype(np.float32))
    acts0, _ = _manual_forward(model, x, "dec3", 0.0)
    delta = tf.zeros_like(acts0)
    with tf.GradientTape() as tape:
        tape.watch(delta)
        acts, logits = _manual_forward(model, x, "dec3", delta)
        score = tf.reduce_sum(logits * tf.cast(tf.sigmoid(logits) >= 0.5, tf.float32))
    g = tape.gradient(score, delta)[0].numpy().astype(np.float64)
    a = acts[0].numpy().astype(np.float64)
    denom = 2 * g**2 + a.sum(axis=(0, 1)) * g**3
    alphas = g**2 / np.where(denom != 0, denom, 1)
    w = (alphas * np.maximum(g, 0)).sum(axis=(0, 1))
    raw = np.maximum((a * w).sum(-1), 0)
    assert _corr(r.raw, raw) >= 0.99


def test_validation_errors(model, image):
    with pytest.raises(
        ValueError, match=r"The 'threshold' parameter must be a float in \[0, 1\]\. Got 2 instead\."
    ):
        seg_grad_cam(model, image, threshold=2)
    with pytest.raises(ValueError, match="The 'layer' parameter must be one of"):
        seg_grad_cam(model, image, layer="nope")
    with pytest.raises(ValueError, match="The 'target' parameter must be one of"):
        seg_grad_cam(model, image, target="everything")
    with pytest.raises(ValueError, match="The 'box' parameter"):
        seg_grad_cam(model, image, target="box")
    with pytest.raises(ValueError, match="The 'box' parameter must overlap"):
        seg_grad_cam(model, image, target="box", box=(40, 40, 50, 50))
    with pytest.raises(ValueError, match="The 'pixel' parameter must lie inside"):
        seg_grad_cam(model, image, target="pixel", pixel=(SIZE, 0))
    with pytest.raises(ValueError, match="must be 32x32 pixels"):
        seg_grad_cam(model, np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="3 channels"):
        seg_grad_cam(model, np.zeros((SIZE, SIZE, 2), np.uint8))


# ----------------------------------------------------------------------------- other methods


def test_explain_model_is_cached_and_weak(model):
    sub = explain_model(model, "bottleneck")
    assert explain_model(model, "bottleneck") is sub
    assert [tuple(o.shape) for o in sub.outputs] == [(None, 2, 2, 256), (None, SIZE, SIZE, 1)]
    assert explain_model(model, "dec1") is not sub
    temp = build_unet("light", SIZE)
    explain_model(temp, "bottleneck")
    # the traced passes are cached too, and must not keep the model alive either
    seg_grad_cam(temp, np.zeros((SIZE, SIZE, 3), np.uint8), target="image")
    saliency(temp, np.zeros((SIZE, SIZE, 3), np.uint8), target="image")
    assert temp in explain._CACHE
    ref = weakref.ref(temp)
    del temp
    gc.collect()
    assert ref() is None  # no leak through cached values
    again = build_unet("light", SIZE)  # may well get the freed model's id()
    assert again not in explain._CACHE  # keyed by the object, not its id


def test_activation_map(model, image):
    r = activation_map(model, image)
    _check_map(r)
    acts = explain_model(model, "dec2")(image[None].astype(np.float32))[0].numpy()[0]
    one = activation_map(model, image, layer="dec2", channel=3)
    _check_map(one)
    np.testing.assert_allclose(one.raw, acts[..., 3], rtol=1e-5, atol=1e-5)
    if not one.empty:
        assert one.heatmap.min() == 0.0 and one.heatmap.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="The 'channel' parameter must be an int in \\[0, 31\\]"):
        activation_map(model, image, layer="dec2", channel=32)


def test_saliency(model, image):
    r = saliency(model, image, target="box", box=(0, 0, 16, 16))
    _check_map(r)
    assert r.layer == "image" and r.raw.shape == (SIZE, SIZE) and not r.empty
    x = tf.constant(image[None].astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        _, logits = _manual_forward(model, x, "bottleneck", 0.0)
        score = tf.reduce_sum(logits[:16, :16])
    ref = np.abs(tape.gradient(score, x)[0].numpy()).max(-1)
    assert _corr(r.heatmap, ref / ref.max()) >= 0.99


def test_guided_grad_cam_leaves_model_untouched(model, image):
    x = image[None].astype(np.float32)
    before = model(x, training=False).numpy().tobytes()
    weights_before = [w.copy() for w in model.get_weights()]
    layers_before = [(lyr.name, type(lyr)) for lyr in model.layers]
    r = guided_grad_cam(model, image)
    _check_map(r)
    assert r.method == "guided-grad-cam" and not r.empty
    assert r.extra["rgb"].shape == (SIZE, SIZE, 3) and r.extra["rgb"].dtype == np.uint8
    assert model(x, training=False).numpy().tobytes() == before
    assert [(lyr.name, type(lyr)) for lyr in model.layers] == layers_before
    for a, b in zip(model.get_weights(), weights_before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.get_layer("enc1").activation is keras.activations.relu
    # The guided copy computes the same logits but different (guided) input gradients.
    guided = explain._guided_logits_model(model)
    logits = explain._logits_model(model)
    np.testing.assert_allclose(guided(x).numpy(), logits(x).numpy(), atol=1e-5)
    xt = tf.constant(x)
    grads = []
    for m in (guided, logits):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            score = tf.reduce_sum(m(xt, training=False))
        grads.append(tape.gradient(score, xt).numpy())
    assert not np.allclose(grads[0], grads[1])


def test_activation_maximisation(model):
    calls = []
    out = activation_maximisation(
        model,
        layer="enc3",
        channel=2,
        size=SIZE,
        steps=6,
        progress=lambda s, n: calls.append((s, n)),
    )
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert calls == [(i, 6) for i in range(1, 7)]
    again = activation_maximisation(model, layer="enc3", channel=2, size=SIZE, steps=6)
    np.testing.assert_array_equal(out, again)  # seeded
    # The ascent raises the channel's mean activation over the seeded starting noise.
    start = np.clip(127.5 + np.random.default_rng(0).normal(0, 8, (1, SIZE, SIZE, 3)), 0, 255)
    act = explain._activation_model(model, "enc3")
    before = float(act(start.astype(np.float32))[..., 2].numpy().mean())
    after = float(act(out[None].astype(np.float32))[..., 2].numpy().mean())
    assert after > before
    with pytest.raises(ValueError, match="The 'size' parameter must be 32x32"):
        activation_maximisation(model, channel=0, size=64, steps=1)
    with pytest.raises(ValueError, match="The 'channel' parameter"):
        activation_maximisation(model, channel=-1, size=SIZE, steps=1)
