"""app.ml.inference on tiny models: stitching, padding, baselines, the result cache, the service."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from app import artifacts
from app.ml import inference
from app.ml.inference import (
    ModelService,
    ResultCache,
    blend_window,
    image_sha256,
    kmeans_colour_baseline,
    otsu_baseline,
    pad_to_multiple,
    tile_origins,
)
from app.ml.unet import build_unet


@pytest.fixture(scope="module")
def unet() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_unet("light")


@pytest.fixture()
def service(unet: keras.Model) -> ModelService:
    return ModelService(model=unet, cache=ResultCache())


@pytest.fixture(scope="module")
def pointwise() -> keras.Model:
    """A model whose output at a pixel depends on that pixel only (1x1 convolutions)."""
    keras.utils.set_random_seed(1)
    x = keras.Input((None, None, 3))
    h = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    h = keras.layers.Conv2D(4, 1, activation="tanh")(h)
    out = keras.layers.Conv2D(1, 1, activation="sigmoid")(h)
    return keras.Model(x, out)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 120, (h, w, 3)).astype(np.uint8)
    img[h // 4:h // 2, w // 5:w // 2] = (205, 195, 180)  # a bright "roof"
    img[2 * h // 3:h - 8, w - 40:w - 10] = (190, 190, 200)
    return img


# ----------------------------------------------------------------------------- geometry


def test_blend_window_is_positive_symmetric_and_flat_inside() -> None:
    w = blend_window(64, 16)
    assert w.shape == (64,) and (w > 0).all() and w.max() == 1.0
    np.testing.assert_allclose(w, w[::-1])
    assert (w[16:48] == 1).all() and (np.diff(w[:16]) > 0).all()
    assert (blend_window(32, 0) == 1).all()


def test_tile_origins_cover_the_image_on_the_pooling_grid() -> None:
    starts = tile_origins(176, 64, 48)
    assert starts[0] == 0 and starts[-1] == 176 - 64
    assert all(s % 16 == 0 for s in starts)
    covered = np.zeros(176, bool)
    for s in starts:
        covered[s:s + 64] = True
    assert covered.all()
    assert tile_origins(50, 64, 48) == [0]


def test_pad_to_multiple_reflects_and_keeps_the_original() -> None:
    img = _image(37, 5)
    out = pad_to_multiple(img)
    assert out.shape == (48, 16, 3)
    np.testing.assert_array_equal(out[:37, :5], img)
    assert pad_to_multiple(_image(32, 48)).shape == (32, 48, 3)


# ----------------------------------------------------------------------------- stitching


def test_stitching_is_exact_for_a_pointwise_model(pointwise: keras.Model) -> None:
    """With no spatial context the blended tiles must reproduce the whole-image map exactly:
    this checks the window normalisation (no seams, no double counting)."""
    svc = ModelService(model=pointwise, cache=ResultCache())
    img = _image(150, 200, seed=3)
    whole = svc.predict_tile(img)
    stitched = svc.segment_large(img, tile=64, overlap=16, single_pass_max_pixels=0)
    assert stitched.shape == (150, 200)
    np.testing.assert_allclose(stitched, whole, atol=1e-5)


def test_stitched_segmentation_matches_the_whole_image_away_from_borders(
        service: ModelService) -> None:
    """Tile 64, overlap 16 on a tiny untrained U-Net: the U-Net sees ~120 px of context, so a
    64 px tile cannot match exactly, but the blend keeps it close everywhere and seam-free."""
    img = _image(128, 176)
    whole = service.predict_tile(img)
    stitched = service.segment_large(img, tile=64, overlap=16, single_pass_max_pixels=0)
    assert stitched.shape == whole.shape == (128, 176)
    inner = (slice(16, -16), slice(16, -16))
    diff = np.abs(stitched - whole)[inner]
    assert diff.max() < 0.1, diff.max()
    assert diff.mean() < 0.015, diff.mean()
    # no seams: the map is as smooth across tile borders (x = 48, 96, ...) as elsewhere
    grad = np.abs(np.diff(stitched, axis=1))
    assert grad[:, 47:49].mean() < 3 * grad.mean() + 1e-3


def test_images_up_to_the_single_pass_limit_take_one_whole_image_pass(
        service: ModelService) -> None:
    """At or below the limit (padded pixels) one pass, equal to ``predict_tile``; one padded
    pixel above it, tiles (their progress reports count the tiles)."""
    img = _image(96, 160)  # pads to 96 x 160 = 15 360 pixels
    calls: list[tuple[int, int]] = []
    prob = service.segment_large(img, tile=64, overlap=16, use_cache=False,
                                 single_pass_max_pixels=96 * 160,
                                 progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_allclose(prob, service.predict_tile(img), atol=1e-6)
    assert calls[-1] == (1, 1)
    calls.clear()
    tiled = service.segment_large(img, tile=64, overlap=16, use_cache=False,
                                  single_pass_max_pixels=96 * 160 - 1,
                                  progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][1] == len(tile_origins(96, 64, 48)) * len(tile_origins(160, 64, 48))
    assert not np.array_equal(tiled, prob)
    # the cache keeps the two apart
    one, _ = service.segment(img, tile=64, overlap=16, single_pass_max_pixels=10**6)
    many, hit = service.segment(img, tile=64, overlap=16, single_pass_max_pixels=0)
    assert not hit and not np.array_equal(one, many)


def test_small_and_odd_images_are_padded_and_cropped(service: ModelService) -> None:
    img = _image(70, 100)
    prob = service.segment_large(img, tile=256, overlap=32)
    assert prob.shape == (70, 100) and prob.dtype == np.float32
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
    np.testing.assert_allclose(prob, service.predict_tile(img), atol=1e-6)
    gray = service.predict_tile(img[..., 0])
    assert gray.shape == (70, 100)


def test_segment_large_progress_and_validation(service: ModelService) -> None:
    calls: list[tuple[int, int]] = []
    service.segment_large(_image(96, 160), tile=64, overlap=16, batch_size=2, use_cache=False,
                          progress=lambda d, t: calls.append((d, t)), single_pass_max_pixels=0)
    assert calls and calls[-1][0] == calls[-1][1] == len(tile_origins(96, 64, 48)) * len(
        tile_origins(160, 64, 48))
    for bad in ({"tile": 60}, {"tile": 64, "overlap": 64}, {"tile": True},
                {"single_pass_max_pixels": -1}, {"single_pass_max_pixels": 1.5}):
        with pytest.raises(ValueError, match="parameter must"):
            service.segment_large(_image(32, 32), **bad)


# ----------------------------------------------------------------------------- baselines


def test_baselines_return_boolean_masks_of_the_image_shape() -> None:
    img = _image(90, 130)
    for mask in (otsu_baseline(img), kmeans_colour_baseline(img, k=4, random_state=0)):
        assert mask.shape == (90, 130) and mask.dtype == bool
    roof = np.zeros((90, 130), bool)
    roof[22:45, 26:65] = True
    otsu = otsu_baseline(img)
    assert (otsu & roof).sum() / (otsu | roof).sum() > 0.5
    np.testing.assert_array_equal(kmeans_colour_baseline(img, k=4, random_state=0),
                                  kmeans_colour_baseline(img, k=4, random_state=0))
    flat = np.full((32, 32, 3), 90, np.uint8)
    assert not otsu_baseline(flat).any() and not kmeans_colour_baseline(flat).any()
    with pytest.raises(ValueError, match="'k'"):
        kmeans_colour_baseline(img, k=1)


# ----------------------------------------------------------------------------- cache


def test_cache_hit_returns_the_identical_result(service: ModelService) -> None:
    img = _image(64, 64)
    first = service.explain(img, "seg-grad-cam", layer="bottleneck", target="image")
    second = service.explain(img, "seg-grad-cam", layer="bottleneck", target="image")
    assert not first.cached and second.cached
    assert second.result is first.result
    np.testing.assert_array_equal(second.result.heatmap, first.result.heatmap)
    other = service.explain(img, "seg-grad-cam", layer="enc4", target="image")
    assert not other.cached  # the layer is part of the key
    p1, hit1 = service.segment(img, tile=64, overlap=16, single_pass_max_pixels=0)
    p2, hit2 = service.segment(img, tile=64, overlap=16, single_pass_max_pixels=0)
    assert (hit1, hit2) == (False, True) and p2 is p1


def test_result_cache_is_bounded_in_bytes() -> None:
    c = ResultCache(max_bytes=3000)
    for i in range(5):
        c.put(i, np.zeros(1000, np.uint8))
    assert len(c) <= 3 and c.nbytes <= 3000
    assert c.get(4)[0] and not c.get(0)[0]
    c.put("huge", np.zeros(10_000, np.uint8))  # larger than the cache: not stored
    assert not c.get("huge")[0]
    value, hit = c.get_or_compute("k", lambda: 7)
    assert (value, hit) == (7, False) and c.get_or_compute("k", lambda: 8) == (7, True)


def test_image_hash_depends_on_pixels_shape_and_dtype() -> None:
    a = _image(32, 32)
    assert image_sha256(a) == image_sha256(a.copy())
    assert image_sha256(a) != image_sha256(a.astype(np.float32))
    assert image_sha256(a) != image_sha256(a.reshape(16, 64, 3))


# ----------------------------------------------------------------------------- explanations


def test_explain_pads_odd_sizes_and_crops_the_maps(service: ModelService) -> None:
    img = _image(50, 70)
    for method in ("seg-grad-cam", "activation", "saliency"):
        out = service.explain(img, method, layer="bottleneck", target="predicted")
        res = out.result
        assert res.heatmap.shape == (50, 70) and res.prob.shape == (50, 70)
        assert np.isfinite(res.heatmap).all() and (res.heatmap >= 0).all()
        assert res.empty or res.heatmap.max() == pytest.approx(1.0)
        if res.empty:
            assert res.message
    box = service.explain(img, "grad-cam++", target="box", box=(5, 5, 30, 25)).result
    assert box.target == "box" and box.heatmap.shape == (50, 70)
    with pytest.raises(ValueError, match="'method'"):
        service.explain(img, "nope")


def test_activation_maximisation_is_cached(service: ModelService) -> None:
    steps: list[int] = []
    a = service.activation_maximisation("bottleneck", 3, size=32, steps=3,
                                        progress=lambda s, n: steps.append(s))
    b = service.activation_maximisation("bottleneck", 3, size=32, steps=3)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and b is a and steps == [1, 2, 3]


# ----------------------------------------------------------------------------- the service


def test_get_service_loads_a_stored_model_once(tmp_path: Path, unet: keras.Model,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from app import config

    monkeypatch.setattr(config, "MODEL_STORE", tmp_path)
    artifacts.save_model_run(unet, "tiny", preset="light", input_size=None, dataset={},
                             split={}, params={}, metrics={}, history=[], store=tmp_path)
    inference.forget_services()
    svc = inference.get_service("tiny")
    assert inference.get_service("tiny") is svc and not svc.loaded
    _, sha = artifacts.verify_model_file("tiny", tmp_path)
    assert svc.sha256 == sha and svc.loaded
    assert svc.device in ("CPU", "GPU")
    assert "bottleneck" in svc.conv_layers() and svc.channels("bottleneck") == 256
    with pytest.raises(artifacts.ArtifactError):
        inference.get_service("../etc")
    inference.forget_services()


@pytest.mark.filterwarnings("ignore:The structure of `inputs`")
def test_embed_image_uses_the_runs_layer_and_representation(
        tmp_path: Path, service: ModelService, unet: keras.Model) -> None:
    from app.artifacts import EmbeddingsRun
    from app.ml.extract import feature_model, pool_activations
    from tests.fixture_run import make_fixture_run

    run_id = make_fixture_run(tmp_path, n=12, seed=0)
    manifest_path = tmp_path / run_id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["counts"]["dims"] = 256  # the light U-Net's bottleneck channels
    manifest_path.write_text(json.dumps(manifest))
    run = EmbeddingsRun.open(run_id, tmp_path, check_model=False)
    img = _image(96, 96)
    vec, notes = service.embed_image(img, run)
    acts, _ = feature_model(unet, "bottleneck")(img[None].astype(np.float32))
    np.testing.assert_allclose(vec, pool_activations(np.asarray(acts), "gap")[0], rtol=1e-4,
                               atol=1e-5)
    assert notes["representation"] == "gap" and notes["layer"] == "bottleneck"
    big, notes = service.embed_image(_image(200, 100), run, max_side=64)
    assert big.shape == (256,) and "resized" in notes
    manifest["counts"]["dims"] = 32
    manifest_path.write_text(json.dumps(manifest))
    shutil.rmtree(tmp_path / run_id / "reduced", ignore_errors=True)
    run = EmbeddingsRun.open(run_id, tmp_path, check_model=False)
    with pytest.raises(ValueError, match="32-dim"):
        service.embed_image(_image(64, 64, seed=5), run)


# ----------------------------------------------------------------------------- warm-up


def test_warm_up_traces_without_caching_results(service: ModelService) -> None:
    before = len(service.cache)
    timings = service.warm_up(sizes=(64, 96))
    assert set(timings) == {"load", "predict_64", "predict_96", "grad_cam_64"}
    assert all(v >= 0 for v in timings.values()) and service.warmed
    assert len(service.cache) == before  # nothing a person asked for was computed
    # what it warmed: the traced forward pass and the bottleneck Grad-CAM pass
    from app.ml import explain as ex

    assert service._forward is not None
    assert ("explain-pass", "bottleneck") in ex._CACHE[service.model]
    # the traced Grad-CAM pass then serves another size
    res = ex.seg_grad_cam(service.model, _image(128, 80), target="image")
    assert res.heatmap.shape == (128, 80) and np.isfinite(res.heatmap).all()


def test_start_warm_up_warms_the_served_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped demo: the thread loads the demo model, traces its passes and loads the
    run's reducers."""
    from app import config
    from app.web import runs

    if config.DEMO_MODEL_RUN not in artifacts.list_runs(config.MODEL_STORE):
        pytest.skip("the shipped demo model is not in model_store/")
    monkeypatch.setattr(config, "WARM_UP", True)
    runs.configure(embeddings_run=None, model_run=None, root=None)
    inference.forget_services()
    thread = runs.start_warm_up()
    assert thread is not None
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert inference.get_service(config.DEMO_MODEL_RUN).warmed
    assert runs.get_run(runs.default_run_id()).memoized("reducers")  # loaded, transforms run
    inference.forget_services()


def test_start_warm_up_is_off_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from app import config
    from app.web import runs

    monkeypatch.setattr(config, "WARM_UP", False)
    assert runs.start_warm_up() is None
