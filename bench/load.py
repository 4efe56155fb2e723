"""Load test: ``python -m bench.load [--users 50] [--seconds 60]``.

Starts the server itself (``python -m app serve --workers 2`` = gunicorn, on a free 127.0.0.1
port), then runs simulated users (threads, each with a keep-alive ``http.client`` connection)
for a bounded time and a bounded number of requests, and stops the server. Loopback only.

Each user loops: pick a request kind at random (weights below), send it, wait a short "think
time", repeat. Kinds: page loads (``/``, ``/clusters``, Dash's ``/_dash-layout`` and
``/_dash-dependencies``), hover thumbnails (``/img/<run>/thumb/<id>``), ``/api/points`` and,
when ``app.ml.inference`` and a model are there, ``/api/segment`` on a small PNG.

Runs: the shipped demo when it is on disk, else ``--model-store/--embeddings/--run``, else a
synthetic fixture run (``tests.fixture_run``, 1,000 tiles) with a freshly initialised light
U-Net built in a temp dir (same inference cost as a trained one).

Prints throughput, p50 / p95 / p99 latency per request kind and the error count.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

#: Relative frequency of each request kind (a hover fetches a thumbnail, so those dominate).
WEIGHTS: dict[str, int] = {
    "page /": 6, "page /clusters": 3, "_dash-layout": 6, "_dash-dependencies": 3,
    "thumb": 55, "api/points": 12, "api/segment": 4, "healthz": 1,
}


@dataclass
class Stats:
    """Latencies (ms) and errors per request kind."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, ms: float, ok: bool) -> None:
        with self.lock:
            self.latencies[kind].append(ms)
            if not ok:
                self.errors[kind] += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def small_png(seed: int = 0, side: int = 96) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = rng.integers(40, 140, (side, side, 3)).astype(np.uint8)
    img[10:40, 12:50] = 215
    img[55:85, 50:90] = 200
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def prepare_runs(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, str, bool]:
    """(model store, embeddings root, embeddings run, segment possible)."""
    from app import config

    segment = not args.no_segment
    if args.embeddings and args.run:
        store = Path(args.model_store) if args.model_store else config.MODEL_STORE
        return store, Path(args.embeddings), args.run, segment
    demo = config.EMBEDDINGS_DIR / config.DEMO_EMBEDDINGS_RUN
    if (demo / "manifest.json").is_file() and not args.fixture:
        return config.MODEL_STORE, config.EMBEDDINGS_DIR, config.DEMO_EMBEDDINGS_RUN, segment
    print(f"building a synthetic fixture run ({args.fixture_tiles} tiles) and a light U-Net "
          f"in {tmp} ...", flush=True)
    sys.path.insert(0, str(REPO))
    from tests.fixture_run import make_fixture_run

    root, store = tmp / "emb", tmp / "models"
    run_id = make_fixture_run(root, n=args.fixture_tiles, seed=0, run_id="bench-run")
    if segment:
        from tests.serving import tiny_model_run

        model_run = tiny_model_run(store, "bench-model")
        manifest_path = root / run_id / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["model_run"] = model_run
        manifest_path.write_text(json.dumps(manifest))
    return store, root, run_id, segment


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


class Client:
    """One keep-alive connection; reconnects after an error."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def wait_ready(port: int, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.time() + timeout
    client = Client(port, 10)
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            status, body = client.request("GET", "/healthz")
            if status == 200:
                return json.loads(body)
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server was not ready within {timeout:.0f} s")


def user(uid: int, port: int, deadline: float, max_requests: int, kinds: list[str],
         weights: list[int], ids: list[str], run_id: str, png: bytes, think: tuple[float, float],
         stats: Stats, seed: int) -> None:
    rng = random.Random(seed * 1000 + uid)
    client = Client(port, 60)
    done = 0
    try:
        while time.time() < deadline and done < max_requests:
            kind = rng.choices(kinds, weights)[0]
            method, body, headers = "GET", None, {"Accept-Encoding": "gzip"}
            if kind.startswith("page "):
                path = kind[5:]
            elif kind in ("_dash-layout", "_dash-dependencies"):
                path = "/" + kind
            elif kind == "thumb":
                path = f"/img/{run_id}/thumb/{rng.choice(ids)}"
            elif kind == "api/points":
                path = f"/api/points?run={run_id}&method={rng.choice(('pca', 'tsne', 'umap'))}"
            elif kind == "api/segment":
                # a new image every time: the server caches results per image hash
                method, path, body = "POST", "/api/segment", small_png(rng.randrange(1 << 30))
                headers = {"Content-Type": "image/png"}
            else:
                path = "/healthz"
            start = time.perf_counter()
            try:
                status, _ = client.request(method, path, body, headers)
                ok = 200 <= status < 400
            except (OSError, http.client.HTTPException):
                ok = False
            stats.add(kind, (time.perf_counter() - start) * 1000, ok)
            done += 1
            time.sleep(rng.uniform(*think))
    finally:
        client.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(stats: Stats, seconds: float) -> dict:
    rows = {}
    total = sum(len(v) for v in stats.latencies.values())
    errors = sum(stats.errors.values())
    print(f"\n{'kind':<20}{'count':>8}{'err':>6}{'req/s':>9}{'p50 ms':>10}{'p95 ms':>10}"
          f"{'p99 ms':>10}")
    for kind in sorted(stats.latencies, key=lambda k: -len(stats.latencies[k])):
        lat = stats.latencies[kind]
        row = {"count": len(lat), "errors": stats.errors.get(kind, 0),
               "rps": len(lat) / seconds, "p50": percentile(lat, 50),
               "p95": percentile(lat, 95), "p99": percentile(lat, 99)}
        rows[kind] = row
        print(f"{kind:<20}{row['count']:>8}{row['errors']:>6}{row['rps']:>9.1f}"
              f"{row['p50']:>10.1f}{row['p95']:>10.1f}{row['p99']:>10.1f}")
    every = [x for v in stats.latencies.values() for x in v]
    print(f"{'all':<20}{total:>8}{errors:>6}{total / seconds:>9.1f}{percentile(every, 50):>10.1f}"
          f"{percentile(every, 95):>10.1f}{percentile(every, 99):>10.1f}")
    return {"seconds": seconds, "requests": total, "errors": errors,
            "throughput_rps": total / seconds, "kinds": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-requests", type=int, default=20_000,
                        help="per user, a bound besides the time (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--think", type=float, nargs=2, default=(0.05, 0.3), metavar=("MIN", "MAX"),
                        help="seconds a user waits between requests (default: 0.05 0.3)")
    parser.add_argument("--model-store")
    parser.add_argument("--embeddings", help="embeddings folder (with --run)")
    parser.add_argument("--run", help="embeddings run id (with --embeddings)")
    parser.add_argument("--fixture", action="store_true", help="use the synthetic fixture run")
    parser.add_argument("--fixture-tiles", type=int, default=1000)
    parser.add_argument("--no-segment", action="store_true", help="leave /api/segment out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.users < 1 or args.seconds <= 0 or args.users > 500 or args.seconds > 3600:
        parser.error("--users must be 1..500 and --seconds 0..3600")

    with tempfile.TemporaryDirectory(prefix="unet-lens-load-") as tmp_name:
        tmp = Path(tmp_name)
        store, root, run_id, segment = prepare_runs(args, tmp)
        try:
            import app.ml.inference  # noqa: F401 - /api/segment needs it
        except ImportError:
            segment = False
        port = free_port()
        log = tmp / "server.log"
        proc = start_server(args, store, root, run_id, port, log)
        try:
            health = wait_ready(port, proc, timeout=180)
            print(f"server ready on {HOST}:{port}: run {health['embeddings']['run']} "
                  f"({health['embeddings']['tiles']} tiles), model {health['model']['run']}, "
                  f"{args.workers} workers x {args.threads} threads", flush=True)
            warm = Client(port, 120)
            status, body = warm.request("GET", f"/api/points?run={run_id}&method=pca")
            ids = json.loads(body)["ids"] if status == 200 else []
            if not ids:
                raise SystemExit("no tile ids from /api/points")
            png = small_png(args.seed)
            if segment:
                # load the model (and TensorFlow) in every worker before the clock starts
                def warm_segment() -> None:
                    c = Client(port, 180)
                    for _ in range(3):
                        c.request("POST", "/api/segment", png, {"Content-Type": "image/png"})
                    c.close()

                threads = [threading.Thread(target=warm_segment) for _ in range(args.workers * 2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=300)
                status, body = warm.request("POST", "/api/segment", png,
                                            {"Content-Type": "image/png"})
                if status != 200:
                    print(f"/api/segment answers {status}: left out ({body[:200]!r})")
                    segment = False
            for path in ("/", "/_dash-layout", "/_dash-dependencies", "/clusters"):
                warm.request("GET", path)
            warm.close()
            kinds = [k for k in WEIGHTS if segment or k != "api/segment"]
            weights = [WEIGHTS[k] for k in kinds]
            stats = Stats()
            print(f"{args.users} users for {args.seconds:.0f} s ...", flush=True)
            start = time.time()
            deadline = start + args.seconds
            pool = [threading.Thread(target=user, daemon=True, args=(
                i, port, deadline, args.max_requests, kinds, weights, ids, run_id, png,
                tuple(args.think), stats, args.seed)) for i in range(args.users)]
            for t in pool:
                t.start()
            for t in pool:
                t.join(timeout=args.seconds + 120)
            elapsed = time.time() - start
            results = report(stats, elapsed)
            results.update(users=args.users, workers=args.workers, threads=args.threads,
                           run=run_id, segment=segment)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))
        finally:
            stop_server(proc)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
