from __future__ import annotations

import numpy as np
import pytest

from app.ml.unet import PRESETS, build_unet, named_conv_layers


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_shapes_and_named_layers(preset: str) -> None:
    model = build_unet(preset, input_size=64)
    names = named_conv_layers(model)
    assert names == [
        "enc1", "enc2", "enc3", "enc4", "bottleneck", "dec4", "dec3", "dec2", "dec1", "logits"
    ]
    p = PRESETS[preset]
    assert model.output_shape == (None, 64, 64, 1)
    assert model.get_layer("bottleneck").output.shape[1:] == (4, 4, p.base_filters * 16)
    for i in range(1, 5):
        assert model.get_layer(f"enc{i}").output.shape[-1] == p.base_filters * 2 ** (i - 1)
        assert model.get_layer(f"dec{i}").output.shape[1] == 64 // 2 ** (i - 1)


def test_seed_preset_is_the_thesis_network() -> None:
    """4 encoder blocks 32-64-128-256, two 512 bottleneck convs, kernel 4, transpose-conv up."""
    model = build_unet("seed", input_size=64)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert {c.kernel_size for c in convs if c.name != "logits"} == {(4, 4)}
    bottleneck_convs = [c for c in convs if c.name.startswith("bottleneck")]
    assert [c.filters for c in bottleneck_convs] == [512, 512]
    assert [c.filters for c in convs if c.name.startswith("enc") and c.name.endswith("conv1")] == [
        32, 64, 128, 256
    ]
    assert sum(1 for layer in model.layers if layer.__class__.__name__ == "Conv2DTranspose") == 4
    assert not any(layer.__class__.__name__ == "BatchNormalization" for layer in model.layers)


def test_any_input_size_and_probabilities() -> None:
    model = build_unet("light")
    for size in (32, 96):
        out = model.predict(np.zeros((1, size, size, 3), np.float32), verbose=0)
        assert out.shape == (1, size, size, 1)
        assert np.all((out >= 0) & (out <= 1))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="'preset' parameter must be one of"):
        build_unet("huge")
    with pytest.raises(ValueError, match="'input_size' parameter"):
        build_unet("light", input_size=30)
