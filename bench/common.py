"""Shared plumbing of the benchmarks: machine header, tables, timing, peak memory, growth fits.

Conventions:

- Every timing is a median over ``repeats`` runs (listed in the table); ratios are taken from
  runs made side by side in the same process, repeat by repeat, and their median reported.
- Peak memory is measured in a child process (``run_child``): the child resets the kernel's
  peak-RSS counter (``/proc/self/clear_refs`` ← 5, which resets ``VmHWM``) right before the
  measured work, so "growth" = peak RSS during the work - RSS just before it, excluding the
  interpreter, TensorFlow and the model. Where the reset is not allowed, the child falls back to
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak since start; the table says so).
- Growth exponents come from a least-squares line through (log n, log cost): cost ∝ n^b.
  Values beyond the measured range are extrapolated from the largest measurement with the
  local exponent (between the two largest N) and are labelled so.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "BENCHMARKS.md"
RESULT_PREFIX = "BENCH_RESULT "

#: Distributions whose versions shape the numbers.
LIBRARIES = (
    "tensorflow-cpu", "tensorflow", "keras", "numpy", "scipy", "scikit-learn", "openTSNE",
    "umap-learn", "pynndescent", "numba", "pandas", "pyarrow", "dash", "Flask", "pillow",
)


# --------------------------------------------------------------------------- tables


@dataclass
class Table:
    """One markdown table with a title and notes (what was measured, what was extrapolated)."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *values: Any) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"row of {len(values)} values for {len(self.columns)} columns")
        self.rows.append(list(values))

    def to_markdown(self) -> str:
        def cell(v: Any) -> str:
            if v is None:
                return "–"
            if isinstance(v, float):
                return fmt_num(v)
            return str(v).replace("|", "\\|")

        lines = [f"#### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


@dataclass
class Report:
    """What one benchmark produced: its tables plus free-text notes."""

    name: str
    title: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    load_before: tuple[float, float, float] = field(default_factory=lambda: load_average())
    load_after: tuple[float, float, float] | None = None
    seconds: float = 0.0


def fmt_num(v: float) -> str:
    """Three significant figures, no scientific notation for everyday magnitudes."""
    if v != v:  # NaN
        return "nan"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.01:
        return f"{v:.3f}"
    return f"{v:.2e}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}" if abs(n) / size < 1000 else f"{n / size:,.0f} {unit}"
    return f"{n:.0f} B"


def fmt_s(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 1:
        return f"{s * 1000:.3g} ms"
    if s < 600:
        return f"{s:.3g} s"
    return f"{s / 60:.3g} min"


# --------------------------------------------------------------------------- machine


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - not on Linux
        return (float("nan"),) * 3


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = (s.strip() for s in line.split(":", 1))
                out.setdefault(k, v)
    except OSError:  # pragma: no cover
        pass
    return out


def _meminfo_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return None


def gpu_description() -> str:
    """Names of NVIDIA GPUs (``nvidia-smi -L``), else "none". TensorFlow is not imported."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        names = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
        if out.returncode == 0 and names:
            return "; ".join(names)
    except (OSError, subprocess.SubprocessError):
        pass
    return "none"


def machine_info() -> dict[str, Any]:
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        usable = os.cpu_count() or 1
    return {
        "cores": usable,
        "logical_cpus": os.cpu_count(),
        "memory_bytes": _meminfo_total(),
        "cpu_model": info.get("model name", platform.processor() or "unknown"),
        "cpu_family_model": f"family {info.get('cpu family', '?')} model {info.get('model', '?')}",
        "cpu_mhz": float(info["cpu MHz"]) if "cpu MHz" in info else None,
        "simd": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")
                 if f in flags],
        "gpu": gpu_description(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def peak_flops(info: dict[str, Any] | None = None) -> tuple[float, str]:
    """(FLOP/s, formula) of the CPU's fp32 peak: cores × GHz × FLOPs per cycle per core.

    FLOPs/cycle: AVX-512 with FMA on a server Xeon = 2 FMA units × 16 fp32 lanes × 2 (an FMA is
    a multiply and an add) = 64; AVX2 + FMA = 2 × 8 × 2 = 32; otherwise 4 × 2 = 8 (SSE).
    The nominal clock from /proc/cpuinfo is used (turbo may be higher under a hypervisor).
    """
    info = info or machine_info()
    simd = set(info["simd"])
    per_cycle = 64 if "avx512f" in simd and "fma" in simd else 32 if "fma" in simd else 8
    ghz = (info["cpu_mhz"] or 2000.0) / 1000.0
    flops = info["cores"] * ghz * 1e9 * per_cycle
    formula = (f"{info['cores']} cores × {ghz:.2f} GHz × {per_cycle} FLOP/cycle "
               f"({'2 AVX-512 FMA units × 16 fp32 lanes × 2' if per_cycle == 64 else 'see code'})"
               f" = {flops / 1e9:.0f} GFLOP/s")
    return flops, formula


def header(report: Report, quick: bool) -> str:
    m = machine_info()
    libs = library_versions()
    date = datetime.fromtimestamp(report.started, UTC).strftime("%Y-%m-%d %H:%M UTC")
    la = report.load_before
    lb = report.load_after or load_average()
    lines = [
        f"### {report.title}{' (--quick)' if quick else ''}",
        "",
        f"- date: {date}; `python -m bench {report.name}{' --quick' if quick else ''}`, "
        f"{fmt_s(report.seconds)} wall, run under `nice -n 19`" if os.getpriority(
            os.PRIO_PROCESS, 0) >= 19 else
        f"- date: {date}; `python -m bench {report.name}{' --quick' if quick else ''}`, "
        f"{fmt_s(report.seconds)} wall",
        f"- machine: {m['cores']} cores ({m['cpu_model']}, {m['cpu_family_model']}, "
        f"{m['cpu_mhz'] or '?'} MHz, {', '.join(m['simd'])}), "
        f"{fmt_bytes(m['memory_bytes'])} RAM, GPU: {m['gpu']}; {m['os']}",
        f"- load average (1/5/15 min) at start {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}, at end "
        f"{lb[0]:.2f} / {lb[1]:.2f} / {lb[2]:.2f} "
        "(the 2 cores are shared with other people's jobs: absolute times are pessimistic, "
        "side-by-side ratios are the robust figures)",
        "- versions: python " + m["python"] + ", " + ", ".join(f"{k} {v}" for k, v in libs.items()),
    ]
    lines += [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def render(report: Report, quick: bool) -> str:
    return header(report, quick) + "\n" + "\n".join(t.to_markdown() for t in report.tables)


def append_report(report: Report, out: Path, quick: bool) -> str:
    """Append the report (header + tables) to ``out``; return the markdown."""
    text = render(report, quick)
    out = Path(out)
    existing = out.read_text() if out.exists() else ""
    sep = "" if not existing or existing.endswith("\n\n") else ("\n" if existing.endswith("\n")
                                                               else "\n\n")
    with out.open("a") as f:
        f.write(sep + text)
    return text


# --------------------------------------------------------------------------- timing & fits


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def repeat(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn``."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def fit_exponent(ns: Sequence[float], costs: Sequence[float]) -> tuple[float, float]:
    """(b, a) of cost ≈ a · n^b by least squares in log-log space (needs ≥ 2 distinct n)."""
    pts = [(math.log(n), math.log(c)) for n, c in zip(ns, costs, strict=True) if n > 0 and c > 0]
    if len({p[0] for p in pts}) < 2:
        return float("nan"), float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    return b, math.exp(my - b * mx)


def extrapolate(n: float, ns: Sequence[float], costs: Sequence[float],
                default_exponent: float = 1.0) -> tuple[float, float]:
    """(cost at n, exponent b) from the power law through the largest measured point.

    The exponent is the local one, between the two largest measured N (the regime closest to
    the target: t-SNE switches Barnes-Hut → FFT at 10 000 points, UMAP 500 → 200 epochs above
    10 000); with a single measured N, ``default_exponent`` (linear) is assumed.
    """
    order = sorted(range(len(ns)), key=lambda j: ns[j])
    i = order[-1]
    if len(order) >= 2:
        j = order[-2]
        b, _ = fit_exponent([ns[j], ns[i]], [costs[j], costs[i]])
    else:
        b = float("nan")
    if b != b:
        b = default_exponent
    return costs[i] * (n / ns[i]) ** b, b


# --------------------------------------------------------------------------- memory


class MemProbe:
    """Peak RSS growth of a block of work in this process (Linux ``/proc``)."""

    def __init__(self) -> None:
        self.method = "VmHWM reset"
        self.before = 0
        self.peak = 0

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:  # pragma: no cover
            pass
        return None

    def rss(self) -> int:
        v = self._status("VmRSS")
        return v if v is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def start(self, trim: bool = False) -> MemProbe:
        """Reset the peak; ``trim`` first hands freed heap pages back to the OS
        (glibc ``malloc_trim``), so work that reuses them still shows up as growth."""
        import gc

        gc.collect()
        if trim:
            try:
                import ctypes

                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except (OSError, AttributeError):
                pass
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.method = "ru_maxrss (peak since process start)"
        self.before = self.rss()
        return self

    def stop(self) -> dict[str, Any]:
        if self.method == "VmHWM reset":
            self.peak = self._status("VmHWM") or 0
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"rss_before": self.before, "rss_peak": self.peak,
                "rss_growth": max(0, self.peak - self.before), "mem_method": self.method}


def run_child(target: str, kwargs: dict[str, Any], timeout: float = 480) -> dict[str, Any]:
    """Run ``module:function(**kwargs)`` in a fresh ``python -m bench._child`` and return the
    dict it returns (JSON). The child inherits this process's nice value."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           "PYTHONHASHSEED": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench._child", target, json.dumps(kwargs)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise RuntimeError(f"benchmark child {target} {kwargs} failed (rc {proc.returncode}):\n"
                           f"{tail}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["child_wall_s"] = time.perf_counter() - t0
    return result


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
