"""The Slurm executor against a real Slurm cluster (slurm/start-cluster.sh starts a private one; CI does).

Skipped, with the reason, when no cluster answers here, unless DFQBENCH_REQUIRE_SLURM=1 (CI), which turns
the skip into a failure. Every run is a tiny GDFQ run (or one of the example plugin's GDFQ variant) on CPU;
the results folder is the test's tmp_path, which the single-node cluster's jobs can write to.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from dfqbench.cli import main
from dfqbench.launch.manifest import read_manifests
from dfqbench.store import run_state
from dfqbench.launch.status import status_report
from dfqbench.launch.task import GridTask

from conftest import require_example_plugin

REQUIRE_ENV = "DFQBENCH_REQUIRE_SLURM"


@pytest.fixture(autouse=True)
def private_plan_cache(tmp_path, monkeypatch):
    """Launches add to the plan cache (dfqbench/launch/plancache.py): a private one per test."""
    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", str(tmp_path / "plan-cache"))


def _cluster_problem() -> str | None:
    """Why no Slurm cluster can run jobs here, or None when one can."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no sbatch/sinfo on the PATH (start one with slurm/start-cluster.sh)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed: {exc}"
    if out.returncode != 0:
        said = (out.stderr or out.stdout).strip().splitlines() or [f"exit status {out.returncode}"]
        return f"sinfo failed: {said[-1]} (is SLURM_CONF set?)"
    usable = [line for line in out.stdout.splitlines() if line.split()[-1] in ("idle", "mixed", "allocated")]
    return None if usable else f"no node is up: sinfo says {out.stdout.strip()!r}"


@pytest.fixture(scope="module")
def partition() -> str:
    """The cluster's default partition (skip or fail when there is no cluster)."""
    problem = _cluster_problem()
    if problem is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but Slurm is not usable: {problem}")
        pytest.skip(f"no Slurm cluster: {problem}")
    names = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout.split()
    return next((n.rstrip("*") for n in names if n.endswith("*")), names[0])


def profiles_file(tmp_path: Path, partition: str, **extra) -> Path:
    values = {"partition": partition, "cpus": 1, "time_min": 15, "array_parallelism": 2, "signal_delay_s": 30,
              **extra}
    path = tmp_path / "profiles.yaml"
    path.write_text(json.dumps({"profiles": {"t": values}, "select": [{"profile": "t"}]}))  # JSON is YAML
    return path


def runs(results: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((results / "runs").iterdir())} if (results / "runs").is_dir() else {}


def wait(predicate, timeout: float, what: str, diagnose=lambda: "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnose()}")


def squeue() -> str:
    return subprocess.run(["squeue", "-o", "%i %T %r"], capture_output=True, text=True).stdout


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    fields = dict(part.split("=", 1) for part in out.split() if "=" in part)
    return f"{fields.get('JobState')}/{fields.get('Reason')}"


def epochs_logged(run_dir: Path) -> int:
    try:
        return sum('"type": "epoch"' in line for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def start_now(job_id: str) -> None:
    """Start a requeued job now: Slurm holds a requeued job back ~2 min (its BeginTime); the wait proves
    nothing here, so the test moves the start time (an ordinary `scontrol update`)."""
    wait(lambda: job_state(job_id).startswith("PENDING"), 60, f"job {job_id} to be requeued", squeue)
    time.sleep(2)  # slurmd kills a job started in the second its old credential was revoked ("credential revoked")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


SMOKE_WITH_PLUGIN = """
name: smoke_plugin
base:
  model: tiny_cifar10
  seed: 0
  protocol: quick
  train.epochs: 3
  train.iters_per_epoch: 4
  train.batch_size: 8
  train.warmup_epochs: 1
  train.range_update_epochs: 1
axes:
  method: [gdfq, gdfq_ie]
  bits: [w4a4, w3a3]
"""


def test_smoke_grid_through_real_slurm_job_arrays(tmp_path, partition, capsys):
    """A smoke-sized grid of 4 runs, half of them the example plugin's method (an entry point of an installed
    package: each array task registers it in its own process), as job arrays cut at 3 tasks (2 arrays, 2
    tasks at once): all done with whole records, each executed once, the git state in the manifest,
    `dfqbench status` reading it all back and the report with the plugin's column."""
    require_example_plugin()
    grid = tmp_path / "smoke_plugin.yaml"
    grid.write_text(SMOKE_WITH_PLUGIN)
    results = tmp_path / "results"
    profiles = profiles_file(tmp_path, partition, max_array_size=3)
    code = main(["run", "--grid", str(grid), "--executor", "slurm", "--profiles", str(profiles), "--device", "cpu",
                 "--results", str(results)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "submitted 3 runs as Slurm job" in out and "submitted 1 runs as Slurm job" in out
    manifest = read_manifests(results, "smoke_plugin")[0]
    assert manifest["executor"] == "slurm" and len(manifest["runs"]) == 4
    assert manifest["git"]["commit"] and isinstance(manifest["git"]["dirty"], bool)
    arrays = {r["job_id"].split("_")[0] for r in manifest["runs"]}
    assert len(arrays) == 2 and all("_" in r["job_id"] for r in manifest["runs"][:3])

    def all_done() -> bool:
        return status_report(results, "smoke_plugin")[1]["smoke_plugin"]["done"] == 4

    wait(all_done, 300, "the 4 smoke runs to finish",
         lambda: squeue() + status_report(results, "smoke_plugin", True)[0])
    by_job = {r["run_name"]: r["job_id"] for r in manifest["runs"]}
    methods = []
    for name, folder in runs(results).items():
        record = json.loads((folder / "record.json").read_text())
        assert record["run_id"] == json.loads((folder / "spec.json").read_text())["run_id"] and record["sessions"] == 1
        methods.append(record["spec"]["method"])
        # the record is written before the task ends its attempt and then releases the lease
        wait(lambda: not (folder / "lease.json").exists(), 30, "the attempt to end and its lease to go")
        attempts = GridTask.read_attempts(folder)
        assert [(a["executor"], a["job_id"], a["outcome"]) for a in attempts] == [("slurm", by_job[name], "done")]
        assert not (folder / "error.json").exists()
    assert sorted(methods) == ["gdfq", "gdfq", "gdfq_ie", "gdfq_ie"]

    assert main(["status", "--grid", "smoke_plugin", "--results", str(results)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["grid", "runs", "pending", "running", "done", "failed", "lost"]
    assert table[1].split() == ["smoke_plugin", "4", "0", "0", "4", "0", "0"]
    assert main(["report", "--results", str(results), "--table", "table1"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| dataset |"))
    assert "| gdfq_ie |" in header
    # submitting again submits nothing
    assert main(["run", "--grid", str(grid), "--executor", "slurm", "--profiles", str(profiles), "--device", "cpu",
                 "--results", str(results)]) == 0
    assert "nothing to run" in capsys.readouterr().out and len(read_manifests(results, "smoke_plugin")) == 1


LONG = """
base:
  method: gdfq
  model: tiny_cifar10
  bits: w4a4
  protocol: quick
  train.epochs: 40
  train.iters_per_epoch: 40
  train.batch_size: 8
  train.warmup_epochs: 1
  train.range_update_epochs: 1
"""


def test_requeued_job_resumes_from_its_checkpoint(tmp_path, partition, capsys):
    """One run interrupted twice mid-run: first preempted (USR2, as Slurm signals before a time limit or a
    preemption: submitit checkpoints and requeues), then requeued by `scontrol requeue` (SIGTERM, then SIGKILL:
    no chance to clean up). Each time the job restarts in place and resumes after its last epoch checkpoint;
    the finished run has every epoch exactly once and three sessions. While the job waits after the hard
    requeue, `status` shows the run lost (dead lease, no result), never running."""
    grid = tmp_path / "long.yaml"
    grid.write_text(LONG)
    results = tmp_path / "results"
    profiles = profiles_file(tmp_path, partition)
    assert main(["run", "--grid", str(grid), "--executor", "slurm", "--profiles", str(profiles), "--device", "cpu",
                 "--results", str(results)]) == 0
    assert "submitted 1 runs as Slurm job" in capsys.readouterr().out
    job = read_manifests(results, "long")[0]["runs"][0]["job_id"]
    run_dir = lambda: next(iter(runs(results).values()))  # noqa: E731
    attempts = lambda: GridTask.read_attempts(run_dir())  # noqa: E731
    diagnose = lambda: squeue() + (run_dir().joinpath("attempts.json").read_text() if runs(results) else "")  # noqa: E731

    # 1. preemption / time limit: USR2 to the running task once 3 epochs are logged (checkpoint after epoch 2)
    wait(lambda: runs(results) and epochs_logged(run_dir()) >= 3, 180, "3 epochs", diagnose)
    assert run_state(run_dir()).state == "running"
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait(lambda: attempts()[0].get("outcome") == "preempted", 60, "the preempted attempt to end", diagnose)
    state = run_state(run_dir())
    assert state.state == "pending" and state.partial and not (run_dir() / "error.json").exists()
    first_cut = epochs_logged(run_dir())
    start_now(job)

    # 2. hard requeue (SIGKILL after KillWait): the task cannot clean up; its lease is left behind
    wait(lambda: len(attempts()) == 2 and epochs_logged(run_dir()) >= first_cut + 3, 180,
         "the resumed run to log 3 more epochs", diagnose)
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait(lambda: run_state(run_dir()).state == "lost", 60, "the killed run to show as lost", diagnose)
    assert "lost" in status_report(results, "long")[0] and (run_dir() / "lease.json").exists()
    assert not (run_dir() / "record.json").exists()
    second_cut = epochs_logged(run_dir())
    start_now(job)

    wait(lambda: (run_dir() / "record.json").exists(), 300, "the run to finish", diagnose)
    wait(lambda: not (run_dir() / "lease.json").exists(), 30, "the lease to be released", diagnose)
    record = json.loads((run_dir() / "record.json").read_text())
    assert record["sessions"] == 3
    history = attempts()
    assert [a["job_id"] for a in history] == [job] * 3
    assert [a.get("outcome") for a in history] == ["preempted", None, "done"]  # the killed one never ended
    resumed = [a["resumed_after_epoch"] for a in history]
    assert resumed[0] is None and first_cut - 2 <= resumed[1] and second_cut - 2 <= resumed[2]
    assert resumed[1] >= 1 and resumed[2] > resumed[1]
    epochs = [json.loads(line)["epoch"] for line in (run_dir() / "metrics.jsonl").read_text().splitlines()
              if '"type": "epoch"' in line]
    assert epochs == list(range(40))
    assert main(["status", "--grid", "long", "--results", str(results)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["long", "1", "0", "0", "1", "0", "0"]


def test_runs_per_gpu_trains_two_runs_at_once_in_one_array_task(tmp_path, partition, capsys):
    """A profile with runs_per_gpu: 2 (gpus: 0, CPU): smoke's 2 w4a4 runs go into one array task, which trains
    them at the same time, each in its own worker process; both finish with whole records, their attempts
    name the task's job, and the manifest has one entry per run."""
    results = tmp_path / "results"
    profiles = profiles_file(tmp_path, partition, gpus=0, cpus=2, runs_per_gpu=2)
    assert main(["run", "--grid", "smoke", "--only", "bits=w4a4", "--executor", "slurm", "--profiles", str(profiles),
                 "--device", "cpu", "--results", str(results)]) == 0
    assert "submitted 2 runs as Slurm job" in capsys.readouterr().out
    manifest = read_manifests(results, "smoke")[0]
    assert len(manifest["runs"]) == 2 and len({r["job_id"] for r in manifest["runs"]}) == 1
    job = manifest["runs"][0]["job_id"]

    def both_done() -> bool:
        return status_report(results, "smoke")[1]["smoke"]["done"] == 2

    wait(both_done, 300, "the 2 packed runs to finish", lambda: squeue() + status_report(results, "smoke", True)[0])
    spans = []
    for folder in runs(results).values():
        wait(lambda: not (folder / "lease.json").exists(), 30, "the attempt to end and its lease to go")
        record = json.loads((folder / "record.json").read_text())
        assert record["run_id"] == json.loads((folder / "spec.json").read_text())["run_id"] and record["sessions"] == 1
        attempts = GridTask.read_attempts(folder)
        assert [(a["executor"], a["job_id"], a["outcome"]) for a in attempts] == [("slurm", job, "done")]
        assert (folder / "worker.log").exists()
        spans += [(a["started_at"], a["ended_at"], a["pid"]) for a in attempts]
    assert len(spans) == 2 and spans[0][2] != spans[1][2]
    assert max(s[0] for s in spans) < min(s[1] for s in spans), spans  # trained at the same time


PACKED = """
base:
  method: gdfq
  model: tiny_cifar10
  bits: w4a4
  protocol: quick
  train.epochs: 10
  train.iters_per_epoch: 20
  train.batch_size: 8
  train.warmup_epochs: 1
  train.range_update_epochs: 1
axes:
  seed: [0, 1]
"""


def test_preempted_task_of_packed_runs_requeues_and_both_resume(tmp_path, partition, capsys):
    """USR2 (preemption / time limit) to an array task training 2 runs: its workers ignore the signal, the task
    stops them (each ends its attempt as interrupted and releases its lease) and requeues itself with both runs;
    the requeued task resumes each from its last epoch checkpoint, every epoch logged exactly once."""
    grid = tmp_path / "packed.yaml"
    grid.write_text(PACKED)
    results = tmp_path / "results"
    profiles = profiles_file(tmp_path, partition, gpus=0, cpus=2, runs_per_gpu=2)
    assert main(["run", "--grid", str(grid), "--executor", "slurm", "--profiles", str(profiles), "--device", "cpu",
                 "--results", str(results)]) == 0
    assert "submitted 2 runs as Slurm job" in capsys.readouterr().out
    job = read_manifests(results, "packed")[0]["runs"][0]["job_id"]
    folders = lambda: list(runs(results).values())  # noqa: E731
    diagnose = lambda: squeue() + "".join((f / "attempts.json").read_text() for f in folders()  # noqa: E731
                                          if (f / "attempts.json").exists())

    wait(lambda: len(folders()) == 2 and all(epochs_logged(f) >= 3 for f in folders()), 180, "3 epochs each", diagnose)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait(lambda: all(GridTask.read_attempts(f)[0].get("outcome") == "interrupted" for f in folders()), 60,
         "both attempts to end as interrupted", diagnose)
    for folder in folders():
        state = run_state(folder)
        assert state.state == "pending" and state.partial and not (folder / "error.json").exists()
    start_now(job)

    wait(lambda: all((f / "record.json").exists() for f in folders()), 300, "both runs to finish", diagnose)
    for folder in folders():
        wait(lambda: not (folder / "lease.json").exists(), 30, "the lease to be released", diagnose)
        assert json.loads((folder / "record.json").read_text())["sessions"] == 2
        history = GridTask.read_attempts(folder)
        assert [(a["job_id"], a["outcome"]) for a in history] == [(job, "interrupted"), (job, "done")]
        assert history[1]["resumed_after_epoch"] >= 1
        epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()
                  if '"type": "epoch"' in line]
        assert epochs == list(range(10))
