"""The Python API: dfqbench.run / run_grid / load_results / load_metrics / load_student / evaluate, the saved
best student (and its repair on resume), and the TensorBoard / W&B loggers read back."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dfqbench
from dfqbench.errors import DfqbenchError

from conftest import RecordingProgress
from waiting import HANG_S

# Tiny GDFQ at W8A8 with a learning rate that moves the student: the calibrated epoch 0 scores well above the
# fine-tuned epochs, so best_top1 (epoch 0) and final_top1 (epoch 2) differ and load_student("best") and
# load_student("final") are told apart by their accuracy.
OVERRIDES = {"train.epochs": 3, "train.iters_per_epoch": 4, "train.batch_size": 8, "train.warmup_epochs": 1,
             "train.range_update_epochs": 1, "train.lr_q": 0.001}  # best (epoch 0) and final differ, no divergence
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def _offline_wandb(env_setter, folder: Path) -> None:
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": folder / "config",
                       "WANDB_CACHE_DIR": folder / "cache", "WANDB_DATA_DIR": folder / "data"}.items():
        env_setter(key, str(value))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny run through the API with every installed logger (W&B offline)."""
    root = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as mp:
        _offline_wandb(mp.setenv, root / "wandb-home")
        log = ["tensorboard"] + (["wandb"] if HAS_WANDB else [])
        record = dfqbench.run("gdfq", "tiny_cifar10", "w8a8", seed=0, protocol="quick", overrides=OVERRIDES,
                              results=root / "results", device="cpu", log_every=2, log=log, progress=False)
    return root / "results", record


def test_import_dfqbench_stays_light():
    code = ("import sys, dfqbench; dfqbench.__version__; assert 'run' in dir(dfqbench); "
            "assert 'torch' not in sys.modules and 'pandas' not in sys.modules, sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dfqbench.nope  # noqa: B018


def test_run_returns_the_record_and_load_results_has_one_row_per_run(finished):
    results, record = finished
    assert record["top1_per_epoch"].keys() == {"0", "1", "2"}
    frame = dfqbench.load_results(results)
    assert frame.shape[0] == 1
    row = frame.iloc[0]
    assert (row["method"], row["model"], row["dataset"], row["bits"], row["seed"], row["protocol"], row["state"]) == \
        ("gdfq", "tiny_cifar10", "tiny", "w8a8", 0, "quick", "done")
    for key in ("fp_top1", "calibrated_top1", "best_top1", "best_epoch", "final_top1", "wall_time_s", "device",
                "run_id", "run_name"):
        assert row[key] == record[key], key
    assert row["spec.train.epochs"] == 3 and row["spec.quant.tracker"] == "ema_gdfq"
    assert row["spec.train.milestones_q"] == tuple(record["spec"]["train"]["milestones_q"])
    assert Path(row["path"]).name == record["run_name"]
    # asked again: not trained again, the same record
    again = dfqbench.run("gdfq", "tiny_cifar10", "w8a8", protocol="quick", overrides=OVERRIDES, results=results,
                         device="cpu", log_every=2, progress=False)
    assert again == json.loads(json.dumps(record))  # read back from record.json (lists for tuples)


def test_load_results_counts_unfinished_folders_and_filters_by_protocol(finished, tmp_path):
    results, record = finished
    copy = tmp_path / "results"
    import shutil

    shutil.copytree(results, copy)
    (copy / "runs" / record["run_name"] / "record.json").unlink()
    frame = dfqbench.load_results(copy)
    assert list(frame["state"]) == ["started"] and frame["best_top1"].isna().all()
    assert frame.iloc[0]["method"] == "gdfq" and frame.iloc[0]["spec.train.epochs"] == 3
    assert dfqbench.load_results(results, protocol="paper").shape[0] == 0
    with pytest.raises(DfqbenchError, match="does not exist"):
        dfqbench.load_results(tmp_path / "nowhere")


def test_load_student_best_and_final_evaluate_to_the_record(finished):
    results, record = finished
    assert record["best_epoch"] == 0 and record["best_top1"] != record["final_top1"]  # the two are told apart
    row = dfqbench.load_results(results).iloc[0]
    best = dfqbench.load_student(row, "best")
    assert not best.training
    assert dfqbench.evaluate(best, row) == record["best_top1"]
    final = dfqbench.load_student(record["run_id"], "final", results=results)  # a run id with results=
    assert dfqbench.evaluate(final, record["run_name"], results=results) == record["final_top1"]
    assert dfqbench.evaluate(dfqbench.load_student(row["path"], "best"), row) == record["best_top1"]  # a folder path
    saved = torch.load(Path(row["path"]) / "best_student.pt", weights_only=True)
    assert saved["epoch"] == record["best_epoch"] and saved["top1"] == record["best_top1"]
    assert {"x_min", "x_max"} <= {key.rsplit(".", 1)[-1] for key in saved["student"]}  # activation ranges kept
    with pytest.raises(DfqbenchError, match="unknown student 'bets'.*best, final"):
        dfqbench.load_student(row, "bets")
    with pytest.raises(DfqbenchError, match="no run 'abc' under"):
        dfqbench.load_student("abc", results=results)


def test_load_metrics_is_metrics_jsonl_with_the_global_step(finished):
    results, record = finished
    metrics = dfqbench.load_metrics(record, results=results)
    rows = [json.loads(line) for line in (results / "runs" / record["run_name"] / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == len(rows)
    iters = metrics[metrics["type"] == "iter"]
    assert list(iters["step"]) == [2, 4, 6, 8, 10, 12]  # log_every 2 of 4 iterations, 3 epochs
    assert list(iters["q/loss"]) == [r["q/loss"] for r in rows if r["type"] == "iter"]
    epochs = metrics[metrics["type"] == "epoch"]
    assert list(epochs["step"]) == [4, 8, 12]
    assert list(epochs["top1"]) == [record["top1_per_epoch"][str(e)] for e in range(3)]


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_files_hold_every_logged_value_and_the_epoch_top1(finished):
    results, record = finished
    folder = results / "runs" / record["run_name"]
    scalars = _scalars(folder / "tensorboard")
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    iter_rows = [r for r in rows if r["type"] == "iter"]
    logged = {k for r in iter_rows for k in r} - {"type", "epoch", "iter"}
    assert {"g/loss", "q/loss", "q/kd", "H_g", "H_q", "balance_gap"} <= logged
    for key in logged:  # every loss term and diagnostic, at its global step, as float32
        expected = [((r["epoch"] * 4 + r["iter"] + 1), r[key]) for r in iter_rows]
        assert [s for s, _ in scalars[key]] == [s for s, _ in expected], key
        assert [v for _, v in scalars[key]] == pytest.approx([v for _, v in expected], rel=1e-6), key
    assert scalars["epoch/top1"] == [(4 * (e + 1), pytest.approx(record["top1_per_epoch"][str(e)], rel=1e-6))
                                     for e in range(3)]
    assert {"epoch/lr_q", "epoch/lr_g"} <= scalars.keys()
    assert scalars["summary/best_top1"] == [(12, pytest.approx(record["best_top1"], rel=1e-6))]


class CrashAtIteration(RecordingProgress):
    """Raises after the given logged iteration (its values are already in the loggers)."""

    def __init__(self, epoch: int, it: int) -> None:
        super().__init__()
        self.at = (epoch, it)

    def iteration(self, epoch, it, values) -> None:
        if (epoch, it) == self.at:
            raise RuntimeError("simulated crash")


def test_resume_keeps_the_best_student_and_the_event_files_consistent(tmp_path, monkeypatch):
    """Session 1 dies between epoch 0's checkpoint and its best_student.pt; session 2 (which repairs the best
    file from the checkpoint) dies in the middle of epoch 1 after logging it; session 3 finishes. The best
    student still evaluates to best_top1, the event files hold each step once (the cut epoch is purged) and
    the W&B run, which cannot rewind, gets each value once over the three sessions."""
    from dfqbench.core import trainer

    _offline_wandb(monkeypatch.setenv, tmp_path / "wandb-home")
    args = dict(method="gdfq", model="tiny_cifar10", bits="w8a8", protocol="quick", overrides=OVERRIDES,
                results=tmp_path / "res", device="cpu", log_every=2,
                log=["tensorboard"] + (["wandb"] if HAS_WANDB else []))
    real_save = trainer.save_best_student

    def dies(*a, **k):
        raise RuntimeError("killed before best_student.pt")

    monkeypatch.setattr(trainer, "save_best_student", dies)
    with pytest.raises(RuntimeError, match="killed before"):
        dfqbench.run(**args, progress=False)
    (folder,) = (tmp_path / "res" / "runs").iterdir()
    assert (folder / "checkpoint.pt").exists() and not (folder / "best_student.pt").exists()
    monkeypatch.setattr(trainer, "save_best_student", real_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        dfqbench.run(**args, progress=CrashAtIteration(1, 3))
    assert torch.load(folder / "best_student.pt", weights_only=True)["epoch"] == 0  # repaired on resume
    record = dfqbench.run(**args, progress=False)
    assert record["sessions"] == 2 and record["best_epoch"] == 0  # sessions that reached a checkpoint
    assert dfqbench.evaluate(dfqbench.load_student(folder, "best"), folder) == record["best_top1"]
    assert dfqbench.evaluate(dfqbench.load_student(folder, "final"), folder) == record["final_top1"]
    scalars = _scalars(folder / "tensorboard")
    assert len(list((folder / "tensorboard").glob("events.out.tfevents.*"))) == 3
    assert [s for s, _ in scalars["q/loss"]] == [2, 4, 6, 8, 10, 12]
    assert [s for s, _ in scalars["epoch/top1"]] == [4, 8, 12]
    metrics = dfqbench.load_metrics(folder)
    assert [v for _, v in scalars["q/loss"]] == pytest.approx(list(metrics[metrics["type"] == "iter"]["q/loss"]),
                                                              rel=1e-6)
    if not HAS_WANDB:
        return
    run_files = sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 3  # one per session, as `wandb sync` uploads them into the one W&B run
    history = [row for run_file in run_files for row in _wandb_history(run_file)]
    sent = [(row["iteration"], key) for row in history for key in row if key != "iteration" and key[0] != "_"]
    assert len(sent) == len(set(sent))  # nothing sent twice, although session 3 re-ran half of epoch 1
    q_loss = sorted((row["iteration"], row["q/loss"]) for row in history if "q/loss" in row)
    iters = metrics[metrics["type"] == "iter"]
    assert q_loss == list(zip(iters["step"], iters["q/loss"]))  # the resume is bit-identical on the CPU
    assert sorted((row["iteration"], row["epoch/top1"]) for row in history if "epoch/top1" in row) == \
        [(4 * (e + 1), record["top1_per_epoch"][str(e)]) for e in range(3)]


def _wandb_history(path: Path) -> list[dict[str, float]]:
    """The history rows of an offline W&B run file: LevelDB-log framing (7-byte header, 32 KiB blocks of
    chunks with a crc32, length and type) around wandb's protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, records, pending = 7, 32768, [], b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # block trailer padding
            position += left
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        else:  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.HasField("history")]


@pytest.mark.skipif(not HAS_WANDB, reason="wandb not installed (pip install 'dfqbench[wandb]')")
def test_wandb_offline_run_holds_the_logged_values(finished):
    results, record = finished
    folder = results / "runs" / record["run_name"]
    (run_file,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    history = _wandb_history(run_file)
    epochs = [h for h in history if "epoch/top1" in h]
    assert [(h["iteration"], h["epoch/top1"]) for h in epochs] == \
        [(4 * (e + 1), record["top1_per_epoch"][str(e)]) for e in range(3)]
    q_loss = [(h["iteration"], h["q/loss"]) for h in history if "q/loss" in h]
    metrics = dfqbench.load_metrics(folder)
    iters = metrics[metrics["type"] == "iter"]
    assert q_loss == list(zip(iters["step"], iters["q/loss"]))
    assert run_file.name == f"run-{(folder / 'wandb_id').read_text()}.wandb"


def test_api_errors_raise_the_one_line_message_and_write_nothing(tmp_path):
    with pytest.raises(DfqbenchError, match="unknown method 'gdqf'; did you mean 'gdfq'"):
        dfqbench.run("gdqf", "tiny_cifar10", "w4a4", results=tmp_path / "res", device="cpu")
    with pytest.raises(DfqbenchError, match="unknown logger \\(--log\\) 'tensorbord'; did you mean 'tensorboard'"):
        dfqbench.run("gdfq", "tiny_cifar10", "w4a4", results=tmp_path / "res", log="tensorbord")
    with pytest.raises(DfqbenchError, match="unknown engine"):
        dfqbench.run("gdfq", "tiny_cifar10", "w4a4", results=tmp_path / "res", engine="fast")
    with pytest.raises(DfqbenchError, match="invalid override"):
        dfqbench.run("gdfq", "tiny_cifar10", "w4a4", results=tmp_path / "res", overrides=["train.epochs"])
    with pytest.raises(DfqbenchError, match="unknown executor 'slrum'"):
        dfqbench.run_grid("smoke", tmp_path / "res", executor="slrum")
    with pytest.raises(DfqbenchError, match="--only bits=w9a9: no cell"):
        dfqbench.run_grid("smoke", tmp_path / "res", only={"bits": "w9a9"}, dry_run=True)
    assert not (tmp_path / "res").exists()


def test_run_grid_dry_run_then_run_with_a_logger(tmp_path, monkeypatch):
    """dry_run: the plan's cells as rows; a launch (local worker processes) returns the grid's runs, and
    --log travels with the grid's tasks."""
    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", str(tmp_path / "plan-cache"))
    results = tmp_path / "res"
    plan = dfqbench.run_grid("smoke", results, dry_run=True)
    assert len(plan) == 4 and set(plan["status"]) == {"pending"} and plan.attrs["to_run"] == 4
    assert sorted(zip(plan["bits"], plan["seed"])) == [("w3a3", 0), ("w3a3", 1), ("w4a4", 0), ("w4a4", 1)]
    assert not results.exists()
    frame = dfqbench.run_grid("smoke", results, only={"bits": "w3a3"}, seeds=[0], device="cpu", log="tensorboard")
    assert frame.shape[0] == 1 and frame.iloc[0]["state"] == "done", frame.T
    run_folder = Path(frame.iloc[0]["path"])
    assert list((run_folder / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((run_folder / "record.json").read_text())["best_top1"] == frame.iloc[0]["best_top1"]
    assert dfqbench.load_results(results, grid="smoke").shape[0] == 4  # the others: pending rows
    assert set(dfqbench.load_results(results, grid="smoke")["state"]) == {"done", "pending"}


def _cli_modules(modules) -> list[str]:
    """The command line's modules among ``modules``: dfqbench.cli (and anything under it), launch.cli, report.cli."""
    return sorted(m for m in modules if m == "dfqbench.cli" or m.startswith("dfqbench.cli.")
                  or (m.startswith("dfqbench.") and m.rsplit(".", 1)[-1] == "cli"))


def test_the_api_imports_nothing_from_the_command_line(tmp_path):
    """import dfqbench.api, and a grid's dry run and a grid's results through it, never import a CLI module."""
    code = ("import json, sys\n"
            "import dfqbench.api\n"
            "after_import = [m for m in sys.modules]\n"
            f"frame = dfqbench.api.run_grid('smoke', {str(tmp_path / 'res')!r}, dry_run=True)\n"
            "assert len(frame) == 4, frame\n"
            "try:\n"
            f"    dfqbench.api.load_results({str(tmp_path)!r}, grid='smoke')\n"
            "except dfqbench.DfqbenchError:\n"
            "    pass\n"
            "print(json.dumps([after_import, sorted(sys.modules)]))\n")
    env = {**os.environ, "DFQBENCH_PLAN_CACHE": "off"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S, env=env)
    assert done.returncode == 0, done.stderr
    after_import, after_use = json.loads(done.stdout.splitlines()[-1])
    assert "dfqbench.api" in after_import and "torch" not in after_import
    assert _cli_modules(after_import) == [] and _cli_modules(after_use) == []


def test_run_grid_plans_once_prints_nothing_and_raises_or_returns_failed_runs(tmp_path, monkeypatch, capfd):
    """A launch loads the grid file once and plans once (the whole grid, for the grid index, in the same pass:
    each cell decided once), prints nothing by default, and a run that fails raises DfqbenchError naming it, or
    (errors="return") comes back as a failed row; progress= gets the command line's lines."""
    from dfqbench.launch import grid as grid_module
    from dfqbench.launch import plan as plan_module
    from dfqbench.launch import plancache

    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", str(tmp_path / "plan-cache"))
    calls = {"load_grid": 0, "plan_grid": 0, "decide": 0, "plan_dry": 0}

    def counted(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counted(grid_module, "load_grid")
    counted(plan_module, "plan_grid")
    counted(plan_module, "decide")
    counted(plancache, "plan_dry")
    results = tmp_path / "res"
    # cuda:99 passes planning (the device is not part of a run) and fails the run when it starts, on any machine
    args = dict(only={"bits": "w3a3"}, seeds=[0], device="cuda:99")
    with pytest.raises(DfqbenchError, match=r"grid smoke: 1 of 1 runs failed: \S+: .*cuda:99") as raised:
        dfqbench.run_grid("smoke", results, **args)
    assert calls == {"load_grid": 1, "plan_grid": 1, "decide": 4, "plan_dry": 0}  # 1 cell launched, 4 in the grid
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    (name, reason), = raised.value.failed
    assert "cuda:99" in reason and raised.value.runs.iloc[0]["state"] == "failed"
    assert dfqbench.load_results(results, grid="smoke").shape[0] == 4  # the grid index has the whole grid

    lines: list[str] = []
    frame = dfqbench.run_grid("smoke", results, **args, retry_failed=True, errors="return", progress=lines.append)
    assert frame.shape[0] == 1 and frame.iloc[0]["state"] == "failed" and "cuda:99" in frame.iloc[0]["reason"]
    assert [n for n, _ in frame.attrs["failed"]] == [name]
    assert lines[0] == "grid smoke: 1 runs, 1 to run (1 failed)"
    assert lines[-1] == "grid smoke: 0 done, 1 failed, 0 interrupted, 0 not started, 0 left to other live tasks"
    assert capfd.readouterr() == ("", "")  # the worker too: its lines are in its worker.log
    with pytest.raises(DfqbenchError, match="unknown errors 'ignore'"):
        dfqbench.run_grid("smoke", results, errors="ignore")
