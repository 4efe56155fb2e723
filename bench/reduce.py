"""``reduce``: PCA, openTSNE, UMAP, scikit-learn's TSNE and the K-means sweep vs N vectors.

Vectors: ``make_blobs`` (10 centres, shifted non-negative like ReLU activations) of the real
dimension of the demo's embeddings: the light preset's bottleneck GAP = 256. Every (method, N)
runs in a fresh process; peak RSS growth is measured around the fit only.

Methods run as the app runs them (``app.ml.reduce.fit_reducer`` defaults):

- PCA: 2 components, scikit-learn ``svd_solver="auto"``;
- openTSNE: perplexity 30, 250 early-exaggeration + 500 iterations, PCA init, Annoy neighbours
  from 1 000 points, FFT gradients from 10 000 points, **n_jobs=1**;
- UMAP: 15 neighbours, seeded (single-threaded), 500 epochs up to 10 000 points, 200 above;
  a small warm-up fit first takes numba's JIT compilation out of the timing (reported apart);
- scikit-learn TSNE: the same perplexity, iterations (``max_iter=750``), PCA init and
  learning rate "auto", Barnes-Hut, ``n_jobs=1`` and OpenMP limited to 1 thread
  (``threadpoolctl``), so both t-SNEs run on one core;
- K-means sweep: ``app.ml.cluster.kmeans_sweep`` for k = 2..10 (KMeans n_init "auto" up to
  50 000 points, MiniBatchKMeans above; silhouette on a 10 000-point sample).

Sizes are adaptive: before a larger N the time is predicted from the exponent fitted so far;
an N predicted to exceed the per-run budget is not run but extrapolated (and labelled so).
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    MemProbe,
    Report,
    Table,
    extrapolate,
    fit_exponent,
    fmt_bytes,
    fmt_s,
    log,
    median,
    run_child,
)

DIMS = 256
#: Seconds one child process may take (the brief: each run under ~8 minutes).
BUDGET_S = 420.0
METHOD_LABELS = {
    "pca": "PCA (scikit-learn)",
    "opentsne": "t-SNE (openTSNE, app defaults)",
    "umap": "UMAP (umap-learn, seeded)",
    "sklearn_tsne": "t-SNE (scikit-learn, Barnes-Hut)",
    "kmeans": "K-means sweep k=2..10",
}


def _fit(method: str, X: Any) -> Any:
    if method in ("pca", "opentsne", "umap"):
        from app.ml.reduce import fit_reducer

        return fit_reducer({"opentsne": "tsne"}.get(method, method), X, n_components=2,
                           random_state=0)
    if method == "sklearn_tsne":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return TSNE(n_components=2, perplexity=30.0, early_exaggeration=12.0,
                        learning_rate="auto", max_iter=750, init="pca", method="barnes_hut",
                        angle=0.5, random_state=0, n_jobs=1).fit_transform(X)
    if method == "kmeans":
        from app.ml.cluster import kmeans_sweep

        return kmeans_sweep(X, range(2, 11), random_state=0)
    raise ValueError(method)


def reduce_child(method: str, n: int, dims: int, repeats: int,
                 budget_s: float = BUDGET_S) -> dict:
    """Fit ``method`` on n blobs ``repeats`` times (fewer when another repeat would overrun
    ``budget_s``); wall time and peak RSS growth of each."""
    from bench.data import blobs

    started = time.perf_counter()
    X = blobs(n, dims)
    jit_s = None
    if method == "umap":  # numba compiles on first use: keep it out of the timings
        t0 = time.perf_counter()
        _fit(method, blobs(300, dims, seed=1))
        jit_s = time.perf_counter() - t0
    elif method in ("opentsne", "sklearn_tsne", "kmeans"):
        _fit(method, blobs(200, dims, seed=1))  # imports and first-call set-up
    seconds, growth = [], []
    extra: dict[str, Any] = {}
    for _ in range(repeats):
        if seconds and time.perf_counter() - started + max(seconds) > budget_s:
            break
        probe = MemProbe().start(trim=True)
        t0 = time.perf_counter()
        result = _fit(method, X)
        seconds.append(time.perf_counter() - t0)
        growth.append(probe.stop()["rss_growth"])
        if method == "kmeans":
            extra = {"algorithm": result.params["algorithm"], "best_k": result.best_k}
        elif method in ("opentsne", "umap"):
            p = result.params
            extra = {k: p.get(k) for k in ("neighbors", "negative_gradient_method",
                                           "n_epochs_effective") if k in p}
        del result
    return {"seconds": seconds, "growth": growth, "jit_s": jit_s, "input_bytes": X.nbytes,
            **extra}


def tsne_pair_child(n: int, dims: int, pairs: int, budget_s: float = BUDGET_S) -> dict:
    """openTSNE and scikit-learn TSNE on the same vectors, alternating, in one process: the
    side-by-side ratio (fewer pairs when another would overrun ``budget_s``)."""
    from bench.data import blobs

    X = blobs(n, dims)
    for method in ("opentsne", "sklearn_tsne"):
        _fit(method, blobs(200, dims, seed=1))
    started = time.perf_counter()
    times: dict[str, list[float]] = {"opentsne": [], "sklearn_tsne": []}
    for i in range(pairs):
        done = time.perf_counter() - started
        if i and done * (i + 1) / i > budget_s:
            break
        order = ("opentsne", "sklearn_tsne") if i % 2 == 0 else ("sklearn_tsne", "opentsne")
        for method in order:
            t0 = time.perf_counter()
            _fit(method, X)
            times[method].append(time.perf_counter() - t0)
    return times


def _plan(quick: bool) -> dict[str, list[tuple[int, int]]]:
    """method → [(N, repeats)] to try, smallest first."""
    if quick:
        return {m: [(300, 1), (600, 1)] for m in METHOD_LABELS}
    big = [(1_000, 3), (10_000, 3), (100_000, 1)]
    return {
        "pca": [(1_000, 5), (10_000, 5), (100_000, 3)],
        "opentsne": big,
        "umap": big,
        "sklearn_tsne": [(1_000, 3), (5_000, 1), (10_000, 1), (100_000, 1)],
        "kmeans": [(1_000, 3), (10_000, 3), (100_000, 3)],
    }


def run(quick: bool = False, *, methods: tuple[str, ...] | None = None, dims: int = DIMS,
        budget_s: float = BUDGET_S, targets: tuple[int, ...] | None = None,
        sizes: tuple[int, ...] | None = None,
        plan: dict[str, list[tuple[int, int]]] | None = None) -> Report:
    """``sizes`` replaces every method's N (one repeat each), e.g. for a smoke test; ``plan``
    (method → [(N, repeats)]) replaces the default plan and runs every listed N (the child's
    own timeout is then the only guard)."""
    report = Report("reduce", f"reduce: maps and K-means vs number of {dims}-d vectors")
    forced = plan is not None
    plan = plan or _plan(quick)
    if sizes:
        plan = {m: [(n, 1) for n in sizes] for m in plan}
    if methods or forced:
        report.notes.append(
            "run from Python: `run_benchmark(\"reduce\", "
            + (f"methods={tuple(methods)!r}, " if methods else "")
            + (f"plan={plan!r}" if forced else "") + ")`")
    methods = tuple(methods or plan)
    targets = targets or (tuple(sizes) if sizes else (300, 600) if quick
                          else (1_000, 10_000, 100_000))
    t = Table(f"Fit time and peak RSS growth vs N ({dims}-d blobs; fresh process per method "
              "and N)",
              ["method", "N", "median time", "runs (s)", "peak RSS growth", "per-point time",
               "measured?"])
    results: dict[str, dict[int, dict]] = {}
    exponents: dict[str, tuple[float, float]] = {}
    notes: dict[str, list[str]] = {}
    pair_plan = plan.pop("tsne_pair", None) if "tsne_pair" in methods else None
    methods = tuple(m for m in methods if m != "tsne_pair")
    for method in methods:
        got: dict[int, dict] = {}
        for n, repeats in plan[method]:
            ns = sorted(got)
            if len(ns) >= 1 and not quick and not forced:
                guess, _ = extrapolate(n, ns, [median(got[k]["seconds"]) for k in ns],
                                       default_exponent=1.5)
                if guess > budget_s:
                    log(f"reduce: {method} N={n} predicted {fmt_s(guess)} > budget: extrapolate")
                    notes.setdefault(method, []).append(
                        f"N={n:,} predicted at {fmt_s(guess)} from the smaller runs: not run")
                    continue
                repeats = max(1, min(repeats, int(budget_s // max(guess, 1e-3))))
            log(f"reduce: {method} N={n:,} x {repeats}")
            try:
                r = run_child("bench.reduce:reduce_child",
                              {"method": method, "n": n, "dims": dims, "repeats": repeats,
                               "budget_s": budget_s},
                              timeout=budget_s + 120)
            except Exception as exc:  # noqa: BLE001 - a timeout becomes an extrapolation
                log(f"reduce: {method} N={n} failed: {type(exc).__name__}")
                notes.setdefault(method, []).append(
                    f"N={n:,} did not finish within the {budget_s + 120:.0f} s budget "
                    f"({type(exc).__name__}): extrapolated")
                continue
            got[n] = r
        results[method] = got
        ns = sorted(got)
        times = [median(got[k]["seconds"]) for k in ns]
        mems = [median(got[k]["growth"]) for k in ns]
        b_t, _ = fit_exponent(ns, times)
        b_m, _ = fit_exponent(ns, mems)
        exponents[method] = (b_t, b_m)
        for n in sorted(set(ns) | set(targets)):
            if n in got:
                r = got[n]
                extra = ""
                if r.get("jit_s"):
                    extra = f"; numba JIT warm-up {r['jit_s']:.1f} s not included"
                if r.get("algorithm"):
                    extra = f" ({r['algorithm']})"
                if r.get("negative_gradient_method"):
                    extra = f" ({r['neighbors']} kNN, {r['negative_gradient_method']})"
                if r.get("n_epochs_effective"):
                    extra = f" ({r['n_epochs_effective']} epochs)" + extra
                t.add(METHOD_LABELS[method], f"{n:,}", fmt_s(median(r["seconds"])),
                      " / ".join(f"{v:.3g}" for v in r["seconds"]),
                      fmt_bytes(median(r["growth"])),
                      fmt_s(median(r["seconds"]) / n), "measured" + extra)
            elif len(ns) >= 1 and n > max(ns):
                et, bt = extrapolate(n, ns, times, default_exponent=1.0)
                em, bm = extrapolate(n, ns, mems, default_exponent=1.0)
                t.add(METHOD_LABELS[method], f"{n:,}", fmt_s(et), "–", fmt_bytes(em),
                      fmt_s(et / n),
                      f"**extrapolated** (time ∝ n^{bt:.2f}, memory ∝ n^{bm:.2f})")
    t.notes += [f"{METHOD_LABELS[m]}: {'; '.join(v)}." for m, v in notes.items()]
    t.notes.append("Peak RSS growth: peak during the fit minus RSS before it (input vectors "
                   "excluded: they exist before); VmHWM reset per repeat, after glibc "
                   "`malloc_trim` (so re-used freed pages count). Small values (KiB) mean the "
                   "fit ran in memory already resident.")
    report.tables.append(t)

    # exponents + t-SNE ratio
    t2 = Table("Growth exponents (cost ∝ N^b): least squares over all measured N, and local "
               "(two largest N, used for the extrapolations)",
               ["method", "measured N", "time b (all)", "time b (local)", "memory b (all)",
                "memory b (local)"])
    for method in methods:
        got = results[method]
        ns = sorted(got)
        local_t = local_m = None
        if len(ns) >= 2:
            local_t = extrapolate(ns[-1] * 2, ns, [median(got[k]["seconds"]) for k in ns])[1]
            local_m = extrapolate(ns[-1] * 2, ns, [median(got[k]["growth"]) for k in ns])[1]
        t2.add(METHOD_LABELS[method], ", ".join(f"{n:,}" for n in ns),
               exponents[method][0], local_t, exponents[method][1], local_m)
    report.tables.append(t2)

    if pair_plan:
        t4 = Table("openTSNE vs scikit-learn TSNE side by side (same vectors, same process, "
                   "alternating; both single-threaded, same iterations)",
                   ["N", "pairs", "openTSNE (median)", "scikit-learn TSNE (median)",
                    "speed-up (sklearn ÷ openTSNE), median of pairs", "per-pair ratios"])
        for n, pairs in pair_plan:
            log(f"reduce: t-SNE pair N={n:,} x {pairs}")
            try:
                r = run_child("bench.reduce:tsne_pair_child",
                              {"n": n, "dims": dims, "pairs": pairs, "budget_s": budget_s},
                              timeout=budget_s + 240)
            except Exception as exc:  # noqa: BLE001
                t4.notes.append(f"N={n:,}: did not finish ({type(exc).__name__}).")
                continue
            k = min(len(r["opentsne"]), len(r["sklearn_tsne"]))
            ratios = [r["sklearn_tsne"][i] / r["opentsne"][i] for i in range(k)]
            t4.add(f"{n:,}", k, fmt_s(median(r["opentsne"])), fmt_s(median(r["sklearn_tsne"])),
                   median(ratios), ", ".join(f"{v:.2f}" for v in ratios))
        report.tables.append(t4)

    if "opentsne" in results and "sklearn_tsne" in results and results["sklearn_tsne"]:
        t3 = Table("openTSNE vs scikit-learn TSNE (both single-threaded, same iterations)",
                   ["N", "openTSNE", "scikit-learn TSNE", "speed-up (sklearn ÷ openTSNE)",
                    "memory openTSNE", "memory sklearn", "measured?"])
        for n in targets:
            vals = []
            for method in ("opentsne", "sklearn_tsne"):
                got = results[method]
                ns = sorted(got)
                if n in got:
                    vals.append((median(got[n]["seconds"]), median(got[n]["growth"]), True))
                elif ns and n > max(ns):
                    vals.append((extrapolate(n, ns, [median(got[k]["seconds"]) for k in ns])[0],
                                 extrapolate(n, ns, [median(got[k]["growth"]) for k in ns])[0],
                                 False))
                else:
                    vals.append(None)
            if None in vals:
                continue
            (to, mo, so), (ts, ms, ss) = vals
            status = "both measured" if so and ss else (
                "sklearn **extrapolated**" if so else "**extrapolated**")
            t3.add(f"{n:,}", fmt_s(to), fmt_s(ts), ts / to, fmt_bytes(mo), fmt_bytes(ms),
                   status)
        report.tables.append(t3)
    return report
