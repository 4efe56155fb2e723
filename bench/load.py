"""Load test, the real mix: ``python -m bench.load [--users 50] [--seconds 60] [--workers 2]``.

Why a mix: a dashboard's cost is in its Dash callbacks (Grad-CAM, segmenting an upload, the
evaluation pass), not in its pages and thumbnails. A load test of pages and images alone
overstated the capacity about 3-4x (issue 16), so this one replays the callbacks too.

Starts the server itself (``python -m app serve --workers N``: gunicorn with N workers, on a
free 127.0.0.1 port), runs simulated users (threads)
for a bounded time and a bounded number of actions each, and stops the server. Loopback only.

Each user is a browser tab: it loads a page once (for the ``end_id`` dash-renderer echoes on
every callback) and then loops: pick an action at random (weights below), send it, wait a short
"think time", repeat. Like a browser, a user holds a few keep-alive connections
(``--connections``, default 4) and sends each request on the next one, so with several workers a
callback's polls may reach another worker than the one that started its job.

Kinds: page loads (``/``, ``/clusters``, ``/_dash-layout``, ``/_dash-dependencies``), hover
thumbnails, ``/api/points``, ``/api/segment`` on a small PNG, ``/healthz``, and Dash callbacks
(``POST /_dash-update-component``), their bodies built by :class:`bench.dashreplay.Replay` from a
replayed first load of their page, as dash-renderer builds them:

- ``cb hover tooltip``: Explore's hover callback (``hoverData`` of a random tile);
- ``cb explain grad-cam``: the Explain button (Seg-Grad-CAM, bottleneck, predicted mask) on a
  random stored tile (the result cache answers repeats: its hit share is reported);
- ``cb segment upload``: Segment's background upload callback on a small varied PNG; then
  ``cb segment follow-up``: the callbacks its result triggers (Grad-CAM of the upload, map);
- ``cb evaluate``: Evaluate's background run (the pass itself runs once before the clock; in
  the run it is fetched from the cache); then ``cb evaluate follow-up`` (metrics, figures).

Background callbacks follow dash-renderer's protocol: the first POST answers ``cacheKey`` and
``job``; the client re-POSTs every ``interval`` ms with ``endId``, ``cacheKey`` and ``job`` in the
query (input values nulled) until the answer carries ``response``. A poll answered 204 for a job
the server handed out loses the result: the browser stops polling and the page stays blank.
It counts as an error of its kind ("poll 204"): with several workers that is the cross-worker
loss of issue 16. A callback answering other than 200/204, or a body without the outputs
expected, is an error too.

Latency of a background kind is the user's: from the first POST to the result. Prints per kind:
actions, errors, actions/s, p50 / p95 / p99, and the HTTP requests they took (polls included).

Runs: the shipped demo when it is on disk, else ``--model-store/--embeddings/--run``, else a
synthetic fixture run (``tests.fixture_run``, 1,000 tiles) with a freshly initialised light
U-Net built in a temp dir (same inference cost as a trained one).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import gzip
import http.client
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.web import ids as wid
from bench.dashreplay import Replay, id_str

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
UPDATE = "/_dash-update-component"

#: Relative frequency of each action (a hover fetches a tooltip and a thumbnail). Follow-up
#: kinds have no weight: they come after their background callback.
WEIGHTS: dict[str, int] = {
    "page /": 4, "page /clusters": 2, "_dash-layout": 4, "_dash-dependencies": 2,
    "thumb": 30, "cb hover tooltip": 30, "api/points": 6, "api/segment": 2, "healthz": 1,
    "cb explain grad-cam": 6, "cb segment upload": 3, "cb evaluate": 2,
}
#: Kinds that need a model (left out when there is none).
MODEL_KINDS = ("api/segment", "cb explain grad-cam", "cb segment upload", "cb evaluate")
FOLLOW_UP = {"cb segment upload": "cb segment follow-up", "cb evaluate": "cb evaluate follow-up"}
HOVER_MAP = {"index": "large", "type": wid.EX_MAP}
HOVER_TIP = {"index": "large", "type": wid.EX_TOOLTIP}


class ActionError(Exception):
    """An action whose answer the browser could not use (the message is the reason)."""


@dataclass
class Stats:
    """Latencies (ms), errors with their reasons, HTTP requests and counters per kind."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    reasons: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    requests: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    counters: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, ms: float, ok: bool, reason: str | None = None) -> None:
        with self.lock:
            self.latencies[kind].append(ms)
            if not ok:
                self.errors[kind] += 1
                self.reasons[kind][reason or "error"] += 1

    def count(self, kind: str, name: str, n: int = 1) -> None:
        with self.lock:
            if name == "requests":
                self.requests[kind] += n
            else:
                self.counters[kind][name] += n


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def small_png(seed: int = 0, side: int = 96) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = rng.integers(40, 140, (side, side, 3)).astype(np.uint8)
    a, b = side // 10, side // 2
    img[a:a + side // 3, a:b] = 215
    img[b:b + side // 3, b:side - a] = 200
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def prepare_runs(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, str, bool]:
    """(model store, embeddings root, embeddings run, model kinds possible)."""
    from app import config

    model = not args.no_model
    if args.embeddings and args.run:
        store = Path(args.model_store) if args.model_store else config.MODEL_STORE
        return store, Path(args.embeddings), args.run, model
    demo = config.EMBEDDINGS_DIR / config.DEMO_EMBEDDINGS_RUN
    if (demo / "manifest.json").is_file() and not args.fixture:
        return config.MODEL_STORE, config.EMBEDDINGS_DIR, config.DEMO_EMBEDDINGS_RUN, model
    print(f"building a synthetic fixture run ({args.fixture_tiles} tiles) and a light U-Net "
          f"in {tmp} ...", flush=True)
    sys.path.insert(0, str(REPO))
    from tests.fixture_run import make_fixture_run

    root, store = tmp / "emb", tmp / "models"
    run_id = make_fixture_run(root, n=args.fixture_tiles, seed=0, run_id="bench-run")
    if model:
        from tests.serving import tiny_model_run

        model_run = tiny_model_run(store, "bench-model")
        manifest_path = root / run_id / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["model_run"] = model_run
        manifest_path.write_text(json.dumps(manifest))
    return store, root, run_id, model


def start_server(args: argparse.Namespace, store: Path, root: Path, run_id: str,
                 port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNET_LENS_")}
    env.update({
        "UNET_LENS_MODEL_STORE": str(store), "UNET_LENS_EMBEDDINGS": str(root),
        "UNET_LENS_EMBEDDINGS_RUN": run_id, "UNET_LENS_CACHE_DIR": str(log.parent / "cache"),
        "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO),
    })
    argv = [sys.executable, "-m", "app", "serve", "--host", HOST, "--port", str(port),
            "--workers", str(args.workers), "--threads", str(args.threads)]
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@dataclass
class Reply:
    """One answer, shaped like the Flask test client's (``dashreplay`` reads these fields)."""

    status_code: int
    data: bytes
    headers: dict[str, str]

    def text(self) -> bytes:
        """The body, un-gzipped."""
        if self.headers.get("content-encoding") == "gzip":
            return gzip.decompress(self.data)
        return self.data


class _Headers(dict):
    def get(self, key: str, default: Any = None) -> Any:  # case-insensitive, as HTTP is
        return super().get(key.lower(), default)


class Client:
    """One keep-alive connection; reconnects after an error."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                hdrs = _Headers((k.lower(), v) for k, v in resp.getheaders())
                return Reply(resp.status, data, hdrs)
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class Browser:
    """A tab: a few keep-alive connections used in turn, and the page's ``end_id``.

    Also the client :class:`bench.dashreplay.Replay` expects (``get``/``post`` like Flask's
    test client), so the page replays at start go over HTTP too."""

    def __init__(self, port: int, timeout: float = 60, connections: int = 4) -> None:
        self.clients = [Client(port, timeout) for _ in range(max(1, connections))]
        self.turn = 0
        self.end_id: str | None = None
        self.clicks = 0  # the Explain button's n_clicks in this tab
        self.follow_up: tuple[str, dict] | None = None  # (page, response) a result triggers

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        client = self.clients[self.turn % len(self.clients)]
        self.turn += 1
        return client.request(method, path, body, headers)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return self.request("GET", path, None, headers)

    def post(self, path: str, json: Any = None, headers: dict[str, str] | None = None) -> Reply:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        return self.request("POST", path, _dumps(json), hdrs)

    def open_page(self, path: str = "/") -> None:
        """GET a page and keep its ``end_id`` (dash-renderer echoes it on every callback)."""
        reply = self.get(path)
        if reply.status_code != 200:
            raise ActionError(f"GET {path} answered {reply.status_code}")
        match = re.search(rb'<script id="_dash-config" type="application/json">(.*?)</script>',
                          reply.text(), re.S)
        self.end_id = json.loads(match.group(1)).get("end_id") if match else None

    def close(self) -> None:
        for c in self.clients:
            c.close()


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def wait_ready(port: int, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.time() + timeout
    client = Client(port, 10)
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            reply = client.request("GET", "/healthz")
            if reply.status_code == 200:
                return json.loads(reply.data)
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server was not ready within {timeout:.0f} s")


# ------------------------------------------------------------------------------ callbacks


@dataclass
class Mix:
    """What every user shares: the server, the tiles, and the replayed pages."""

    port: int
    run_id: str
    ids: list[str]
    xy: list[tuple[float, float]]
    pages: dict[str, Replay]
    connections: int
    think: tuple[float, float]
    action_timeout: float
    #: ``--cover`` sends the background kinds one user at a time: two Evaluate jobs at once
    #: share one cache key and one of them loses its result (a bug the mix itself measures)
    cover_lock: threading.Lock = field(default_factory=threading.Lock)


def callback(browser: Browser, body: dict, stats: Stats, kind: str) -> dict:
    """POST one ordinary callback; its ``response`` (``{}`` for a 204)."""
    query = f"?endId={browser.end_id}" if browser.end_id else ""
    reply = browser.post(UPDATE + query, json=body, headers={"Accept-Encoding": "gzip"})
    stats.count(kind, "requests")
    if reply.status_code == 204:
        return {}
    if reply.status_code != 200:
        raise ActionError(f"HTTP {reply.status_code}")
    response = _json(reply).get("response")
    if not isinstance(response, dict):
        raise ActionError("malformed body")
    return response


def _json(reply: Reply) -> dict:
    """A callback answer's JSON object, or an :class:`ActionError` ("malformed body")."""
    try:
        data = json.loads(reply.text())
    except ValueError:
        raise ActionError("malformed body") from None
    if not isinstance(data, dict):
        raise ActionError("malformed body")
    return data


def background(browser: Browser, dep: dict, body: dict, stats: Stats, kind: str,
               timeout: float) -> dict:
    """Run a background callback as dash-renderer does: POST, then poll with the job handles
    until the answer has ``response``. A 204 on a poll (the job is unknown there) is an error."""
    interval = (dep.get("background") or {}).get("interval", 1000) / 1000
    gz = {"Accept-Encoding": "gzip"}
    base = UPDATE + (f"?endId={browser.end_id}" if browser.end_id else "")
    reply = browser.post(base, json=body, headers=gz)
    stats.count(kind, "requests")
    if reply.status_code != 200:
        raise ActionError("204 to the job's start" if reply.status_code == 204
                          else f"HTTP {reply.status_code}")
    data = _json(reply)
    if "response" in data:
        return data["response"]
    cache_key, job = data.get("cacheKey"), data.get("job")
    if not cache_key or not job:
        raise ActionError("no cacheKey/job in the answer")
    sep = "&" if "?" in base else "?"
    url = f"{base}{sep}cacheKey={cache_key}&job={job}"  # as the renderer: not URL-encoded
    poll_body = json.loads(json.dumps(body))
    for item in poll_body["inputs"] + poll_body.get("state", []):
        if isinstance(item, dict):  # dash-renderer nulls the values of polls
            item["value"] = None
    deadline = time.time() + timeout
    while True:
        if time.time() > deadline:
            raise ActionError(f"no result within {timeout:.0f} s")
        time.sleep(interval)
        reply = browser.post(url, json=poll_body, headers=gz)
        stats.count(kind, "requests")
        stats.count(kind, "polls")
        if reply.status_code == 204:
            stats.count(kind, "polls answered 204")
            raise ActionError("poll 204: the job is unknown there (result lost)")
        if reply.status_code != 200:
            raise ActionError(f"poll HTTP {reply.status_code}")
        data = _json(reply)
        if "response" in data:
            return data["response"]


def follow_ups(mix: Mix, page: str, response: dict, browser: Browser, stats: Stats,
               kind: str) -> None:
    """The callbacks a result triggers next (recorded as their own kind, one per request)."""
    for body in mix.pages[page].followups(response):
        start = time.perf_counter()
        ok, reason = True, None
        try:
            out = callback(browser, body, stats, kind)
            if "upload the image again" in json.dumps(out):
                raise ActionError("the upload was not found (\"upload the image again\")")
        except ActionError as exc:
            ok, reason = False, str(exc)
        except (OSError, http.client.HTTPException) as exc:
            ok, reason = False, type(exc).__name__
        stats.add(kind, (time.perf_counter() - start) * 1000, ok, reason)


def act_hover(mix: Mix, browser: Browser, rng: random.Random, stats: Stats, kind: str) -> None:
    i = rng.randrange(len(mix.ids))
    x, y = mix.xy[i]
    px, py = rng.randrange(40, 600), rng.randrange(40, 500)
    hover = {"points": [{"curveNumber": 0, "pointNumber": i, "pointIndex": i, "x": x, "y": y,
                         "customdata": mix.ids[i],
                         "bbox": {"x0": px - 2, "x1": px + 2, "y0": py - 2, "y1": py + 2}}]}
    page = mix.pages["/"]
    body = page.body(page.dep(wid.EX_TOOLTIP), {(id_str(HOVER_MAP), "hoverData"): hover},
                     [f"{id_str(HOVER_MAP)}.hoverData"], match_vals={"index": "large"})
    out = callback(browser, body, stats, kind)
    if (out.get(id_str(HOVER_TIP)) or {}).get("show") is not True:
        raise ActionError("no tooltip in the answer")


def act_explain(mix: Mix, browser: Browser, rng: random.Random, stats: Stats, kind: str) -> None:
    page = mix.pages["/explain"]
    browser.clicks += 1
    body = page.body(page.dep(wid.XP_PRED), {
        (wid.XP_RUN, "n_clicks"): browser.clicks, (wid.XP_TILE, "value"): rng.choice(mix.ids),
        (wid.XP_METHOD, "value"): "seg-grad-cam", (wid.XP_TARGET, "value"): "predicted",
    }, [f"{wid.XP_RUN}.n_clicks"])
    out = callback(browser, body, stats, kind)
    if f"{wid.XP_HEAT}-box" not in out:
        text = json.dumps(out.get(wid.XP_MESSAGE, out))[:120]
        raise ActionError(f"no heat map in the answer: {text}")
    if "status-timing cached" in json.dumps(out[wid.XP_STATUS]):
        stats.count(kind, "cache hits")


def act_segment(mix: Mix, browser: Browser, rng: random.Random, stats: Stats, kind: str) -> None:
    page = mix.pages["/segment"]
    dep = page.dep(wid.SG_MESSAGE)
    png = small_png(rng.randrange(1 << 30), side=rng.choice((96, 128, 192, 256)))
    contents = "data:image/png;base64," + base64.b64encode(png).decode()
    name = f"upload-{rng.randrange(10**6)}.png"
    body = page.body(dep, {(wid.SG_UPLOAD, "contents"): contents,
                           (wid.SG_UPLOAD, "filename"): name}, [f"{wid.SG_UPLOAD}.contents"])
    out = background(browser, dep, body, stats, kind, mix.action_timeout)
    if not isinstance((out.get(wid.SG_RESULT) or {}).get("data"), dict):
        text = json.dumps(out.get(wid.SG_MESSAGE, out))[:120]
        raise ActionError(f"no segmentation in the answer: {text}")
    browser.follow_up = ("/segment", out)


def act_evaluate(mix: Mix, browser: Browser, rng: random.Random, stats: Stats, kind: str) -> None:
    page = mix.pages["/evaluate"]
    dep = page.dep(wid.EV_READY)
    body = page.body(dep, {}, [])  # the page's initial call
    out = background(browser, dep, body, stats, kind, mix.action_timeout)
    if not isinstance((out.get(wid.EV_READY) or {}).get("data"), dict):
        raise ActionError("no evaluation in the answer")
    browser.follow_up = ("/evaluate", out)


def get_action(path: str | Callable[[Mix, random.Random], str],
               headers: dict[str, str] | None = None) -> Callable:
    def act(mix: Mix, browser: Browser, rng: random.Random, stats: Stats, kind: str) -> None:
        url = path(mix, rng) if callable(path) else path
        reply = browser.request("GET", url, None, {"Accept-Encoding": "gzip", **(headers or {})})
        stats.count(kind, "requests")
        if not 200 <= reply.status_code < 400:
            raise ActionError(f"HTTP {reply.status_code}")
    return act


def act_api_segment(mix: Mix, browser: Browser, rng: random.Random, stats: Stats,
                    kind: str) -> None:
    # a new image every time: the server caches results per image hash
    reply = browser.request("POST", "/api/segment", small_png(rng.randrange(1 << 30)),
                            {"Content-Type": "image/png"})
    stats.count(kind, "requests")
    if reply.status_code != 200:
        raise ActionError(f"HTTP {reply.status_code}")


ACTIONS: dict[str, Callable] = {
    "page /": get_action("/"), "page /clusters": get_action("/clusters"),
    "_dash-layout": get_action("/_dash-layout"),
    "_dash-dependencies": get_action("/_dash-dependencies"),
    "thumb": get_action(lambda m, r: f"/img/{m.run_id}/thumb/{r.choice(m.ids)}"),
    "api/points": get_action(
        lambda m, r: f"/api/points?run={m.run_id}&method={r.choice(('pca', 'tsne', 'umap'))}"),
    "api/segment": act_api_segment, "healthz": get_action("/healthz"),
    "cb hover tooltip": act_hover, "cb explain grad-cam": act_explain,
    "cb segment upload": act_segment, "cb evaluate": act_evaluate,
}


def do_action(mix: Mix, browser: Browser, kind: str, rng: random.Random, stats: Stats) -> None:
    """One action, timed and recorded (and the follow-up callbacks of a background result)."""
    browser.follow_up = None
    start = time.perf_counter()
    ok, reason = True, None
    try:
        ACTIONS[kind](mix, browser, rng, stats, kind)
    except ActionError as exc:
        ok, reason = False, str(exc)
    except (OSError, http.client.HTTPException) as exc:
        ok, reason = False, type(exc).__name__
    stats.add(kind, (time.perf_counter() - start) * 1000, ok, reason)
    if ok and browser.follow_up:
        follow_ups(mix, *browser.follow_up, browser, stats, FOLLOW_UP[kind])


def user(uid: int, users: int, mix: Mix, deadline: float, max_actions: int, kinds: list[str],
         weights: list[int], stats: Stats, seed: int, cover: bool) -> None:
    """One simulated user. With ``cover``, it first sends every kind once (whatever the time:
    bounded by the number of kinds; background kinds one user at a time), then the random mix
    until the deadline."""
    rng = random.Random(seed * 1000 + uid)
    browser = Browser(mix.port, timeout=60, connections=mix.connections)
    # users start the cover at kinds spread apart, so they do not send the same kind at once
    shift = uid * len(kinds) // max(users, 1) % len(kinds)
    queue = (kinds[shift:] + kinds[:shift]) if cover else []
    done = 0
    try:
        browser.open_page("/")
        while queue or (time.time() < deadline and done < max_actions):
            if queue:
                kind = queue.pop(0)
                with mix.cover_lock if kind in FOLLOW_UP else contextlib.nullcontext():
                    do_action(mix, browser, kind, rng, stats)
            else:
                do_action(mix, browser, rng.choices(kinds, weights)[0], rng, stats)
            done += 1
            time.sleep(rng.uniform(*mix.think))
    except (ActionError, OSError, http.client.HTTPException) as exc:
        stats.add("user start", 0.0, False, f"could not open the page: {exc}")
    finally:
        browser.close()


# ------------------------------------------------------------------------------ report


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(stats: Stats, seconds: float) -> dict:
    rows = {}
    total_req = sum(stats.requests.values())
    errors = sum(stats.errors.values())
    print(f"\n{'kind':<24}{'count':>7}{'err':>6}{'/s':>8}{'p50 ms':>10}{'p95 ms':>10}"
          f"{'p99 ms':>10}{'HTTP req':>10}")
    for kind in sorted(stats.latencies, key=lambda k: -len(stats.latencies[k])):
        lat = stats.latencies[kind]
        row: dict[str, Any] = {
            "count": len(lat), "errors": stats.errors.get(kind, 0), "rps": len(lat) / seconds,
            "p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
            "requests": stats.requests.get(kind, 0),
            "counters": dict(stats.counters.get(kind, {})),
            "reasons": dict(stats.reasons.get(kind, {})),
        }
        rows[kind] = row
        print(f"{kind:<24}{row['count']:>7}{row['errors']:>6}{row['rps']:>8.1f}"
              f"{row['p50']:>10.1f}{row['p95']:>10.1f}{row['p99']:>10.1f}{row['requests']:>10}")
    every = [x for v in stats.latencies.values() for x in v]
    actions = len(every)
    print(f"{'all':<24}{actions:>7}{errors:>6}{actions / seconds:>8.1f}"
          f"{percentile(every, 50):>10.1f}{percentile(every, 95):>10.1f}"
          f"{percentile(every, 99):>10.1f}{total_req:>10}")
    print(f"HTTP requests: {total_req} = {total_req / seconds:.1f} req/s (polls included)")
    for kind, row in rows.items():
        c = row["counters"]
        notes = []
        if "polls" in c:
            notes.append(f"{c['polls']} polls ({c['polls'] / max(row['count'], 1):.1f} per "
                         f"action), {c.get('polls answered 204', 0)} answered 204")
        if kind == "cb explain grad-cam" and row["count"]:
            notes.append(f"result-cache hits {c.get('cache hits', 0)} of {row['count']} "
                         f"({c.get('cache hits', 0) / row['count']:.0%})")
        for reason, n in Counter(row["reasons"]).most_common(3):
            notes.append(f"{n}x {reason}")
        if notes:
            print(f"  {kind}: " + "; ".join(notes))
    return {"seconds": seconds, "actions": actions, "requests": total_req, "errors": errors,
            "throughput_rps": total_req / seconds, "actions_per_s": actions / seconds,
            "kinds": rows}


def markdown(results: dict) -> str:
    """The per-kind table of a run as Markdown (for BENCHMARKS.md)."""
    head = ("| kind | actions | errors | actions/s | p50 ms | p95 ms | p99 ms | HTTP requests "
            "| notes |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for kind, row in results["kinds"].items():
        c, notes = row["counters"], []
        if "polls" in c:
            notes.append(f"{c['polls']} polls, {c.get('polls answered 204', 0)} answered 204")
        if kind == "cb explain grad-cam" and row["count"]:
            notes.append(f"cache hits {c.get('cache hits', 0) / row['count']:.0%}")
        notes += [f"{n}× {r}" for r, n in Counter(row["reasons"]).most_common(2)
                  if "poll 204" not in r]
        lines.append(f"| {kind} | {row['count']:,} | {row['errors']:,} | {row['rps']:.1f} | "
                     f"{row['p50']:,.0f} | {row['p95']:,.0f} | {row['p99']:,.0f} | "
                     f"{row['requests']:,} | {'; '.join(notes)} |")
    lines.append(f"| **all** | {results['actions']:,} | {results['errors']:,} | "
                 f"{results['actions_per_s']:.1f} | | | | {results['requests']:,} "
                 f"({results['throughput_rps']:.1f} req/s) | over {results['seconds']:.0f} s "
                 f"(drain {results['drain_seconds']:.0f} s) |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main


def learn_pages(port: int, paths: list[str]) -> dict[str, Replay]:
    """Replay each page's first load over HTTP: the component values callbacks are built from."""
    pages = {}
    for path in paths:
        browser = Browser(port, timeout=300, connections=1)
        replay = Replay(browser)
        replay.first_load(path)
        pages[path] = replay
        browser.close()
    return pages


def warm_up(port: int, workers: int, model: bool, png: bytes) -> None:
    """Load the model (and TensorFlow) in every worker before the clock starts."""
    if not model:
        return

    def warm_segment() -> None:
        c = Client(port, 300)
        for _ in range(3):
            c.request("POST", "/api/segment", png, {"Content-Type": "image/png"})
        c.close()

    threads = [threading.Thread(target=warm_segment) for _ in range(workers * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-requests", type=int, default=20_000,
                        help="actions per user, a bound besides the time (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--connections", type=int, default=4,
                        help="keep-alive connections per user, used in turn (default: 4)")
    parser.add_argument("--think", type=float, nargs=2, default=(0.05, 0.3), metavar=("MIN", "MAX"),
                        help="seconds a user waits between actions (default: 0.05 0.3)")
    parser.add_argument("--action-timeout", type=float, default=120.0,
                        help="seconds a background callback may take (default: %(default)s)")
    parser.add_argument("--cover", action="store_true",
                        help="every user sends every kind once first, the background ones "
                             "one user at a time (the smoke test)")
    parser.add_argument("--model-store")
    parser.add_argument("--embeddings", help="embeddings folder (with --run)")
    parser.add_argument("--run", help="embeddings run id (with --embeddings)")
    parser.add_argument("--fixture", action="store_true", help="use the synthetic fixture run")
    parser.add_argument("--fixture-tiles", type=int, default=1000)
    parser.add_argument("--no-model", "--no-segment", action="store_true", dest="no_model",
                        help="leave out the kinds that run the model")
    parser.add_argument("--kinds", help="comma-separated subset of the kinds to send (default: "
                        "all; e.g. the pages-and-images mix of the old load test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--markdown", help="also write the per-kind table to this file")
    args = parser.parse_args(argv)
    if args.users < 1 or args.seconds <= 0 or args.users > 500 or args.seconds > 3600:
        parser.error("--users must be 1..500 and --seconds 0..3600")
    if not 1 <= args.workers <= 16 or not 1 <= args.connections <= 16:
        parser.error("--workers and --connections must be 1..16")
    only = [k.strip() for k in args.kinds.split(",")] if args.kinds else list(WEIGHTS)
    if not only or set(only) - set(WEIGHTS):
        parser.error(f"--kinds: pick from {', '.join(WEIGHTS)}")

    with tempfile.TemporaryDirectory(prefix="unet-lens-load-") as tmp_name:
        tmp = Path(tmp_name)
        store, root, run_id, model = prepare_runs(args, tmp)
        port = free_port()
        log = tmp / "server.log"
        proc = start_server(args, store, root, run_id, port, log)
        try:
            health = wait_ready(port, proc, timeout=300)
            model = model and bool((health.get("model") or {}).get("run"))
            print(f"server ready on {HOST}:{port}: run {health['embeddings']['run']} "
                  f"({health['embeddings']['tiles']} tiles), model {health['model']['run']}, "
                  f"{args.workers} workers x {args.threads} threads", flush=True)
            warm = Client(port, 120)
            reply = warm.request("GET", f"/api/points?run={run_id}&method=pca")
            points = json.loads(reply.data) if reply.status_code == 200 else {}
            ids = points.get("ids") or []
            if not ids:
                raise SystemExit("no tile ids from /api/points")
            zeros = [0.0] * len(ids)
            xy = list(zip(points.get("x") or zeros, points.get("y") or zeros, strict=True))
            t0 = time.time()
            warm_up(port, args.workers, model, small_png(args.seed))
            if model:
                reply = warm.request("POST", "/api/segment", small_png(args.seed),
                                     {"Content-Type": "image/png"})
                if reply.status_code != 200:
                    print(f"/api/segment answers {reply.status_code}: the model kinds are left "
                          f"out ({reply.data[:200]!r})")
                    model = False
            for path in ("/", "/_dash-layout", "/_dash-dependencies", "/clusters"):
                warm.request("GET", path)
            warm.close()
            paths = ["/", "/explain", "/segment", "/evaluate"] if model else ["/"]
            pages = learn_pages(port, paths)
            mix = Mix(port, run_id, [str(i) for i in ids], xy, pages, args.connections,
                      tuple(args.think), args.action_timeout)
            if model and "cb evaluate" in only:  # the pass, once, before the clock (cached)
                first = dataclasses.replace(mix, action_timeout=900.0)
                for _ in range(3):
                    setup = Stats()
                    b = Browser(port, timeout=300, connections=1)
                    b.open_page("/evaluate")
                    do_action(first, b, "cb evaluate", random.Random(0), setup)
                    b.close()
                    if not setup.errors:
                        break
                    print(f"evaluate warm-up: {dict(setup.reasons['cb evaluate'])}", flush=True)
            print(f"warm-up and page replays {time.time() - t0:.0f} s", flush=True)
            kinds = [k for k in WEIGHTS if k in only and (model or k not in MODEL_KINDS)]
            weights = [WEIGHTS[k] for k in kinds]
            stats = Stats()
            print(f"{args.users} users for {args.seconds:.0f} s ...", flush=True)
            start = time.time()
            deadline = start + args.seconds
            pool = [threading.Thread(target=user, daemon=True, args=(
                i, args.users, mix, deadline, args.max_requests, kinds, weights, stats, args.seed,
                args.cover)) for i in range(args.users)]
            for t in pool:
                t.start()
            for t in pool:
                t.join(timeout=max(1.0, deadline + args.action_timeout + 120 - time.time()))
            elapsed = time.time() - start
            with stats.lock:
                results = report(stats, elapsed)
            results.update(users=args.users, workers=args.workers, threads=args.threads,
                           connections=args.connections, run=run_id, model=model,
                           kinds_sent=kinds, drain_seconds=max(0.0, elapsed - args.seconds))
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))
            if args.markdown:
                Path(args.markdown).write_text(markdown(results))
        except BaseException:
            with contextlib.suppress(OSError):
                sys.stderr.write(log.read_text()[-3000:])
            raise
        finally:
            stop_server(proc)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
