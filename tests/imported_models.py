"""U-Nets built the way people build them outside this project (tiny filters, random weights),
for the import-model tests (unit and browser).

- :func:`keras_io_unet`: keras-io's "Image segmentation with a U-Net-like architecture"
  (Xception-style: separable convolutions, residual adds, N-class softmax, fixed 160² input);
- :func:`classic_unet`: the classic U-Net, ``Conv2D(1, activation="sigmoid")``, no rescaling
  inside (it expects 0..1), any size;
- :func:`rescaling_softmax_unet`: a ``Rescaling`` layer inside and a 2-class ``Softmax`` layer;
- :func:`fixed_512_unet`: a fixed 512² input, its last layers named ``logits`` and ``mask``
  (the names the canonical model uses itself).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
from keras import layers


def _relu_conv_bn_twice(x, conv: type, filters: int):
    """keras-io's block body: (ReLU → conv → batch norm) twice."""
    for _ in range(2):
        x = layers.Activation("relu")(x)
        x = conv(filters, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
    return x


def keras_io_unet(num_classes: int = 3, size: int = 160, f: int = 4) -> keras.Model:
    """keras-io's U-Net-like model, as published, with filters divided down to ``f``."""
    inputs = keras.Input(shape=(size, size, 3))
    x = layers.Conv2D(f, 3, strides=2, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous = x
    for filters in (2 * f, 4 * f, 8 * f):
        x = _relu_conv_bn_twice(x, layers.SeparableConv2D, filters)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(filters, 1, strides=2, padding="same")(previous)
        x = layers.add([x, residual])
        previous = x
    for filters in (8 * f, 4 * f, 2 * f, f):
        x = _relu_conv_bn_twice(x, layers.Conv2DTranspose, filters)
        x = layers.UpSampling2D(2)(x)
        residual = layers.UpSampling2D(2)(previous)
        residual = layers.Conv2D(filters, 1, padding="same")(residual)
        x = layers.add([x, residual])
        previous = x
    outputs = layers.Conv2D(num_classes, 3, activation="softmax", padding="same")(x)
    return keras.Model(inputs, outputs)


def _down(x, filters: int):
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    return x, layers.MaxPooling2D(2)(x)


def _up(x, skip, filters: int):
    x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same")(x)
    x = layers.concatenate([x, skip])
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    return layers.Conv2D(filters, 3, padding="same", activation="relu")(x)


def _unet_body(x, depth: int, f: int):
    skips = []
    for i in range(depth):
        s, x = _down(x, f * 2**i)
        skips.append(s)
    x = layers.Conv2D(f * 2**depth, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(f * 2**depth, 3, padding="same", activation="relu")(x)
    for i in reversed(range(depth)):
        x = _up(x, skips[i], f * 2**i)
    return x


def classic_unet(depth: int = 3, f: int = 4) -> keras.Model:
    """The classic U-Net (free size), sigmoid fused into the last 1x1 convolution."""
    inputs = keras.Input(shape=(None, None, 3))
    x = _unet_body(inputs, depth, f)
    outputs = layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="classic_unet")


def rescaling_softmax_unet(depth: int = 2, f: int = 4) -> keras.Model:
    """Rescaling(1/255) inside, a 2-class softmax as its own layer."""
    inputs = keras.Input(shape=(None, None, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = _unet_body(x, depth, f)
    x = layers.Conv2D(2, 1)(x)
    outputs = layers.Softmax()(x)
    return keras.Model(inputs, outputs, name="rescaled_softmax")


def fixed_512_unet(depth: int = 4, f: int = 2) -> keras.Model:
    """A fixed 512² input; its last layers are called ``logits`` and ``mask``."""
    inputs = keras.Input(shape=(512, 512, 3), name="image")
    x = _unet_body(inputs, depth, f)
    x = layers.Conv2D(1, 1, name="logits")(x)
    outputs = layers.Activation("sigmoid", name="mask")(x)
    return keras.Model(inputs, outputs, name="fixed512")


#: name → (builder, what import-model should detect).
ZOO: dict[str, tuple[Callable[[], keras.Model], dict]] = {
    "kerasio": (keras_io_unet, {"mode": "fixed", "kind": "softmax", "channels": 3,
                                "inside": None, "mode_out": "softmax"}),
    "classic": (classic_unet, {"mode": "free", "multiple": 8, "kind": "sigmoid",
                               "channels": 1, "inside": None, "mode_out": "direct"}),
    "rescaled": (rescaling_softmax_unet, {"mode": "free", "multiple": 4, "kind": "softmax",
                                          "channels": 2, "inside": "rescaling",
                                          "mode_out": "softmax"}),
    "fixed512": (fixed_512_unet, {"mode": "fixed", "kind": "sigmoid", "channels": 1,
                                  "inside": None, "mode_out": "direct"}),
}


def save_zoo_model(name: str, folder: Path, *, suffix: str = ".keras", seed: int = 0) -> Path:
    """Build ZOO model ``name`` with seeded random weights and save it to ``folder``."""
    keras.utils.set_random_seed(seed)
    model = ZOO[name][0]()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{suffix}"
    model.save(path)
    return path
