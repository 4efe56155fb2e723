"""``/api/points``, ``/api/segment`` and ``/healthz`` through the Flask test client."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app import config
from app.ml import registry
from app.web import api, runs
from tests.serving import linked_run, png_bytes, tiny_model_run
from tests.webapp import built_app


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, str]:
    """(model store, embeddings root, model run, embeddings run) with a real tiny model."""
    base = tmp_path_factory.mktemp("api")
    store, root = base / "models", base / "emb"
    model_run = tiny_model_run(store)
    run_id = linked_run(root, store, model_run, n=80)
    return store, root, model_run, run_id


@pytest.fixture(scope="module")
def client(stores, tmp_path_factory):
    store, root, _, run_id = stores
    mp = pytest.MonkeyPatch()
    mp.setattr(config, "MODEL_STORE", store)
    app = built_app(embeddings_run=run_id, embeddings_root=root,
                     cache_config={"CACHE_TYPE": "SimpleCache"})
    yield app.server.test_client()
    mp.undo()


# --------------------------------------------------------------------------- /healthz


def test_healthz_reports_the_runs_and_is_ready(client, stores) -> None:
    _, _, model_run, run_id = stores
    r = client.get("/healthz")
    assert r.status_code == 200, r.json
    body = r.json
    assert body["ready"] is True and body["status"] == "ok", body
    assert body["model"]["run"] == model_run and len(body["model"]["sha256"]) == 12
    assert body["embeddings"] == {"run": run_id, "tiles": 80}
    assert body["reducers"] == {"pca": "ok"}
    assert body["version"]
    tf_info = body["tensorflow"]  # the tiny model fixture imported TensorFlow in this process
    assert isinstance(tf_info, dict) and tf_info["gpu"] == (tf_info["gpus"] > 0), tf_info
    assert r.headers["Cache-Control"] == "no-store"


def test_healthz_never_imports_tensorflow(stores, tmp_path: Path) -> None:
    """In a fresh process: /healthz answers "not loaded" and TensorFlow stays unimported."""
    import subprocess
    import sys

    store, root, _, run_id = stores
    code = (
        "import sys, json\n"
        "from app.web.main import create_app\n"
        "from app import config\n"
        f"config.MODEL_STORE = __import__('pathlib').Path({str(store)!r})\n"
        f"app = create_app(embeddings_run={run_id!r}, embeddings_root=__import__('pathlib')"
        f".Path({str(root)!r}), cache_config={{'CACHE_TYPE': 'SimpleCache'}})\n"
        "r = app.server.test_client().get('/healthz')\n"
        "print(json.dumps([r.status_code, r.json['tensorflow'], 'tensorflow' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    status, tf_info, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert status == 200 and tf_info == "not loaded" and imported is False


# --------------------------------------------------------------------------- /api/points


@pytest.mark.parametrize("method", registry.reducer_names())
def test_points_are_compact_ids_coordinates_and_clusters(client, stores, method: str) -> None:
    _, root, _, run_id = stores
    r = client.get(f"/api/points?run={run_id}&method={method}")
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert b", " not in r.data and b": " not in r.data  # compact separators
    body = json.loads(r.data)
    tiles = pd.read_parquet(root / run_id / "tiles.parquet")
    coords = pd.read_parquet(root / run_id / "reduced" / "coords.parquet")
    assert body["run"] == run_id and body["method"] == method and body["n"] == len(tiles)
    assert body["ids"] == tiles["tile_id"].tolist()
    assert len(body["x"]) == len(body["y"]) == len(body["cluster"]) == len(tiles)
    span = float(coords[f"{method}_x"].max() - coords[f"{method}_x"].min())
    assert np.allclose(body["x"], coords[f"{method}_x"], atol=span * 1e-4 + 1e-6)
    assert np.allclose(body["y"], coords[f"{method}_y"], atol=span * 1e-3 + 1e-6)
    assert body["cluster"] == coords["cluster"].tolist()
    assert r.headers.get("ETag")


def test_points_default_run_and_etag_revalidation(client, stores) -> None:
    _, _, _, run_id = stores
    r = client.get("/api/points")
    assert r.status_code == 200 and r.json["run"] == run_id and r.json["method"] == "umap"
    again = client.get("/api/points", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and not again.data


def test_points_for_another_k(client, stores) -> None:
    _, _, _, run_id = stores
    r = client.get(f"/api/points?run={run_id}&method=pca&k=8")
    assert r.status_code == 200
    body = r.json
    assert body["k"] == 8 and len(set(body["cluster"])) == 8


@pytest.mark.parametrize("query, status", [
    ("method=lda", 400), ("method=umap&k=1", 400), ("method=umap&k=abc", 400),
    ("method=umap&k=99", 400), ("run=no-such-run", 404), ("run=", 200),
])
def test_points_bad_queries(client, query: str, status: int) -> None:
    r = client.get(f"/api/points?{query}")
    assert r.status_code == status
    if status != 200:
        assert set(r.json) == {"error"} and r.json["error"]


def test_points_missing_map_is_a_404_naming_the_fix(stores, tmp_path: Path, monkeypatch) -> None:
    import shutil

    store, root, _, run_id = stores
    shutil.copytree(root / run_id, tmp_path / run_id)
    coords = pd.read_parquet(tmp_path / run_id / "reduced" / "coords.parquet")
    coords.drop(columns=["tsne_x", "tsne_y"]).to_parquet(
        tmp_path / run_id / "reduced" / "coords.parquet", index=False)
    monkeypatch.setattr(config, "MODEL_STORE", store)
    client = built_app(embeddings_root=tmp_path,
                        cache_config={"CACHE_TYPE": "SimpleCache"}).server.test_client()
    r = client.get(f"/api/points?run={run_id}&method=tsne")
    assert r.status_code == 404 and "python -m app reduce" in r.json["error"]
    assert client.get(f"/api/points?run={run_id}&method=pca").status_code == 200


def test_rounding_keeps_nan_as_null() -> None:
    out = api._rounded(np.array([0.123456, np.nan, 10.5], np.float32))
    assert out[1] is None and out[0] == pytest.approx(0.1235, abs=10.4 * 1e-4)
    assert json.dumps(out) and "-0.0" not in json.dumps(api._rounded(np.array([-1e-9, 5.0])))


# --------------------------------------------------------------------------- /api/segment


def _expected(stores, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    from app.data.imageio import decode_image
    from app.ml import inference

    store, _, model_run, _ = stores
    rgb, _ = decode_image(data, name="x")
    prob = inference.get_service(model_run, store).segment_large(rgb)
    return rgb, prob


def _png_to_mask(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "L"
        return np.asarray(im) > 127


def test_segment_multipart_returns_stats_and_mask(client, stores) -> None:
    data = png_bytes(48, 64)
    r = client.post("/api/segment", data={"file": (io.BytesIO(data), "roofs.png")},
                    content_type="multipart/form-data")
    assert r.status_code == 200, r.json
    body = r.json
    rgb, prob = _expected(stores, data)
    mask = _png_to_mask(base64.b64decode(body["mask_png_base64"]))
    assert mask.shape == (48, 64) and (mask == (prob >= 0.5)).all()
    assert body["width"] == 64 and body["height"] == 48
    assert body["building_pixels"] == int(mask.sum())
    assert body["building_fraction"] == pytest.approx(mask.mean())
    assert body["building_count"] >= 0 and body["model"]["run"] == stores[2]
    assert body["device"] in ("CPU", "GPU") and body["threshold"] == 0.5


def test_segment_raw_body_png_format_and_threshold(client, stores) -> None:
    data = png_bytes(32, 40, seed=3)
    r = client.post("/api/segment?format=png&threshold=0.3", data=data,
                    content_type="image/png")
    assert r.status_code == 200 and r.mimetype == "image/png"
    _, prob = _expected(stores, data)
    assert (_png_to_mask(r.data) == (prob >= 0.3)).all()
    assert int(r.headers["X-Building-Count"]) >= 0
    assert r.headers["X-Model-Run"] == stores[2]


def test_building_stats_counts_components() -> None:
    prob = np.zeros((40, 40), np.float32)
    prob[2:8, 2:8] = 0.9  # 36 px
    prob[20:30, 20:25] = 0.8  # 50 px
    prob[35, 35] = 0.99  # a speck, under MIN_BUILDING_PIXELS
    mask, stats = api.building_stats(prob, 0.5)
    assert stats["building_count"] == 2 and stats["building_pixels"] == 87
    assert stats["largest_building_pixels"] == 50 and mask.sum() == 87


@pytest.mark.parametrize("payload", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_segment_bad_image_is_a_400_with_the_decoder_message(client, payload: bytes) -> None:
    from app.data.base import DatasetError
    from app.data.imageio import decode_image

    with pytest.raises(DatasetError) as info:
        decode_image(payload, name="upload")
    r = client.post("/api/segment", data=payload, content_type="application/octet-stream")
    assert r.status_code == 400 and r.json == {"error": str(info.value)}


def test_segment_tiny_image_uses_the_decoder_limits(client) -> None:
    r = client.post("/api/segment", data={"file": (io.BytesIO(png_bytes(8, 8)), "s.png")},
                    content_type="multipart/form-data")
    assert r.status_code == 400 and "s.png" in r.json["error"]


@pytest.mark.parametrize("query, body, status", [
    ("", b"", 400), ("format=gif", b"x", 400), ("threshold=2", b"x", 400),
    ("threshold=nan", b"x", 400), ("model=no-such-model", png_bytes(), 404),
    ("model=..%2F..%2Fetc", png_bytes(), 404),
])
def test_segment_bad_requests(client, query: str, body: bytes, status: int) -> None:
    r = client.post(f"/api/segment?{query}", data=body, content_type="image/png")
    assert r.status_code == status and set(r.json) == {"error"}


def test_segment_over_the_size_limit_is_a_413(client) -> None:
    server = client.application
    assert server.config["MAX_CONTENT_LENGTH"] == config.MAX_UPLOAD_BYTES
    old = server.config["MAX_CONTENT_LENGTH"]
    server.config["MAX_CONTENT_LENGTH"] = 2000
    try:
        raw = client.post("/api/segment", data=b"\0" * 5000, content_type="image/png")
        multi = client.post("/api/segment", data={"file": (io.BytesIO(b"\0" * 5000), "a.png")},
                            content_type="multipart/form-data")
    finally:
        server.config["MAX_CONTENT_LENGTH"] = old
    for r in (raw, multi):
        assert r.status_code == 413 and "larger than" in r.json["error"]


def test_segment_without_a_model_is_a_503(stores, tmp_path: Path, monkeypatch) -> None:
    _, root, _, run_id = stores
    monkeypatch.setattr(config, "MODEL_STORE", tmp_path / "empty-store")
    client = built_app(embeddings_run=run_id, embeddings_root=root,
                        cache_config={"CACHE_TYPE": "SimpleCache"}).server.test_client()
    r = client.post("/api/segment", data=png_bytes(), content_type="image/png")
    assert r.status_code == 503 and "python -m app train" in r.json["error"]
    runs.configure()


def test_unknown_api_paths_are_json_404s(client) -> None:
    for path in ("/api/", "/api/nope", "/api/points/extra", "/api/../etc/passwd"):
        r = client.get(path)
        assert r.status_code == 404 and r.is_json and "error" in r.json


# --------------------------------------------------------------------------- cost bound

#: The model named explicitly: an earlier test re-configures the default run.
SEG = "/api/segment?model=tiny-model"


def test_segment_at_the_pixel_budget_is_not_downscaled(client, monkeypatch) -> None:
    monkeypatch.setattr(config, "MAX_INFER_PIXELS", 48 * 64)
    r = client.post(SEG, data=png_bytes(48, 64), content_type="image/png")
    assert r.status_code == 200, r.json
    assert r.json["downscaled"] is None and (r.json["width"], r.json["height"]) == (64, 48)


def test_segment_one_pixel_over_the_budget_is_downscaled_and_says_so(client, monkeypatch) -> None:
    budget = 48 * 64 - 1
    monkeypatch.setattr(config, "MAX_INFER_PIXELS", budget)
    r = client.post(SEG, data=png_bytes(48, 64), content_type="image/png")
    assert r.status_code == 200, r.json
    body = r.json
    assert body["width"] * body["height"] <= budget and body["width"] < 64
    assert body["downscaled"]["from_width"] == 64 and body["downscaled"]["from_height"] == 48
    assert body["downscaled"]["max_infer_pixels"] == budget
    assert "downscaled from 64×48 to" in body["downscaled"]["message"]
    assert "UNET_LENS_MAX_INFER_PIXELS" in body["downscaled"]["message"]
    mask = _png_to_mask(base64.b64decode(body["mask_png_base64"]))
    assert mask.shape == (body["height"], body["width"])
    png = client.post(SEG + "&format=png", data=png_bytes(48, 64), content_type="image/png")
    assert png.status_code == 200 and png.headers["X-Downscaled"].startswith("64x48 to ")


def test_segment_when_the_gate_is_full_is_a_429_with_retry_after(client, monkeypatch) -> None:
    from app.web import gate
    from tests.unit.test_gate import held

    full = gate.Gate(slots=1, queue=0)
    monkeypatch.setattr(gate, "INFERENCE", full)
    with held(full):
        r = client.post(SEG, data=png_bytes(), content_type="image/png")
    assert r.status_code == 429, r.json
    assert int(r.headers["Retry-After"]) >= 1
    assert f"try again in {r.headers['Retry-After']} s" in r.json["error"]
    assert r.headers["Cache-Control"] == "no-store"
    again = client.post(SEG, data=png_bytes(), content_type="image/png")
    assert again.status_code == 200, again.json


def test_concurrent_segment_requests_never_exceed_the_slots(client, monkeypatch) -> None:
    """Six threads, each with its own client, post at once: all are served, one at a time."""
    import threading

    from app.web import gate

    one = gate.Gate(slots=1, queue=8, wait_s=600)
    monkeypatch.setattr(gate, "INFERENCE", one)
    app = client.application
    start = threading.Barrier(6)
    statuses: list[int] = []

    def request(seed: int) -> None:
        c = app.test_client()
        data = png_bytes(64, 64, seed=seed)
        start.wait(30)
        statuses.append(c.post(SEG, data=data, content_type="image/png").status_code)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert statuses == [200] * 6 and one.peak == 1 and one.snapshot()["admitted"] == 6


# --------------------------------------------------------------------------- small items


@pytest.mark.parametrize("how", ["raw", "multipart"])
def test_segment_empty_file_says_the_file_is_empty(client, how: str) -> None:
    if how == "raw":
        r = client.post(SEG, data=b"", content_type="image/png")
    else:
        r = client.post(SEG, data={"file": (io.BytesIO(b""), "empty.png")},
                        content_type="multipart/form-data")
    assert r.status_code == 400 and "the file is empty" in r.json["error"], r.json
    if how == "multipart":
        assert r.json["error"].startswith("empty.png:")


def test_multipart_without_a_file_part_says_what_to_send(client) -> None:
    r = client.post(SEG, data={"note": "hi"}, content_type="multipart/form-data")
    assert r.status_code == 400 and "no file part" in r.json["error"]


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded",
                                          "application/octet-stream", "text/plain"])
def test_a_raw_body_is_an_image_whatever_its_content_type(client, content_type) -> None:
    """``curl --data-binary @a.png`` declares a form; the body is still the image."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = client.post(SEG, data=png_bytes(), headers=headers)
    assert r.status_code == 200, r.json


def test_an_emoji_file_name_is_kept_readable(client) -> None:
    r = client.post(SEG, data={"file": (io.BytesIO(b"not an image"), "🏠 roofs.png")},
                    content_type="multipart/form-data")
    assert r.status_code == 400 and r.json["error"].startswith("🏠 roofs.png:"), r.json
