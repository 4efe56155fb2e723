"""The canonical model around an imported U-Net: what lets a model trained elsewhere open in
every page without re-saving or retraining it.

The rest of the project speaks one contract (``app.ml.unet``): input ``image`` float RGB
0..255 of any size, a 1-channel pre-activation layer ``logits`` at the input's resolution, and
the sigmoid probability ``mask`` as the single output. :func:`build_canonical` wraps a user's
model in that contract WITHOUT touching it:

    image (0..255, any size) → the user's preprocessing (``lens_preprocess``) → padding to
    the size multiple the model needs (``lens_pad``) or a resize to its fixed input size
    (``lens_resize``) → the user's layers, cloned with the same names and a COPY of their
    weights, the final sigmoid/softmax made linear → ``lens_building_logit`` (one channel:
    z_c, or z_c − logsumexp(z_others) for a softmax, whose sigmoid IS the softmax
    probability) → ``logits`` (cropped or resized back to the input) → ``mask`` (sigmoid).

Why cloned layers and not the user's own layer objects: Keras resolves ``layer.output`` to a
layer's FIRST call, so re-using the loaded layers in a second graph would leave every
"activations of layer X" model (Grad-CAM, embeddings) pointing at the original graph. Clones
with copied weights give the canonical graph its own nodes; the user's model is read only.

:func:`lens_info` tells :func:`app.ml.unet.named_conv_layers` (and so explain, extract and
the pages) which of the model's layers a user may pick and which is the default embedding
layer. The spec dict is what the manifest stores under ``adapter``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf
from keras import layers

__all__ = [
    "OUTPUT_KINDS",
    "RESERVED_NAMES",
    "LensInfo",
    "build_canonical",
    "canonical_name",
    "lens_info",
]

#: What the user's model returns: sigmoid probabilities (1 or N channels), pre-activation
#: logits (1 channel: sigmoid logits; N channels: softmax logits), or softmax probabilities.
OUTPUT_KINDS: tuple[str, ...] = ("sigmoid", "logits", "softmax")
#: Names the canonical graph gives its own layers; a user layer with one of them is renamed
#: ``user_<name>`` in the canonical model (the manifest's ``adapter.renamed`` says so).
RESERVED_NAMES = frozenset({
    "image", "logits", "mask", "lens_preprocess", "lens_pad", "lens_resize",
    "lens_building_logit",
})


@dataclass(frozen=True)
class LensInfo:
    """What the pages need to know of a canonical model built here."""

    layers: tuple[str, ...]  # selectable layers, shallow to deep (canonical names)
    default_layer: str  # the embedding layer the maps use by default
    size_multiple: int  # what the canonical model pads to inside (1: resized, any size)


_INFO: weakref.WeakKeyDictionary[keras.Model, LensInfo] = weakref.WeakKeyDictionary()


def lens_info(model: Any) -> LensInfo | None:
    """The :class:`LensInfo` of a canonical model built by :func:`build_canonical`, else None."""
    try:
        return _INFO.get(model)
    except TypeError:  # not weak-referenceable: not one of ours
        return None


def canonical_name(name: str) -> str:
    """The canonical model's name for a user layer called ``name``."""
    return f"user_{name}" if name in RESERVED_NAMES else name


# --------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package="unet_lens")
class ChannelAffine(layers.Layer):
    """``x * scale + offset`` per channel: the user's preprocessing, from 0..255 pixels."""

    def __init__(self, scale: list[float], offset: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = [float(v) for v in scale]
        self.offset = [float(v) for v in offset]

    def call(self, x):
        return x * tf.constant(self.scale, x.dtype) + tf.constant(self.offset, x.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


@keras.saving.register_keras_serializable(package="unet_lens")
class PadToMultiple(layers.Layer):
    """Pad bottom/right (symmetric mirror) to a multiple of ``multiple`` (a no-op when the
    caller already padded, which ``ModelService`` does)."""

    def __init__(self, multiple: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.multiple = int(multiple)

    def call(self, x):
        shape = tf.shape(x)
        m = self.multiple
        pad_h, pad_w = (m - shape[1] % m) % m, (m - shape[2] % m) % m
        # SYMMETRIC repeats the edge row, so a pad as large as the image itself is allowed.
        return tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="SYMMETRIC")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, None, input_shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="unet_lens")
class ResizeTo(layers.Layer):
    """Bilinear resize to a fixed (height, width), antialiased when shrinking."""

    def __init__(self, height: int, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)

    def call(self, x):
        return tf.image.resize(x, (self.height, self.width), method="bilinear", antialias=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "height": self.height, "width": self.width}


@keras.saving.register_keras_serializable(package="unet_lens")
class MatchSize(layers.Layer):
    """``[x, ref]`` → x cropped (``mode="crop"``) or resized (``"resize"``) to ref's size."""

    def __init__(self, mode: str = "crop", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = str(mode)

    def call(self, inputs):
        x, ref = inputs
        shape = tf.shape(ref)
        if self.mode == "crop":
            return x[:, : shape[1], : shape[2], :]
        return tf.image.resize(x, (shape[1], shape[2]), method="bilinear")

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = input_shape
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="unet_lens")
class BuildingLogit(layers.Layer):
    """The building channel's pre-sigmoid logit, one channel, float32.

    ``mode``: ``"direct"`` z_c (a sigmoid output made linear, or 1-channel logits);
    ``"softmax"`` z_c − logsumexp(z_j, j ≠ c) (sigmoid of it = softmax probability of c);
    ``"prob"`` log p_c − log(1 − p_c) when only probabilities are reachable.
    """

    def __init__(self, channel: int = 0, mode: str = "direct", **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.channel, self.mode = int(channel), str(mode)

    def call(self, z):
        z = tf.cast(z, tf.float32)
        c = self.channel
        zc = z[..., c:c + 1]
        if self.mode == "softmax":
            others = tf.concat([z[..., :c], z[..., c + 1:]], axis=-1)
            return zc - tf.reduce_logsumexp(others, axis=-1, keepdims=True)
        if self.mode == "prob":
            p = tf.clip_by_value(zc, 1e-7, 1.0 - 1e-7)
            return tf.math.log(p) - tf.math.log1p(-p)
        return zc

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape[:-1]), 1)

    def get_config(self) -> dict:
        return {**super().get_config(), "channel": self.channel, "mode": self.mode}


# --------------------------------------------------------------------------- building


@keras.saving.register_keras_serializable(package="unet_lens")
class Linear(layers.Layer):
    """Identity in place of a final Activation / Softmax layer (takes and ignores ``mask``)."""

    def call(self, x, mask=None):  # noqa: ARG002 - Softmax's call signature
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


def _linear_clone(layer: layers.Layer, name: str) -> layers.Layer:
    """A copy of the layer that applies the model's final sigmoid/softmax, made linear."""
    if isinstance(layer, layers.Activation | layers.Softmax):
        return Linear(name=name)
    config = layer.get_config()
    config["name"] = name
    config["activation"] = "linear"
    return layer.__class__.from_config(config)


def build_canonical(user: keras.Model, spec: dict) -> keras.Model:
    """The canonical model (see the module docstring) for ``user`` as ``spec`` describes it.

    ``spec`` (the manifest's ``adapter``): ``input`` {mode "free"|"fixed", size [h, w],
    multiple}, ``preprocess`` {scale [3], offset [3]} or None, ``output`` {kind, channel,
    mode "direct"|"softmax"|"prob", linearize: layer name or None}, ``layers`` (user names),
    ``embedding_layer`` (user name).
    """
    inp = keras.Input(shape=(None, None, 3), name="image", dtype="float32")
    x = inp
    pre = spec.get("preprocess")
    if pre:
        x = ChannelAffine(pre["scale"], pre["offset"], name="lens_preprocess")(x)
    geometry = spec["input"]
    if geometry["mode"] == "fixed":
        h, w = geometry["size"]
        x = ResizeTo(h, w, name="lens_resize")(x)
    elif int(geometry.get("multiple", 1)) > 1:
        x = PadToMultiple(int(geometry["multiple"]), name="lens_pad")(x)

    out = spec["output"]
    linearize = out.get("linearize")
    clones: dict[int, Any] = {}

    def clone(op: Any) -> Any:
        if not isinstance(op, layers.Layer):
            return op  # a raw keras op (x + y) holds no weights; reusing it is safe
        if id(op) not in clones:
            name = canonical_name(op.name)
            if op.name == linearize:
                clones[id(op)] = _linear_clone(op, name)
            else:
                config = op.get_config()
                config["name"] = name
                clones[id(op)] = op.__class__.from_config(config)
        return clones[id(op)]

    z = user._run_through_graph(x, operation_fn=clone)
    z = z[0] if isinstance(z, list | tuple) else z
    for old in user.layers:
        new = clones.get(id(old))
        if new is not None and old.weights:
            new.set_weights(old.get_weights())
    logit = BuildingLogit(int(out.get("channel", 0)), out.get("mode", "direct"),
                          name="lens_building_logit")(z)
    match = "resize" if geometry["mode"] == "fixed" else "crop"
    logits = MatchSize(match, name="logits", dtype="float32")([logit, inp])
    mask = layers.Activation("sigmoid", name="mask", dtype="float32")(logits)
    model = keras.Model(inp, mask, name=f"imported_{user.name}")
    _INFO[model] = LensInfo(
        layers=tuple(canonical_name(n) for n in spec.get("layers", [])),
        default_layer=canonical_name(spec["embedding_layer"]),
        size_multiple=1 if geometry["mode"] == "fixed" else int(geometry.get("multiple", 1)),
    )
    return model
