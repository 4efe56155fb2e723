"""The Dash app: pages, routes, security, callbacks over HTTP, lazy ``server``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from app.web import ids, runs
from tests.fixture_run import shared_fixture_run
from tests.webapp import built_app


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.getbasetemp() / "web-fixture"
    return root, shared_fixture_run(root)


@pytest.fixture(scope="module")
def dash_app(fixture_root):
    root, run_id = fixture_root
    return built_app(embeddings_run=run_id, embeddings_root=root,
                      cache_config={"CACHE_TYPE": "SimpleCache"})


@pytest.fixture(scope="module")
def client(dash_app):
    return dash_app.server.test_client()


def _dependencies(client) -> list[dict]:
    return json.loads(client.get("/_dash-dependencies").data)


def _body(dep: dict, values: dict, changed: str) -> dict:
    """A ``/_dash-update-component`` request body for a callback, as the renderer sends it."""

    def concrete(item: dict) -> dict:
        cid = item["id"]
        if isinstance(cid, str) and cid.startswith("{"):
            cid = json.loads(cid)
            cid = {k: (v if not isinstance(v, list) else values["_index"]) for k, v in cid.items()}
        return {"id": cid, "property": item["property"]}

    outputs = []
    for part in dep["output"].strip(".").split("..."):
        cid, prop = part.rsplit(".", 1)
        outputs.append(concrete({"id": cid, "property": prop}))
    inputs = [{**concrete(i), "value": values.get(i["property"] if i["id"].startswith("{")
                                                 else i["id"])} for i in dep["inputs"]]
    state_ = [{**concrete(i), "value": values.get(i["id"])} for i in dep["state"]]
    return {"output": dep["output"], "outputs": outputs if len(outputs) > 1 else outputs[0],
            "inputs": inputs, "state": state_, "changedPropIds": [changed]}


def test_pages_are_registered_and_served(client) -> None:
    import dash

    paths = {p["path"] for p in dash.page_registry.values()}
    assert {"/", "/clusters"} <= paths
    for path in ("/", "/clusters"):
        r = client.get(path)
        assert r.status_code == 200 and b"U-Net Lens" in r.data
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Frame-Options"] == "SAMEORIGIN"
    layout = json.loads(client.get("/_dash-layout").data)
    text = json.dumps(layout)
    assert ids.RUN in text and "Explore" in text and "Clusters" in text


def test_no_external_resources_in_the_index(client) -> None:
    html = client.get("/").data.decode()
    assert "cdn." not in html and "https://" not in html.replace("https://plotly.com", "")
    assert "/assets/style.css" in html


def test_each_app_built_in_turn_has_every_callback_once(fixture_root) -> None:
    root, run_id = fixture_root
    first = built_app(embeddings_root=root, cache_config={"CACHE_TYPE": "SimpleCache"})
    second = built_app(embeddings_root=root, cache_config={"CACHE_TYPE": "SimpleCache"})
    for app in (second, first):  # built one after the other (see tests/webapp.py)
        client = app.server.test_client()
        outputs = [d["output"] for d in _dependencies(client)]
        assert len(outputs) == len(set(outputs))
        assert any("explore-tooltip" in o for o in outputs)
        assert any("clusters-cards" in o for o in outputs)
        index = client.get("/").data.decode()
        assert index.count("value.points.forEach") == 1  # the clientside selection callback


def test_a_fresh_worker_serves_a_pages_scripts_fetched_all_at_once(fixture_root) -> None:
    """Under ``--workers 2`` a page's HTML may come from one worker and its scripts, fetched
    together, from the other, whose first requests they are. Dash's first-request set-up
    registers the script paths and raced those fetches (404 for React: a blank page, seen in
    CI); ``create_app`` now does the set-up before serving anything."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    root, _ = fixture_root
    page = built_app(embeddings_root=root, cache_config={"CACHE_TYPE": "SimpleCache"})
    html = page.server.test_client().get("/").data.decode()
    scripts = re.findall(r'src="(/_dash-component-suites/[^"]+)"', html)
    assert any("/react@" in s for s in scripts)
    from app.web.main import create_app

    worker = create_app(embeddings_root=root, cache_config={"CACHE_TYPE": "SimpleCache"})
    assert any("react@" in p for p in worker.registered_paths["dash"])  # before any request

    def fetch(url: str) -> int:
        return worker.server.test_client().get(url).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = dict(zip(scripts, pool.map(fetch, scripts), strict=True))
    assert set(statuses.values()) == {200}, statuses


def test_hover_over_http_returns_only_the_tooltip(client, fixture_root) -> None:
    root, run_id = fixture_root
    dep = next(d for d in _dependencies(client) if "explore-tooltip" in d["output"])
    tid = runs.get_run(run_id).tiles["tile_id"].iat[3]
    hover = {"points": [{"curveNumber": 0, "pointNumber": 3, "customdata": tid,
                         "bbox": {"x0": 10, "x1": 12, "y0": 20, "y1": 22}}]}
    body = _body(dep, {"_index": "large", "hoverData": hover, ids.RUN: run_id},
                 json.dumps({"index": "large", "type": ids.EX_MAP}) + ".hoverData")
    r = client.post("/_dash-update-component", json=body)
    assert r.status_code == 200
    response = json.loads(r.data)["response"]
    (tooltip,) = response.values()
    assert tooltip["show"] is True and tooltip["bbox"]["x0"] == 10
    text = json.dumps(tooltip["children"])
    assert f"/img/{run_id}/thumb/{tid}" in text and f"/img/{run_id}/overlay/{tid}" in text
    assert len(r.data) < 8000 and "figure" not in text and "data:image" not in text


def test_large_json_responses_are_gzipped(client, fixture_root) -> None:
    root, run_id = fixture_root
    dep = next(d for d in _dependencies(client) if ids.EX_BUILT in d["output"])
    body = _body(dep, {ids.RUN: run_id, ids.EX_METHOD: "umap", ids.EX_COLOUR: "cluster",
                       ids.EX_TILE: None}, f"{ids.RUN}.value")
    plain = client.post("/_dash-update-component", json=body)
    zipped = client.post("/_dash-update-component", json=body,
                         headers={"Accept-Encoding": "gzip, deflate"})
    assert plain.status_code == zipped.status_code == 200
    assert "Content-Encoding" not in plain.headers
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.data) == plain.data
    assert len(zipped.data) < len(plain.data) / 2
    figure = json.loads(plain.data)["response"]
    assert all("data:image" not in json.dumps(v) for v in figure.values())


def test_image_route_is_bound(client, fixture_root) -> None:
    root, run_id = fixture_root
    tid = runs.get_run(run_id).tiles["tile_id"].iat[0]
    assert client.get(f"/img/{run_id}/thumb/{tid}").status_code == 200
    assert client.get(f"/img/{run_id}/thumb/nope").status_code == 404
    assert client.get("/img/").status_code == 404


def test_server_is_created_lazily(monkeypatch, tmp_path: Path) -> None:
    import app.web.main as main

    monkeypatch.setattr(main, "_default_app", None)
    monkeypatch.setattr("app.config.EMBEDDINGS_DIR", tmp_path)
    monkeypatch.setattr("app.config.CACHE_DIR", tmp_path / "cache")
    server = main.server
    assert server is main._default_app.server and main.server is server
    assert server.debug is False
    with pytest.raises(AttributeError):
        _ = main.not_a_thing
    r = server.test_client().get("/")
    assert r.status_code == 200  # an empty embeddings folder still serves the shell


def test_run_defaults(monkeypatch, fixture_root, tmp_path: Path) -> None:
    root, run_id = fixture_root
    runs.configure(root=root)
    assert runs.default_run_id() == run_id
    runs.configure(root=tmp_path)
    assert runs.default_run_id() is None and runs.list_embeddings_runs() == []
    for bad in (None, "", "../x", "no-such", 5, ".hidden"):
        assert runs.get_run(bad) is None  # type: ignore[arg-type]
    runs.configure(root=root, embeddings_run="missing")
    assert runs.default_run_id() == run_id
    run = runs.get_run(run_id)
    assert runs.get_run(run_id) is run  # opened once
    assert len(runs.run_version(run)) == 10
    vec = runs.vectors(run)
    assert vec.data.dtype.name == "float32" and runs.vectors(run) is vec


def test_run_picker_lists_runs_and_hides_for_one(fixture_root, tmp_path: Path) -> None:
    import shutil

    from app.web.main import navbar

    root, run_id = fixture_root
    runs.configure(root=root)
    one = json.dumps(navbar().to_plotly_json(), default=lambda o: o.to_plotly_json())
    assert '"display": "none"' in one and run_id in one
    shutil.copytree(root / run_id, tmp_path / "other-run")
    shutil.copytree(root / run_id, tmp_path / run_id)
    runs.configure(root=tmp_path, embeddings_run=run_id)
    two = navbar()
    picker = two.children[2].children[1].children
    assert sorted(o["value"] for o in picker.options) == sorted([run_id, "other-run"])
    assert picker.value == run_id
    assert runs.get_run("other-run") is not None
    runs.configure(root=root)
