"""``model``: FLOPs per forward pass, achieved FLOP/s, Grad-CAM and large-image segmentation.

FLOPs are counted analytically from the layer shapes of ``build_unet(preset, input_size=S)``:

- ``Conv2D``: 2 · k² · C_in · C_out · H_out · W_out (a multiply-add = 2 FLOPs; bias ignored);
- ``Conv2DTranspose`` (k = 2, stride 2): 2 · k² · C_in · C_out · H_in · W_in;
- everything else (rescaling, batch norm, ReLU, pooling, sigmoid) as "elementwise": one FLOP per
  output element (two for batch norm at inference), listed apart, < 1 % of the total.

``tf.profiler``'s float-operation count of the traced graph is printed beside it when it works
offline (it counts the convolutions only, at batch 1).

Achieved FLOP/s = FLOPs per image × images ÷ wall time of ``model.predict`` (batch 16 at 256²,
batch 1 at 1024²), median of repeats; peak = cores × GHz × FLOPs/cycle (``bench.common.
peak_flops``). Random-weights models: the cost of a convolution does not depend on its weights.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    Report,
    Table,
    fmt_s,
    log,
    machine_info,
    median,
    peak_flops,
    run_child,
)

PRESETS = ("light", "seed")


def count_flops(model: Any) -> dict[str, float]:
    """{"conv": FLOPs of convolutions, "elementwise": the rest} for one image."""
    from keras import layers

    conv = other = 0.0
    for layer in model.layers:
        out = layer.output.shape
        if isinstance(layer, layers.InputLayer):
            continue
        if isinstance(layer, layers.Conv2DTranspose):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            cin = layer.input.shape[-1]
            h, w = layer.input.shape[1], layer.input.shape[2]
            conv += 2.0 * k * cin * layer.filters * h * w
        elif isinstance(layer, layers.Conv2D):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            cin = layer.input.shape[-1]
            conv += 2.0 * k * cin * layer.filters * out[1] * out[2]
        elif isinstance(layer, layers.Concatenate):
            continue
        else:
            elements = 1.0
            for d in out[1:]:
                elements *= d
            other += elements * (2 if isinstance(layer, layers.BatchNormalization) else 1)
    return {"conv": conv, "elementwise": other}


def profiler_flops(model: Any, size: int) -> float | None:
    """tf.profiler's float-op count of the traced forward pass at batch 1 (None if it fails)."""
    try:
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        fn = tf.function(lambda x: model(x, training=False))
        concrete = fn.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32))
        frozen = convert_variables_to_constants_v2(concrete)
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        info = tf.compat.v1.profiler.profile(graph=frozen.graph, options=opts)
        return float(info.total_float_ops) if info is not None else None
    except Exception:  # noqa: BLE001 - optional cross-check
        return None


def _model(preset: str, size: int | None = None) -> Any:
    import keras

    from app.ml.unet import build_unet

    keras.utils.set_random_seed(0)
    return build_unet(preset, input_size=size)


def flops_child(preset: str, sizes: list[int], batch: dict, images: dict,
                repeats: int) -> dict:
    """FLOPs (analytic + profiler) and achieved FLOP/s of batched predict per size."""
    import numpy as np

    from bench.data import images as make_images

    out = {}
    model = _model(preset)  # fully convolutional: the same weights for every size
    for size in sizes:
        fixed = _model(preset, size)
        counted = count_flops(fixed)
        prof = profiler_flops(fixed, size)
        n_img, bs = int(images[str(size)]), int(batch[str(size)])
        X = np.stack(make_images(n_img, size)).astype(np.float32)
        model.predict(X[:bs], batch_size=bs, verbose=0)  # warm-up / trace
        secs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.predict(X, batch_size=bs, verbose=0)
            secs.append(time.perf_counter() - t0)
        out[str(size)] = {**counted, "profiler": prof, "seconds": secs, "images": n_img,
                          "batch": bs, "params": int(model.count_params())}
    return out


def explain_child(preset: str, size: int, repeats: int, warm_up: bool) -> dict:
    """Grad-CAM and (above 256²) segmentation timings in a fresh process.

    ``warm_up=False``: the first call after the model is built (a server that did not warm up
    pays this once), then ``repeats`` more calls on *new* images. ``warm_up=True``: what a
    served dashboard does, ``ModelService.warm_up()`` first (timed), then new images (the
    "cold" request of the issue: not in the result cache) and repeats of one image (cache hits).
    """
    import numpy as np

    from app.ml.inference import ModelService, ResultCache
    from bench.data import images as make_images

    model = _model(preset)
    svc = ModelService(model=model, cache=ResultCache())
    svc.sha256  # noqa: B018 - weights hash (first-use cost of an in-memory model) not timed
    imgs = make_images(repeats + 1, size)
    out: dict[str, Any] = {}
    if warm_up:
        t0 = time.perf_counter()
        out["warm_up"] = svc.warm_up(sizes=(256, size) if size != 256 else (256,))
        out["warm_up_s"] = time.perf_counter() - t0

    def timed(fn: Any) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    cam = [timed(lambda im=im: svc.explain(im, "seg-grad-cam")) for im in imgs]
    out["cam_first"], out["cam_new"] = cam[0], cam[1:]
    out["cam_hit"] = [timed(lambda: svc.explain(imgs[0], "seg-grad-cam"))
                      for _ in range(max(3, repeats))]
    if size > 256:
        seg = [timed(lambda im=im: svc.segment_large(im)) for im in imgs]
        out["segment_first"], out["segment_new"] = seg[0], seg[1:]
        tiled = [timed(lambda im=im: svc.segment_large(im, single_pass_max_pixels=0,
                                                         use_cache=False)) for im in imgs]
        out["tiled_first"], out["tiled_new"] = tiled[0], tiled[1:]
        out["segment_hit"] = [timed(lambda: svc.segment_large(imgs[0]))
                              for _ in range(max(3, repeats))]
        out["single_pass"] = bool(np.prod(imgs[0].shape[:2]) <= _single_pass_limit())
    return out


def _single_pass_limit() -> int:
    from app import config

    return config.SINGLE_PASS_MAX_PIXELS


def run(quick: bool = False, *, presets: tuple[str, ...] = PRESETS,
        parts: tuple[str, ...] = ("flops", "explain"),
        sizes: tuple[int, ...] | None = None) -> Report:
    """``parts`` selects the tables, ``sizes`` the input sizes (default 256 and 1024)."""
    report = Report("model", "model: FLOPs, achieved FLOP/s, Grad-CAM, 1024² segmentation")
    if tuple(parts) != ("flops", "explain") or sizes:
        report.notes.append(f"run from Python: `run_benchmark(\"model\", parts={tuple(parts)!r}"
                            + (f", sizes={tuple(sizes)!r}" if sizes else "") + ")`")
    info = machine_info()
    peak, formula = peak_flops(info)
    sizes = list(sizes) if sizes else [256] if quick else [256, 1024]
    repeats = 1 if quick else 3
    batch = {"256": 16, "1024": 1}
    images = {"256": 16 if quick else 32, "1024": 1}
    if "flops" in parts:
        t1 = Table("FLOPs per forward pass (one image) and achieved FLOP/s of `model.predict`",
                   ["preset", "params", "input", "conv FLOPs (analytic)", "elementwise",
                    "tf.profiler", "batch × images", "median time", "achieved", "% of peak"])
        for preset in presets:
            for size in sizes:
                log(f"model: FLOPs and throughput, {preset} {size}²")
                r = run_child("bench.model:flops_child",
                              {"preset": preset, "sizes": [size], "batch": batch, "images": images,
                               "repeats": repeats}, timeout=900)
                v = r[str(size)]
                total = v["conv"] + v["elementwise"]
                sec = median(v["seconds"])
                achieved = total * v["images"] / sec
                t1.add(preset, f"{v['params']:,}", f"{size}²", f"{v['conv'] / 1e9:.1f} G",
                       f"{v['elementwise'] / 1e9:.2f} G",
                       f"{v['profiler'] / 1e9:.1f} G" if v["profiler"] else "n/a",
                       f"{v['batch']} × {v['images']}", fmt_s(sec),
                       f"{achieved / 1e9:.1f} GFLOP/s", f"{100 * achieved / peak:.1f} %")
        t1.notes += [
            f"Peak fp32 estimate: {formula} (nominal clock; AMX is not used for fp32).",
            "Conv FLOPs: 2·k²·C_in·C_out·H_out·W_out per Conv2D, 2·k²·C_in·C_out·H_in·W_in per "
            "Conv2DTranspose; FLOPs grow exactly with the pixel count (1024² = 16 × 256²).",
            f"Times are medians of {repeats} `model.predict` calls after a warm-up; the 2 cores are "
            "shared, so % of peak is a lower bound for this CPU.",
        ]
        report.tables.append(t1)

    if "explain" in parts:
        t2 = Table("Grad-CAM (`ModelService.explain`, seg-grad-cam, bottleneck, target "
                   "\"predicted\") and segmentation, light preset; every time is a new image "
                   "unless it says cache hit",
                   ["what", "input", "server start", "first call", f"new image (median of "
                    f"{repeats})", "runs (s)"])
        for size in sizes:
            for warm in (False, True):
                log(f"model: Grad-CAM / segmentation at {size}², warm-up {warm}")
                r = run_child("bench.model:explain_child",
                              {"preset": "light", "size": size, "repeats": repeats,
                               "warm_up": warm}, timeout=900)
                start = (f"warm-up {fmt_s(r['warm_up_s'])}" if warm else "no warm-up")
                t2.add("Seg-Grad-CAM", f"{size}²", start, fmt_s(r["cam_first"]),
                       fmt_s(median(r["cam_new"])), " / ".join(f"{v:.2f}" for v in r["cam_new"]))
                if warm:
                    t2.add("Seg-Grad-CAM, same image again (result-cache hit)", f"{size}²",
                           start, "–", fmt_s(median(r["cam_hit"])),
                           " / ".join(f"{v * 1000:.2f} ms" for v in r["cam_hit"]))
                if "segment_new" in r:
                    how = ("one whole-image pass" if r["single_pass"] else
                           "256² tiles, overlap 32, blended")
                    t2.add(f"`segment_large` (default: {how})", f"{size}²", start,
                           fmt_s(r["segment_first"]), fmt_s(median(r["segment_new"])),
                           " / ".join(f"{v:.2f}" for v in r["segment_new"]))
                    t2.add("`segment_large`, forced tiling (25 × 256² tiles, batch 4, blended)",
                           f"{size}²", start, fmt_s(r["tiled_first"]),
                           fmt_s(median(r["tiled_new"])),
                           " / ".join(f"{v:.2f}" for v in r["tiled_new"]))
                    if warm:
                        t2.add("`segment_large` again on the same image (result-cache hit)",
                               f"{size}²", start, "–", fmt_s(median(r["segment_hit"])),
                               " / ".join(f"{v * 1000:.2f} ms" for v in r["segment_hit"]))
        t2.notes += [
            "Fresh process per row group. \"first call\" is the first request after the model "
            "is built; with warm-up (what `python -m app serve` and each gunicorn worker run in "
            "a background thread at start: load, trace the forward pass at 256² and 1024² and "
            "the bottleneck Seg-Grad-CAM pass) it costs what any new image costs.",
            "\"new image\" = not in the result cache: the issue's *cold* request on a running "
            "server. Forward and backward passes are traced `tf.function`s (one graph for any "
            "image size).",
            f"Images up to {_single_pass_limit():,} padded pixels are segmented in one pass "
            "(`config.SINGLE_PASS_MAX_PIXELS`), larger ones in blended 256² tiles.",
        ]
        report.tables.append(t2)
    return report
