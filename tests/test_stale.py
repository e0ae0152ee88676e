"""Issue 22, item 3: stale results. Each run records a digest of its method's code; a run whose code changed since
is shown as stale (status, dry runs, the report) and ``--rerun-stale`` trains exactly those again. The loop is
walked with a method plugin of its own package (entry point in a .dist-info on sys.path and PYTHONPATH, as pip
installs it), on the tiny network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dfqbench
from dfqbench import plugins
from dfqbench.blocks import interface
from dfqbench.cli import main
from dfqbench.core.progress import SilentProgress
from dfqbench.launch.status import status_document
from dfqbench.report.make import ReportRequest, make_report
from dfqbench.runner import run
from dfqbench.store import RunFolder
from dfqbench.store.codestamp import code_stamp, code_state

from conftest import TINY_OVERRIDES
from test_report_methods import PAIR_GRID
from waiting import HANG_S

PLUGIN = '''
from dfqbench.methods.gdfq import GDFQ

SCALE = 1.0


class Scaled(GDFQ):
    """GDFQ with its student loss scaled by SCALE."""

    paper = "GDFQ with a scaled student loss (a test plugin)"

    def student_loss(self, ctx):
        loss, terms = super().student_loss(ctx)
        return SCALE * loss, terms
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An installed plugin package ``stale_plugin_<n>`` (method ``stale_scaled``, distribution staleplug 0.1),
    registered in this process and visible to the worker processes; returns its method file."""
    plugins.load_methods()  # the other methods, before this one is on the path
    items, sources = dict(interface.METHODS._items), dict(plugins.METHOD_SOURCES)
    site = tmp_path / "site"
    package = site / f"stale_plugin_{abs(hash(str(tmp_path))) % 10**8}"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "method.py").write_text(PLUGIN)
    info = site / "staleplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: staleplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[dfqbench.methods]\nstale_scaled = {package.name}.method:Scaled\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    assert plugins.register_entry_points() == []
    yield package / "method.py"
    interface.METHODS._items.clear(), interface.METHODS._items.update(items)
    plugins.METHOD_SOURCES.clear(), plugins.METHOD_SOURCES.update(sources)


def _edit(path: Path) -> None:
    """Change the plugin's loss (what a researcher does between two runs)."""
    path.write_text(path.read_text().replace("SCALE = 1.0", "SCALE = 0.5"))


def _grid(tmp_path: Path) -> Path:
    path = tmp_path / "mine.yaml"
    base = {"model": "tiny_cifar10", "bits": "w4a4", "protocol": "quick",
            **dict(o.split("=") for o in TINY_OVERRIDES)}
    path.write_text("name: mine\nbase:\n" + "".join(f"  {k}: {v}\n" for k, v in base.items())
                    + "axes:\n  method: [gdfq, stale_scaled]\n")
    return path


def _codes(results: Path) -> dict[str, str]:
    """method → code state of its runs, from `dfqbench status --json`'s document."""
    (grid,) = status_document(results)["grids"]
    return {row["run_name"].split("_tiny")[0]: row["code"] for row in grid["run_states"]}


def test_editing_a_plugin_loss_marks_its_runs_stale_and_rerun_stale_retrains_exactly_those(plugin, tmp_path,
                                                                                          capsys):
    grid, results = _grid(tmp_path), tmp_path / "results"
    dfqbench.run_grid(grid, results, device="cpu", jobs=1)
    assert _codes(results) == {"gdfq": "current", "stale_scaled": "current"}  # records read back as written
    folders = {f.name.split("_tiny")[0]: f for f in (RunFolder(p) for p in (results / "runs").iterdir())}
    code = folders["stale_scaled"].read_record().code
    assert set(code["modules"]) == {plugin.parent.name + ".method", "dfqbench.methods.gdfq"}
    assert (code["distribution"], code["version"]) == ("staleplug", "0.1")
    gdfq_record = folders["gdfq"].record_path.read_bytes()

    _edit(plugin)
    assert _codes(results) == {"gdfq": "current", "stale_scaled": "stale"}
    assert main(["status", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[-1] == "stale" and out.splitlines()[1].split()[-1] == "1"
    assert f"{plugin.parent.name}.method changed since the run" in out

    dry = dfqbench.run_grid(grid, results, dry_run=True)
    assert dry.attrs["stale"] == 1 and dry.attrs["to_run"] == 0
    assert dict(zip(dry["method"], dry["code"])) == {"gdfq": "current", "stale_scaled": "stale"}
    dry = dfqbench.run_grid(grid, results, dry_run=True, rerun_stale=True)
    assert dry.attrs["to_run"] == 1 and list(dry[dry["to_run"]]["method"]) == ["stale_scaled"]
    assert main(["run", "--grid", str(grid), "--results", str(results), "--dry-run"]) == 0
    assert "(1 of them stale)" in capsys.readouterr().out

    report = make_report(ReportRequest(results=results, grid=str(grid))).text
    assert "Stale results: 1 run of stale_scaled" in report and "--rerun-stale" in report

    dfqbench.run_grid(grid, results, device="cpu", jobs=1)  # without --rerun-stale: nothing runs
    assert _codes(results)["stale_scaled"] == "stale"
    dfqbench.run_grid(grid, results, device="cpu", jobs=1, rerun_stale=True)
    assert _codes(results) == {"gdfq": "current", "stale_scaled": "current"}
    assert folders["gdfq"].record_path.read_bytes() == gdfq_record  # the current run was not trained again
    attempts = json.loads(folders["stale_scaled"].attempts_path.read_text())
    assert [a["outcome"] for a in attempts] == ["done", "done"]  # trained, then trained again
    assert "Stale" not in make_report(ReportRequest(results=results, grid=str(grid))).text


def test_a_single_run_is_stale_after_an_edit_and_rerun_stale_retrains_it_in_a_fresh_process(plugin, tiny_request):
    request = tiny_request(method="stale_scaled")
    first = run(request, SilentProgress())
    assert code_state(first.code).state == "current"
    _edit(plugin)
    progress = SilentProgress()
    again = run(request, progress)  # kept, with a hint
    assert again.finished_at == first.finished_at
    assert any("stale:" in m and "--rerun-stale" in m for m in progress.messages)
    # this process still runs the code it loaded: retraining here would stamp the old code, and says so
    progress = SilentProgress()
    here = run(request, progress, rerun_stale=True)
    assert code_state(here.code).stale and any("restart Python" in m for m in progress.messages)
    done = subprocess.run([sys.executable, "-m", "dfqbench.cli", "run", "--method", "stale_scaled", "--model",
                           "tiny_cifar10", "--bits", "w4a4", "--protocol", "quick", "--device", "cpu", "--results",
                           request.results, "--rerun-stale", *TINY_OVERRIDES], capture_output=True, text=True,
                          timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    folder = RunFolder(Path(request.results) / "runs" / first.run_name)
    assert code_state(folder.read_record().code).state == "current"


def test_records_without_a_digest_are_unknown_not_stale(tiny_request, capsys):
    request = tiny_request()
    record = run(request, SilentProgress())
    folder = RunFolder(Path(request.results) / "runs" / record.run_name)
    data = json.loads(folder.record_path.read_text())
    del data["code"]  # a record written before the digest existed
    folder.record_path.write_text(json.dumps(data))
    (grid,) = status_document(Path(request.results))["grids"]
    assert grid["stale"] == 0 and grid["run_states"][0]["code"] == "unknown"
    progress = SilentProgress()
    run(request, progress, rerun_stale=True)
    assert "code" not in json.loads(folder.record_path.read_text())  # not retrained
    assert code_state({}).reason.startswith("no code digest recorded")


def test_the_installed_digest_is_computed_without_importing_the_plugin(tmp_path, monkeypatch):
    package = tmp_path / "never_imported_pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "sub" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "sub" / "method.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    stamp = code_stamp(["never_imported_pkg.sub.method"])
    assert stamp["digest"] and not any(m.startswith("never_imported_pkg") for m in sys.modules)
    assert code_state(stamp).state == "current"
    (package / "sub" / "method.py").write_text("X = 2\n")
    state = code_state(stamp)
    assert state.stale and state.reason == "never_imported_pkg.sub.method changed since the run"
    assert code_state({**stamp, "modules": {"no_such_module_xyz": "0"}}).state == "unknown"
    assert code_stamp(["no_such_module_xyz"])["digest"] is None


def test_a_new_plugin_version_alone_makes_its_runs_stale(plugin):
    stamp = code_stamp([plugin.parent.name + ".method"], "staleplug")
    assert stamp["version"] == "0.1" and code_state(stamp).state == "current"
    state = code_state(dict(stamp, version="0.0", digest="0" * 16))  # as recorded under version 0.0
    assert state.stale and "staleplug 0.0 -> 0.1" in state.reason


# test_report_methods's pair grid (2 seeds, settings under which fine-tuning moves top-1), with this file's plugin
LOOP_GRID = (PAIR_GRID.replace("name: pair", "name: loop").replace("gdfq_ie", "stale_scaled")
             .replace("the example plugin (GDFQ + information entropy)", "a plugin of its own package"))


def test_the_researchers_loop_in_one_walk(plugin, tmp_path, capsys):
    """Issue 22's loop on the tiny model: plugin A (its own package) vs GDFQ in a grid; `report` without flags
    shows both numbers; `--table methods --baseline gdfq` the difference and Welch's test on the seeds;
    `--plots` the curves of both; editing A's loss marks exactly A's runs stale, `--rerun-stale` retrains exactly
    those, and the comparison then shows A's new numbers."""
    import csv
    import io
    import statistics

    from scipy import stats

    grid, results = tmp_path / "loop.yaml", tmp_path / "results"
    grid.write_text(LOOP_GRID)
    run_args = ["run", "--grid", str(grid), "--results", str(results), "--device", "cpu", "--jobs", "2"]
    assert main(run_args) == 0

    def seeds_best() -> dict[str, list[float]]:
        found: dict[str, list[float]] = {"gdfq": [], "stale_scaled": []}
        for folder in sorted((RunFolder(p) for p in (results / "runs").iterdir()), key=lambda f: f.name):
            record = folder.read_record()
            found[record.spec["method"]].append(record.best_top1)
        return found

    def compared() -> dict[str, str]:
        capsys.readouterr()
        assert main(["report", "--results", str(results), "--grid", str(grid), "--table", "methods",
                     "--baseline", "gdfq", "--format", "csv"]) == 0
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        return next(r for r in rows if r["method"] == "stale_scaled")

    best = seeds_best()
    assert [len(v) for v in best.values()] == [2, 2]
    capsys.readouterr()
    assert main(["report", "--results", str(results)]) == 0  # no flags: both methods' numbers
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny |"))
    for values in best.values():
        assert f"{statistics.mean(values):.2f} ± " in row
    plugin_row = compared()
    assert float(plugin_row["delta"]) == pytest.approx(
        statistics.mean(best["stale_scaled"]) - statistics.mean(best["gdfq"]), abs=1e-4)
    if any(len(set(v)) > 1 for v in best.values()):
        p = stats.ttest_ind(best["stale_scaled"], best["gdfq"], equal_var=False).pvalue
        assert float(plugin_row["p"]) == pytest.approx(p, abs=1e-4)
    plots = tmp_path / "plots"
    assert main(["report", "--results", str(results), "--grid", str(grid), "--plots", str(plots)]) == 0
    assert (plots / "loop_top1_quick_tiny_cifar10_w4a4.png").exists()

    gdfq_records = {f.name: f.record_path.read_bytes() for f in (RunFolder(p) for p in (results / "runs").iterdir())
                    if f.name.startswith("gdfq_")}
    plugin.write_text(plugin.read_text().replace("SCALE = 1.0", "SCALE = 0.25"))  # A's loss changes
    codes = [(row["run_name"].startswith("stale_scaled"), row["code"])
             for row in status_document(results)["grids"][0]["run_states"]]
    assert sorted(codes) == [(False, "current"), (False, "current"), (True, "stale"), (True, "stale")]
    assert main(run_args + ["--rerun-stale"]) == 0
    after = seeds_best()
    assert {f.name: f.record_path.read_bytes() for f in (RunFolder(p) for p in (results / "runs").iterdir())
            if f.name.startswith("gdfq_")} == gdfq_records  # GDFQ's runs were not trained again
    assert [r["code"] for r in status_document(results)["grids"][0]["run_states"]] == ["current"] * 4
    assert float(compared()["delta"]) == pytest.approx(
        statistics.mean(after["stale_scaled"]) - statistics.mean(after["gdfq"]), abs=1e-4)
