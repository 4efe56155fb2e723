"""How images reach the browser: ``GET /img/<run>/<kind>/<tile_id>`` (files by id, cache headers,
404 for anything unknown) and computed images as data URIs."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.artifacts import THUMB_KINDS
from app.web import components, images
from app.web.images import CACHE_CONTROL, img_url
from tests.fixture_run import shared_fixture_run
from tests.unit.lens_helpers import rgb
from tests.webapp import built_app


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.getbasetemp() / "web-fixture"
    return root, shared_fixture_run(root)


@pytest.fixture()
def client_for(tmp_path: Path):
    """A test client of an app over its own copy of the fixture run (tests may damage it)."""

    def make(src_root: Path, run_id: str):
        root = tmp_path / "emb"
        shutil.copytree(src_root / run_id, root / run_id)
        app = built_app(embeddings_root=root, cache_config={"CACHE_TYPE": "SimpleCache"})
        return app.server.test_client(), root / run_id

    return make


@pytest.fixture(scope="module")
def client(fixture_root: tuple[Path, str]):
    root, _ = fixture_root
    app = built_app(embeddings_root=root, cache_config={"CACHE_TYPE": "SimpleCache"})
    return app.server.test_client()


def _first_id(root: Path, run_id: str) -> str:
    import pandas as pd

    return str(pd.read_parquet(root / run_id / "tiles.parquet")["tile_id"].iat[0])


@pytest.mark.parametrize("kind", THUMB_KINDS)
def test_every_kind_is_served_with_cache_headers(client, fixture_root, kind: str) -> None:
    root, run_id = fixture_root
    tid = _first_id(root, run_id)
    r = client.get(img_url(run_id, kind, tid, "v1"))
    assert r.status_code == 200
    assert r.mimetype in ("image/jpeg", "image/png")
    assert r.headers["Cache-Control"] == CACHE_CONTROL
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers.get("ETag")
    assert r.data[:4] in (b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1", b"\x89PNG", b"\xff\xd8\xff\xdb")


def test_etag_revalidation_gives_304(client, fixture_root) -> None:
    root, run_id = fixture_root
    url = img_url(run_id, "thumb", _first_id(root, run_id))
    etag = client.get(url).headers["ETag"]
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.data


@pytest.mark.parametrize(
    "path",
    [
        "/img/no-such-run/thumb/{tid}",
        "/img/..%2F..%2Fetc/thumb/{tid}",
        "/img/.hidden/thumb/{tid}",
        "/img/{run}/bogus/{tid}",
        "/img/{run}/THUMB/{tid}",
        "/img/{run}/thumb/not-a-tile",
        "/img/{run}/thumb/..%2Fmanifest.json",
        "/img/{run}/thumb/{tid}.jpg",
        "/img/{run}/image/..",
        "/img/{run}/thumb/%00",
    ],
)
def test_unknown_or_malformed_parts_are_404(client, fixture_root, path: str) -> None:
    root, run_id = fixture_root
    r = client.get(path.format(run=run_id, tid=_first_id(root, run_id)))
    assert r.status_code == 404
    assert not r.data.startswith((b"\xff\xd8", b"\x89PNG"))


def test_a_file_outside_the_index_is_never_served(client_for, fixture_root) -> None:
    """A file that exists on disk but whose id the run does not list: 404."""
    client, run_dir = client_for(*fixture_root)
    (run_dir / "thumbs" / "intruder.jpg").write_bytes((run_dir / "thumbs").glob("*.jpg").__next__().read_bytes())
    assert client.get(img_url(run_dir.name, "thumb", "intruder")).status_code == 404


def test_a_missing_file_is_404_not_500(client_for, fixture_root) -> None:
    client, run_dir = client_for(*fixture_root)
    tid = _first_id(run_dir.parent, run_dir.name)
    (run_dir / "thumbs" / f"{tid}.jpg").unlink()
    assert client.get(img_url(run_dir.name, "thumb", tid)).status_code == 404
    assert client.get(img_url(run_dir.name, "pred", tid)).status_code == 200


def test_img_url_percent_encodes_every_part() -> None:
    assert img_url("r", "thumb", "a b/c", "v 1") == "/img/r/thumb/a%20b%2Fc?v=v%201"
    assert img_url("r", "overlay", "t1") == "/img/r/overlay/t1"


def test_computed_images_are_data_uris() -> None:
    uri = images.data_uri(images.heat_rgba(np.linspace(0, 1, 64 * 64).reshape(64, 64)))
    assert uri.startswith("data:image/png;base64,")
    big = images.data_uri(rgb(2000, 1000), "JPEG")
    assert Image.open(io.BytesIO(base64.b64decode(big.split(",")[1]))).size == (384, 768)
    assert components.timing_text(12.3, "CPU", False) == "computed in 12 ms (CPU)"
    assert components.timing_text(0.42, "GPU", True, 80).startswith("from cache in 0.4 ms")
