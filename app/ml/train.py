"""Training: a seeded tf.data pipeline with joint image/mask augmentation, BCE + Dice loss for
the ~6 % building pixels of aerial scenes, early stopping on validation, and a model-store run.

TensorFlow places the work on a GPU automatically when one is visible; nothing here pins a device.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from app import artifacts
from app.ml.unet import PRESETS, build_unet


@dataclass
class TrainConfig:
    """Every knob of a training run; stored in the model manifest."""

    preset: str = "light"
    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 1e-3
    patience: int = 5
    seed: int = 0
    crop: int | None = None  # random crop size for training (None: whole tiles)
    steps_per_epoch: int | None = None
    max_minutes: float | None = None  # wall-clock budget; stops after the epoch that exceeds it
    augment: bool = True
    dice_weight: float = 1.0
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(
                f"The 'preset' parameter must be one of {sorted(PRESETS)}. "
                f"Got {self.preset!r} instead."
            )
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"The '{name}' parameter must be an int >= 1. Got {value!r} instead."
                )
        if self.crop is not None and (self.crop < 16 or self.crop % 16):
            raise ValueError(
                "The 'crop' parameter must be a multiple of 16 >= 16 or None. "
                f"Got {self.crop!r} instead."
            )


def gpu_devices() -> list[str]:
    return [d.name for d in tf.config.list_physical_devices("GPU")]


# --------------------------------------------------------------------------- data


def _load_pair(image_path: tf.Tensor, mask_path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    image = tf.io.decode_png(tf.io.read_file(image_path), channels=3)
    mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
    image = tf.cast(image, tf.float32)
    mask = tf.cast(mask > 0, tf.float32)
    return image, mask


def _augment(
    image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, crop: int | None, augment: bool
):
    """Random crop, flips, 90° rotations and light colour jitter; geometry applied to image and
    mask alike, every draw from a stateless seed so a run is reproducible."""
    seeds = tf.random.experimental.stateless_split(seed, num=6)
    both = tf.concat([image, mask], axis=-1)
    if crop is not None:
        both = tf.image.stateless_random_crop(both, size=[crop, crop, 4], seed=seeds[0])
    if not augment:
        return both[..., :3], both[..., 3:]
    both = tf.image.stateless_random_flip_left_right(both, seed=seeds[1])
    both = tf.image.stateless_random_flip_up_down(both, seed=seeds[2])
    k = tf.random.stateless_uniform([], seeds[3], minval=0, maxval=4, dtype=tf.int32)
    both = tf.image.rot90(both, k)
    image, mask = both[..., :3], both[..., 3:]
    image = tf.image.stateless_random_brightness(image, 20.0, seed=seeds[4])
    image = tf.image.stateless_random_contrast(image, 0.85, 1.15, seed=seeds[5])
    return tf.clip_by_value(image, 0.0, 255.0), mask


def make_dataset(
    image_paths: list[str],
    mask_paths: list[str],
    *,
    batch_size: int,
    training: bool,
    seed: int = 0,
    crop: int | None = None,
    augment: bool = True,
) -> tf.data.Dataset:
    """A tf.data pipeline over tile files; seeded shuffle and augmentation when training."""
    if len(image_paths) != len(mask_paths) or not image_paths:
        raise ValueError(
            f"make_dataset needs as many mask paths as image paths (>0). Got "
            f"{len(image_paths)} images and {len(mask_paths)} masks."
        )
    ds = tf.data.Dataset.from_tensor_slices((image_paths, mask_paths))
    if training:
        ds = ds.shuffle(len(image_paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(_load_pair, num_parallel_calls=tf.data.AUTOTUNE)
    if training and (augment or crop):
        counter = tf.data.Dataset.counter()
        seeds = counter.map(lambda i: tf.stack([tf.cast(seed, tf.int64), i]))
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda pair, s: _augment(pair[0], pair[1], s, crop, augment),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- loss, metrics


def dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor, smooth: float = 1.0) -> tf.Tensor:
    """Soft Dice per batch: insensitive to the scarcity of building pixels."""
    y_true = tf.reshape(tf.cast(y_true, tf.float32), [-1])
    y_pred = tf.reshape(tf.cast(y_pred, tf.float32), [-1])
    intersection = tf.reduce_sum(y_true * y_pred)
    return 1.0 - (2.0 * intersection + smooth) / (
        tf.reduce_sum(y_true) + tf.reduce_sum(y_pred) + smooth
    )


def make_loss(dice_weight: float = 1.0):
    bce = keras.losses.BinaryCrossentropy()

    def bce_dice(y_true, y_pred):
        return bce(y_true, y_pred) + dice_weight * dice_loss(y_true, y_pred)

    bce_dice.__name__ = "bce_dice"
    return bce_dice


def make_metrics() -> list:
    return [
        keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou"),
        keras.metrics.Precision(thresholds=0.5, name="precision"),
        keras.metrics.Recall(thresholds=0.5, name="recall"),
    ]


def evaluate(model: keras.Model, ds: tf.data.Dataset, threshold: float = 0.5) -> dict:
    """Pixel precision, recall, F1 and IoU summed over a whole split (not averaged per tile)."""
    tp = fp = fn = tn = 0
    for images, masks in ds:
        prob = model(images, training=False).numpy()[..., 0]
        truth = masks.numpy()[..., 0] > 0.5
        pred = prob >= threshold
        tp += int(np.sum(pred & truth))
        fp += int(np.sum(pred & ~truth))
        fn += int(np.sum(~pred & truth))
        tn += int(np.sum(~pred & ~truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    iou = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    return {
        "precision": precision, "recall": recall, "f1": f1, "iou": iou,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn, "threshold": threshold,
    }


class _TimeBudget(keras.callbacks.Callback):
    """Stops training after the epoch that exceeds a wall-clock budget."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = minutes * 60.0
        self.start = time.monotonic()
        self.stopped_by_budget = False

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self.start > self.seconds:
            self.stopped_by_budget = True
            self.model.stop_training = True

    def left(self) -> str:
        """``"budget 12.5 of 25 min left"``, for progress lines."""
        left = max(0.0, self.seconds - (time.monotonic() - self.start)) / 60.0
        return f"budget {left:.1f} of {self.seconds / 60:g} min left"


def _duration(seconds: float) -> str:
    """``"42 s"``, ``"3.5 min"`` or ``"1.2 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class _Progress(keras.callbacks.Callback):
    """A tqdm bar per epoch (steps done of the total, rate, ETA, running loss and the time
    budget left) whose last state stays on screen with the epoch's validation IoU.

    When stderr is not a terminal (``make ... | tee``, CI logs) a bar only ends its line when
    its epoch ends, so plain lines are written too: after the first step (the one that traces
    the graph), then every ``line_seconds``, each with the steps done of the whole run, the
    seconds per step, the ETA of the epoch and of the run (bounded by the budget) and the
    budget left. Seconds per step are a moving average of the step times, the first step
    (graph tracing) and validation left out once later steps are known.
    """

    def __init__(self, epochs: int, steps: int | None, budget: _TimeBudget | None,
                 *, lines: bool | None = None, line_seconds: float = 30.0) -> None:
        super().__init__()
        self.epochs, self.steps, self.budget = epochs, steps, budget
        self.bar: tqdm | None = None
        isatty = getattr(sys.stderr, "isatty", None)
        self.lines = (not (isatty and isatty())) if lines is None else lines
        self.line_seconds = line_seconds
        self.epoch = 0
        self.done = 0  # steps done over every epoch
        self.start = time.monotonic()
        self.next_line = 0.0
        self.last = self.start  # when the previous step (or the epoch) ended
        self.per_step: float | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.start = self.last = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch
        self.last = time.monotonic()
        total = self.params.get("steps") or self.steps
        self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step",
                        leave=True, dynamic_ncols=True)
        if self.budget is not None:
            self.bar.set_postfix_str(self.budget.left())

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.done += 1
        now = time.monotonic()
        step_seconds, self.last = now - self.last, now
        if self.done == 2 or self.per_step is None:
            self.per_step = step_seconds  # the second step replaces the tracing one
        else:
            self.per_step = 0.8 * self.per_step + 0.2 * step_seconds
        loss = f"loss {float(logs['loss']):.4f}" if logs and "loss" in logs else ""
        if self.bar is not None:
            self.bar.update(1)
            parts = [p for p in (loss, self.budget.left() if self.budget else "") if p]
            self.bar.set_postfix_str(", ".join(parts), refresh=False)
        if self.lines and now >= self.next_line:
            self.next_line = now + self.line_seconds
            tqdm.write(self.line(batch + 1, loss), file=sys.stderr)

    def line(self, step: int, loss: str = "") -> str:
        """One plain progress line (see the class docstring)."""
        steps = self.params.get("steps") or self.steps or 0
        elapsed = time.monotonic() - self.start
        per_step = self.per_step if self.per_step is not None else elapsed
        all_steps = steps * self.epochs
        parts = [f"epoch {self.epoch + 1}/{self.epochs} step {step}/{steps or '?'}",
                 f"{self.done}/{all_steps or '?'} steps of the run",
                 f"{per_step:.2f} s/step"]
        if steps:
            parts.append(f"epoch ETA {_duration(per_step * max(0, steps - step))}")
            run_left = per_step * max(0, all_steps - self.done)
            if self.budget is not None:
                run_left = min(run_left, max(0.0, self.budget.seconds - elapsed))
            parts.append(f"run ETA at most {_duration(run_left)}")
        if loss:
            parts.append(loss)
        if self.budget is not None:
            parts.append(self.budget.left())
        return "train: " + ", ".join(parts)

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.bar.postfix or ''}, validating".lstrip(", "))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.bar is None:
            return
        logs = logs or {}
        parts = [f"{k} {float(logs[k]):.4f}" for k in ("loss", "val_loss", "val_iou")
                 if k in logs]
        if self.budget is not None:
            parts.append(self.budget.left())
        self.bar.set_postfix_str(", ".join(parts))
        self.bar.close()
        self.bar = None

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.budget is not None and self.budget.stopped_by_budget:
            tqdm.write(f"time budget of {self.budget.seconds / 60:g} min used up: training "
                       "stops here and keeps the best epoch's weights", file=sys.stderr)


# --------------------------------------------------------------------------- fit


def train(
    dataset_path: Path,
    run_id: str,
    cfg: TrainConfig | None = None,
    *,
    store: Path | None = None,
    verbose: int | str = "auto",
    progress: bool = False,
) -> tuple[Path, dict]:
    """Train on a tile dataset (``make-dataset`` output) and write ``model_store/<run_id>``.

    ``progress`` prints a start line and a bar per epoch (steps, ETA, loss, time budget left)
    to stderr instead of Keras' own ``verbose`` output. Returns the run path and the held-out
    test metrics.
    """
    from app.data.dataset import TileDataset

    cfg = cfg or TrainConfig()
    cfg.validate()
    artifacts.validate_run_id(run_id)
    data = TileDataset.open(Path(dataset_path))
    keras.utils.set_random_seed(cfg.seed)

    splits = {}
    for split in ("train", "val", "test"):
        images, masks = data.paths(split)
        keep = [(i, m) for i, m in zip(images, masks, strict=True) if m]
        splits[split] = ([i for i, _ in keep], [m for _, m in keep])
    if not splits["train"][0] or not splits["val"][0]:
        raise ValueError(
            f"Dataset {dataset_path}: training needs labelled tiles in the train and val "
            f"splits. Got {len(splits['train'][0])} train and {len(splits['val'][0])} val."
        )
    train_ds = make_dataset(
        *splits["train"], batch_size=cfg.batch_size, training=True, seed=cfg.seed,
        crop=cfg.crop, augment=cfg.augment,
    )
    if cfg.steps_per_epoch:
        train_ds = train_ds.repeat()
    val_ds = make_dataset(*splits["val"], batch_size=cfg.batch_size, training=False)
    test_paths = splits["test"] if splits["test"][0] else splits["val"]
    test_ds = make_dataset(*test_paths, batch_size=cfg.batch_size, training=False)

    model = build_unet(cfg.preset, input_size=None)
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss=make_loss(cfg.dice_weight),
        metrics=make_metrics(),
    )
    budget = _TimeBudget(cfg.max_minutes) if cfg.max_minutes else None
    callbacks: list = [
        keras.callbacks.EarlyStopping(
            monitor="val_iou", mode="max", patience=cfg.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(1, cfg.patience // 2), min_lr=1e-5
        ),
    ]
    if budget:
        callbacks.append(budget)
    if progress:
        n_train = len(splits["train"][0])
        steps = cfg.steps_per_epoch or -(-n_train // cfg.batch_size)
        budget_text = f", time budget {cfg.max_minutes:g} min" if cfg.max_minutes else ""
        tqdm.write(f"training {cfg.preset} U-Net on {n_train} train and "
                   f"{len(splits['val'][0])} val tiles: up to {cfg.epochs} epochs of {steps} "
                   f"steps{budget_text} (the first steps trace the graph)", file=sys.stderr)
        callbacks.append(_Progress(cfg.epochs, steps, budget))
        verbose = 0
    start = time.monotonic()
    hist = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=cfg.epochs,
        steps_per_epoch=cfg.steps_per_epoch,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the tf.data pipeline shuffles itself (seeded)
    )
    seconds = time.monotonic() - start
    if budget and budget.stopped_by_budget and cfg.max_minutes:
        # EarlyStopping restores best weights only when it stops training itself.
        best = callbacks[0].best_weights
        if best is not None:
            model.set_weights(best)
    history = [
        {"epoch": i + 1, **{k: float(v[i]) for k, v in hist.history.items()}}
        for i in range(len(hist.history.get("loss", [])))
    ]
    val_metrics = evaluate(model, val_ds)
    test_metrics = evaluate(model, test_ds)
    table = data.table
    split_counts = {s: int((table["split"] == s).sum()) for s in ("train", "val", "test")}
    split_groups = {
        s: sorted(table.loc[table["split"] == s, "group"].unique().tolist())
        for s in ("train", "val", "test")
    }
    metrics = {
        "val": val_metrics,
        "test": test_metrics,
        "test_split": "test" if splits["test"][0] else "val",
        "train_seconds": round(seconds, 1),
        "epochs_run": len(history),
        "devices": gpu_devices() or ["CPU"],
    }
    path = artifacts.save_model_run(
        model,
        run_id,
        preset=cfg.preset,
        input_size=int(table["size"].iloc[0]),
        dataset={
            "path": str(Path(dataset_path).name),
            "name": data.manifest.get("name"),
            "source": data.manifest.get("source"),
            "params": data.manifest.get("params", {}),
            "counts": data.manifest.get("counts", {}),
        },
        split={"counts": split_counts, "groups": split_groups},
        params=asdict(cfg),
        metrics=metrics,
        history=history,
        architecture=PRESETS[cfg.preset].to_dict(),
        store=store,
    )
    return path, metrics
