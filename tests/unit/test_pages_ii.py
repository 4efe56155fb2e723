"""Plain functions behind the explain, evaluate and segment pages (no browser): uploads,
evaluation counts, segmentation of an upload, the background manager and the thin callbacks."""

from __future__ import annotations

import base64
import io
import json
import struct
import sys
import threading
import time
import zlib
from contextvars import copy_context
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from dash._callback_context import context_value
from dash._utils import AttributeDict
from PIL import Image

from app import artifacts, config
from app.ml import evaluate as scoring
from app.ml import inference
from app.ml.inference import ModelService, ResultCache
from app.ml.metrics import pixel_confusion
from app.ml.unet import build_unet
from app.web import components, figures, images, runs, uploads
from app.web.background import ThreadManager
from app.web.logic import evaluate as ev
from app.web.logic import explain as xp_logic
from app.web.logic import segment as seg
from app.web.uploads import UploadError, parse_upload
from tests.fixture_run import make_fixture_run
from tests.webapp import built_app

# ----------------------------------------------------------------------------- files


def _png(arr: np.ndarray, **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", **save)
    return buf.getvalue()


def _url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bomb_png(side: int = 30_000) -> bytes:
    """A valid PNG header claiming side × side 8-bit grey pixels, with a few KB of zero rows:
    the classic decompression bomb (decoded it would be 900 MB)."""
    raw = zlib.compressobj(9)
    body = raw.compress(b"\x00" * (side + 1) * 64) + raw.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0,
                                                              0, 0))
            + _chunk(b"IDAT", body) + _chunk(b"IEND", b""))


def cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (40, 30), (10, 200, 30, 20)).save(buf, "JPEG")
    return buf.getvalue()


def palette_png() -> bytes:
    im = Image.new("P", (40, 30))
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    im.putdata([(i // 40) % 3 for i in range(40 * 30)])
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    im = Image.fromarray(_rgb(20, 40))  # 40 wide, 20 tall as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


BAD_UPLOADS: dict[str, tuple[Any, str, dict]] = {
    # name: (contents, expected message fragment, parse_upload kwargs)
    "not an image": (_url(b"hello, this is plain text", "text/plain"),
                     "not a recognised image", {}),
    "zero bytes": ("data:application/octet-stream;base64,", "file is empty (0 bytes)", {}),
    "truncated": (_url(_png(_rgb(64, 64))[:300]), "truncated or corrupt", {}),
    "decompression bomb": (_url(bomb_png()), "decompression bomb", {}),
    "1x1": (_url(_png(_rgb(1, 1))), "expected at least 16x16", {}),
    "1x5000": (_url(_png(_rgb(1, 5000))), "is 5000x1 pixels; expected at least 16x16", {}),
    "over the size limit": (_url(_png(_rgb(64, 64))), "the upload limit is",
                            {"max_bytes": 1000}),
    "nothing": (None, "no file was received", {}),
    "not a data url": ("hello", "not a file", {}),
    "broken base64": ("data:image/png;base64,@@@@", "invalid base64", {}),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_every_bad_upload_has_a_clear_message(case: str) -> None:
    contents, expected, kwargs = BAD_UPLOADS[case]
    with pytest.raises(UploadError) as err:
        parse_upload(contents, "up/../evil name.png", **kwargs)
    message = str(err.value)
    assert expected in message, message
    assert "evil name.png" in message and "/" not in message.split(":")[0]


def test_bomb_is_refused_before_decoding() -> None:
    data = bomb_png()
    assert len(data) < 64 * 1024
    started = time.perf_counter()
    with pytest.raises(UploadError, match=r"900,?000,?000 pixels"):
        parse_upload(_url(data), "bomb.png")
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("name,data,shape,note", [
    ("cmyk.jpg", cmyk_jpeg(), (30, 40), "CMYK converted to RGB"),
    ("palette.png", palette_png(), (30, 40), "palette image expanded to RGB"),
    ("exif.jpg", exif_rotated_jpeg(), (40, 20), "rotated upright from EXIF orientation 6"),
    ("rgba.png", _png(np.dstack([_rgb(24, 32), np.full((24, 32), 128, np.uint8)])), (24, 32),
     "alpha channel dropped"),
    ("grey16.png", _png(np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * 40),
     (32, 48), "percentile 2-98 stretch"),
])
def test_odd_but_valid_uploads_decode(name: str, data: bytes, shape: tuple, note: str) -> None:
    up = parse_upload(_url(data), name)
    assert up.image.shape == (*shape, 3) and up.image.dtype == np.uint8
    assert any(note in n for n in up.describe()), up.describe()
    assert up.name == name and up.nbytes == len(data)


def test_sixteen_bit_tiff_decodes() -> None:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, (np.random.default_rng(0).random((20, 24, 3)) * 60000).astype(np.uint16))
    up = parse_upload(_url(buf.getvalue(), "image/tiff"), "scene.tif")
    assert up.image.shape == (20, 24, 3)


def test_size_helpers() -> None:
    assert uploads.fmt_bytes(512) == "512 bytes" and uploads.fmt_bytes(1536) == "1.5 KB"
    payload = base64.b64encode(b"x" * 1001).decode()
    assert uploads.payload_size(payload) == 1001
    assert uploads.safe_name(None) == "upload" and uploads.safe_name("a\\b/c\x00.png") == "c.png"


# ----------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def unet() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_unet("light")


@pytest.fixture(scope="module")
def svc(unet: keras.Model) -> ModelService:
    return ModelService(model=unet, cache=ResultCache())


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("pages-ii-run")
    run_id = make_fixture_run(root, n=36, seed=1, run_id="fixture-small")
    return artifacts.EmbeddingsRun.open(run_id, root, check_model=False)


@pytest.fixture(scope="module")
def evaluated(small_run: Any, svc: ModelService) -> scoring.Evaluation:
    return ev.run_evaluation(small_run, svc, version="v", model_run="tiny")


def test_evaluation_uses_test_tiles_with_truth(small_run: Any, evaluated: scoring.Evaluation) -> None:
    ids, source, n = ev.evaluation_tiles(small_run)
    assert source == "test split" and ids == evaluated.tile_ids and n == len(ids) > 0
    tiles = small_run.tiles.set_index("tile_id")
    assert set(tiles.loc[ids, "split"]) == {"test"}
    sample, what, n_all = ev.evaluation_tiles(small_run, max_tiles=3)
    assert len(sample) == 3 and "seeded sample of 3" in what and n_all == n


def test_evaluation_counts_match_direct_confusion(small_run: Any, svc: ModelService,
                                                  evaluated: scoring.Evaluation) -> None:
    n_pixels = sum(runs.tile_truth(small_run, t).size for t in evaluated.tile_ids)
    assert evaluated.positive.sum() + evaluated.negative.sum() == n_pixels
    conf = scoring.tile_confusion(evaluated, 0.5)
    for i, tid in enumerate(evaluated.tile_ids[:5]):
        truth = runs.tile_truth(small_run, tid)
        prob = images.resize_prob(svc.predict_tile(runs.tile_image(small_run, tid)),
                                    truth.shape)
        direct = pixel_confusion(truth, prob, 0.5)
        assert {k: int(conf[k][i]) for k in direct} == direct
    total = scoring.pixel_summary(evaluated, 0.5)
    assert total["tp"] == int(conf["tp"].sum()) and total["fp"] == int(conf["fp"].sum())
    assert "stored masks (64×64" in evaluated.resolution


def test_evaluation_summaries_are_finite(small_run: Any, evaluated: scoring.Evaluation) -> None:
    for t in (0.05, 0.37, 0.5, 0.95):
        rows = ev.tile_rows(evaluated, small_run, t)
        assert len(rows) == len(evaluated.tile_ids) and rows[0]["id"] == rows[0]["tile_id"]
        assert all(np.isfinite(r[k]) for r in rows for k in ("precision", "recall", "iou"))
        b = scoring.building_summary(evaluated, t)
        assert b["threshold"] in scoring.BUILDING_THRESHOLDS and 0 <= b["f1"] <= 1
    assert scoring.building_summary(evaluated, 0.37)["threshold"] == 0.4
    groups = ev.group_rows(evaluated, small_run, 0.5)
    assert sum(g["tiles"] for g in groups) == len(evaluated.tile_ids)
    for fig in (figures.pr_figure(evaluated, 0.5), figures.threshold_figure(evaluated, 0.3),
                figures.confusion_figure(scoring.pixel_summary(evaluated, 0.5))):
        assert fig.to_plotly_json()["data"]


def test_damage_recall_is_the_count_weighted_tile_recall() -> None:
    import pandas as pd

    class Run:
        tiles = pd.DataFrame({"tile_id": ["a", "b", "c"], "dmg_destroyed": [2, 0, 2],
                              "dmg_no_damage": [0, 3, 1]})
        index = {"a": 0, "b": 1, "c": 2}

    n = len(scoring.BUILDING_THRESHOLDS)
    b = np.zeros((3, n, 3), np.int32)
    b[:, :, 0] = [[1], [3], [0]]  # tp
    b[:, :, 2] = [[1], [0], [3]]  # fn → recall a 0.5, b 1.0, c 0.0
    fake = scoring.Evaluation("r", "v", "m", "0" * 64, ["a", "b", "c"], "", "", np.zeros(1001),
                         np.zeros(1001), np.zeros((3, 101)), np.zeros((3, 101)), b, 0.0, "CPU")
    rows = {r["damage"]: r for r in ev.damage_rows(fake, Run(), 0.5)}
    assert rows["destroyed"]["recall"] == pytest.approx((2 * 0.5 + 2 * 0.0) / 4)
    assert rows["no-damage"]["recall"] == pytest.approx((3 * 1.0 + 1 * 0.0) / 4)
    assert rows["destroyed"]["buildings"] == 4 and rows["no-damage"]["tiles"] == 2


# ----------------------------------------------------------------------------- segmentation


def test_analyse_segments_counts_and_compares(small_run: Any, svc: ModelService,
                                              flask_app: Any) -> None:
    img = np.concatenate([runs.tile_image(small_run, t)
                          for t in small_run.tiles["tile_id"][:3]], axis=1)  # 96 × 288
    up = uploads.Upload(image=img, name="mosaic.png", nbytes=1)
    with flask_app.server.app_context():
        res = seg.analyse(up, small_run, svc)
        again = seg.analyse(up, small_run, svc)
        from app.web.cache import cache

        stored = cache.get(seg.cache_key(res.key))
    assert res.mask.shape == (96, 288) and res.width == 288 and not res.cached and again.cached
    assert res.n_buildings >= 0 and res.building_pixels == int(res.mask.sum())
    assert set(res.baselines) == {"otsu", "kmeans"}
    assert all(0 <= b["iou"] <= 1 for b in res.baselines.values())
    assert Image.open(io.BytesIO(stored["mask_png"])).size == (288, 96)
    # the untrained U-Net gives 256-d vectors, the fixture run holds 32-d ones
    assert "cannot be placed" in res.placement["note"] or "Cannot embed" in res.placement["note"]


def test_place_upload_falls_back_to_neighbours_without_reducers(small_run: Any) -> None:
    target = np.asarray(small_run.vectors[4], dtype=np.float32)

    class Fake:
        def embed_image(self, image: Any, run: Any) -> tuple[np.ndarray, dict]:
            return target, {"representation": "gap", "layer": "bottleneck"}

    out = seg.place_upload(small_run, Fake(), _rgb(32, 32))
    assert out["neighbours"][0][0] == small_run.tiles["tile_id"].iat[4]
    assert out["neighbours"][0][1] == pytest.approx(1.0, abs=1e-3)
    assert out["approx"] and set(out["coords"]) == {"pca", "tsne", "umap"}
    assert "mean position of its 5 nearest" in out["note"]


def test_mask_iou_and_small_copy() -> None:
    a = np.zeros((4, 4), bool)
    assert seg.mask_iou(a, a) == 1.0
    b = a.copy()
    b[0, :2] = True
    assert seg.mask_iou(a, b) == 0.0 and seg.mask_iou(b, b) == 1.0
    assert seg.small_copy(_rgb(3000, 1500), 1024).shape == (1024, 512, 3)


def test_computed_images_are_data_uris() -> None:
    uri = images.data_uri(images.heat_rgba(np.linspace(0, 1, 64 * 64).reshape(64, 64)))
    assert uri.startswith("data:image/png;base64,")
    big = images.data_uri(_rgb(2000, 1000), "JPEG")
    assert Image.open(io.BytesIO(base64.b64decode(big.split(",")[1]))).size == (384, 768)
    assert components.timing_text(12.3, "CPU", False) == "computed in 12 ms (CPU)"
    assert components.timing_text(0.42, "GPU", True, 80).startswith("from cache in 0.4 ms")


# ----------------------------------------------------------------------------- background manager


def _wait(cond: Any, timeout: float = 10) -> None:
    end = time.time() + timeout
    while time.time() < end and not cond():
        time.sleep(0.02)


def test_thread_manager_runs_jobs_with_progress() -> None:
    m = ThreadManager(max_workers=1)
    seen = threading.Event()

    def fn(set_progress: Any, x: int) -> int:
        set_progress((1, 2))
        seen.set()
        return x * 2

    job_fn = m.make_job_fn(fn, progress=True)
    job = m.call_job_fn("k1", job_fn, [21], {})
    _wait(lambda: not m.job_running(job))
    assert seen.is_set() and m.get_progress("k1") == [1, 2]
    assert m.get_result("k1", job) == 42 and m.get_result("k1", job) is m.UNDEFINED
    m.shutdown()


def test_thread_manager_cancel_stops_at_the_next_progress() -> None:
    m = ThreadManager(max_workers=1)
    steps: list[int] = []

    def slow(set_progress: Any) -> str:
        for i in range(200):
            set_progress(i)
            steps.append(i)
            time.sleep(0.01)
        return "finished"

    job = m.call_job_fn("k2", m.make_job_fn(slow, progress=True), [], {})
    _wait(lambda: len(steps) > 3)
    m.terminate_job(job)
    time.sleep(0.1)
    assert not m.job_running(job) and len(steps) < 200
    assert m.get_result("k2", job) is m.UNDEFINED
    err = m.call_job_fn("k3", m.make_job_fn(lambda: 1 / 0, progress=False), [], {})
    _wait(lambda: not m.job_running(err))
    assert "division by zero" in m.get_result("k3", err)["background_callback_error"]["msg"]
    m.shutdown()


# ----------------------------------------------------------------------------- callbacks


@pytest.fixture(scope="module")
def flask_app(tmp_path_factory: pytest.TempPathFactory, unet: keras.Model) -> Any:
    """An app over a fixture run whose model (fixture-model, a tiny untrained U-Net) exists."""
    store = tmp_path_factory.mktemp("pages-ii-models")
    artifacts.save_model_run(unet, "fixture-model", preset="light", input_size=None, dataset={},
                             split={}, params={}, metrics={}, history=[], store=store)
    root = tmp_path_factory.mktemp("pages-ii-web")
    run_id = make_fixture_run(root, n=60, seed=0)
    mp = pytest.MonkeyPatch()
    mp.setattr(config, "MODEL_STORE", store)
    inference.forget_services()
    app = built_app(embeddings_run=run_id, embeddings_root=root,
                     cache_config={"CACHE_TYPE": "SimpleCache"})
    yield app
    mp.undo()
    inference.forget_services()


def call(func: Any, *args: Any, triggered: tuple = ()) -> Any:
    """Run a callback with ``dash.ctx.triggered`` set to ``(id, prop, value)`` items."""

    def run() -> Any:
        items = []
        for cid, prop, value in triggered:
            key = json.dumps(cid, sort_keys=True, separators=(",", ":")) if isinstance(cid, dict) \
                else cid
            items.append({"prop_id": f"{key}.{prop}", "value": value})
        context_value.set(AttributeDict(triggered_inputs=items))
        return func(*args)

    return copy_context().run(run)


def _json(component: Any) -> str:
    return json.dumps(component, default=lambda o: o.to_plotly_json())


def test_explain_callbacks(flask_app: Any) -> None:
    from app.web import ids

    xp = sys.modules["app.web.pages.explain"]
    run_id = runs.default_run_id()
    run = runs.get_run(run_id)
    tile = run.tiles["tile_id"].iat[3]
    with flask_app.server.app_context():
        out = call(xp.setup, run_id, None)
        assert out[5] == "bottleneck" and {"label": "dec1", "value": "dec1"} in out[4]
        assert call(xp.channel_range, "enc1", run_id) == 15
        assert "fixture-model" in out[1].children  # the hash differs from the manifest's
        assert call(xp.search_tiles, tile[-6:], None, run_id)[0]["value"].endswith(tile[-6:])
        fig, caption, truth = call(xp.show_image, "tile", tile, None, "box", {}, run_id)
        layout = fig.to_plotly_json()["layout"]
        assert layout["images"][0]["source"].startswith(f"/img/{run_id}/image/")
        assert layout["dragmode"] == "drawrect" and "/true/" in _json(truth)
        pred, heat, overlay, status, message = call(
            xp.run_explain, 1, "seg-grad-cam", "bottleneck", 0, "image", {}, tile, None, "tile",
            0.5, run_id)
        assert "data:image/png;base64" in _json(heat) and "computed in" in _json(status)
        again = call(xp.run_explain, 1, "seg-grad-cam", "bottleneck", 0, "image", {}, tile, None,
                     "tile", 0.5, run_id)
        assert "from cache" in _json(again[3])
        boxless = call(xp.run_explain, 1, "grad-cam++", "bottleneck", 0, "box", {}, tile, None,
                       "tile", 0.5, run_id)
        assert "Draw a box" in _json(boxless[4])
        data, note = call(xp.pick_target, {"shapes": [{"x0": 40, "y0": 9, "x1": 5, "y1": 30}]},
                          None, tile, None, "box", {},
                          triggered=((ids.XP_IMAGE_FIG, "relayoutData", {}),))
        assert data == {"box": [5.0, 9.0, 40.0, 30.0]} and "Box" in note
        tiles = call(xp.channel_tiles, 2, run_id)
        assert len(tiles) == xp_logic.N_CHANNEL_TILES and "/explain?" in _json(tiles[0])


def test_explain_page_helpers(flask_app: Any) -> None:
    xp = xp_logic
    assert xp.parse_box({"shapes[0].x0": 1, "shapes[0].y0": 2, "shapes[0].x1": 3,
                         "shapes[0].y1": 4}) == [1.0, 2.0, 3.0, 4.0]
    assert xp.parse_box({"xaxis.range[0]": 3}) is None and xp.parse_box(None) is None
    assert xp.parse_pixel({"points": [{"x": 3, "y": 7}]}) == [3.0, 7.0]
    assert xp.parse_pixel({}) is None
    run = runs.get_run(runs.default_run_id())
    assert xp.channel_info(run)[0] == 32
    run.manifest["representation"] = "flatten"
    try:
        channels, note = xp.channel_info(run)
        assert channels == 0 and "no per-channel values" in note
    finally:
        run.manifest["representation"] = "gap"
    top = xp.top_tiles_for_channel(run, 5, n=4)
    values = [v for _, v in top]
    assert values == sorted(values, reverse=True)
    assert len(xp.suggested_tiles(run)) == xp_logic.N_SUGGEST


def test_evaluate_callbacks(flask_app: Any) -> None:
    evp = sys.modules["app.web.pages.evaluate"]
    run = runs.get_run(runs.default_run_id())
    with flask_app.server.app_context():
        info = runs.model_for(run)
        result = evp.ensure_evaluation(run, info)
        ready = {"key": ev.cache_key(run.run_id, result.version, result.model_sha),
                 "run": run.run_id}
        out = evp.update_metrics(ready, 0.5)
        assert len(out[7]) == len(result.tile_ids) and out[2].to_plotly_json()["data"]
        detail = evp.row_detail({"row_id": result.tile_ids[0]}, 0.4, ready)
        assert "data:image/png;base64" in _json(detail) and "errors at t = 0.40" in _json(detail)
        assert evp.update_metrics(None, 0.5)[0] is not None  # no_update


def test_segment_download_and_gradcam(flask_app: Any) -> None:
    sg = sys.modules["app.web.pages.segment"]
    run = runs.get_run(runs.default_run_id())
    info = runs.model_for(run)
    img = runs.tile_image(run, run.tiles["tile_id"].iat[0])
    with flask_app.server.app_context():
        res = seg.analyse(uploads.Upload(image=img, name="tile.png", nbytes=1), run, info.service)
        result = {"key": res.key, "name": "tile.png", "run": run.run_id,
                  "placement": res.placement}
        sent = sg.download_mask(1, result)
        assert sent["filename"] == "tile-mask.png" and sent["base64"]
        assert "data:image/png;base64" in _json(sg.upload_gradcam(result, run.run_id)) or \
            "nothing" in _json(sg.upload_gradcam(result, run.run_id)).lower()
        opts, method, cards, note = sg.placement_controls(result, None)
        assert method in ("umap", "tsne", "pca") and note
        assert sg.placement_map(method, result).to_plotly_json()["data"]


def test_no_model_gives_a_clear_message(flask_app: Any, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.setattr(config, "MODEL_STORE", tmp_path)
    info = runs.model_for(runs.get_run(runs.default_run_id()))
    assert not info.ok and "No model run 'fixture-model'" in info.message


def test_tiling_description_follows_the_single_pass_limit() -> None:
    from app.web.logic.segment import tiling_description

    assert tiling_description(1024, 1024, single_pass_max_pixels=1024 * 1024) == "one pass"
    assert tiling_description(1000, 1000, single_pass_max_pixels=1024 * 1024) == (
        "one pass (padded to /16)")
    assert tiling_description(1024, 1040, single_pass_max_pixels=1024 * 1024) == (
        "25 tiles of 256 px, 32 px overlap, blended")
    assert tiling_description(200, 100, single_pass_max_pixels=0) == "one pass (padded to /16)"
