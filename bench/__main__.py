"""``python -m bench [names...] [--quick] [--out FILE]``: run benchmarks, print each table and
append it (with a header: date, machine, versions, load) to ``BENCHMARKS.md``.

Run it under ``nice -n 19`` on a shared machine. Names: extract, reduce, server, model, gpu
(default: all, in that order).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from bench.common import DEFAULT_OUT, Report, append_report, load_average, log

BENCHMARKS: dict[str, str] = {
    "extract": "bench.extract",
    "reduce": "bench.reduce",
    "server": "bench.server",
    "model": "bench.model",
    "gpu": "bench.gpu",
}


def run_benchmark(name: str, *, quick: bool = False, out: Path | None = DEFAULT_OUT,
                  **kwargs) -> Report:
    """Run one benchmark, print its markdown and append it to ``out`` (None: print only)."""
    module = importlib.import_module(BENCHMARKS[name])
    t0 = time.perf_counter()
    report: Report = module.run(quick=quick, **kwargs)
    report.seconds = time.perf_counter() - t0
    report.load_after = load_average()
    if out is not None:
        text = append_report(report, Path(out), quick)
    else:
        from bench.common import render

        text = render(report, quick)
    print(text, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="name",
                        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="markdown file the tables are appended to (default BENCHMARKS.md)")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    failed = []
    for name in names:
        log(f"running {name}{' --quick' if args.quick else ''}")
        try:
            run_benchmark(name, quick=args.quick, out=args.out)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next benchmark
            log(f"{name} failed: {type(exc).__name__}: {exc}")
            failed.append(name)
    if failed:
        log(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
