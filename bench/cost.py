"""Request-cost bound: ``python -m bench.cost [--uploads 8] [--side 8000] [--workers 2]``.

Starts ``python -m app serve --workers N`` (gunicorn, a free 127.0.0.1 port, the shipped demo
model), polls ``/healthz`` every 0.2 s from its own thread, and measures, in turn:

1. one ``--single``² flat PNG (4097² by default: the issue's 25 s case) alone;
2. ``--uploads`` distinct flat ``--side``² PNGs (8000²: ~200 KB each, legal, 192 MB decoded)
   POSTed to ``/api/segment`` at once, each answered once (200 or 429);
3. the same uploads again, each client retrying after the ``Retry-After`` it is given until it
   gets its mask (how long all of them take when clients behave).

Prints each upload's status, time and size segmented, ``/healthz`` p50 / p99 / max and failures
per phase, every worker's RSS before and its peak (``VmHWM``) after, and the machine load
(``uptime``), as JSON and as markdown for BENCHMARKS.md. Loopback only; every request has a
timeout, the whole run a deadline (``--deadline``), and the server is always stopped.
``--env KEY=VALUE`` passes settings to the server (e.g. ``UNET_LENS_INFER_SLOTS=2``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def flat_png(side: int, value: int) -> bytes:
    """A flat side² RGB PNG (compresses to ~200 KB at 8000²)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (value, value + 7, value + 13)).save(buf, "PNG")
    return buf.getvalue()


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, KiB (Linux /proc)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def post(url: str, data: bytes, timeout: float) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) of a raw-body POST; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "image/png"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback only
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body), dict(exc.headers)
        except ValueError:
            return exc.code, {"error": body[:200].decode("latin-1")}, dict(exc.headers)


class HealthPoller(threading.Thread):
    """GET /healthz every ``every`` s; latencies (s) and failures per phase label."""

    def __init__(self, base: str, every: float = 0.2, timeout: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.base, self.every, self.timeout = base, every, timeout
        self.phase = "idle"
        self.samples: dict[str, list[tuple[float, int]]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        from tests.serving import get

        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                status = get(f"{self.base}/healthz", timeout=self.timeout)[0]
            except OSError:
                status = 0  # timed out or refused
            self.samples.setdefault(self.phase, []).append(
                (time.perf_counter() - started, status))
            self.stop.wait(self.every)


def summary(samples: list[tuple[float, int]]) -> dict[str, Any]:
    import numpy as np

    if not samples:
        return {"n": 0}
    secs = np.asarray([s for s, _ in samples])
    return {"n": len(samples), "p50_ms": round(float(np.percentile(secs, 50)) * 1e3, 1),
            "p99_ms": round(float(np.percentile(secs, 99)) * 1e3, 1),
            "max_ms": round(float(secs.max()) * 1e3, 1),
            "failed": sum(1 for _, code in samples if code != 200)}


def upload(base: str, data: bytes, timeout: float, retry: bool, deadline: float,
           start: threading.Barrier | None = None) -> dict[str, Any]:
    """One client: POST (at the barrier), and with ``retry`` again after each Retry-After."""
    if start is not None:
        start.wait(60)
    t0 = time.perf_counter()
    tries: list[int] = []
    while True:
        status, body, headers = post(f"{base}/api/segment", data, timeout)
        tries.append(status)
        if status != 429 or not retry or time.monotonic() > deadline:
            break
        time.sleep(int(headers.get("Retry-After", "1")))
    out: dict[str, Any] = {"status": status, "tries": tries,
                           "seconds": round(time.perf_counter() - t0, 2)}
    if status == 200:
        out["segmented"] = f"{body['width']}x{body['height']}"
        out["server_ms"] = body.get("ms")
        out["downscaled"] = bool(body.get("downscaled"))
    else:
        out["error"] = body.get("error", "")[:160]
        out["retry_after"] = headers.get("Retry-After")
    return out


def burst(base: str, images: list[bytes], timeout: float, retry: bool,
          deadline: float) -> list[dict[str, Any]]:
    """All ``images`` POSTed at once (a barrier), one thread each."""
    results: list[dict[str, Any] | None] = [None] * len(images)
    start = threading.Barrier(len(images))

    def one(i: int) -> None:
        results[i] = upload(base, images[i], timeout, retry, deadline, start)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + timeout))
    return [r or {"status": "no answer"} for r in results]


def markdown(result: dict[str, Any]) -> str:
    """The figures as BENCHMARKS.md tables."""
    lines = [f"`python -m bench.cost {result['argv']}` · load before {result['load_before']}, "
             f"after {result['load_after']} · settings: {result['settings']}", ""]
    lines += ["| phase | uploads: status (seconds) | /healthz n | p50 | p99 | max | failed |",
              "|---|---|---|---|---|---|---|"]
    for phase, ups in result["phases"].items():
        h = result["healthz"].get(phase, {"n": 0})
        cells = ", ".join(f"{u['status']}{'×' + str(len(u['tries'])) if len(u.get('tries', [])) > 1 else ''}"
                          f" ({u.get('seconds', '-')})" for u in ups)
        lines.append(f"| {phase} | {cells} | {h.get('n', 0)} | {h.get('p50_ms', '-')} ms | "
                     f"{h.get('p99_ms', '-')} ms | {h.get('max_ms', '-')} ms | "
                     f"{h.get('failed', '-')} |")
    lines += ["", "| worker | RSS before | peak RSS (VmHWM) | growth |", "|---|---|---|---|"]
    for pid, mem in result["rss"].items():
        growth = (mem["peak_kib"] - mem["before_kib"]) / 1024
        lines.append(f"| {pid} | {mem['before_kib'] / 1024:.0f} MiB | "
                     f"{mem['peak_kib'] / 1024:.0f} MiB | +{growth:.0f} MiB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split("\n")[0])
    p.add_argument("--uploads", type=int, default=8)
    p.add_argument("--side", type=int, default=8000)
    p.add_argument("--single", type=int, default=4097, help="side of the lone upload (0: skip)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--no-retry", action="store_true", help="skip the retrying phase")
    p.add_argument("--timeout", type=float, default=300.0, help="per request (s)")
    p.add_argument("--deadline", type=float, default=540.0, help="whole run (s)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from app import config
    from tests.serving import child_pids, free_port, serve_env, server_process, wait_for

    deadline = time.monotonic() + args.deadline
    extra = dict(kv.split("=", 1) for kv in args.env)
    images = [flat_png(args.side, 20 + 9 * i) for i in range(args.uploads)]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = serve_env(config.MODEL_STORE, config.EMBEDDINGS_DIR, Path(tmp) / "cache", port,
                        UNET_LENS_EMBEDDINGS_RUN=config.DEMO_EMBEDDINGS_RUN, **extra)
        cmd = [sys.executable, "-m", "app", "serve", "--workers", str(args.workers),
               "--threads", str(args.threads)]
        with server_process(cmd, env, Path(tmp) / "serve.log") as proc:
            wait_for(f"{base}/healthz", status=200, proc=proc, timeout=120)
            small = flat_png(256, 60)
            for _ in range(3 * args.workers):  # load the model in (very likely) every worker
                post(f"{base}/api/segment", small, args.timeout)
            workers = child_pids(proc.pid)
            before = {pid: rss_kib(pid).get("VmRSS", 0) for pid in workers}
            poller = HealthPoller(base)
            poller.start()
            phases: dict[str, list[dict[str, Any]]] = {}
            if args.single:
                poller.phase = f"one {args.single}²"
                print(f"{poller.phase} ...", flush=True)
                phases[poller.phase] = [upload(base, flat_png(args.single, 90), args.timeout,
                                               False, deadline)]
            poller.phase = f"{args.uploads} × {args.side}² at once"
            print(f"{poller.phase} ...", flush=True)
            phases[poller.phase] = burst(base, images, args.timeout, False, deadline)
            if not args.no_retry and time.monotonic() < deadline:
                poller.phase = f"{args.uploads} × {args.side}², retrying after Retry-After"
                print(f"{poller.phase} ...", flush=True)
                fresh = [flat_png(args.side, 120 + 9 * i) for i in range(args.uploads)]
                phases[poller.phase] = burst(base, fresh, args.timeout, True, deadline)
            poller.phase = "after"
            time.sleep(2)
            poller.stop.set()
            poller.join(30)
            rss = {str(pid): {"before_kib": before[pid],
                              "peak_kib": rss_kib(pid).get("VmHWM", 0)} for pid in workers}
    result = {
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {k: v for k, v in {
            "MAX_INFER_PIXELS": extra.get("UNET_LENS_MAX_INFER_PIXELS", config.MAX_INFER_PIXELS),
            "INFER_SLOTS": extra.get("UNET_LENS_INFER_SLOTS", config.INFER_SLOTS),
            "INFER_QUEUE": extra.get("UNET_LENS_INFER_QUEUE", config.INFER_QUEUE),
            "INFER_WAIT_S": extra.get("UNET_LENS_INFER_WAIT_S", config.INFER_WAIT_S),
            "workers": args.workers, "threads": args.threads}.items()},
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "phases": phases,
        "healthz": {k: summary(v) for k, v in poller.samples.items()},
        "rss": rss,
    }
    print(json.dumps(result, indent=1))
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
