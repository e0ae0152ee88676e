"""The local executor on tiny GDFQ grids: parallel workers, failures recorded and retried only when asked,
Ctrl-C and SIGKILL mid-grid followed by a re-run that executes only what was not done, and concurrent
launchers writing into one results folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dfqbench.cli import main
from dfqbench.launch import local
from dfqbench.launch.local import default_jobs, gpu_for_slot, worker_env
from dfqbench.launch.manifest import read_manifests
from dfqbench.store import run_state
from dfqbench.launch.status import status_report
from dfqbench.launch.task import GridTask

from waiting import finish, process_exited, started_before_any_ended, wait_until

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def private_plan_cache(tmp_path, monkeypatch):
    """Launches add to the plan cache (dfqbench/launch/plancache.py): a private one per test."""
    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", str(tmp_path / "plan-cache"))
TINY = """
base:
  method: gdfq
  model: tiny_cifar10
  protocol: quick
  train.batch_size: 8
  train.warmup_epochs: 1
  train.range_update_epochs: 1
"""


def grid_file(tmp_path: Path, body: str, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(TINY + body)
    return path


def runs(results: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((results / "runs").iterdir())} if (results / "runs").is_dir() else {}


def attempts(run_dir: Path) -> list[dict]:
    return GridTask.read_attempts(run_dir)


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "record.json").read_text())


def cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dfqbench.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_failed_run_is_recorded_and_retried_only_when_asked(tmp_path, capsys):
    grid = grid_file(tmp_path, """
  train.epochs: 2
  train.iters_per_epoch: 4
axes:
  bits: [w4a4, w3a3]
presets:
  - match: {bits: w3a3}
    set: {train.q_momentum: 0.0}  # SGD raises at the start of training: Nesterov needs momentum
""")
    results = tmp_path / "results"
    args = ["run", "--grid", str(grid), "--device", "cpu", "--log-every", "2", "--results", str(results)]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "1 done, 1 failed" in captured.out and "Nesterov momentum" in captured.err
    failed = next(f for n, f in runs(results).items() if "w3a3" in n)
    error = json.loads((failed / "error.json").read_text())
    assert error["type"] == "ValueError" and "Traceback" in error["traceback"]
    assert run_state(failed).state == "failed" and not (failed / "lease.json").exists()
    text, counts = status_report(results)
    assert counts["g"]["failed"] == 1 and counts["g"]["done"] == 1 and "ValueError: Nesterov momentum" in text

    assert main(args) == 0  # the failed run is not retried, the done one is skipped
    assert "1 failed runs are not retried" in capsys.readouterr().out
    assert len(attempts(failed)) == 1
    assert main(args + ["--retry-failed"]) == 1
    assert [a["outcome"] for a in attempts(failed)] == ["failed", "failed"]


# Seed 0 is short (it must finish), seed 1 long enough to be caught mid-run.
LONG = """
  bits: w4a4
  train.iters_per_epoch: 40
axes:
  seed: [0, 1]
presets:
  - match: {seed: 0}
    set: {train.epochs: 2}
  - match: {seed: 1}
    set: {train.epochs: 12}
"""


def _ended_cleanly(run_dir: Path) -> str | None:
    """Why a killed run can never show as lost: it finished, or its lease is gone (it cleaned up)."""
    if (run_dir / "record.json").exists():
        return "the run finished before the kill"
    return None if (run_dir / "lease.json").exists() else "the run's lease is gone (it was not killed)"


def _epochs_done(run_dir: Path) -> int:
    try:
        return sum('"type": "epoch"' in line for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_killed_grid_resumes_only_what_was_not_done(tmp_path, sig):
    grid = grid_file(tmp_path, LONG)
    results = tmp_path / "results"
    args = ["run", "--grid", str(grid), "--device", "cpu", "--jobs", "1", "--results", str(results)]
    proc = cli(args, start_new_session=True)

    def first_done_second_started() -> bool:
        folders = list(runs(results).values())
        done = [f for f in folders if (f / "record.json").exists()]
        # 3 epochs in the metrics log: the checkpoint after epoch 2 (index 1) is written
        started = [f for f in folders if f not in done and (f / "checkpoint.pt").exists() and _epochs_done(f) >= 3]
        return bool(done) and bool(started)

    try:
        wait_until(first_done_second_started, "one run done and the next one past epoch 3",
                   impossible=process_exited(proc, "the grid"))
    finally:
        if proc.poll() is None:  # the whole process group, like a terminal's Ctrl-C or a kill -9 of the job
            os.killpg(proc.pid, sig)
        out = finish(proc, "the interrupted grid")
    done_before = {n for n, f in runs(results).items() if (f / "record.json").exists()}
    interrupted = [f for n, f in runs(results).items() if n not in done_before]
    assert len(done_before) == 1 and len(interrupted) == 1, out
    cut = interrupted[0]
    if sig == signal.SIGINT:
        assert proc.returncode == 130, out
        assert run_state(cut).state == "pending" and not (cut / "lease.json").exists()
        assert not (cut / "error.json").exists() and attempts(cut)[0]["outcome"] == "interrupted"
    else:
        # its lease names a dead pid on this host (the worker, orphaned by the kill, may take a moment to exit)
        wait_until(lambda: run_state(cut).state == "lost", "the killed run to show as lost",
                   impossible=lambda: _ended_cleanly(cut), diagnose=lambda: str(run_state(cut)))
    checkpoint_epochs = _epochs_done(cut)

    again = cli(args)
    out = finish(again, "the grid run again")
    assert again.returncode == 0, out
    folders = runs(results)
    assert len(folders) == 2 and all((f / "record.json").exists() for f in folders.values())
    for name in done_before:  # not executed again
        assert len(attempts(folders[name])) == 1 and record(folders[name])["sessions"] == 1
    resumed = attempts(cut)[-1]
    assert len(attempts(cut)) == 2 and resumed["resumed_after_epoch"] is not None
    # it resumed after its last checkpointed epoch: nothing before it was recomputed (at most the epoch whose
    # metrics were written just before the kill and whose checkpoint was not)
    assert resumed["resumed_after_epoch"] >= checkpoint_epochs - 2 >= 1
    assert record(cut)["sessions"] == 2
    epochs = [json.loads(line)["epoch"] for line in (cut / "metrics.jsonl").read_text().splitlines()
              if '"type": "epoch"' in line]
    assert epochs == list(range(12))


def test_concurrent_launchers_run_each_run_once_and_leave_every_record_intact(tmp_path, capsys):
    """Two launchers × 2 workers on the smoke grid's 4 runs in one results folder, at once: every run is
    executed exactly once (leases), every record is whole; a third launch afterwards runs nothing."""
    results = tmp_path / "results"
    args = ["run", "--grid", "smoke", "--device", "cpu", "--jobs", "2", "--results", str(results)]
    procs = [cli(args) for _ in range(2)]
    outputs = [finish(p, "a launcher") for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    folders = runs(results)
    assert len(folders) == 4
    for name, folder in folders.items():
        rec = record(folder)
        spec = json.loads((folder / "spec.json").read_text())
        assert name.endswith(rec["run_id"]) and spec["run_id"] == rec["run_id"] and rec["spec"] == spec
        assert [a["outcome"] for a in attempts(folder)] == ["done"] and rec["sessions"] == 1
        assert [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert not (folder / "lease.json").exists() and (folder / "worker.log").exists()
    # Each launcher that found runs to do wrote a manifest of them. Which runs each one planned depends on how
    # far the other had got when it planned (on a loaded machine the second may start after the first finished
    # everything, and then writes none): together they cover the 4 runs, each executed once (above).
    manifests = read_manifests(results, "smoke")
    assert 1 <= len(manifests) <= 2
    assert all(m["executor"] == "local" and "commit" in m["git"] for m in manifests)
    assert {r["run_name"] for m in manifests for r in m["runs"]} == set(folders)
    assert main(args) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert all(len(attempts(f)) == 1 for f in folders.values())
    text, counts = status_report(results)
    assert counts["smoke"]["done"] == 4 and sum(counts["smoke"].values()) == 4


def test_worker_environment_per_slot(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = worker_env(slot=3, jobs=4, device="auto", gpus=["0", "5"], plain=True)
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env["DFQBENCH_WORKER_PLAIN"] == "1"
    env = worker_env(slot=0, jobs=2, device="cpu", gpus=[], plain=False)
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2)) and "CUDA_VISIBLE_DEVICES" not in env or \
        env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


def test_runs_per_gpu_slots_share_gpus_in_order(monkeypatch):
    """--runs-per-gpu N: slots 0..N-1 on the first GPU, N..2N-1 on the next, wrapping; N=1 is slot mod #GPUs."""
    gpus = ["0", "5"]
    assert [gpu_for_slot(i, gpus, 2) for i in range(6)] == ["0", "0", "5", "5", "0", "0"]
    assert [gpu_for_slot(i, gpus, 1) for i in range(5)] == [gpus[i % 2] for i in range(5)]
    assert gpu_for_slot(3, [], 2) is None
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = os.cpu_count() or 1
    for slot, gpu in enumerate(["0", "0", "5", "5"]):
        env = worker_env(slot, jobs=4, device="cuda", gpus=gpus, plain=True, runs_per_gpu=2)
        assert env["CUDA_VISIBLE_DEVICES"] == gpu and env["OMP_NUM_THREADS"] == str(max(1, cores // 4))
    one = worker_env(0, jobs=1, device="auto", gpus=["3"], plain=True)  # one GPU worker: torch's own default
    assert one["CUDA_VISIBLE_DEVICES"] == "3" and one.get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")
    cpu = worker_env(1, jobs=2, device="cpu", gpus=gpus, plain=False, runs_per_gpu=2, extra={"X_EXTRA": "1"})
    assert cpu.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES") and cpu["X_EXTRA"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the user's setting wins
    assert worker_env(0, jobs=4, device="cuda", gpus=gpus, plain=True, runs_per_gpu=2)["OMP_NUM_THREADS"] == "7"

    monkeypatch.setattr(local, "visible_gpus", lambda: gpus)
    assert default_jobs("auto", 3) == 6 and default_jobs("cuda") == 2 and default_jobs("cpu", 3) == 1
    monkeypatch.setattr(local, "visible_gpus", lambda: [])
    assert default_jobs("auto", 3) == 1  # no GPUs: --runs-per-gpu changes nothing, --jobs sets the processes


def test_runs_per_gpu_workers_run_at_once_with_the_same_results(tmp_path, capsys):
    """--runs-per-gpu 2 --jobs 2 on CPU: the two runs train at the same time, each in its own worker process,
    and their records hold the same numbers as the same runs made one after the other."""
    packed, alone = tmp_path / "packed", tmp_path / "alone"
    base = ["run", "--grid", "smoke", "--device", "cpu", "--only", "bits=w4a4"]
    procs = [cli(base + ["--results", str(packed), "--runs-per-gpu", "2", "--jobs", "2"]),
             cli(base + ["--results", str(alone), "--jobs", "1"])]
    outputs = [finish(p, "a launcher") for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert "2 done, 0 failed" in outputs[0] and "(slot 1)" in outputs[0]
    assert started_before_any_ended(outputs[0], 2), outputs[0]  # both workers at once, however fast each one is
    folders = runs(packed)
    assert len(folders) == 2 and folders.keys() == runs(alone).keys()
    pids = [a["pid"] for f in folders.values() for a in attempts(f)]
    assert len(pids) == 2 and pids[0] != pids[1]  # one worker process per run
    timing = {"wall_time_s", "finished_at"}
    for name, folder in folders.items():
        a, b = record(folder), record(runs(alone)[name])
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    manifest = read_manifests(packed, "smoke")[0]
    assert manifest["jobs"] == 2 and manifest["runs_per_gpu"] == 2
    assert main(base + ["--results", str(packed), "--runs-per-gpu", "0"]) == 2
    assert "invalid --runs-per-gpu 0: must be >= 1" in capsys.readouterr().err
