"""Layer embeddings, predicted masks, per-tile metrics and thumbnails from ONE forward pass.

``extract_embeddings`` streams a tile dataset through a two-output model (activations of one named
layer + the predicted mask), so the vector of a tile and the mask its metrics are computed from
always come from the same pass. Vectors are written row by row into ``vectors.npy`` (an
``np.lib.format.open_memmap``), so memory stays bounded whatever the number of tiles; the image
files of a tile are written by a small thread pool while the network runs on the next batch.

Representations of a (h, w, C) activation map:

- ``gap``: global average pooling → C;
- ``avgmax``: [average, max] pooling → 2C;
- ``spp``: spatial pyramid of average pooling over 1×1, 2×2 and 4×4 grids → 21C, laid out level by
  level, cell by cell (row-major), channels last. Bins are adaptive (``floor(i·h/n)`` to
  ``ceil((i+1)·h/n)``), so maps smaller than 4×4 work (cells then overlap);
- ``flatten``: the whole map (h·w·C, the thesis's representation) projected on the fly to
  ``projection_dims`` with a seeded ``StreamingProjector``; kept raw when h·w·C is already no
  larger than ``projection_dims``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from app import artifacts
from app.data.base import DAMAGE_CLASSES
from app.data.dataset import safe_name
from app.ml.metrics import ERROR_COLOURS, mask_edges, pixel_confusion, pixel_scores
from app.ml.reduce import StreamingProjector

if TYPE_CHECKING:  # pragma: no cover
    import keras

REPRESENTATIONS: tuple[str, ...] = ("gap", "avgmax", "spp", "flatten")
PROJECTIONS: tuple[str, ...] = ("sparse_random", "ipca")
SPP_LEVELS: tuple[int, ...] = (1, 2, 4)
DMG_COLUMNS: tuple[str, ...] = tuple("dmg_" + c.replace("-", "_") for c in DAMAGE_CLASSES)
#: Columns ``extract_embeddings`` adds to the dataset's per-tile columns.
METRIC_COLUMNS: tuple[str, ...] = (
    "precision", "recall", "f1", "iou", "tp", "fp", "fn",
    "true_fraction", "pred_fraction", "pred_building_count",
)
#: Outline colour of the predicted mask on overlays of tiles without truth (Okabe-Ito yellow;
#: TP/FP/FN colours are ``app.ml.metrics.ERROR_COLOURS``).
PRED_COLOUR = (240, 228, 66)
#: Weight of the TP/FP/FN colour in the overlay blend.
OVERLAY_ALPHA = 0.55
_EIGHT = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------- model


def feature_model(model: keras.Model, layer: str) -> keras.Model:
    """A model with two outputs, ``[activations of layer, predicted mask]``, sharing the weights
    of ``model`` (which is left untouched): one call gives both from the same forward pass."""
    import keras  # lazy: TensorFlow; reading a run's tables must not load it

    from app.ml.unet import named_conv_layers  # lazy: unet imports keras

    names = named_conv_layers(model)
    if layer not in names:
        raise ValueError(
            f"The 'layer' parameter must be one of the model's named layers {names}. "
            f"Got {layer!r} instead."
        )
    if len(model.outputs) != 1:
        raise ValueError(f"Expected a U-Net with one output (the mask). Got {len(model.outputs)}.")
    # ``model.outputs[0]``, not ``model.output``: a reloaded model may report its output as a list.
    return keras.Model(
        model.inputs, [model.get_layer(layer).output, model.outputs[0]],
        name=f"{model.name}_{layer}",
    )


def pool_activations(acts: np.ndarray, representation: str) -> np.ndarray:
    """(B, h, w, C) activations → (B, dims) float32 for gap / avgmax / spp; flatten reshapes."""
    _check_representation(representation)
    acts = np.asarray(acts, dtype=np.float32)
    if acts.ndim != 4:
        raise ValueError(f"activations must be (B, h, w, C). Got shape {acts.shape} instead.")
    b, h, w, c = acts.shape
    if representation == "gap":
        return acts.mean(axis=(1, 2))
    if representation == "avgmax":
        return np.concatenate([acts.mean(axis=(1, 2)), acts.max(axis=(1, 2))], axis=1)
    if representation == "spp":
        parts = []
        for n in SPP_LEVELS:
            for i in range(n):
                r0, r1 = (i * h) // n, -((-(i + 1) * h) // n)
                for j in range(n):
                    c0, c1 = (j * w) // n, -((-(j + 1) * w) // n)
                    parts.append(acts[:, r0:r1, c0:c1, :].mean(axis=(1, 2)))
        return np.concatenate(parts, axis=1)
    return acts.reshape(b, h * w * c)


def representation_dims(representation: str, act_shape: Sequence[int], projection_dims: int) -> int:
    """Vector length for an activation map of shape (h, w, C)."""
    _check_representation(representation)
    h, w, c = (int(v) for v in act_shape)
    if representation == "gap":
        return c
    if representation == "avgmax":
        return 2 * c
    if representation == "spp":
        return c * sum(n * n for n in SPP_LEVELS)
    return min(h * w * c, int(projection_dims))


def _check_representation(representation: str) -> None:
    if representation not in REPRESENTATIONS:
        raise ValueError(
            f"The 'representation' parameter must be one of {list(REPRESENTATIONS)}. "
            f"Got {representation!r} instead."
        )


def make_projector(input_dim: int, params: dict) -> Any | None:
    """The ``StreamingProjector`` described by ``params`` (None when flatten is kept raw)."""
    if params.get("projection") in (None, "none") or input_dim <= int(params["projection_dims"]):
        return None
    return StreamingProjector(
        input_dim,
        n_components=int(params["projection_dims"]),
        method=params["projection"],
        random_state=int(params.get("random_state", 0)),
    )


def embed_images(
    model: keras.Model,
    images: np.ndarray,
    *,
    layer: str = "bottleneck",
    representation: str = "gap",
    projector: Any | None = None,
    fmodel: keras.Model | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W, 3) pixels 0..255 → (vectors (B, dims) float32, probabilities (B, H, W)).

    The single-tile path used for uploads; ``projector`` must be the run's (fitted) projector
    when ``representation`` is flatten and the run projected.
    """
    fm = fmodel or feature_model(model, layer)
    acts, prob = _forward(fm, np.asarray(images, dtype=np.float32))
    vec = pool_activations(acts, representation)
    if representation == "flatten" and projector is not None:
        vec = np.asarray(projector.transform(vec), dtype=np.float32)
    return vec, prob[..., 0]


def _forward(fm: keras.Model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One inference pass of the two-output model: (activations, probabilities) as numpy."""
    fn = getattr(fm, "_unet_lens_forward", None)
    if fn is None:
        import tensorflow as tf  # lazy: see feature_model

        # One graph per feature model whatever the batch and tile size (no retracing).
        fn = tf.function(
            lambda t: fm(t, training=False),
            input_signature=[tf.TensorSpec([None, None, None, x.shape[-1]], tf.float32)],
        )
        fm._unet_lens_forward = fn
    acts, prob = fn(x)
    return acts.numpy(), prob.numpy()


# --------------------------------------------------------------------------- metrics


def tile_metrics(truth: np.ndarray | None, pred: np.ndarray) -> dict:
    """Per-tile metric columns (``METRIC_COLUMNS``) from a boolean predicted mask and its truth.

    Scores follow ``app.ml.metrics`` (``pixel_confusion`` / ``pixel_scores``): a tile with no
    true and no predicted building scores 1.0, a tile with only one side empty scores 0.0 on the
    undefined ratios. Without truth, precision / recall / F1 / IoU / tp / fp / fn /
    true_fraction are NaN. ``pred_building_count`` counts 8-connected components of the
    prediction (``scipy.ndimage.label``, no size filter).
    """
    pred = np.asarray(pred, dtype=bool)
    n = pred.size
    _, count = ndimage.label(pred, structure=_EIGHT)
    out: dict[str, float] = {
        "pred_fraction": float(np.count_nonzero(pred)) / n,
        "pred_building_count": int(count),
    }
    if truth is None:
        out.update({k: float("nan") for k in ("precision", "recall", "f1", "iou", "tp", "fp",
                                              "fn", "true_fraction")})
        return out
    conf = pixel_confusion(truth, pred)
    scores = pixel_scores(**conf)
    out.update({k: scores[k] for k in ("precision", "recall", "f1", "iou")})
    out.update({k: conf[k] for k in ("tp", "fp", "fn")})
    out["true_fraction"] = float(conf["tp"] + conf["fn"]) / n
    return out


def tile_labels(table: pd.DataFrame, *, building_threshold: float = 0.01) -> dict[str, np.ndarray]:
    """Per-tile "truth" labels to compare clusters with: name → (n,) array of strings.

    - ``has_building``: "building" when true_fraction > ``building_threshold``, "no-building"
      otherwise, "unknown" without a mask;
    - ``phase``, ``disaster``, ``disaster_type``, ``split``: the dataset's column, "unknown" when
      missing (only columns the table has);
    - ``dominant_damage``: the most frequent damage class of the tile's buildings (dmg_* counts,
      ties → the first class in ``DAMAGE_CLASSES`` order), "none" without damage labels.
    """
    n = len(table)
    out: dict[str, np.ndarray] = {}
    frac_col = "true_fraction" if "true_fraction" in table else "building_fraction"
    if frac_col in table:
        frac = table[frac_col].to_numpy(dtype=float)
        known = ~np.isnan(frac)
        if "has_mask" in table:
            known &= table["has_mask"].fillna(False).to_numpy(dtype=bool)
        lab = np.where(frac > building_threshold, "building", "no-building").astype(object)
        lab[~known] = "unknown"
        out["has_building"] = lab
    for col in ("phase", "disaster", "disaster_type", "split"):
        if col in table:
            out[col] = table[col].astype(object).where(table[col].notna(), "unknown").astype(
                str).to_numpy(dtype=object)
    cols = [c for c in DMG_COLUMNS if c in table]
    if cols:
        counts = table[cols].fillna(0).to_numpy(dtype=float)
        names = np.array([c[4:].replace("_", "-") for c in cols], dtype=object)
        dom = names[counts.argmax(axis=1)] if n else np.array([], dtype=object)
        out["dominant_damage"] = np.where(counts.sum(axis=1) > 0, dom, "none").astype(object)
    return out


# --------------------------------------------------------------------------- image files


def _resize(arr: np.ndarray, size: int, nearest: bool) -> Image.Image:
    img = Image.fromarray(arr)
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.NEAREST if nearest else Image.Resampling.BOX
                      if size < img.size[0] else Image.Resampling.BILINEAR)


def overlay_image(thumb: np.ndarray, truth: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
    """RGB uint8 overlay of boolean masks of the thumbnail's size: TP / FP / FN tinted with
    ``metrics.ERROR_COLOURS`` as ``metrics.error_overlay`` does, or without truth the predicted
    mask's outline in ``PRED_COLOUR``."""
    out = thumb.copy()
    if truth is not None:
        # Same blend as ``metrics.error_overlay(thumb, truth, pred, alpha=OVERLAY_ALPHA)`` (a test
        # checks equality), computed on the tinted pixels only: ~5x cheaper per thumbnail.
        sel = truth | pred
        palette = np.asarray([ERROR_COLOURS[k] for k in ("tp", "fp", "fn")], dtype=np.float32)
        kind = np.where(pred[sel], np.where(truth[sel], 0, 1), 2)
        rgb = out[sel].astype(np.float32)
        out[sel] = np.rint((1.0 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * palette[kind]).astype(
            np.uint8)
        return out
    out[mask_edges(pred)] = PRED_COLOUR
    return out


def write_tile_files(
    out_dir: Path, tile_id: str, image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray,
    thumb_size: int = 128,
) -> None:
    """A tile's thumbnail, true mask (when truth), predicted mask, overlay and full image,
    written by ``app.artifacts.save_tile_image`` (its names and qualities)."""
    thumb = _resize(image, thumb_size, nearest=False)
    save = partial(artifacts.save_tile_image, out_dir, tile_id=tile_id)
    save("thumb", image=thumb)
    pred_t = np.asarray(_resize(pred.astype(np.uint8) * 255, thumb_size, nearest=True)) > 127
    save("pred", image=_mask_image(pred_t))
    true_t = None
    if truth is not None:
        true_t = np.asarray(_resize(truth.astype(np.uint8) * 255, thumb_size, True)) > 127
        save("true", image=_mask_image(true_t))
    save("overlay", image=Image.fromarray(overlay_image(np.asarray(thumb), true_t, pred_t)))
    save("image", image=Image.fromarray(image))


def _mask_image(mask: np.ndarray) -> Image.Image:
    """A boolean mask as the format's mask file: 8-bit grey, 0 / 255."""
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


# --------------------------------------------------------------------------- extraction


#: Tiles per forward pass. 8 rather than 16: as fast on CPU (measured side by side), and the
#: batch's activations (~55 MiB per 256² tile for the light preset) stay ~0.2 GiB smaller, which
#: keeps a whole embedding process under 1 GB (TensorFlow's import alone is ~0.6 GiB).
DEFAULT_BATCH_SIZE = 8

#: How much the reader and image-writer threads are niced. Mild on purpose: at +10 they got a
#: tenth of a core's share once other processes were busy, and the network then waited on them.
BACKGROUND_NICE = 2


def _background_priority(step: int | None = None) -> None:
    """Lower the calling thread's CPU priority (Linux: nice applies per thread id).

    The reader and image-writer threads then only take CPU time the network leaves idle, instead
    of pre-empting TensorFlow's intra-op threads mid-op on a small machine. Raising one's own
    nice value needs no privilege; where it is unsupported this does nothing.
    """
    try:
        tid = threading.get_native_id()
        step = BACKGROUND_NICE if step is None else step
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + step))
    except (AttributeError, OSError):
        pass


def _prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``items`` in a background thread, ``depth`` items ahead. Errors re-raise here;
    leaving the loop early stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        _background_priority()
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", done))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(("error", exc))

    thread = threading.Thread(target=work, name="extract-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def _batches(dataset: Any, tile_ids: Sequence[str], batch_size: int) -> Iterator[tuple]:
    """(ids, images (B, H, W, 3) uint8, masks list) per batch; a size change starts a batch."""
    ids: list[str] = []
    images: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    for tid in tile_ids:
        image = np.asarray(dataset.image(tid), dtype=np.uint8)
        if images and image.shape != images[0].shape:
            yield ids, np.stack(images), masks
            ids, images, masks = [], [], []
        ids.append(tid)
        images.append(image)
        masks.append(dataset.mask(tid))
        if len(ids) == batch_size:
            yield ids, np.stack(images), masks
            ids, images, masks = [], [], []
    if ids:
        yield ids, np.stack(images), masks


def _check_inputs(model: keras.Model, table: pd.DataFrame, tile_ids: Sequence[str],
                  batch_size: int, dtype: str, thumb_size: int, threshold: float) -> None:
    if not tile_ids:
        raise ValueError("extract_embeddings needs at least one tile. Got none.")
    if len(set(tile_ids)) != len(tile_ids):
        raise ValueError("tile ids must be unique; the list given repeats some.")
    bad = [t for t in tile_ids if not safe_name(t)]
    if bad:
        raise ValueError(
            "tile ids become file names: they must be 1-200 characters without '/', '\\', NUL "
            f"or a leading '.'. Got {bad[:3]!r}."
        )
    missing = set(tile_ids) - set(table["tile_id"])
    if missing:
        raise ValueError(f"{len(missing)} tile ids are not in the dataset, e.g. "
                         f"{sorted(missing)[:3]!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"The 'batch_size' parameter must be an int >= 1. Got {batch_size!r}.")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"The 'dtype' parameter must be 'float16' or 'float32'. Got {dtype!r}.")
    if not isinstance(thumb_size, int) or thumb_size < 8:
        raise ValueError(f"The 'thumb_size' parameter must be an int >= 8. Got {thumb_size!r}.")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"The 'threshold' parameter must be in (0, 1). Got {threshold!r}.")
    size = model.inputs[0].shape[1]
    if size is not None and "size" in table:
        sizes = set(table.set_index("tile_id").loc[list(tile_ids), "size"].astype(int))
        if sizes != {int(size)}:
            raise ValueError(
                f"The model takes {size}x{size} tiles but the dataset has tiles of sizes "
                f"{sorted(sizes)}. Use a fully convolutional model (input_size None) or a "
                "dataset cut at the model's size."
            )


def extract_embeddings(
    model: keras.Model,
    dataset: Any,
    out_dir: Path,
    *,
    tile_ids: Sequence[str] | None = None,
    layer: str = "bottleneck",
    representation: str = "gap",
    batch_size: int = DEFAULT_BATCH_SIZE,
    projection_dims: int = 2048,
    projection: str = "sparse_random",
    random_state: int = 0,
    dtype: str = "float16",
    thumb_size: int = 128,
    threshold: float = 0.5,
    progress: bool = True,
    thumb_workers: int = 1,
) -> dict:
    """Stream ``tile_ids`` (default: every tile of ``dataset``, in table order) through the
    model and write into ``out_dir``: ``vectors.npy``, ``tiles.parquet`` (the dataset's per-tile
    columns + ``METRIC_COLUMNS``), ``thumbs/`` and ``images/`` (see ``app.artifacts``).

    ``dataset`` is a ``TileDataset`` (or anything with ``.table``, ``.image(id)``,
    ``.mask(id)``). Returns a summary: n_tiles, dims, activation_shape, params (every parameter
    that shapes the vectors, incl. the projector's ``describe()``), timing.

    With ``projection="ipca"`` (flatten only) the projector needs every tile before it can
    project any, so the network runs twice: a first pass only fits the projector; vectors,
    masks and metrics all still come from the second pass.
    """
    _check_representation(representation)
    if projection not in PROJECTIONS:
        raise ValueError(f"The 'projection' parameter must be one of {list(PROJECTIONS)}. "
                         f"Got {projection!r} instead.")
    if not isinstance(projection_dims, int) or projection_dims < 1:
        raise ValueError(f"The 'projection_dims' parameter must be an int >= 1. "
                         f"Got {projection_dims!r}.")
    table = dataset.table
    ids = list(table["tile_id"]) if tile_ids is None else list(tile_ids)
    _check_inputs(model, table, ids, batch_size, dtype, thumb_size, threshold)
    fm = feature_model(model, layer)
    out_dir = Path(out_dir)
    artifacts.make_tile_dirs(out_dir)
    params: dict[str, Any] = {
        "layer": layer, "representation": representation, "batch_size": batch_size,
        "projection_dims": projection_dims, "projection": projection,
        "random_state": random_state, "dtype": dtype, "thumb_size": thumb_size,
        "threshold": threshold, "spp_levels": list(SPP_LEVELS),
    }
    start = time.perf_counter()
    projector = None
    if representation == "flatten" and projection == "ipca":
        projector = _fit_projector(fm, dataset, ids, batch_size, params, progress)

    n = len(ids)
    vectors = None
    act_shape: tuple[int, ...] | None = None
    rows: list[dict] = []
    pending: deque[Future] = deque()
    max_pending = max(3 * batch_size, 8)
    pool = ThreadPoolExecutor(max_workers=max(1, thumb_workers), thread_name_prefix="thumbs",
                              initializer=_background_priority)
    bar = tqdm(total=n, unit="tile", desc=f"embed {layer}/{representation}",
               disable=not progress)
    row = 0
    try:
        for batch_ids, images, masks in _prefetch(_batches(dataset, ids, batch_size)):
            acts, prob = _forward(fm, images.astype(np.float32))
            if act_shape is None:
                act_shape = tuple(int(v) for v in acts.shape[1:])
            elif representation == "flatten" and tuple(acts.shape[1:]) != act_shape:
                raise ValueError(
                    f"flatten needs one tile size; activations {acts.shape[1:]} differ from "
                    f"the first batch's {act_shape}."
                )
            vec = pool_activations(acts, representation)
            if representation == "flatten":
                if projector is None and vec.shape[1] > projection_dims:
                    projector = make_projector(vec.shape[1], params)
                    projector.partial_fit(vec)
                if projector is not None:
                    vec = np.asarray(projector.transform(vec), dtype=np.float32)
            if vectors is None:
                vectors = artifacts.create_vectors(out_dir, n, vec.shape[1], dtype)
            stored = vec.astype(dtype)
            if not np.isfinite(stored).all():
                raise ValueError(
                    f"vectors of tiles {batch_ids[:3]} overflow {dtype}; use dtype='float32'."
                )
            vectors[row:row + len(batch_ids)] = stored
            # Metrics and image files run in the pool, so the network goes straight on with the
            # next batch; results are collected in tile order.
            for i, tid in enumerate(batch_ids):
                pending.append(pool.submit(
                    _finish_tile, out_dir, tid, images[i], masks[i], prob[i, ..., 0],
                    threshold, thumb_size,
                ))
            while len(pending) > max_pending:
                rows.append(pending.popleft().result())
            row += len(batch_ids)
            bar.update(len(batch_ids))
        while pending:
            rows.append(pending.popleft().result())
    finally:
        bar.close()
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    assert vectors is not None and act_shape is not None and row == n
    vectors.flush()
    dims = int(vectors.shape[1])
    del vectors
    params["projector"] = projector.describe() if projector is not None else None
    if representation == "flatten" and projector is None:
        params["projection"] = "none"
    artifacts.write_tiles_table(out_dir, _tile_table(table, ids, rows))
    seconds = time.perf_counter() - start
    return {
        "n_tiles": n,
        "dims": dims,
        "activation_shape": list(act_shape),
        "params": params,
        "timing": {"seconds": round(seconds, 3), "tiles_per_s": round(n / seconds, 3)},
    }


def _finish_tile(out_dir: Path, tile_id: str, image: np.ndarray, mask: np.ndarray | None,
                 prob: np.ndarray, threshold: float, thumb_size: int) -> dict:
    """Per-tile work after the forward pass: metrics row + image files (runs in the pool)."""
    pred = prob >= threshold
    truth = None if mask is None else np.asarray(mask) > 0
    row = tile_metrics(truth, pred)
    write_tile_files(out_dir, tile_id, image, truth, pred, thumb_size)
    return row


def _fit_projector(fm: keras.Model, dataset: Any, ids: Sequence[str], batch_size: int,
                   params: dict, progress: bool) -> Any | None:
    """First pass of an ipca flatten run: fit the projector on every tile's activations."""
    projector = None
    with tqdm(total=len(ids), unit="tile", desc="fit projector", disable=not progress) as bar:
        for batch_ids, images, _ in _prefetch(_batches(dataset, ids, batch_size)):
            acts, _ = _forward(fm, images.astype(np.float32))
            flat = pool_activations(acts, "flatten")
            if projector is None:
                projector = make_projector(flat.shape[1], params)
                if projector is None:
                    return None
            projector.partial_fit(flat)
            bar.update(len(batch_ids))
    return projector


def _tile_table(table: pd.DataFrame, ids: Sequence[str], rows: list[dict]) -> pd.DataFrame:
    base = table.set_index("tile_id").loc[list(ids)].reset_index()
    metrics = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    for col in ("tp", "fp", "fn"):
        metrics[col] = metrics[col].astype("float64")  # NaN without a mask
    metrics["pred_building_count"] = metrics["pred_building_count"].astype("int64")
    base = base.drop(columns=[c for c in METRIC_COLUMNS if c in base.columns])
    return pd.concat([base, metrics], axis=1)


def tile_id_filter(table: pd.DataFrame, splits: Sequence[str] | None = None,
                   limit: int | None = None) -> list[str]:
    """Tile ids of ``splits`` (all when None) in table order, at most ``limit``."""
    sel = table
    if splits:
        unknown = set(splits) - set(table["split"].astype(str))
        if unknown:
            raise ValueError(f"splits {sorted(unknown)} are not in the dataset (it has "
                             f"{sorted(set(table['split'].astype(str)))}).")
        sel = table[table["split"].isin(list(splits))]
    ids = sel["tile_id"].astype(str).tolist()
    if limit is not None:
        if limit < 1:
            raise ValueError(f"The 'limit' parameter must be >= 1. Got {limit!r}.")
        ids = ids[:limit]
    return ids


__all__: list[str] = [
    "DMG_COLUMNS", "METRIC_COLUMNS", "REPRESENTATIONS", "SPP_LEVELS", "embed_images",
    "extract_embeddings", "feature_model", "make_projector", "overlay_image",
    "pool_activations", "representation_dims", "tile_id_filter", "tile_labels",
    "tile_metrics", "write_tile_files",
]
