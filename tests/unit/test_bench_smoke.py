"""Smoke tests of ``python -m bench`` (one tiny benchmark end to end into a temp file) and of
``python -m bench.load`` (the real mix for a few seconds).

Asserts the structure of what is appended (header, table columns, one row per size) and that
every load kind was sent and answered, never the timings themselves (the machine is shared).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import load
from bench.__main__ import main, run_benchmark
from bench.common import Table, append_report, extrapolate, fit_exponent


def _table_rows(text: str, header_start: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header_start))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_reduce_pca_quick_appends_a_table(tmp_path: Path) -> None:
    out = tmp_path / "BENCH.md"
    out.write_text("# existing\n")
    report = run_benchmark("reduce", quick=True, out=out, methods=("pca",), sizes=(200, 400))
    text = out.read_text()
    assert text.startswith("# existing\n")  # appended, not overwritten
    assert "### reduce: maps and K-means" in text and "(--quick)" in text
    for key in ("- date:", "- machine:", "cores", "GPU:", "- versions:", "scikit-learn",
                "- load average"):
        assert key in text
    rows = _table_rows(text, "| method | N | median time |")
    assert [r[1] for r in rows] == ["200", "400"]
    assert all(r[0] == "PCA (scikit-learn)" and r[-1].startswith("measured") for r in rows)
    assert all(len(r) == 7 for r in rows)
    exps = _table_rows(text, "| method | measured N |")
    assert len(exps) == 1 and exps[0][1] == "200, 400" and len(exps[0]) == 6
    assert [t.title.split(" ")[0] for t in report.tables] == ["Fit", "Growth"]
    # a second report appends below the first
    append_report(report, out, quick=True)
    assert out.read_text().count("### reduce: maps and K-means") == 2


def test_cli_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["nope", "--out", str(tmp_path / "x.md")])
    assert not (tmp_path / "x.md").exists()


def test_table_and_fits() -> None:
    t = Table("T", ["a", "b"])
    t.add("x|y", 1234.5)
    t.notes.append("note")
    md = t.to_markdown()
    assert "| a | b |" in md and "x\\|y" in md and "1,234" in md and "- note" in md
    b, a = fit_exponent([1_000, 10_000], [2.0, 200.0])
    assert math.isclose(b, 2.0) and math.isclose(a, 2.0 / 1_000**2)
    value, b = extrapolate(100_000, [1_000, 10_000], [2.0, 200.0])
    assert math.isclose(value, 20_000.0) and math.isclose(b, 2.0)
    value, b = extrapolate(4_000, [1_000, 2_000, 3_000], [1.0, 2.0, 9.0])
    assert math.isclose(b, math.log(4.5) / math.log(1.5))  # local: the two largest N
    value, b = extrapolate(10, [5], [1.0])
    assert math.isclose(b, 1.0) and math.isclose(value, 2.0)


@pytest.mark.slow
def test_load_mix_sends_every_kind_without_errors(tmp_path: Path) -> None:
    """2 users, 1 worker, every kind once (``--cover``) then a few seconds of the mix: pages,
    thumbnails, the API and the four Dash callbacks (background ones polled to their result)."""
    out = tmp_path / "load.json"
    rc = load.main(["--users", "2", "--seconds", "2", "--workers", "1", "--cover",
                    "--json", str(out)])
    results = json.loads(out.read_text())
    assert results["model"] and results["workers"] == 1 and results["users"] == 2
    kinds = results["kinds"]
    expected = set(load.WEIGHTS) | set(load.FOLLOW_UP.values())
    assert expected <= set(kinds), expected - set(kinds)
    for kind in expected:
        row = kinds[kind]
        assert row["count"] >= 1 and row["requests"] >= 1, kind
        assert row["errors"] == 0, (kind, row["reasons"])
    for kind in ("cb segment upload", "cb evaluate"):  # polled to the result
        assert kinds[kind]["counters"]["polls"] >= 1, kind
        assert kinds[kind]["requests"] > kinds[kind]["count"], kind
    assert kinds["cb segment follow-up"]["count"] >= 2 * kinds["cb segment upload"]["count"]
    assert results["errors"] == 0 and rc == 0
