"""Exports for other tools: a TF SavedModel for TF Serving and a TensorBoard Embedding Projector.

No Dash here. ``python -m app export savedmodel`` / ``python -m app export projector`` call
:func:`export_savedmodel` / :func:`export_projector`.

SavedModel (``tf.saved_model.save`` with an explicit ``serving_default`` signature):

- input ``image``: float32 ``[batch, height, width, 3]``, RGB values 0..255 (the model rescales
  itself). Any height and width of at least 16 pixels: the image is reflect-padded at the
  bottom and right to a multiple of 16 (the U-Net's pooling factor), exactly as the dashboard
  does, and the outputs are cropped back;
- output ``mask``: float32 ``[batch, height, width, 1]``, the building probability per pixel;
- output ``bottleneck``: float32 ``[batch, ceil(height/16), ceil(width/16), channels]``, the
  activations of the ``bottleneck`` layer (the layer the dashboard's maps are made from; for an
  imported model, its ``embedding_layer``, named in ``unet_lens.json``; an imported model pads
  or resizes inside, so its map's size follows the model's own geometry).

``assets.extra/unet_lens.json`` beside it names the model run and its SHA-256 (TF Serving ignores
that folder). TF Serving wants ``<model_base_path>/<version>/saved_model.pb``, so export to e.g.
``--out export/unet/1``.

Projector (what TensorBoard's projector plugin reads from a log dir, also loadable by hand in the
standalone projector): ``vectors.tsv`` (one row of tab-separated values per tile, no header),
``metadata.tsv`` (a header row, then one row per tile: id, cluster, split, ...), ``sprite.png``
(the tiles' thumbnails in a square grid, row-major in tile order, at most 8192 pixels a side) and
``projector_config.pbtxt`` tying them together.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from app import artifacts
from app.fsutil import atomic_dir

if TYPE_CHECKING:  # pragma: no cover
    import keras

__all__ = [
    "BOTTLENECK_LAYER",
    "METADATA_COLUMNS",
    "SIZE_FACTOR",
    "SPRITE_MAX_SIDE",
    "export_projector",
    "export_savedmodel",
    "serving_module",
    "sprite_layout",
]

SIZE_FACTOR = 16
BOTTLENECK_LAYER = "bottleneck"
#: TensorBoard's projector refuses sprites larger than 8192 x 8192 pixels.
SPRITE_MAX_SIDE = 8192
#: metadata.tsv columns, in this order, when the run has them (tile_id always first).
METADATA_COLUMNS = (
    "tile_id", "cluster", "split", "phase", "disaster", "source", "scene_id", "iou", "f1",
    "true_fraction", "pred_fraction", "building_count",
)


def _check_out(out: Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"The output {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"The output folder {out} is not empty; pass --overwrite to replace it.")
    return out


# --------------------------------------------------------------------------- SavedModel


def serving_module(model: keras.Model, layer: str = BOTTLENECK_LAYER) -> Any:
    """A ``tf.Module`` whose ``serve`` function is the ``serving_default`` signature."""
    # lazy: TensorFlow costs seconds; ``export projector`` never needs it
    import keras
    import tensorflow as tf

    both = keras.Model(model.inputs, [model.get_layer(layer).output, model.outputs[0]],
                       name=f"{model.name}_serving")

    class UNetServing(tf.Module):
        """Holds the two-output model; ``serve`` pads to /16, runs it and crops back."""

        def __init__(self) -> None:
            super().__init__(name="unet_lens")
            self.model = both

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32,
                                                    name="image")])
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            shape = tf.shape(image)
            h, w = shape[1], shape[2]
            pad_h = (SIZE_FACTOR - h % SIZE_FACTOR) % SIZE_FACTOR
            pad_w = (SIZE_FACTOR - w % SIZE_FACTOR) % SIZE_FACTOR
            padded = tf.pad(image, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="REFLECT")
            bottleneck, mask = self.model([padded], training=False)
            return {
                "mask": tf.cast(mask[:, :h, :w, :], tf.float32, name="mask"),
                "bottleneck": tf.cast(bottleneck, tf.float32, name="bottleneck"),
            }

    return UNetServing()


def export_savedmodel(model_run: str, out: Path, *, store: Path | None = None,
                      overwrite: bool = False) -> Path:
    """Write ``model_run`` (hash-checked, ``safe_mode``) as a SavedModel to ``out``."""
    out = _check_out(out, overwrite)
    path, sha = artifacts.verify_model_file(model_run, store)
    manifest = artifacts.read_model_manifest(model_run, store)
    model = artifacts.load_model(model_run, store)
    layer = artifacts.model_default_layer(manifest)  # an imported model's embedding layer
    if layer not in {lyr.name for lyr in model.layers}:
        raise artifacts.ArtifactError(
            f"model run {model_run!r} has no {layer!r} layer to export.")
    import tensorflow as tf  # lazy: see serving_module

    module = serving_module(model, layer)
    with atomic_dir(out) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        info = {
            "model_run": model_run, "model_sha256": sha, "source": str(path.name),
            "preset": manifest.get("preset"), "input_size": manifest.get("input_size"),
            "bottleneck_layer": layer,
            "signature": {
                "name": "serving_default",
                "inputs": {"image": "float32 [batch, height, width, 3], RGB 0..255"},
                "outputs": {
                    "mask": "float32 [batch, height, width, 1], building probability",
                    "bottleneck": "float32 [batch, ceil(height/16), ceil(width/16), channels]",
                },
            },
            "created": artifacts.now_iso(), "versions": artifacts.versions(),
        }
        (extra / "unet_lens.json").write_text(json.dumps(info, indent=2))
    return out


# --------------------------------------------------------------------------- projector


def sprite_layout(n: int, thumb: int, max_side: int = SPRITE_MAX_SIDE) -> tuple[int, int]:
    """``(grid, cell)``: thumbnails per sprite row and their side so the sprite fits."""
    if n < 1:
        raise ValueError(f"The 'n' parameter must be >= 1. Got {n!r} instead.")
    grid = math.ceil(math.sqrt(n))
    cell = max(1, min(int(thumb), max_side // grid))
    return grid, cell


def _clean_cell(value: Any) -> str:
    """A metadata value without tabs or newlines (they would break the TSV)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    return re.sub(r"[\t\r\n]+", " ", str(value))


def _write_sprite(run: artifacts.EmbeddingsRun, ids: list[str], path: Path) -> int:
    """Paste every tile's thumbnail (grey when missing) into a square grid; returns the cell side."""
    first = next((p for p in (run.file_for("thumb", t) for t in ids[:50]) if p is not None), None)
    thumb = 64
    if first is not None:
        with Image.open(first) as im:
            thumb = max(im.size)
    grid, cell = sprite_layout(len(ids), thumb)
    sprite = Image.new("RGB", (grid * cell, grid * cell), (128, 128, 128))
    for i, tile_id in enumerate(ids):
        src = run.file_for("thumb", tile_id)
        if src is None:
            continue
        with Image.open(src) as im:
            small = im.convert("RGB").resize((cell, cell), Image.Resampling.BOX)
        sprite.paste(small, ((i % grid) * cell, (i // grid) * cell))
    sprite.save(path, "PNG", optimize=True)
    return cell


def export_projector(run_id: str, out: Path, *, root: Path | None = None,
                     overwrite: bool = False, sprite: bool = True) -> Path:
    """Write an embeddings run as TensorBoard Embedding Projector files to ``out``."""
    out = _check_out(out, overwrite)
    run = artifacts.EmbeddingsRun.open(run_id, root, check_model=False)
    tiles = run.tiles
    vectors = np.asarray(run.vectors, dtype=np.float32)
    ids = tiles["tile_id"].astype(str).tolist()
    columns = [c for c in METADATA_COLUMNS if c in tiles.columns]
    with atomic_dir(out) as tmp:
        with (tmp / "vectors.tsv").open("w", encoding="utf-8") as fh:
            for start in range(0, len(vectors), 4096):
                np.savetxt(fh, vectors[start:start + 4096], fmt="%.6g", delimiter="\t")
        with (tmp / "metadata.tsv").open("w", encoding="utf-8") as fh:
            fh.write("\t".join(columns) + "\n")
            for row in tiles[columns].itertuples(index=False, name=None):
                fh.write("\t".join(_clean_cell(v) for v in row) + "\n")
        lines = [
            "embeddings {",
            f'  tensor_name: "{run_id}/{run.layer}"',
            f"  tensor_shape: {vectors.shape[0]}",
            f"  tensor_shape: {vectors.shape[1]}",
            '  tensor_path: "vectors.tsv"',
            '  metadata_path: "metadata.tsv"',
        ]
        if sprite:
            cell = _write_sprite(run, ids, tmp / "sprite.png")
            lines += [
                "  sprite {",
                '    image_path: "sprite.png"',
                f"    single_image_dim: {cell}",
                f"    single_image_dim: {cell}",
                "  }",
            ]
        lines.append("}")
        (tmp / "projector_config.pbtxt").write_text("\n".join(lines) + "\n")
    return out
