"""import-model: U-Nets built elsewhere are detected, wrapped (never modified or re-saved) and
then embedded, reduced, explained and evaluated like the native one; bad files are refused
before anything is written."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from app import artifacts, cli, pipeline
from app.artifacts import EmbeddingsRun
from app.ml import evaluate, importer
from app.ml.adapter import canonical_name, lens_info
from app.ml.importer import ImportError_
from app.ml.inference import ModelService
from tests.imported_models import ZOO, save_zoo_model
from tests.unit.test_extract import N_TILES, make_dataset

NAMES = list(ZOO)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("import")
    dataset = make_dataset(root / "datasets" / "tiny")
    store = root / "models"
    out: dict = {"root": root, "store": store, "dataset": dataset, "results": {}, "files": {}}
    for name in NAMES:
        path = save_zoo_model(name, root / "src")
        out["files"][name] = path
        out["results"][name] = importer.import_model(path, name, store=store)
    return out


def _user_probability(user: keras.Model, pixels: np.ndarray, adapter: dict) -> np.ndarray:
    """The building probability the user's own model gives for 0..255 ``pixels``."""
    pre = adapter["preprocess"]
    x = pixels if not pre else pixels * np.float32(pre["scale"]) + np.float32(pre["offset"])
    return np.asarray(user(x, training=False))[..., adapter["output"]["channel"]]


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("name", NAMES)
def test_detection_table_and_manifest(zoo: dict, name: str) -> None:
    want = ZOO[name][1]
    res = zoo["results"][name]
    det, adapter = res.detected, res.adapter
    assert det["input"]["mode"] == want["mode"]
    if want["mode"] == "free":
        assert det["input"]["multiple"] == want["multiple"]
    else:
        assert det["input"]["size"] == list(ZOO[name][0]().inputs[0].shape[1:3])
    assert det["output"]["kind"] == want["kind"]
    assert det["output"]["channels"] == want["channels"]
    inside = det["preprocessing"]["inside"]
    assert (inside is None) == (want["inside"] is None)
    assert adapter["input_range"] == ("0-255" if inside else "0-1")
    assert adapter["output"]["mode"] == want["mode_out"]
    assert adapter["output"]["linearize"]  # every zoo model fuses its activation somewhere
    assert adapter["output"]["channel"] == (0 if want["channels"] == 1 else 1)
    # The default embedding layer is among the deepest (smallest) layers.
    areas = {c["name"]: c["shape"][0] * c["shape"][1] for c in det["layers"]}
    assert areas[det["embedding_layer"]] == min(areas.values())
    table = importer.format_table(res.rows)
    for item in ("input size", "preprocessing", "output", "building channel", "pre-activation",
                 "embedding layer", "--building-channel", "--input-range"):
        assert item in table

    run = zoo["store"] / name
    manifest = json.loads((run / "manifest.json").read_text())
    source = zoo["files"][name]
    assert manifest["model_file"] == "model.keras"
    assert (run / "model.keras").read_bytes() == source.read_bytes()  # byte for byte
    sha = artifacts.sha256_file(source)
    assert manifest["files"] == {"model.keras": sha}
    assert manifest["imported"]["source_sha256"] == sha
    assert manifest["adapter"] == json.loads(json.dumps(adapter))
    assert manifest["embedding_layer"] == artifacts.model_default_layer(manifest)
    assert manifest["imported"]["check"]["max_abs_diff"] < 1e-5


def test_fixed512_renames_the_reserved_names(zoo: dict) -> None:
    res = zoo["results"]["fixed512"]
    assert res.adapter["renamed"] == {"logits": "user_logits"}
    model = artifacts.load_model("fixed512", zoo["store"])
    names = [lyr.name for lyr in model.layers]
    assert "user_mask" in names and "user_logits" in names
    assert names.count("logits") == 1 and model.layers[-1].name == "mask"


# --------------------------------------------------------------------------- the wrapper


@pytest.mark.parametrize("name", NAMES)
def test_canonical_mask_is_the_user_models_building_probability(zoo: dict, name: str) -> None:
    adapter = zoo["results"][name].adapter
    user = keras.saving.load_model(zoo["files"][name], compile=False, safe_mode=True)
    weights_before = [w.copy() for w in user.get_weights()]
    canonical = artifacts.load_model(name, zoo["store"])
    assert canonical.input.name == "image" and canonical.get_layer("logits").output.shape[-1] == 1
    info = lens_info(canonical)
    assert info is not None and info.default_layer in info.layers
    geo = adapter["input"]
    h, w = geo["size"] if geo["mode"] == "fixed" else (48, 64)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (2, h, w, 3)).astype(np.float32)
    got = np.asarray(canonical(pixels, training=False))[..., 0]
    np.testing.assert_allclose(got, _user_probability(user, pixels, adapter), atol=1e-5)
    # Any size goes in, the same size comes out (padded or resized inside, cropped back).
    odd = np.asarray(canonical(pixels[:, : h - 5, : w - 3], training=False))
    assert odd.shape == (2, h - 5, w - 3, 1) and np.isfinite(odd).all()
    # The user's model is untouched (its weights, its activations).
    for a, b in zip(weights_before, user.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- every page's work


@pytest.mark.parametrize("name", NAMES)
def test_embed_reduce_explain_evaluate(zoo: dict, name: str) -> None:
    root, store, dataset = zoo["root"], zoo["store"], zoo["dataset"]
    emb = root / "emb"
    path = pipeline.run_embed(name, dataset.path, f"{name}-emb", embeddings_root=emb,
                              model_store=store, progress=False, batch_size=8)
    manifest = json.loads((path / "manifest.json").read_text())
    layer = zoo["results"][name].adapter["embedding_layer"]
    assert manifest["layer"] == canonical_name(layer)
    pipeline.run_reduce(f"{name}-emb", methods=("pca",), k_values=range(2, 4),
                        embeddings_root=emb, progress=False)
    run = EmbeddingsRun.open(f"{name}-emb", emb, model_store=store)
    assert len(run.tiles) == N_TILES and np.isfinite(run.vectors_float32()).all()
    assert {"pca_x", "pca_y", "cluster"} <= set(run.tiles.columns)

    service = ModelService(name, store=store)
    assert service.default_layer == manifest["layer"]
    assert service.conv_layers()[-1] == "logits" and service.default_layer in service.conv_layers()
    tid = dataset.ids()[0]
    image = dataset.image(tid)
    for method in ("seg-grad-cam", "grad-cam++", "saliency"):
        out = service.explain(image, method, target="image")
        assert out.result.heatmap.shape == image.shape[:2]
        assert np.isfinite(out.result.heatmap).all() and np.isfinite(out.result.prob).all()
    np.testing.assert_allclose(service.explain(image, "seg-grad-cam", target="image").result.prob,
                               service.predict_tile(image), atol=1e-5)

    labelled = [t for t in dataset.ids() if dataset.mask(t) is not None][:6]

    def load(t: str) -> tuple[np.ndarray, np.ndarray]:
        return dataset.image(t), dataset.mask(t).astype(bool)

    ev = evaluate.evaluate_tiles(service, labelled, load, model_run=name)
    assert ev.tile_ids == labelled and int(ev.positive.sum() + ev.negative.sum()) == 6 * 64 * 64
    summary = evaluate.pixel_summary(ev, 0.5)
    assert 0.0 <= summary["f1"] <= 1.0


def test_segment_large_and_export_of_an_imported_model(zoo: dict, tmp_path: Path) -> None:
    from app.export import export_savedmodel

    service = ModelService("classic", store=zoo["store"])
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3)).astype(np.uint8)
    prob = service.segment_large(image, tile=32, overlap=8, single_pass_max_pixels=0)
    assert prob.shape == (70, 90) and np.isfinite(prob).all()
    out = export_savedmodel("classic", tmp_path / "sm", store=zoo["store"])
    info = json.loads((out / "assets.extra" / "unet_lens.json").read_text())
    assert info["bottleneck_layer"] == service.default_layer


# --------------------------------------------------------------------------- overrides, CLI


def test_overrides_are_applied_and_recorded(zoo: dict) -> None:
    path = zoo["files"]["classic"]
    layer = zoo["results"]["classic"].detected["layers"][0]["name"]
    res = importer.import_model(path, "classic-o", store=zoo["store"], input_range="-1-1",
                                output="sigmoid", embedding_layer=layer, input_size=64,
                                trained_on="my town")
    assert res.adapter["input"] == {"mode": "fixed", "size": [64, 64], "multiple": 8}
    assert res.adapter["preprocess"] == {"scale": [1 / 127.5] * 3, "offset": [-1.0] * 3}
    manifest = artifacts.read_model_manifest("classic-o", zoo["store"])
    assert manifest["embedding_layer"] == layer
    assert manifest["imported"]["overrides"]["input_range"] == "-1-1"
    assert manifest["dataset"] == {"name": "my town", "source": "imported"}
    with pytest.raises(ImportError_, match="already exists"):
        importer.import_model(path, "classic-o", store=zoo["store"])
    with pytest.raises(ImportError_, match="must match the model's fixed input 512x512"):
        importer.import_model(zoo["files"]["fixed512"], "x", store=zoo["store"], input_size=256)
    res = importer.import_model(zoo["files"]["rescaled"], "x", store=zoo["store"], dry_run=True,
                                output="logits", building_channel=0, mean=[10.0], std=[2.0])
    assert res.path is None and not (zoo["store"] / "x").exists()
    assert res.adapter["output"]["mode"] == "softmax" and res.adapter["output"]["linearize"] is None
    assert res.check["max_abs_diff"] < 1e-5  # softmax logits of channel 0: still the same map
    for bad, match in (({"building_channel": 2}, "building-channel"),
                       ({"embedding_layer": "nope"}, "embedding-layer"),
                       ({"std": [0.0]}, "std"), ({"mean": [1.0, 2.0]}, "mean"),
                       ({"size_multiple": 1}, "does not run with these settings")):
        with pytest.raises(ImportError_, match=match):
            importer.import_model(zoo["files"]["rescaled"], "x", store=zoo["store"],
                                  dry_run=True, **bad)


def test_one_file_imported_twice_keeps_its_results_apart(zoo: dict) -> None:
    """Same file, other building channel: the same SHA-256 but its own cached results."""
    importer.import_model(zoo["files"]["rescaled"], "rescaled-c0", store=zoo["store"],
                          building_channel=0)
    one, zero = ModelService("rescaled", store=zoo["store"]), ModelService("rescaled-c0",
                                                                           store=zoo["store"])
    assert one.sha256 == zero.sha256 and one.cache_id != zero.cache_id
    image = zoo["dataset"].image(zoo["dataset"].ids()[2])
    np.testing.assert_allclose(one.predict_tile(image) + zero.predict_tile(image), 1.0, atol=1e-5)


def test_cli_import_model(zoo: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("app.config.MODEL_STORE", tmp_path / "store")
    rc = cli.main(["import-model", str(zoo["files"]["rescaled"]), "--run-id", "cli-run",
                   "--building-channel", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "building channel" in out and "model run written to" in out
    assert (tmp_path / "store" / "cli-run" / "model.keras").is_file()
    rc = cli.main(["import-model", str(tmp_path / "nope.keras"), "--run-id", "cli-bad"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["import-model"]
    assert "RUNS ITS CODE" in " ".join(help_text.format_help().split())


# --------------------------------------------------------------------------- legacy .h5


def test_legacy_h5_import(zoo: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_zoo_model("classic", tmp_path, suffix=".h5")
    store = tmp_path / "store"
    res = importer.import_model(path, "h5-run", store=store)
    manifest = artifacts.read_model_manifest("h5-run", store)
    assert manifest["model_file"] == "model.h5"
    assert (store / "h5-run" / "model.h5").read_bytes() == path.read_bytes()
    assert res.detected["output"]["kind"] == "sigmoid"
    service = ModelService("h5-run", store=store)
    image = zoo["dataset"].image(zoo["dataset"].ids()[0])
    assert service.predict_tile(image).shape == image.shape[:2]
    assert service.explain(image, "seg-grad-cam").result.heatmap.shape == image.shape[:2]
    from app.web import health

    monkeypatch.setattr("app.config.MODEL_STORE", store)
    assert health.check_model("h5-run") == manifest["files"]["model.h5"]


# --------------------------------------------------------------------------- refusals


def _store_state(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else []


def _save(model: keras.Model, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.keras"
    model.save(path)
    return path


def _two_inputs() -> keras.Model:
    a, b = keras.Input((32, 32, 3)), keras.Input((32, 32, 3))
    return keras.Model([a, b], layers.Conv2D(1, 1)(layers.add([a, b])))


def _classifier() -> keras.Model:
    inp = keras.Input((32, 32, 3))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inp))
    return keras.Model(inp, layers.Dense(10, activation="softmax")(x))


def _grey_input() -> keras.Model:
    inp = keras.Input((None, None, 1))
    return keras.Model(inp, layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inp))


def _valid_convs() -> keras.Model:
    inp = keras.Input((None, None, 3))
    x = layers.Conv2D(4, 3, padding="valid")(inp)
    return keras.Model(inp, layers.Conv2D(1, 1, activation="sigmoid")(x))


def _valid_convs_fixed() -> keras.Model:
    inp = keras.Input((64, 64, 3))
    x = layers.Conv2D(4, 5, padding="valid")(inp)
    return keras.Model(inp, layers.Conv2D(1, 1, activation="sigmoid")(x))


@pytest.mark.parametrize(("build", "match"), [
    (_two_inputs, r"has 2 inputs .*expected one image input"),
    (_classifier, r"no spatial output .*expected a segmentation map"),
    (_grey_input, r"expects 1-channel images .*the data is RGB"),
    (_valid_convs, r"expected an output the size of the input"),
    (_valid_convs_fixed, r"outputs 60x60 maps for a 64x64 input; expected an output the size"),
])
def test_bad_models_are_refused_and_nothing_is_written(tmp_path: Path, build, match: str) -> None:
    store = tmp_path / "store"
    (store / "keep").mkdir(parents=True)
    before = _store_state(store)
    path = _save(build(), tmp_path / "src", build.__name__.strip("_"))
    with pytest.raises(ImportError_, match=match):
        importer.import_model(path, "bad", store=store)
    assert _store_state(store) == before


def test_bad_files_are_refused_and_nothing_is_written(zoo: dict, tmp_path: Path) -> None:
    store = tmp_path / "store"
    good = zoo["files"]["classic"]
    data = good.read_bytes()
    cases = {
        "notes.keras": (b"this is not a model\n", "not a Keras model file"),
        "weights.npy": (data, "not a Keras model file"),
        "half.keras": (data[: len(data) // 2], "truncated or corrupt"),
        "half.h5": (b"\x89HDF\r\n\x1a\n" + b"\0" * 200, "could not be loaded"),
    }
    for fname, (payload, match) in cases.items():
        path = tmp_path / fname
        path.write_bytes(payload)
        with pytest.raises(ImportError_, match=match) as info:
            importer.import_model(path, "bad", store=store)
        assert str(path) in str(info.value)
        assert "expected" in str(info.value) or fname.endswith(".h5")
    # A .keras zip without config.json.
    path = tmp_path / "empty.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.txt", "x")
    with pytest.raises(ImportError_, match="not a complete Keras archive"):
        importer.import_model(path, "bad", store=store)
    assert not store.exists()


@keras.saving.register_keras_serializable(package="testpkg")
class DoubleIt(layers.Layer):
    """A custom layer: unknown to a process that has not imported its module."""

    def call(self, x):
        return x * 2.0


def test_custom_layers_are_listed_and_loaded_from_a_named_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = keras.Input((None, None, 3))
    x = DoubleIt(name="double")(inp)
    model = keras.Model(inp, layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x))
    path = _save(model, tmp_path, "custom")
    # Rewrite the archive so the class lives in a module this process has not imported.
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    config = members["config.json"].decode().replace("testpkg>DoubleIt", "lensplugin>DoubleIt")
    config = config.replace('"module": "tests.unit.test_import_model"', '"module": "lensplugin"')
    members["config.json"] = config.encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    store = tmp_path / "store"
    with pytest.raises(ImportError_, match=r"custom classes .*DoubleIt.*--custom-objects"):
        importer.import_model(path, "custom", store=store)
    assert not store.exists()
    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "lensplugin.py").write_text(
        "import keras\n\n"
        "@keras.saving.register_keras_serializable(package='lensplugin')\n"
        "class DoubleIt(keras.layers.Layer):\n"
        "    def call(self, x):\n"
        "        return x * 2.0\n")
    monkeypatch.syspath_prepend(str(plugin))
    res = importer.import_model(path, "custom", store=store, custom_objects="lensplugin")
    assert artifacts.read_model_manifest("custom", store)["imported"]["custom_objects"] == \
        "lensplugin"
    assert res.check["max_abs_diff"] < 1e-5
    assert artifacts.load_model("custom", store).get_layer("double") is not None


def test_native_models_keep_their_layers(zoo: dict) -> None:
    from app.ml.unet import build_unet, named_conv_layers

    model = build_unet("light", None)
    assert lens_info(model) is None
    assert named_conv_layers(model)[-1] == "logits" and "bottleneck" in named_conv_layers(model)
    assert ModelService(model=model).default_layer == "bottleneck"
    assert artifacts.model_default_layer({}) == "bottleneck"


def test_a_native_unet_imports_as_itself(tmp_path: Path) -> None:
    """This project's own U-Net, imported: bottleneck is found as the embedding layer, its
    logits / mask layers are renamed out of the way, and the mask is the native mask."""
    from app.ml.unet import build_unet

    keras.utils.set_random_seed(1)
    native = build_unet("light", None)
    path = _save(native, tmp_path, "native")
    res = importer.import_model(path, "native", store=tmp_path / "store")
    assert res.detected["embedding_layer"] == "bottleneck"
    assert res.detected["preprocessing"]["inside"] == "scale"
    assert res.detected["input"]["multiple"] == 16
    assert res.adapter["renamed"] == {"logits": "user_logits"}
    assert res.adapter["output"]["linearize"] == "mask"
    service = ModelService("native", store=tmp_path / "store")
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3)).astype(np.uint8)
    np.testing.assert_allclose(service.predict_tile(image),
                               ModelService(model=native).predict_tile(image), atol=1e-5)
