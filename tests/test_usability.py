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
