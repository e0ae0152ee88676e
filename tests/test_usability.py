"""Issue 13, usability: a teacher with non-finite weights, one weights file over a multi-model grid, model-name
suggestions, Ctrl-C during imports, the run summary and progress output. Nothing here trains longer than the
tiny run of tests/conftest.py."""

from __future__ import annotations

import dataclasses
import signal
import sys
from pathlib import Path

import pytest
import torch

from dfqbench.cli import main
from dfqbench.zoo import build_model

from conftest import TINY_OVERRIDES
from test_cli import TINY_ARGS


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfqbench: error:"), lines
    return lines[0]


def _save(model_name: str, path: Path, poison: str | None = None) -> Path:
    state = build_model(model_name).state_dict()
    if poison is not None:
        state[poison].view(-1)[0] = float("nan")
    torch.save(state, path)
    return path


# -- 1. the teacher's weights are finite ------------------------------------------------------------------------
def test_teacher_with_nan_weights_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    weights = _save("tiny_cifar10", tmp_path / "nan.pth", poison="features.stage2.0.body.0.conv.weight")
    code = main([*TINY_ARGS, "--weights", str(weights), "--results", str(tmp_path / "R"), *TINY_OVERRIDES])
    line = _one_error_line(capsys)
    assert code == 2
    assert "nan.pth" in line and "'features.stage2.0.body.0.conv.weight' (1 of 1152 values NaN or infinite)" in line
    assert "must be finite" in line
    assert not (tmp_path / "R").exists()


def test_grid_with_nan_teacher_does_not_start_and_writes_nothing(tmp_path, capsys):
    weights = _save("tiny_cifar10", tmp_path / "nan.pth", poison="output.bias")
    code = main(["run", "--grid", "smoke", "--device", "cpu", "--weights", str(weights),
                 "--results", str(tmp_path / "R")])
    line = _one_error_line(capsys)
    assert code == 2 and "invalid cells" in line and "'output.bias'" in line and "non-finite" in line
    assert not (tmp_path / "R" / "runs").exists()


# -- 2. one weights file is one model's teacher -----------------------------------------------------------------
def _two_model_grid(tmp_path: Path) -> Path:
    path = tmp_path / "two.yaml"
    path.write_text("name: two\nbase: {method: gdfq, bits: w4a4, protocol: quick, seed: 0}\n"
                    "axes: {model: [resnet20_cifar10, resnet20_cifar100]}\n")
    return path


def test_env_weights_file_for_one_model_skips_the_other_models_cells(tmp_path, capsys, monkeypatch):
    """The README's offline DFQBENCH_WEIGHTS=<resnet20 file> over a grid of two models: the other model's cells
    are 'skip' in the dry run, with the reason, not pending; a launch makes no run folder for them."""
    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", "off")
    monkeypatch.setenv("DFQBENCH_WEIGHTS", str(_save("resnet20_cifar10", tmp_path / "r20.pth")))
    grid = str(_two_model_grid(tmp_path))
    assert main(["run", "--grid", grid, "--dry-run", "--results", str(tmp_path / "R")]) == 0
    out = capsys.readouterr().out
    assert "cells: 2 = 1 runs + 1 skipped" in out and "runs: 1 pending" in out
    assert "1 × no weights for resnet20_cifar100 (DFQBENCH_WEIGHTS 'r20.pth' is for resnet20_cifar10)" in out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("resnet20_cifar1")] == ["1", "skip"]

    code = main(["run", "--grid", grid, "--device", "cpu", "--only", "model=resnet20_cifar100",
                 "--results", str(tmp_path / "R")])
    out = capsys.readouterr().out
    assert code == 0 and "nothing to run" in out and "1 cells skipped: no teacher weights" in out
    assert not (tmp_path / "R" / "runs").exists()


def test_weights_flag_that_fits_no_zoo_model_is_named_with_its_mismatch(tmp_path):
    from dfqbench.zoo import single_file_misfit

    odd = tmp_path / "odd.pth"
    torch.save({"w": torch.zeros(3)}, odd)
    reason = single_file_misfit("resnet20_cifar10", str(odd))
    assert reason.startswith("no weights for resnet20_cifar10 (--weights 'odd.pth' does not fit it: ")
    assert "unexpected keys (e.g. 'w')" in reason
    tiny = _save("tiny_cifar10", tmp_path / "tiny.pth")
    assert single_file_misfit("tiny_cifar10", str(tiny)) is None
    assert single_file_misfit("resnet20_cifar10", str(tiny)).endswith("'tiny.pth' is for tiny_cifar10)")


# -- 3. suggestions prefer the zoo's names ----------------------------------------------------------------------
@pytest.mark.parametrize("typed, suggested", [
    ("resnet20", "did you mean 'resnet20_cifar10' or 'resnet20_cifar100'?"),
    ("mobilenetv2", "did you mean 'mobilenetv2_w1'?"),
    ("resnt18", "did you mean 'resnet18'?"),
    ("densenet4", "did you mean 'densenet201'?"),  # no zoo name is close: pytorchcv's
])
def test_model_suggestions_prefer_the_zoo(typed, suggested, tmp_path, capsys):
    args = list(TINY_ARGS) + ["--results", str(tmp_path / "R")]
    args[args.index("--model") + 1] = typed
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert f"unknown model {typed!r}; {suggested}" in line and "resnet200" not in line
    assert not (tmp_path / "R").exists()


# -- 6. Ctrl-C while importing ----------------------------------------------------------------------------------
class _InterruptOnImport:
    """A meta-path finder that raises KeyboardInterrupt when ``name`` is imported (Ctrl-C during the import)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name:
            raise KeyboardInterrupt
        return None


@pytest.fixture
def interrupt_import(monkeypatch):
    def arm(name: str) -> None:
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, module)
        monkeypatch.setattr(sys, "meta_path", [_InterruptOnImport(name), *sys.meta_path])

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    yield arm
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("module, args", [
    ("dfqbench.launch.cli", ["run", "--grid", "smoke", "--dry-run"]),
    ("dfqbench.runner", [*TINY_ARGS]),
    ("dfqbench.report.cli", ["report", "--results", "nowhere"]),
])
def test_ctrl_c_while_the_cli_imports_is_one_line_exit_130(module, args, interrupt_import, capsys):
    interrupt_import(module)
    assert main(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dfqbench: interrupted; re-run the same command to resume from the last checkpoint"]


def test_ctrl_c_while_a_worker_imports_is_one_line_exit_130(interrupt_import, capsys):
    from dfqbench.launch import worker

    interrupt_import("dfqbench.launch.task")
    assert worker.main(["{}"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dfqbench worker: interrupted; the run resumes from its last checkpoint next time"]


# -- 4. progress: stages, timestamps, the last top-1, a steady ETA ----------------------------------------------
class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_counts_training_iterations_and_epoch_ends_separately_and_does_not_jump():
    """1 s per iteration, 10 s per evaluation, a 30 s first iteration (compilation): the ETA is iterations
    left × 1 s + epochs left × 10 s, the same just before and just after an evaluation (minus its 10 s)."""
    from dfqbench.core.progress import EtaClock

    clock = _FakeClock()
    eta = EtaClock(clock, skip=2)
    eta.start(epochs=4, iters=5, first_epoch=0)
    history = []
    for epoch in range(4):
        for it in range(5):
            clock.now += 30.0 if (epoch, it) == (0, 0) else 1.0
            eta.iteration(epoch, it)
            history.append(eta.remaining())
        clock.now += 10.0  # evaluation + checkpoint
        eta.end_epoch(epoch)
        history.append(eta.remaining())
    assert history[:2] == [None, None]  # nothing timed yet (first iterations skipped)
    assert history[4] == 15 * 1.0 + 4 * 0.0  # epoch 0, iteration 4: 15 iterations left, no evaluation timed yet
    assert history[5] == 15 * 1.0 + 3 * 10.0  # after the first evaluation: 15 iterations and 3 evaluations left
    assert history[6] == 14 * 1.0 + 3 * 10.0  # the next iteration (its gap holds the evaluation) is not counted
    assert [history[5 + 6 * k] for k in range(4)] == [45.0, 30.0, 15.0, 0.0]  # after each evaluation
    assert [history[4 + 6 * k] for k in range(1, 4)] == [40.0, 25.0, 10.0]  # just before each: 10 s more (that evaluation)
    assert eta.text() == "0:00:00"


def test_plain_lines_have_timestamps():
    import io
    import re

    from dfqbench.core.progress import Progress

    stream = io.StringIO()
    progress = Progress(stream)
    progress.stage("loading the teacher x")
    progress.start(2, 3, 0)
    progress.end_epoch(0, 50.0, 50.0)
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d loading the teacher x", lines[0])
    assert re.fullmatch(r"\d\d:\d\d:\d\d epoch 1/2 done: top-1 50\.00 \(best 50\.00\), ETA -:--:--", lines[1])


def test_rich_bar_shows_the_last_top1_when_the_evaluation_finishes():
    from dfqbench.core.progress import RichProgress

    progress = RichProgress()
    progress.start(epochs=2, iters=4, first_epoch=0)
    try:
        for it in range(4):
            progress.iteration(0, it, {"q/loss": 1.5} if it == 3 else None)
        assert progress.bar.tasks[0].fields["info"] == "q/loss=1.5 last top-1 -"
        progress.end_epoch(0, 61.25, 61.25)
        assert progress.bar.tasks[0].fields["info"] == "q/loss=1.5 last top-1 61.25"  # not at the next log window
        assert progress.bar.tasks[0].fields["eta"] != "-:--:--"
    finally:
        progress.stop()


# -- 4 and 5. a single run: its stages in order, then a summary with the overrides and the absolute record path --
def test_single_run_prints_its_stages_and_a_summary_that_agrees_with_the_record(tmp_path, capsys, monkeypatch):
    import json
    import re

    monkeypatch.chdir(tmp_path)
    code = main([*TINY_ARGS, "--results", "relative-results", *TINY_OVERRIDES, "quant.tracker=ema"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    stages = ["preparing gdfq tiny_cifar10 w4a4 seed 0", "loading the teacher tiny_cifar10", "loading the tiny test set",
              "setting up the trainer", "evaluating the FP teacher", "epoch 1/3: training", "epoch 1/3 done",
              "epoch 2/3: training", "epoch 3/3 done"]
    found = [next(i for i, line in enumerate(out) if line[9:].startswith(s)) for s in stages]
    assert found == sorted(found)
    assert all(re.match(r"\d\d:\d\d:\d\d ", out[i]) for i in found)
    (record_path,) = (tmp_path / "relative-results" / "runs").glob("*/record.json")
    record = json.loads(record_path.read_text())
    summary = out[out.index(next(line for line in out if line.startswith("gdfq tiny_cifar10 w4a4 seed 0"))):]
    assert summary[1] == "  overrides             " + " ".join([*TINY_OVERRIDES, "quant.tracker=ema"])
    assert summary[-1] == f"  record                {record_path.resolve()}"
    best = record["best_epoch"]
    assert f"(best_epoch {best}: epoch {best + 1} of 3)" in "\n".join(summary)
    assert record["top1_per_epoch"][str(best)] == record["best_top1"]


# -- 7. the tiny model separates bit-widths and methods ---------------------------------------------------------
def test_smoke_cells_and_methods_on_the_tiny_model_score_differently(tmp_path):
    """The smoke grid's settings (its base, from the grid file) at W4A4 and W3A3, and three methods at W4A4: every
    run's (calibrated, best, final) top-1 differs from every other's; the teacher itself is at 89.45 %."""
    from dfqbench.core.progress import Progress
    from dfqbench.launch.grid import load_grid
    from dfqbench.launch.plan import LaunchOptions, plan_grid
    from dfqbench.runner import run

    class Quiet(Progress):
        def message(self, text: str) -> None:
            pass

    plan = plan_grid(load_grid("smoke"), LaunchOptions(results=tmp_path, device="cpu"), seeds=[0])
    requests = {c.cell.bits: c.request for c in plan.to_launch()}
    assert sorted(requests) == ["w3a3", "w4a4"] and "quant.tracker=ema" in requests["w4a4"].overrides
    threads = torch.get_num_threads()
    scores = {}
    for name, request in [("gdfq w4a4", requests["w4a4"]), ("gdfq w3a3", requests["w3a3"])]:
        scores[name] = run(request, Quiet()).to_dict()
    for method in ("qimera", "adasg"):
        scores[f"{method} w4a4"] = run(dataclasses.replace(requests["w4a4"], method=method), Quiet()).to_dict()
    assert {r["fp_top1"] for r in scores.values()} == {100 * 229 / 256}
    assert {r["device"] for r in scores.values()} == {"cpu (1 threads)"} and torch.get_num_threads() == threads
    triples = {name: (r["calibrated_top1"], r["best_top1"], r["final_top1"]) for name, r in scores.items()}
    assert len(set(triples.values())) == len(triples), triples
    assert triples["gdfq w4a4"][0] > triples["gdfq w3a3"][0]  # fewer bits, lower calibrated accuracy


# -- issue 22: the worked example shows a difference; the smaller items of 7 ------------------------------------
EXAMPLE_GRID = Path(__file__).resolve().parents[1] / "examples" / "dfqbench-gdfq-ie" / "tiny.yaml"


def test_the_worked_example_grid_gives_the_two_methods_different_numbers_after_fine_tuning(tmp_path):
    """examples/dfqbench-gdfq-ie/tiny.yaml: GDFQ and the example plugin end with different best top-1, and the
    best epoch of each is a fine-tuning epoch (not the warm-up epoch every method shares), above chance."""
    from conftest import require_example_plugin

    require_example_plugin()
    import dfqbench
    from dfqbench.report.make import ReportRequest, make_report

    dfqbench.run_grid(EXAMPLE_GRID, tmp_path, device="cpu", jobs=1)
    runs = dfqbench.load_results(tmp_path, grid=EXAMPLE_GRID).set_index("method")
    assert sorted(runs.index) == ["gdfq", "gdfq_ie"] and set(runs["state"]) == {"done"}
    best = runs["best_top1"]
    assert best["gdfq"] != best["gdfq_ie"], best
    warmup = int(runs["spec.train.warmup_epochs"].iloc[0])
    assert (runs["best_epoch"] >= warmup).all() and (best > runs["calibrated_top1"]).all() and (best > 20).all()
    report = make_report(ReportRequest(results=tmp_path, grid=str(EXAMPLE_GRID))).text
    assert f"{best['gdfq']:.2f}" in report and f"{best['gdfq_ie']:.2f}" in report


def _launched(tmp_path: Path) -> tuple[Path, Path]:
    """A grid file launched into results (its manifest written as a launch writes it; nothing trained)."""
    from dfqbench.launch.grid import load_grid
    from dfqbench.launch.manifest import write_manifest

    grid_file = tmp_path / "grids" / "mine.yaml"
    grid_file.parent.mkdir()
    grid_file.write_text("name: mine_grid\nbase: {method: gdfq, model: tiny_cifar10, bits: w4a4, protocol: quick}\n")
    results = tmp_path / "R"
    write_manifest(results, load_grid(grid_file), "local", [{"run_id": "abc", "run_name": "gdfq_x_abc", "job_id": None}])
    return grid_file, results


def test_status_grid_takes_an_absolute_or_relative_grid_file(tmp_path, capsys, monkeypatch):
    grid_file, results = _launched(tmp_path)
    monkeypatch.chdir(tmp_path)
    for given in (str(grid_file), "grids/mine.yaml", "mine_grid"):
        assert main(["status", "--grid", given, "--results", str(results)]) == 0, given
        out = capsys.readouterr().out
        assert out.splitlines()[1].split()[:2] == ["mine_grid", "1"] and "never launched" not in out, given
    other = tmp_path / "other.yaml"
    other.write_text("name: other\nbase: {method: gdfq, model: tiny_cifar10, bits: w4a4, protocol: quick}\n")
    assert main(["status", "--grid", str(other), "--results", str(results)]) == 0
    assert "grid 'other' was never launched" in capsys.readouterr().out
    assert main(["status", "--grid", str(tmp_path / "missing.yaml"), "--results", str(results)]) == 2
    assert "missing.yaml" in _one_error_line(capsys)


def test_list_methods_json_says_where_each_method_comes_from(capsys):
    import json

    assert main(["list", "methods", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["gdfq"]["from"] == "dfqbench"
    if "gdfq_ie" in rows:
        assert rows["gdfq_ie"]["from"].startswith("dfqbench-gdfq-ie ")


def test_dry_run_json_counts_every_cell_once_skipped_included_and_says_what_the_estimate_rests_on(
        tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", "off")
    monkeypatch.setenv("DFQBENCH_WEIGHTS", str(_save("resnet20_cifar10", tmp_path / "r20.pth")))
    grid = str(_two_model_grid(tmp_path))
    assert main(["run", "--grid", grid, "--dry-run", "--json", "--results", str(tmp_path / "R")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"]["skipped"] == 1 and sum(doc["counts"].values()) == doc["cells_total"] == 2
    assert "not measurements" in doc["estimate"]["basis"] and doc["estimate"]["formula_runs"] == 1
    assert main(["run", "--grid", grid, "--dry-run", "--results", str(tmp_path / "R")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("to run:"))
    assert "cost model whose per-iteration and per-image costs are assumptions for one H100, not measurements" in line


def test_a_bad_plugin_hyperparameter_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    """The config dataclass validates itself (the README's skeleton): a bad value is the class's one line, before
    the teacher is loaded or a folder made; the same for a config check that raises a plain ValueError."""
    from conftest import require_example_plugin

    require_example_plugin()
    results = tmp_path / "R"
    args = [*TINY_ARGS, "--method", "gdfq_ie", "--results", str(results), *TINY_OVERRIDES]
    assert main([*args, "method.ie_weight=-1"]) == 2
    assert "invalid method.ie_weight=-1.0: must be a finite number in [0, inf)" in _one_error_line(capsys)
    assert main([*args, "method.ie_weight=heavy"]) == 2
    assert "method.ie_weight" in _one_error_line(capsys)
    assert not results.exists()


def test_a_single_run_without_protocol_says_it_trains_the_paper_schedule_in_one_line(tmp_path, capsys):
    args = [a for a in TINY_ARGS if a not in ("--protocol", "quick")]
    assert main([*args, "--results", str(tmp_path / "R"), *TINY_OVERRIDES]) == 0
    out = capsys.readouterr().out
    notices = [line for line in out.splitlines() if "protocol paper (the default)" in line]
    assert len(notices) == 1 and "3 epochs x 4 iterations of batch 8" in notices[0]
    assert "--protocol quick" in notices[0] and "(paper protocol" in out
    assert main([*TINY_ARGS, "--results", str(tmp_path / "Q"), *TINY_OVERRIDES]) == 0
    assert "protocol paper (the default)" not in capsys.readouterr().out


def test_the_readme_method_skeleton_is_complete_and_validates_its_config(tmp_path, capsys, monkeypatch):
    """The README's "Add your own method" code, as a module of a package: it passes the method contract, and a
    bad value of its own hyperparameter is one line, exit 2, nothing written."""
    import re

    from dfqbench import plugins
    from dfqbench.blocks import interface
    from dfqbench.testing import check_method_contract

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Add your own method"):readme.index("## Documentation")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    package = tmp_path / "readme_skeleton_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "method.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    from readme_skeleton_pkg.method import GDFQLS

    plugins.load_methods()
    items = dict(interface.METHODS._items)
    GDFQLS.name = "gdfq_ls"  # what the entry point does
    interface.METHODS.add("gdfq_ls", GDFQLS)
    try:
        check_method_contract("gdfq_ls", tmp_path / "contract")
        results = tmp_path / "R"
        assert main([*TINY_ARGS, "--method", "gdfq_ls", "--results", str(results), *TINY_OVERRIDES,
                     "method.smoothing=1.5"]) == 2
        assert "invalid method.smoothing=1.5" in _one_error_line(capsys) and not results.exists()
    finally:
        interface.METHODS._items.clear(), interface.METHODS._items.update(items)
