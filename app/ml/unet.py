"""U-Net builders with named layers.

Layer names are the contract the rest of the project relies on:

- ``enc{i}`` (i = 1..4): the last convolution of encoder block i (before pooling);
- ``bottleneck``: the last convolution of the bottleneck (the layer the thesis embedded);
- ``dec{i}`` (i = 4..1): the last convolution of decoder block i (dec4 is the deepest);
- ``logits``: the 1-channel pre-sigmoid output, used for Grad-CAM targets;
- ``mask``: the sigmoid probability map, the model's output.

Builders are pure: they take arguments and return a new, uncompiled ``keras.Model``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
from keras import layers


@dataclass(frozen=True)
class UNetPreset:
    """Architecture knobs for one preset."""

    base_filters: int
    depth: int
    kernel_size: int
    batch_norm: bool
    bottleneck_filters: int | None = None  # default: base_filters * 2**depth

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, UNetPreset] = {
    # The thesis's network: 4 encoder blocks 32-64-128-256, two 512 bottleneck convolutions,
    # kernel 4, ReLU, max-pool, transpose-conv up-sampling, skip concatenation, sigmoid output.
    "seed": UNetPreset(base_filters=32, depth=4, kernel_size=4, batch_norm=False),
    # A lighter network that trains on 2 CPU cores in minutes: base 16, kernel 3, batch norm.
    "light": UNetPreset(base_filters=16, depth=4, kernel_size=3, batch_norm=True),
}


def _conv_block(x, filters: int, preset: UNetPreset, name: str):
    """Two convolutions; the second one carries ``name`` (the block's output)."""
    for i in (1, 2):
        last = i == 2
        x = layers.Conv2D(
            filters,
            preset.kernel_size,
            padding="same",
            use_bias=not preset.batch_norm,
            kernel_initializer="he_normal",
            name=name if (last and not preset.batch_norm) else f"{name}_conv{i}",
        )(x)
        if preset.batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
            x = layers.Activation("relu", name=name if last else f"{name}_relu{i}")(x)
        else:
            x = layers.Activation("relu", name=f"{name}_relu{i}")(x) if not last else x
    if not preset.batch_norm:
        # Name the ReLU of the last convolution so the named layer outputs activations.
        x = layers.Activation("relu", name=f"{name}_act")(x)
    return x


def build_unet(
    preset: str = "light",
    input_size: int | None = None,
    channels: int = 3,
) -> keras.Model:
    """Build a U-Net.

    ``input_size`` None gives a fully convolutional model that accepts any size divisible by
    ``2**depth``.
    """
    if preset not in PRESETS:
        raise ValueError(
            f"The 'preset' parameter must be one of {sorted(PRESETS)}. Got {preset!r} instead."
        )
    if input_size is not None and (
        not isinstance(input_size, int) or input_size <= 0 or input_size % 16
    ):
        raise ValueError(
            "The 'input_size' parameter must be a positive int divisible by 16 or None. "
            f"Got {input_size!r} instead."
        )
    p = PRESETS[preset]
    inputs = keras.Input(shape=(input_size, input_size, channels), name="image")
    # Images enter as float 0..255; scaling lives in the model so every caller feeds raw pixels.
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(inputs)
    skips = []
    for i in range(1, p.depth + 1):
        x = _conv_block(x, p.base_filters * 2 ** (i - 1), p, f"enc{i}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    bottleneck_filters = p.bottleneck_filters or p.base_filters * 2**p.depth
    x = _conv_block(x, bottleneck_filters, p, "bottleneck")
    for i in range(p.depth, 0, -1):
        filters = p.base_filters * 2 ** (i - 1)
        x = layers.Conv2DTranspose(
            filters, 2, strides=2, padding="same", name=f"up{i}"
        )(x)
        x = layers.Concatenate(name=f"skip{i}")([x, skips[i - 1]])
        x = _conv_block(x, filters, p, f"dec{i}")
    logits = layers.Conv2D(1, 1, name="logits")(x)
    mask = layers.Activation("sigmoid", name="mask", dtype="float32")(logits)
    return keras.Model(inputs, mask, name=f"unet_{preset}")


def named_conv_layers(model: keras.Model) -> list[str]:
    """Layer names a user may pick for embeddings and Grad-CAM, shallow to deep to output.

    An imported model's canonical wrapper (``app.ml.adapter``) lists its own candidates."""
    from app.ml.adapter import lens_info  # lazy: adapter imports TensorFlow ops

    info = lens_info(model)
    if info is not None:
        return [*info.layers, "logits"]
    wanted = [layer.name for layer in model.layers]
    order = [n for n in wanted if n.startswith("enc") and n[3:].isdigit()]
    order += [n for n in wanted if n == "bottleneck"]
    order += [n for n in wanted if n.startswith("dec") and n[3:].isdigit()]
    order += [n for n in wanted if n == "logits"]
    return order
