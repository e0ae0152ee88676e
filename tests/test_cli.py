"""The command line: listing, one-line errors with no folder left behind, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dfqbench.cli import main
from dfqbench.plugins import load_methods
from dfqbench.errors import DfqbenchError

from conftest import TINY_OVERRIDES
from waiting import HANG_S, finish, process_exited, wait_until

BUNDLED = ["adadfq", "adasg", "gdfq", "qimera", "zaq", "zeroq", "zeroq_kd"]
ALL_METHODS = ", ".join(load_methods().names())  # the bundled ones and any installed plugin's, sorted

TINY_ARGS = ["run", "--method", "gdfq", "--model", "tiny_cifar10", "--bits", "w4a4", "--protocol", "quick",
             "--device", "cpu", "--log-every", "2"]


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_list_methods_and_models(capsys):
    code, out, _ = _run_cli(["list", "methods"], capsys)
    assert code == 0 and "gdfq" in out and "ECCV 2020" in out
    assert all(name in out for name in BUNDLED)
    code, out, _ = _run_cli(["list", "models"], capsys)
    assert code == 0
    for name in ("resnet20_cifar10", "resnet20_cifar100", "resnet18", "resnet50", "mobilenetv2_w1"):
        assert name in out


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"--method": "gdqf"}, ["unknown method 'gdqf'", "did you mean 'gdfq'", f"choices: {ALL_METHODS}"]),
        ({"--model": "resnet21_cifar10"}, ["resnet21_cifar10", "resnet20_cifar10"]),
        ({"--bits": "w1a4"}, ["w1a4", "w4a4"]),
        ({"--protocol": "fast"}, ["unknown protocol 'fast'", "paper", "quick"]),
        ({"--device": "tpu"}, ["tpu", "cpu"]),
    ],
)
def test_bad_input_is_one_line_with_choices_and_writes_nothing(change, expected, tmp_path, capsys):
    args = list(TINY_ARGS) + ["--results", str(tmp_path / "res")]
    for flag, value in change.items():
        args[args.index(flag) + 1] = value
    code, out, err = _run_cli(args, capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfqbench: error:")
    for text in expected:
        assert text in lines[0]
    assert not (tmp_path / "res").exists()


def test_bad_override_key_and_value(tmp_path, capsys):
    base = TINY_ARGS + ["--results", str(tmp_path / "res")]
    code, _, err = _run_cli(base + ["train.epoch=3"], capsys)
    assert code == 2 and "train.epoch" in err and "train.epochs" in err
    code, _, err = _run_cli(base + ["train.epochs=many"], capsys)
    assert code == 2 and "train.epochs" in err
    code, _, err = _run_cli(base + ["quant.tracker=emma"], capsys)
    assert code == 2 and "emma" in err and "ema_gdfq" in err
    assert not (tmp_path / "res").exists()


def test_overrides_accept_scientific_notation():
    from dfqbench.specs import apply_overrides

    sections = {"train": {"lr_q": 0.1, "epochs": 3}}
    out = apply_overrides(sections, ["train.lr_q=1e-4", "train.epochs=1e1"])  # YAML 1.1 reads both as strings
    assert out["train"] == {"lr_q": 1e-4, "epochs": 10} and isinstance(out["train"]["epochs"], int)
    with pytest.raises(DfqbenchError, match="train.epochs"):
        apply_overrides(sections, ["train.epochs=inf"])
    from dfqbench.specs import read_yaml

    assert [read_yaml(t) for t in ("1e-4", "-2.5E+3", "10", "1.5", "1e", "w4a4")] == [1e-4, -2500.0, 10, 1.5, "1e", "w4a4"]
    assert isinstance(read_yaml("10"), int) and isinstance(read_yaml("1e1"), float)


def test_missing_weights_and_unreadable_data_root(tmp_path, capsys):
    args = ["run", "--method", "gdfq", "--model", "resnet20_cifar10", "--bits", "w4a4", "--device", "cpu",
            "--results", str(tmp_path / "res")]
    code, _, err = _run_cli(args + ["--weights", str(tmp_path / "nope.pth")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "nope.pth" in err and "--weights" in err and "--weights-dir" in err
    weights = tmp_path / "w.pth"
    import torch

    from dfqbench.zoo import build_model

    torch.save(build_model("resnet20_cifar10").state_dict(), weights)
    code, _, err = _run_cli(args + ["--weights", str(weights), "--data-root", str(tmp_path / "no-data")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no-data" in err and "--data-root" in err
    assert not (tmp_path / "res").exists()


def test_tiny_run_end_to_end_prints_summary_then_skips(tmp_path, capsys):
    args = TINY_ARGS + ["--results", str(tmp_path / "res"), *TINY_OVERRIDES]
    code, out, _ = _run_cli(args, capsys)
    assert code == 0
    assert "calibrated only" in out and "best over epochs" in out and "FP teacher top-1      89.45" in out  # 229 of 256
    records = list((tmp_path / "res" / "runs").glob("*/record.json"))
    assert len(records) == 1
    code, out, _ = _run_cli(args, capsys)
    assert code == 0 and "already done" in out


def test_diverged_run_ends_there_and_is_recorded_with_its_best_epoch(tmp_path, capsys):
    results = tmp_path / "res"
    # train.lr_q=1e30 takes effect after the warm-up epoch (the first), which is evaluated; the second diverges
    args = TINY_ARGS + ["--results", str(results), *TINY_OVERRIDES, "train.lr_q=1e30"]
    code, out, _ = _run_cli(args, capsys)
    assert code == 0
    (folder,) = (results / "runs").iterdir()
    record = json.loads((folder / "record.json").read_text())
    assert record["diverged"].startswith("non-finite values in epoch 2 of 3, iteration ")
    assert record["final_top1"] is None and record["best_epoch"] == 0
    assert record["best_top1"] == record["calibrated_top1"] == record["top1_per_epoch"]["0"]
    assert list(record["top1_per_epoch"]) == ["0"] and not (folder / "error.json").exists()
    assert "DIVERGED              non-finite values in epoch 2 of 3" in out
    code, out, _ = _run_cli(args, capsys)  # a diverged run is finished: asked again, it is not re-run
    assert code == 0 and "already done" in out


def test_sigkill_mid_run_then_same_command_resumes(tmp_path):
    """A real process killed with SIGKILL after its first checkpoint resumes from it, not from zero."""
    results = tmp_path / "res"
    overrides = ["train.epochs=6", "train.iters_per_epoch=30", "train.batch_size=16",
                 "train.warmup_epochs=1", "train.range_update_epochs=1"]
    cmd = [sys.executable, "-m", "dfqbench.cli", *TINY_ARGS[0:], "--results", str(results), *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        ckpts = wait_until(lambda: list(results.glob("runs/*/checkpoint.pt")), "the first checkpoint",
                           impossible=process_exited(proc, "the run"), poll_s=0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        finish(proc, "the killed run")
    folder = ckpts[0].parent
    assert not (folder / "record.json").exists()
    import torch

    killed_at = torch.load(folder / "checkpoint.pt", weights_only=True)["epoch"]
    assert killed_at < 5
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    assert f"after epoch {killed_at + 1}/" in done.stdout
    record = json.loads((folder / "record.json").read_text())
    assert record["sessions"] == 2
    assert sorted(map(int, record["top1_per_epoch"])) == [0, 1, 2, 3, 4, 5]


def test_engine_flag_is_checked_first_and_reaches_the_request(tmp_path, capsys, monkeypatch):
    """--engine: a bad value is one line, exit 2, nothing written (single runs and grids, dry runs too); a good
    one reaches the RunRequest of a single run."""
    import dfqbench.runner

    for args in (TINY_ARGS, ["run", "--grid", "smoke", "--device", "cpu"], ["run", "--grid", "smoke", "--dry-run"]):
        code, _, err = _run_cli(args + ["--engine", "compild", "--results", str(tmp_path / "res")], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert "unknown engine 'compild'; did you mean 'compiled'?" in lines[0] and "auto, eager, compiled" in lines[0]
    assert not (tmp_path / "res").exists()

    seen = []

    def fake_run(request, progress, **options):
        seen.append(request)
        raise DfqbenchError("stop here")

    monkeypatch.setattr(dfqbench.runner, "run", fake_run)
    assert main(TINY_ARGS + ["--engine", "eager", "--results", str(tmp_path / "res")]) == 2
    assert main(TINY_ARGS + ["--results", str(tmp_path / "res")]) == 2
    assert [r.engine for r in seen] == ["eager", "auto"]


def test_cuda_out_of_memory_is_one_line_exit_1_and_recorded(tmp_path, capsys, monkeypatch):
    """A run that does not fit in GPU memory (simulated: the trainer raises torch.cuda.OutOfMemoryError) prints
    one line naming the device and the fix, exits 1, and leaves error.json with the message and the traceback;
    in a grid the run's reason is that line."""
    import torch

    from dfqbench.core import trainer
    from dfqbench.launch.grid import load_grid
    from dfqbench.launch.plan import LaunchOptions, plan_grid
    from dfqbench.store import run_state
    from dfqbench.launch.task import GridTask

    def no_memory(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total "
                                          "capacity of 79.19 GiB of which 3.06 MiB is free.")

    monkeypatch.setattr(trainer.Trainer, "fit", no_memory)
    results = tmp_path / "res"
    code, _, err = _run_cli(TINY_ARGS + ["--results", str(results)] + TINY_OVERRIDES, capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("dfqbench: error: CUDA out of memory on cpu (asked for 20.00 MiB); lower "
                               "--runs-per-gpu") and "train.batch_size" in lines[0]
    (folder,) = (results / "runs").iterdir()
    error = json.loads((folder / "error.json").read_text())
    assert error["type"] == "DfqbenchError" and error["message"] == lines[0].removeprefix("dfqbench: error: ")
    assert "OutOfMemoryError: CUDA out of memory. Tried to allocate" in error["traceback"]

    plan = plan_grid(load_grid("smoke"), LaunchOptions(results=tmp_path / "grid", device="cpu"), {"bits": ["w3a3"]},
                     [0])
    (cell,) = plan.to_launch()
    outcome = GridTask(cell.request, cell.spec, "smoke").execute("local-test", "local")
    assert outcome.status == "failed" and outcome.reason.startswith("DfqbenchError: CUDA out of memory on cpu")
    assert run_state(cell.run_dir).state == "failed"
