"""``python -m app import-model``: open a U-Net trained anywhere else.

:func:`import_model` reads a Keras 3 ``.keras`` or legacy ``.h5`` file (``safe_mode=True``),
detects what the dashboard needs to know (input geometry, preprocessing, output kind, the
building channel, the pre-activation tensor, candidate embedding layers), applies the user's
overrides, builds the canonical model (``app.ml.adapter``) and checks that its mask equals the
user model's building probability, and only then copies the file byte for byte into
``model_store/<run>/`` (``artifacts.save_imported_model_run``). Every refusal happens before
anything is written, and its message names the file and what was expected.
"""

from __future__ import annotations

import importlib
import json
import math
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app import artifacts

__all__ = [
    "INPUT_RANGES",
    "ImportError_",
    "ImportResult",
    "detect",
    "import_model",
    "load_user_model",
    "resolve",
]

#: --input-range → (scale, offset) applied to 0..255 pixels.
INPUT_RANGES: dict[str, tuple[float, float]] = {
    "0-1": (1.0 / 255.0, 0.0),
    "0-255": (1.0, 0.0),
    "-1-1": (1.0 / 127.5, -1.0),
}
#: Size multiples tried when probing a free-size model, smallest first.
PROBE_MULTIPLES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_SKIP_TYPES = ("InputLayer", "Rescaling", "Normalization", "Dropout", "SpatialDropout2D",
               "GaussianNoise", "GaussianDropout", "BatchNormalization", "LayerNormalization")


class ImportError_(ValueError):  # noqa: N801 - a ValueError the CLI prints; not builtin ImportError
    """A model that cannot be imported; the message says why and what was expected."""


@dataclass
class ImportResult:
    """What ``import_model`` found, used and wrote."""

    path: Path | None  # the run folder (None for a dry run)
    detected: dict
    overrides: dict
    adapter: dict
    check: dict
    rows: list[tuple[str, str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- loading


def _file_kind(path: Path) -> str:
    """"keras" or "h5" from the file's suffix AND its first bytes, else ImportError_."""
    expected = ("expected a Keras 3 .keras archive (a zip holding config.json) or a legacy "
                ".h5 file (HDF5)")
    if not path.is_file():
        raise ImportError_(f"The model file {path} does not exist; {expected}.")
    with path.open("rb") as fh:
        head = fh.read(8)
    suffix = path.suffix.lower()
    if suffix == ".keras" and head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ImportError_(
                f"The model file {path} is truncated or corrupt ({exc}); {expected}.") from None
        if "config.json" not in names or bad is not None:
            raise ImportError_(f"The model file {path} is not a complete Keras archive "
                               f"(no config.json or a damaged member); {expected}.")
        return "keras"
    if suffix in (".h5", ".hdf5") and head == _HDF5_MAGIC:
        return "h5"
    raise ImportError_(f"The model file {path} is not a Keras model file; {expected}.")


def _config_classes(path: Path, kind: str) -> list[tuple[str, str]]:
    """(class_name, module) of every object in the file's model config (module "" in .h5)."""
    try:
        if kind == "keras":
            with zipfile.ZipFile(path) as zf:
                config = json.loads(zf.read("config.json"))
        else:
            import h5py  # lazy: only legacy files need it

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
                config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except Exception:  # the caller reports the load error itself
        return []
    found: list[tuple[str, str]] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            if isinstance(obj.get("class_name"), str):
                found.append((obj["class_name"], str(obj.get("module") or "")))
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    walk(config)
    return found


def _unknown_classes(path: Path, kind: str, custom: dict) -> list[str]:
    import keras

    out = []
    for name, module in _config_classes(path, kind):
        if name in custom or name in out:
            continue
        if module:
            if not module.startswith("keras"):
                out.append(name)
        elif not (hasattr(keras.layers, name) or hasattr(keras.models, name)
                  or hasattr(keras.initializers, name) or hasattr(keras.regularizers, name)
                  or hasattr(keras.constraints, name) or hasattr(keras, name)
                  or keras.saving.get_registered_object(name) is not None):
            out.append(name)
    return out


def custom_objects_from(module_name: str | None) -> dict:
    """Import ``module_name`` (which runs its code: the user trusts it) and return the
    objects it offers: its ``CUSTOM_OBJECTS`` dict if any, plus every Keras layer / model /
    loss class it defines (registered ones are found by Keras anyway)."""
    if not module_name:
        return {}
    import keras

    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ImportError_(
            f"The '--custom-objects' module {module_name!r} could not be imported ({exc}); "
            "expected an importable Python module name (on PYTHONPATH) that defines or "
            "registers the model's custom classes.") from None
    objects = dict(getattr(module, "CUSTOM_OBJECTS", {}) or {})
    for name, obj in vars(module).items():
        if isinstance(obj, type) and issubclass(
                obj, keras.layers.Layer | keras.losses.Loss | keras.metrics.Metric):
            objects.setdefault(name, obj)
    return objects


def load_user_model(path: Path, custom_objects: str | None = None) -> Any:
    """The user's model from ``path`` with ``safe_mode=True`` (custom classes only from the
    named module); ImportError_ that lists unknown custom classes."""
    import keras

    path = Path(path)
    kind = _file_kind(path)
    custom = custom_objects_from(custom_objects)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True,
                                       custom_objects=custom or None)
    except Exception as exc:
        unknown = _unknown_classes(path, kind, custom)
        if unknown:
            raise ImportError_(
                f"The model file {path} uses custom classes Keras does not know: "
                f"{', '.join(unknown)}. Pass --custom-objects MODULE, a Python module that "
                "defines or registers them (importing it runs its code).") from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if kind == "h5" and ("truncat" in first.lower() or "signature" in first.lower()):
            first = f"truncated or corrupt HDF5 ({first})"
        raise ImportError_(f"The model file {path} could not be loaded as a Keras model: "
                           f"{first}") from None


# --------------------------------------------------------------------------- detection


def _shape(t: Any) -> tuple:
    return tuple(None if d is None else int(d) for d in t.shape)


def _run(model: Any, h: int, w: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(0, 1, (1, h, w, 3)).astype(np.float32)
    out = _call(model, x)
    out = out[0] if isinstance(out, list | tuple) else out
    return np.asarray(out)


def _call(model: Any, x: np.ndarray) -> Any:
    """``model(x)`` in inference mode, without Keras's "structure of inputs" warning (a bare
    array for a one-input model is what we mean)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return model(x, training=False)


def _probe_multiple(model: Any) -> tuple[int | None, str]:
    """The smallest size multiple m for which 2m and 3m inputs give same-size outputs, or
    (None, why) when no multiple up to 256 does."""
    why = ""
    for m in PROBE_MULTIPLES:
        ok = True
        for s in (2 * m, 3 * m):
            try:
                out = _run(model, s, s)
            except Exception as exc:  # too small / a concat mismatch: try a larger multiple
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                ok = False
                break
            if out.ndim == 4 and out.shape[1:3] != (s, s):
                why = (f"a {s}x{s} input gives a {out.shape[1]}x{out.shape[2]} output; expected "
                       "an output the size of the input")
                ok = False
                break
        if ok:
            return m, ""
    return None, why


def _act_name(fn: Any) -> str:
    return str(getattr(fn, "__name__", fn)).lower()


def _output_layer(model: Any) -> Any:
    history = getattr(model.outputs[0], "_keras_history", None)
    return history[0] if history else model.layers[-1]


def _detect_output(model: Any, channels: int, sample: np.ndarray) -> dict:
    """Output kind, the layer whose sigmoid/softmax can be made linear, and how found."""
    from keras import layers

    op = _output_layer(model)
    act = None
    if isinstance(op, layers.Softmax):
        act = "softmax"
    elif isinstance(op, layers.Activation) or hasattr(op, "activation"):
        act = _act_name(op.activation)
    linearize = op.name if act in ("sigmoid", "softmax") else None
    if act in ("sigmoid", "softmax"):
        kind, how = act, f"{op.__class__.__name__} {op.name!r} applies {act}"
    elif act == "linear":
        kind, how = "logits", f"{op.__class__.__name__} {op.name!r} is linear"
    else:
        # No activation to read: tell probabilities from logits by the values.
        lo, hi = float(sample.min()), float(sample.max())
        sums = sample.sum(axis=-1)
        if lo >= 0 and hi <= 1 and channels > 1 and np.allclose(sums, 1, atol=1e-3):
            kind = "softmax"
        elif lo >= 0 and hi <= 1:
            kind = "sigmoid"
        else:
            kind = "logits"
        how = f"last layer {op.name!r} ({op.__class__.__name__}): guessed from its values"
    return {"kind": kind, "activation_layer": linearize, "how": how, "layer": op.name}


def _preprocessing_inside(model: Any) -> str | None:
    """The name of a Rescaling / Normalization layer before the first weighted layer."""
    for layer in model.layers:
        name = layer.__class__.__name__
        if name in ("Rescaling", "Normalization"):
            return layer.name
        if layer.weights and name not in ("Normalization",):
            return None
    return None


def _candidates(model: Any, skip: set[str], size: tuple[int, int]) -> list[dict]:
    """4-D layers a user may embed from, in graph order, with their output size at ``size``."""
    import keras

    picked = []
    for layer in model.layers:
        if layer.__class__.__name__ in _SKIP_TYPES or layer.name in skip:
            continue
        try:
            out = layer.output
        except (AttributeError, ValueError):  # shared layer: no single output
            continue
        if isinstance(out, list | tuple) or len(getattr(out, "shape", ())) != 4:
            continue
        picked.append(layer)
    if not picked:
        return []
    probe = keras.Model(model.inputs, [lyr.output for lyr in picked])
    x = np.zeros((1, *size, 3), np.float32)
    outs = _call(probe, x)
    outs = outs if isinstance(outs, list | tuple) else [outs]
    return [{"name": lyr.name, "type": lyr.__class__.__name__,
             "shape": [int(d) for d in np.shape(o)[1:]]} for lyr, o in zip(picked, outs, strict=True)]


def _default_embedding(cands: list[dict]) -> str:
    """The deepest layer: the smallest spatial size, then the most channels, then the last."""
    best = min(cands, key=lambda c: (c["shape"][0] * c["shape"][1], -c["shape"][2]))
    area, chans = best["shape"][0] * best["shape"][1], best["shape"][2]
    same = [c for c in cands if c["shape"][0] * c["shape"][1] == area and c["shape"][2] == chans]
    return same[-1]["name"]


def detect(model: Any, path: Path | str = "model") -> dict:
    """What the dashboard needs to know of ``model`` (ImportError_ for what it cannot use)."""
    if len(model.inputs) != 1:
        names = [getattr(t, "name", "?") for t in model.inputs]
        raise ImportError_(
            f"The model in {path} has {len(model.inputs)} inputs {names}; expected one image "
            "input of shape (batch, height, width, 3).")
    in_shape = _shape(model.inputs[0])
    if len(in_shape) != 4:
        raise ImportError_(f"The model in {path} has an input of shape {in_shape}; expected "
                           "(batch, height, width, 3).")
    if in_shape[3] != 3:
        raise ImportError_(
            f"The model in {path} expects {in_shape[3]}-channel images (input shape "
            f"{in_shape}); the data is RGB: expected an input of shape (batch, height, width, 3).")
    if len(model.outputs) != 1:
        raise ImportError_(f"The model in {path} has {len(model.outputs)} outputs; expected one "
                           "segmentation output (batch, height, width, channels).")
    out_shape = _shape(model.outputs[0])
    if len(out_shape) != 4:
        raise ImportError_(
            f"The model in {path} has no spatial output (output shape {out_shape}, a "
            "classifier?); expected a segmentation map (batch, height, width, channels) the size "
            "of the input.")
    channels = out_shape[3]
    h, w = in_shape[1], in_shape[2]
    if (h is None) != (w is None):
        raise ImportError_(f"The model in {path} fixes one side of its input only ({in_shape}); "
                           "expected both sides fixed or both free.")
    if h is not None:
        if out_shape[1:3] != (h, w):
            raise ImportError_(
                f"The model in {path} outputs {out_shape[1]}x{out_shape[2]} maps for a {h}x{w} "
                "input; expected an output the size of the input.")
        geometry = {"mode": "fixed", "size": [h, w], "multiple": None}
        size = (h, w)
    else:
        multiple, why = _probe_multiple(model)
        if multiple is None:
            raise ImportError_(
                f"The model in {path} gave no output the size of its input for any input size "
                f"that is a multiple of 1..256 ({why}); expected a segmentation map the size of "
                "the input.")
        geometry = {"mode": "free", "size": None, "multiple": multiple}
        side = multiple * max(2, math.ceil(64 / multiple))
        size = (side, side)
    if channels is None:
        raise ImportError_(f"The model in {path} has an output with an unknown channel count "
                           f"({out_shape}); expected a fixed number of channels.")
    sample = _run(model, *size)
    output = _detect_output(model, channels, sample)
    if output["kind"] == "softmax" and channels == 1:
        raise ImportError_(f"The model in {path} applies softmax over 1 channel (always 1); "
                           "expected a sigmoid for a 1-channel output.")
    inside = _preprocessing_inside(model)
    skip = {output["layer"]} | ({output["activation_layer"]} - {None})
    cands = _candidates(model, skip, size)
    if not cands:
        raise ImportError_(f"The model in {path} has no 4-D layer to embed from; expected a "
                           "convolutional network.")
    return {
        "input": {**geometry, "channels": 3, "shape": list(in_shape)},
        "preprocessing": {"inside": inside},
        "output": {**output, "channels": channels},
        "layers": cands,
        "embedding_layer": _default_embedding(cands),
        "probe_size": list(size),
    }


# --------------------------------------------------------------------------- resolution


def _preprocess(input_range: str, mean: Sequence[float] | None,
                std: Sequence[float] | None) -> dict | None:
    if input_range not in INPUT_RANGES:
        raise ImportError_(f"The '--input-range' option must be one of {list(INPUT_RANGES)}. "
                           f"Got {input_range!r} instead.")
    scale, offset = INPUT_RANGES[input_range]
    mean3 = _three(mean, "--mean", 0.0)
    std3 = _three(std, "--std", 1.0)
    if any(not s > 0 for s in std3):
        raise ImportError_(f"The '--std' option must hold positive numbers. Got {std!r} instead.")
    scales = [scale / s for s in std3]
    offsets = [(offset - m) / s for m, s in zip(mean3, std3, strict=True)]
    if all(abs(s - 1) < 1e-12 for s in scales) and all(abs(o) < 1e-12 for o in offsets):
        return None
    return {"scale": scales, "offset": offsets}


def _three(values: Sequence[float] | None, flag: str, default: float) -> list[float]:
    if values is None or len(values) == 0:
        return [default] * 3
    vals = [float(v) for v in values]
    if len(vals) == 1:
        return vals * 3
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise ImportError_(f"The '{flag}' option must be 1 or 3 numbers (R G B). "
                           f"Got {list(values)!r} instead.")
    return vals


def resolve(detected: dict, overrides: dict) -> dict:
    """The adapter spec (manifest ``adapter``) from what was detected and the user's flags:
    ``input_size``, ``size_multiple``, ``input_range``, ``mean``, ``std``, ``output``,
    ``building_channel``, ``embedding_layer`` (None = keep the detected value)."""
    geo = dict(detected["input"])
    if overrides.get("input_size"):
        n = int(overrides["input_size"])
        if n < 8:
            raise ImportError_(f"The '--input-size' option must be at least 8. Got {n} instead.")
        if geo["mode"] == "fixed" and geo["size"] != [n, n]:
            raise ImportError_(
                f"The '--input-size' option must match the model's fixed input "
                f"{geo['size'][0]}x{geo['size'][1]}. Got {n} instead.")
        geo = {**geo, "mode": "fixed", "size": [n, n]}
    if overrides.get("size_multiple"):
        m = int(overrides["size_multiple"])
        if m < 1 or geo["mode"] == "fixed":
            raise ImportError_("The '--size-multiple' option must be a positive int and only "
                               f"applies to a free-size input. Got {m} for a {geo['mode']} input.")
        geo["multiple"] = m
    inside = detected["preprocessing"]["inside"]
    input_range = overrides.get("input_range") or ("0-255" if inside else "0-1")
    pre = _preprocess(input_range, overrides.get("mean"), overrides.get("std"))

    out = detected["output"]
    channels = int(out["channels"])
    kind = overrides.get("output") or out["kind"]
    if kind not in ("sigmoid", "logits", "softmax"):
        raise ImportError_("The '--output' option must be one of ['sigmoid', 'logits', "
                           f"'softmax']. Got {kind!r} instead.")
    if kind == "softmax" and channels == 1:
        raise ImportError_("The '--output' option cannot be 'softmax' for a 1-channel output; "
                           "expected 'sigmoid' or 'logits'.")
    channel = overrides.get("building_channel")
    channel = (0 if channels == 1 else 1) if channel is None else int(channel)
    if not 0 <= channel < channels:
        raise ImportError_(f"The '--building-channel' option must be an int in [0, "
                           f"{channels - 1}]. Got {channel} instead.")
    detected_act = out["kind"] if out.get("activation_layer") else None
    if kind == "logits":
        linearize, mode = None, ("direct" if channels == 1 else "softmax")
    elif detected_act == kind:
        linearize, mode = out["activation_layer"], ("softmax" if kind == "softmax" else "direct")
    else:  # probabilities whose activation cannot be made linear: logit from the probability
        linearize, mode = None, "prob"
    names = [c["name"] for c in detected["layers"]]
    layer = overrides.get("embedding_layer") or detected["embedding_layer"]
    if layer not in names:
        raise ImportError_(f"The '--embedding-layer' option must be one of the model's 4-D "
                           f"layers {names[:40]}. Got {layer!r} instead.")
    from app.ml.adapter import RESERVED_NAMES

    return {
        "input": {"mode": geo["mode"], "size": geo["size"], "multiple": geo.get("multiple")},
        "preprocess": pre,
        "input_range": input_range,
        "mean": overrides.get("mean"),
        "std": overrides.get("std"),
        "output": {"kind": kind, "channels": channels, "channel": channel, "mode": mode,
                   "linearize": linearize},
        "layers": names,
        "embedding_layer": layer,
        "renamed": {n: f"user_{n}" for n in names if n in RESERVED_NAMES},
    }


def check_canonical(user: Any, canonical: Any, adapter: dict, detected: dict) -> dict:
    """Run both models on the same pixels: the canonical mask must be the user model's
    building probability (sigmoid / softmax of its raw output, channel c)."""
    geo = adapter["input"]
    h, w = geo["size"] if geo["mode"] == "fixed" else detected["probe_size"]
    pixels = np.random.default_rng(1).integers(0, 256, (1, h, w, 3)).astype(np.float32)
    pre = adapter["preprocess"]
    x = pixels if not pre else pixels * np.float32(pre["scale"]) + np.float32(pre["offset"])
    raw = np.asarray(_call(user, x), dtype=np.float64)
    c, kind = adapter["output"]["channel"], adapter["output"]["kind"]
    if kind == "logits":
        if raw.shape[-1] == 1:
            expected = 1 / (1 + np.exp(-raw[..., 0]))
        else:
            e = np.exp(raw - raw.max(axis=-1, keepdims=True))
            expected = (e / e.sum(axis=-1, keepdims=True))[..., c]
    else:
        expected = raw[..., c]
    got = np.asarray(_call(canonical, pixels), dtype=np.float64)[..., 0]
    diff = float(np.abs(got - expected).max())
    odd = np.asarray(_call(canonical, pixels[:, : h - 3, : w - 5]))  # any size in, same size out
    if odd.shape[1:3] != (h - 3, w - 5):
        raise ImportError_(f"The canonical model turned a {h - 3}x{w - 5} image into a "
                           f"{odd.shape[1]}x{odd.shape[2]} mask; expected the same size.")
    if not diff <= 1e-3:
        raise ImportError_(
            f"The canonical model's mask differs from the model's building probability by "
            f"{diff:.4g} (expected < 1e-3); check --output and --building-channel.")
    return {"max_abs_diff": diff, "size": [int(h), int(w)]}


def _rows(detected: dict, adapter: dict, overrides: dict) -> list[tuple[str, str, str]]:
    """The table ``import-model`` prints: item, what was found → what is used, the flag."""
    geo, ageo = detected["input"], adapter["input"]
    found_geo = (f"fixed {geo['size'][0]}x{geo['size'][1]}" if geo["mode"] == "fixed"
                 else f"free, multiple of {geo['multiple']}")
    used_geo = (f"resize to {ageo['size'][0]}x{ageo['size'][1]} and back"
                if ageo["mode"] == "fixed" else f"pad to a multiple of {ageo['multiple']}, crop back")
    out, aout = detected["output"], adapter["output"]
    inside = detected["preprocessing"]["inside"]

    def mark(key: str) -> str:
        return " (set)" if overrides.get(key) not in (None, [], "") else ""

    emb = next(c for c in detected["layers"] if c["name"] == adapter["embedding_layer"])
    pre_used = f"input range {adapter['input_range']}"
    if adapter.get("mean") or adapter.get("std"):
        pre_used += f", mean {adapter.get('mean')}, std {adapter.get('std')}"
    return [
        ("input size", f"{found_geo} → {used_geo}"
         + mark("input_size") + mark("size_multiple"), "--input-size / --size-multiple"),
        ("channels", "3 (RGB)", ""),
        ("preprocessing", (f"inside ({inside})" if inside else "none inside")
         + f" → {pre_used}" + mark("input_range") + mark("mean"), "--input-range / --mean --std"),
        ("output", f"{out['channels']}-channel {out['kind']} ({out['how']}) → "
         f"{aout['kind']}" + mark("output"), "--output"),
        ("building channel", f"{aout['channel']} of {aout['channels']}"
         + mark("building_channel"), "--building-channel"),
        ("pre-activation", {"direct": f"linear copy of {aout['linearize']!r}"
                            if aout["linearize"] else "the output itself (logits)",
                            "softmax": (f"linear copy of {aout['linearize']!r}, "
                                        if aout["linearize"] else "the logits, ")
                            + "z_c − logsumexp(z_others)",
                            "prob": "log(p/(1−p)) of the probability (no linear layer found)"}
         [aout["mode"]], ""),
        ("embedding layer", f"{adapter['embedding_layer']} ({emb['type']}, "
         f"{'x'.join(map(str, emb['shape']))} at {detected['probe_size'][0]}²)"
         + mark("embedding_layer"), "--embedding-layer"),
        ("candidate layers", f"{len(detected['layers'])} 4-D layers", ""),
    ]


def format_table(rows: list[tuple[str, str, str]]) -> str:
    """The detection table as aligned text."""
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{'item'.ljust(w0)}  {'found → used'.ljust(w1)}  override"]
    lines.append("-" * len(lines[0]))
    lines += [f"{a.ljust(w0)}  {b.ljust(w1)}  {c}" for a, b, c in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- import


def import_model(
    path: Path | str,
    run_id: str,
    *,
    custom_objects: str | None = None,
    store: Path | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    trained_on: str | None = None,
    log: Callable[[str], object] | None = None,
    **overrides: Any,
) -> ImportResult:
    """Detect, resolve, build and check the canonical model, then store the file (unless
    ``dry_run``). ``overrides``: see :func:`resolve`."""
    from app.ml.adapter import build_canonical, canonical_name

    path = Path(path)
    artifacts.validate_run_id(run_id)
    final = artifacts.model_dir(run_id, store)
    if final.exists() and not overwrite and not dry_run:
        raise ImportError_(f"The model run {run_id!r} already exists in {final.parent}; pass "
                           "--overwrite to replace it, or choose another --run-id.")
    say = log or (lambda _msg: None)
    say(f"loading {path} (safe_mode=True)…")
    source_sha = artifacts.sha256_file(path) if path.is_file() else None
    user = load_user_model(path, custom_objects)
    say("probing the input size and reading the layers…")
    detected = detect(user, path)
    adapter = resolve(detected, {k: v for k, v in overrides.items() if v not in (None, [])})
    try:
        canonical = build_canonical(user, adapter)
        check = check_canonical(user, canonical, adapter, detected)
    except ImportError_:
        raise
    except Exception as exc:  # e.g. a --size-multiple the model cannot run with
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ImportError_(f"The model in {path} does not run with these settings ({first}); "
                           "expected the detected or a compatible --size-multiple / "
                           "--input-size.") from None
    rows = _rows(detected, adapter, overrides)
    if dry_run:
        return ImportResult(None, detected, overrides, adapter, check, rows)
    kind = _file_kind(path)
    n_params = int(sum(int(np.prod(w.shape)) for w in user.weights))
    fields = {
        "input_size": adapter["input"]["size"][0] if adapter["input"]["mode"] == "fixed" else None,
        "architecture": {"name": user.name, "params": n_params, "imported": True},
        "dataset": {"name": trained_on, "source": "imported"} if trained_on else {},
        "imported": {
            "source_name": path.name,
            "source_sha256": source_sha,
            "custom_objects": custom_objects,
            "detected": detected,
            "overrides": {k: v for k, v in overrides.items() if v not in (None, [], False)},
            "check": check,
        },
        "adapter": adapter,
        "embedding_layer": canonical_name(adapter["embedding_layer"]),
    }
    out = artifacts.save_imported_model_run(path, run_id, kind=kind, fields=fields,
                                            expected_sha256=source_sha, store=store)
    return ImportResult(out, detected, overrides, adapter, check, rows)
