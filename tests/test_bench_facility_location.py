"""Smoke test of benchmarks/bench_facility_location.py: a ``--quick`` run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_facility_location.py"
OURS = ("ours-auto", "ours-incremental", "ours-stochastic")
OPTIONAL = ("apricot-naive", "apricot-lazy", "submodlib-lazy")


def _run(args: list[str], *, block: tuple[str, ...] = ()) -> str:
    """Run the script; ``block`` makes those modules look not installed (parent and workers)."""
    if block:
        # runpy keeps __file__ pointing at the script, so workers re-run it without the block,
        # but the parent never spawns workers for modules it considers missing.
        code = (
            "import runpy, sys\n"
            f"for name in {block!r}:\n"
            "    sys.modules[name] = None\n"
            f"sys.argv = [{str(SCRIPT)!r}, *{args!r}]\n"
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        )
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, str(SCRIPT), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _table_rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| quick |"):
            rows[cells[1]] = cells
    return rows


@pytest.mark.slow
def test_quick_run_reports_ours_and_objectives(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    stdout = _run(["--quick", "--json", str(out_json)])
    rows = _table_rows(stdout)
    for method in OURS:
        assert method in rows, stdout
    assert rows["ours-auto"][3] == "1.00×"
    assert "(agree)" in rows["ours-auto"][5]
    assert "## Hardware" in stdout and "torch" in stdout
    assert "## Targets" in stdout

    payload = json.loads(out_json.read_text())
    results = {r["method"]: r for r in payload["results"]}
    for method in OURS:
        row = results[method]
        assert row["status"] == "ok"
        assert len(row["objective"]) == 2  # one per problem
        assert all(value > 0 for value in row["objective"])
        assert row["median_ms"] > 0 and row["peak_extra_mb"] >= 0
    assert results["ours-auto"]["objective_rel_diff"] == 0.0
    assert results["ours-incremental"]["agree"]
    assert results["numpy-naive"]["agree"]  # exact greedy, same objective
    for method in OPTIONAL:
        row = results[method]
        assert row["status"] in ("ok", "not installed") or row["status"].startswith("skipped")
        if row["status"] == "ok":
            assert row["agree"], (method, row["objective_rel_diff"])


def test_missing_baselines_are_reported_not_installed() -> None:
    stdout = _run(
        ["--quick", "--methods", "ours-auto,apricot-lazy,submodlib-lazy"],
        block=("apricot", "submodlib"),
    )
    rows = _table_rows(stdout)
    assert "ours-auto" in rows
    assert rows["apricot-lazy"][2] == "not installed"
    assert rows["submodlib-lazy"][2] == "not installed"
    assert "apricot-select not installed" in stdout
