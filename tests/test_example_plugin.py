"""The example plugin package (examples/dfqbench-gdfq-ie), installed as a user installs a plugin: its method
is listed, runs through a grid with 2 local worker processes, and has its column in the report.

Needs the package installed (the README's test command installs it: ``-e examples/dfqbench-gdfq-ie``);
skipped without it, unless DFQBENCH_REQUIRE_EXAMPLE=1 (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfqbench.cli import main

from conftest import EXAMPLE_PLUGIN_DIR, require_example_plugin

EXAMPLE = Path(__file__).resolve().parent.parent / EXAMPLE_PLUGIN_DIR


@pytest.fixture(autouse=True)
def private_plan_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", str(tmp_path / "plan-cache"))


def report_columns(text: str) -> list[str]:
    """The column names of the first markdown table in a report."""
    header = next(line for line in text.splitlines() if line.startswith("| dataset |"))
    return [cell.strip() for cell in header.strip("|").split("|")]


def test_example_plugin_is_listed_runs_in_a_grid_with_two_workers_and_is_reported(tmp_path, capsys):
    require_example_plugin()
    assert main(["list", "methods"]) == 0
    listed = capsys.readouterr().out
    assert "gdfq_ie" in listed and "dfqbench-gdfq-ie" in listed

    results = tmp_path / "results"
    code = main(["run", "--grid", str(EXAMPLE / "tiny.yaml"), "--jobs", "2", "--device", "cpu",
                 "--results", str(results)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(slot 1)" in out and "2 done, 0 failed" in out
    folders = {json.loads((p / "spec.json").read_text())["method"]: p for p in (results / "runs").iterdir()}
    assert sorted(folders) == ["gdfq", "gdfq_ie"]
    assert all((p / "record.json").exists() for p in folders.values())
    terms = set().union(*(json.loads(line).keys() for line in (folders["gdfq_ie"] / "metrics.jsonl").open()))
    assert "g/ie" in terms and "g/ie" not in set().union(
        *(json.loads(line).keys() for line in (folders["gdfq"] / "metrics.jsonl").open()))

    assert main(["report", "--results", str(results), "--table", "table1"]) == 0
    columns = report_columns(capsys.readouterr().out)
    assert "gdfq_ie" in columns and "GDFQ" in columns
