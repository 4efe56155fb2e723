"""``server``: the dashboard at 10^4 and 10^5 points, through Flask's test client.

Runs are written by ``tests.fixture_run.make_fixture_run(root, n, images=False)`` (format-valid,
32-d vectors, PCA / t-SNE / UMAP coordinates, a K-means sweep k=2..6); thumbnails are then
written for a random sample of tile ids only (a 64² JPEG like the fixture's), which is all the
hover benchmark requests.

1. Explore page first load: ``bench.dashreplay`` replays what dash-renderer sends (index,
   layout, dependencies, then every initial / triggered ``_dash-update-component`` call in
   dependency waves) with ``Accept-Encoding: gzip``. Bytes = response bodies as sent (gzip where
   the app compresses) and uncompressed; time = server time of each request summed, and the
   critical path (slowest request of each wave). Cold = first load of a fresh server process
   (reads the run from disk); warm = median of later loads. Static JS/CSS bundles are not
   counted (independent of N, cached by the browser).
2. Hover → thumbnail: ``GET /img/<run>/thumb/<id>?v=<version>`` for random ids (p50 / p95,
   goal p95 ≤ 30 ms), and the hover tooltip callback itself.
3. Re-cluster: ``app.ml.apply.recluster(run, k)`` for k = 2..10 on a freshly opened run
   (k of the stored sweep = a lookup, others = a K-means fit), and ``kmeans_sweep`` k = 2..10
   on the run's vectors.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    MemProbe,
    Report,
    Table,
    fit_exponent,
    fmt_bytes,
    fmt_s,
    log,
    median,
    percentile,
    run_child,
)

GOAL_P95_S = 0.030


def make_run(root: Path, n: int, thumbs: int, seed: int = 0) -> tuple[str, list[str], float]:
    """(run id, ids that have a thumbnail, seconds) of a fixture run of n tiles."""
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    from tests.fixture_run import THUMB_SIZE, make_fixture_run

    t0 = time.perf_counter()
    run_id = make_fixture_run(root, n=n, seed=seed, run_id=f"bench-{n}", images=False)
    tiles = pd.read_parquet(root / run_id / "tiles.parquet", columns=["tile_id"])
    ids = random.Random(seed).sample(list(tiles["tile_id"]), min(thumbs, n))
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    img = np.clip(rng.normal(110, 25, (THUMB_SIZE, THUMB_SIZE, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(buf, format="JPEG", quality=85)
    for tid in ids:
        (root / run_id / "thumbs" / f"{tid}.jpg").write_bytes(buf.getvalue())
    return run_id, ids, time.perf_counter() - t0


def _app(root: Path, run_id: str) -> Any:
    from app.web.main import create_app

    return create_app(embeddings_run=run_id, embeddings_root=Path(root),
                      cache_config={"CACHE_TYPE": "SimpleCache"})


def load_child(root: str, run_id: str, warm_loads: int) -> dict:
    """Cold + warm first loads of the Explore page in one fresh server process."""
    from bench.dashreplay import Replay

    app = _app(Path(root), run_id)
    client = app.server.test_client()
    probe = MemProbe().start()
    loads = []
    for i in range(1 + warm_loads):
        res = Replay(client).first_load("/")
        if i == 0:
            mem = probe.stop()
        loads.append({
            "static": res.static, "static_s": res.static_seconds,
            "requests": [r.__dict__ for r in res.requests],
            "wire": res.callback_wire_bytes, "raw": res.callback_raw_bytes,
            "server_s": res.callback_seconds + res.static_seconds,
            "critical_s": res.critical_path_seconds,
        })
    return {"loads": loads, **mem}


def hover_child(root: str, run_id: str, ids: list[str], requests: int) -> dict:
    """Thumbnail route and hover-tooltip callback latencies for random ids."""
    import json

    from app.web import ids as wids
    from app.web import runs
    from bench.dashreplay import Replay

    app = _app(Path(root), run_id)
    client = app.server.test_client()
    Replay(client).first_load("/")  # a page was loaded before anyone hovers
    run = runs.get_run(run_id)
    version = runs.run_version(run)
    rng = random.Random(1)
    for tid in ids[:20]:  # warm-up
        client.get(f"/img/{run_id}/thumb/{tid}?v={version}")
    thumb_s, sizes = [], []
    for _ in range(requests):
        tid = rng.choice(ids)
        t0 = time.perf_counter()
        r = client.get(f"/img/{run_id}/thumb/{tid}?v={version}")
        thumb_s.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise RuntimeError(f"thumb {tid} answered {r.status_code}")
        sizes.append(len(r.data))
    deps = json.loads(client.get("/_dash-dependencies").data)
    dep = next(d for d in deps if wids.EX_TOOLTIP in d["output"])
    tiles = run.tiles["tile_id"]
    hover_s = []
    for _ in range(max(50, requests // 5)):
        row = rng.randrange(len(tiles))
        hover = {"points": [{"curveNumber": 0, "pointNumber": row,
                             "customdata": tiles.iat[row],
                             "bbox": {"x0": 10, "x1": 12, "y0": 20, "y1": 22}}]}
        cid = {"index": "large", "type": wids.EX_MAP}
        body = {
            "output": dep["output"],
            "outputs": [{"id": {"index": "large", "type": wids.EX_TOOLTIP}, "property": p}
                        for p in ("show", "bbox", "children")],
            "inputs": [{"id": cid, "property": "hoverData", "value": hover}],
            "state": [{"id": wids.RUN, "property": "value", "value": run_id}],
            "changedPropIds": ['{"index":"large","type":"explore-map"}.hoverData'],
        }
        t0 = time.perf_counter()
        r = client.post("/_dash-update-component", json=body)
        hover_s.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise RuntimeError(f"hover callback answered {r.status_code}")
    return {"thumb_s": thumb_s, "thumb_bytes": median(sizes), "hover_s": hover_s}


def recluster_child(root: str, run_id: str) -> dict:
    """recluster(run, k) per k on a freshly opened run, then kmeans_sweep k = 2..10."""
    from app.artifacts import EmbeddingsRun
    from app.ml.apply import recluster
    from app.ml.cluster import kmeans_sweep

    per_k = {}
    for k in range(2, 11):
        run = EmbeddingsRun.open(run_id, Path(root), check_model=False)
        stored = k in (run.sweep or {}).get("k", [])
        t0 = time.perf_counter()
        labels = recluster(run, k)
        per_k[k] = {"seconds": time.perf_counter() - t0, "stored": stored,
                    "clusters": int(labels.max()) + 1}
    run = EmbeddingsRun.open(run_id, Path(root), check_model=False)
    X = run.vectors_float32()
    t0 = time.perf_counter()
    sweep = kmeans_sweep(X, range(2, 11), random_state=0)
    sweep_s = time.perf_counter() - t0
    return {"per_k": per_k, "sweep_s": sweep_s, "algorithm": sweep.params["algorithm"],
            "dims": int(X.shape[1]), "n": int(X.shape[0])}


# --------------------------------------------------------------------------- benchmark


def _short(output: str) -> str:
    from bench.dashreplay import _split_outputs

    outs = _split_outputs(output)
    first = outs[0][0]
    name = first.get("type", "?") + "[" + str(first.get("index", "")) + "]" if isinstance(
        first, dict) else first
    return f"{name}.{outs[0][1]}" + (f" +{len(outs) - 1}" if len(outs) > 1 else "")


def run(quick: bool = False, *, sizes: tuple[int, ...] | None = None) -> Report:
    report = Report("server", "server: Explore page payload, hover latency, re-cluster")
    sizes = sizes or ((500, 2_000) if quick else (10_000, 100_000))
    warm_loads = 1 if quick else 3
    hover_requests = 100 if quick else 1000
    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    t_load = Table(
        "Explore page, first load (Flask test client replaying dash-renderer's requests; "
        "gzip accepted)",
        ["points", "load", "callbacks", "callback bytes on the wire (gzip)",
         "uncompressed", "layout + deps", "server time (sum)", "critical path",
         "peak server RSS growth"])
    t_req = Table("Largest first-load callbacks (warm load)",
                  ["points", "callback output", "wave", "wire bytes", "uncompressed",
                   "server time"])
    t_hover = Table(
        f"Hover → thumbnail, server time per request (test client; random ids; goal p95 ≤ "
        f"{GOAL_P95_S * 1000:.0f} ms)",
        ["points", "request", "requests", "p50", "p95", "max", "bytes", "goal"])
    t_rc = Table("Re-cluster, k = 2..10",
                 ["points", "what", "time", "detail"])
    sizes_done, wire_warm, server_warm = [], [], []
    try:
        for n in sizes:
            root = tmp / f"n{n}"
            log(f"server: fixture run of {n:,} tiles")
            run_id, ids, fx_s = make_run(root, n, thumbs=min(2000, n))
            log(f"server: fixture took {fx_s:.1f} s; first loads")
            loads = run_child("bench.server:load_child",
                              {"root": str(root), "run_id": run_id, "warm_loads": warm_loads},
                              timeout=900)
            cold, warm = loads["loads"][0], loads["loads"][1:]
            lay = sum(cold["static"].values())
            t_load.add(f"{n:,}", "cold (fresh process)", len(cold["requests"]),
                       fmt_bytes(cold["wire"]), fmt_bytes(cold["raw"]), fmt_bytes(lay),
                       fmt_s(cold["server_s"]), fmt_s(cold["critical_s"]),
                       fmt_bytes(loads["rss_growth"]))
            w_wire = median([w["wire"] for w in warm])
            w_srv = median([w["server_s"] for w in warm])
            t_load.add(f"{n:,}", f"warm (median of {len(warm)})", len(warm[0]["requests"]),
                       fmt_bytes(w_wire), fmt_bytes(median([w["raw"] for w in warm])),
                       fmt_bytes(lay), fmt_s(w_srv),
                       fmt_s(median([w["critical_s"] for w in warm])), "–")
            sizes_done.append(n)
            wire_warm.append(w_wire)
            server_warm.append(w_srv)
            for r in sorted(warm[0]["requests"], key=lambda r: -r["wire_bytes"])[:3]:
                t_req.add(f"{n:,}", f"`{_short(r['callback'])}`", r["wave"],
                          fmt_bytes(r["wire_bytes"]), fmt_bytes(r["raw_bytes"]),
                          fmt_s(r["seconds"]))

            log(f"server: hover, {hover_requests} requests")
            hv = run_child("bench.server:hover_child",
                           {"root": str(root), "run_id": run_id, "ids": ids,
                            "requests": hover_requests}, timeout=900)
            p95 = percentile(hv["thumb_s"], 95)
            t_hover.add(f"{n:,}", "`GET /img/<run>/thumb/<id>`", len(hv["thumb_s"]),
                        fmt_s(percentile(hv["thumb_s"], 50)), fmt_s(p95),
                        fmt_s(max(hv["thumb_s"])), fmt_bytes(hv["thumb_bytes"]),
                        "meets" if p95 <= GOAL_P95_S else "**MISSES**")
            hp95 = percentile(hv["hover_s"], 95)
            t_hover.add(f"{n:,}", "hover tooltip callback (`_dash-update-component`)",
                        len(hv["hover_s"]), fmt_s(percentile(hv["hover_s"], 50)),
                        fmt_s(hp95), fmt_s(max(hv["hover_s"])), "–",
                        "meets" if hp95 <= GOAL_P95_S else "**MISSES**")

            if n == max(sizes):
                log(f"server: re-cluster at {n:,}")
                rc = run_child("bench.server:recluster_child",
                               {"root": str(root), "run_id": run_id}, timeout=900)
                per_k = rc["per_k"]
                looked = [v["seconds"] for v in per_k.values() if v["stored"]]
                fitted = {k: v["seconds"] for k, v in per_k.items() if not v["stored"]}
                if looked:
                    t_rc.add(f"{n:,}", "`recluster(run, k)`, k in the stored sweep "
                             f"({', '.join(k for k, v in per_k.items() if v['stored'])})",
                             fmt_s(median(looked)), "median per k: labels.npy lookup")
                if fitted:
                    t_rc.add(f"{n:,}", "`recluster(run, k)`, k not stored ("
                             f"{', '.join(str(k) for k in fitted)})",
                             fmt_s(median(list(fitted.values()))),
                             "median per k: KMeans fit (as the stored sweep: n_init 3); "
                             + ", ".join(f"k={k}: {v:.2f} s" for k, v in fitted.items()))
                t_rc.add(f"{n:,}", "`kmeans_sweep` k = 2..10 (all 9 fits + silhouettes)",
                         fmt_s(rc["sweep_s"]),
                         f"{rc['algorithm']}, {rc['dims']}-d fixture vectors; see `reduce` "
                         "for 256-d")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(sizes_done) >= 2:
        b_w, _ = fit_exponent(sizes_done, wire_warm)
        b_s, _ = fit_exponent(sizes_done, server_warm)
        t_load.notes.append(f"Warm first load grows as n^{b_w:.2f} in bytes and n^{b_s:.2f} in "
                            "server time between the measured sizes.")
    t_load.notes += [
        "Callback bytes: every `_dash-update-component` response of the first load (router → "
        "page layout, run controls, the 4 maps, titles, gallery, detail, tooltips).",
        "\"layout + deps\": `/_dash-layout` + `/_dash-dependencies` (+ the index HTML), "
        "independent of N. JS/CSS bundles (~MBs, cached) are not counted.",
        "Server time is measured around each test-client request: no network, no browser "
        "parsing or WebGL drawing.",
    ]
    report.tables += [t_load, t_req, t_hover, t_rc]
    return report
