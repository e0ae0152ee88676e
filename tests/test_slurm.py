"""The Slurm executor against a real Slurm cluster (slurm/start-cluster.sh starts a private one; CI does).

Skipped, with the reason, when no cluster answers here, unless DFQBENCH_REQUIRE_SLURM=1 (CI), which turns
the skip into a failure. Every run is a tiny GDFQ run (or one of the example plugin's GDFQ variant) on CPU;
the results folder is the test's tmp_path, which the single-node cluster's jobs can write to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dfqbench.cli import main
from dfqbench.launch.manifest import read_manifests
from dfqbench.store import run_state
from dfqbench.store.lease import describe_lease, lease_alive, pid_alive, read_lease
from dfqbench.launch.status import status_report
from dfqbench.launch.task import GridTask

from conftest import require_example_plugin
from waiting import started_before_any_ended, wait_until

REQUIRE_ENV = "DFQBENCH_REQUIRE_SLURM"


@pytest.fixture(autouse=True)
def private_plan_cache(tmp_path, monkeypatch):
    """Launches add to the plan cache (dfqbench/launch/plancache.py): a private one per test."""
    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", str(tmp_path / "plan-cache"))


@pytest.fixture(autouse=True)
def cancel_jobs_at_the_end(tmp_path):
    """A test that fails half-way leaves no job of its own behind (held, or training on) in the cluster."""
    yield
    jobs = {r["job_id"].split("_")[0] for m in read_manifests(tmp_path / "results") for r in m.get("runs", [])
            if r.get("job_id")}
    if jobs and shutil.which("scancel"):
        try:
            subprocess.run(["scancel", *sorted(jobs)], capture_output=True, timeout=120)
        except subprocess.TimeoutExpired:
            pass  # clean-up only: the outcome of the test is already decided


def _cluster_problem() -> str | None:
    """Why no Slurm cluster can run jobs here, or None when one can."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no sbatch/sinfo on the PATH (start one with slurm/start-cluster.sh)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed: {exc}"
    if out.returncode != 0:
        said = (out.stderr or out.stdout).strip().splitlines() or [f"exit status {out.returncode}"]
        return f"sinfo failed: {said[-1]} (is SLURM_CONF set?)"
    usable = [line for line in out.stdout.splitlines()  # "completing": up, ending a job
              if line.split()[-1] in ("idle", "mixed", "allocated", "completing")]
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


def grid_stuck(results: Path, grid: str, jobs) -> str | None:
    """Why a grid's runs can no longer all finish: one failed (never retried here), or its jobs all ended."""
    ended = jobs_ended(*jobs)  # first: runs are recorded before their job ends
    failed = status_report(results, grid)[1][grid]["failed"]
    return f"{failed} run(s) failed" if failed else ended


def wait_lease_released(run_dir: Path, diagnose=lambda: "") -> None:
    """A finished task releases its lease after its record and attempt; wait for that, unless it died first."""
    wait_until(lambda: not (run_dir / "lease.json").exists(), f"the lease of {run_dir.name} to be released",
               impossible=lambda: lease_left_behind(run_dir), diagnose=diagnose)


def squeue() -> str:
    return subprocess.run(["squeue", "-o", "%i %T %r"], capture_output=True, text=True).stdout


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    fields = dict(part.split("=", 1) for part in out.split() if "=" in part)
    return f"{fields.get('JobState')}/{fields.get('Reason')}"


# Job states after which Slurm starts a job (or array task) no more, unless someone requeues it by hand.
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def jobs_ended(*job_ids: str) -> str | None:
    """Why the runs of these jobs can no longer change: every job (every array task) has ended. None while any
    is pending, running or completing, and when Slurm does not answer right now (a busy slurmctld)."""
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i %T"],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:  # a job purged from slurmctld (MinJobAge after its end) is "invalid"
        return f"Slurm no longer knows job {', '.join(job_ids)}" if "Invalid job id" in out.stderr else None
    states = [line.split()[1] for line in out.stdout.splitlines() if len(line.split()) == 2]
    if states and all(state in ENDED for state in states):
        return f"job {', '.join(job_ids)} ended ({', '.join(sorted(set(states)))})"
    return None


def lease_left_behind(run_dir: Path) -> str | None:
    """Why a run's lease can no longer go: its task died without releasing it (the run shows as lost)."""
    lease = read_lease(run_dir)
    if lease is None or lease_alive(lease):
        return None
    return f"the task of {run_dir.name} died without releasing its lease ({describe_lease(lease)})"


def run_ended(run_dir: Path) -> str | None:
    """Why a run can no longer be trained further: it finished or failed."""
    if (run_dir / "record.json").exists():
        return f"{run_dir.name} finished"
    if (run_dir / "error.json").exists():
        return f"{run_dir.name} failed: {run_state(run_dir).reason}"
    return None


def attempt_ended(run_dir: Path, index: int, expected: str | None = None) -> str | None:
    """Why attempt ``index`` of a run will not end as ``expected`` (None: will not go on): it ended otherwise."""
    attempts = GridTask.read_attempts(run_dir)
    outcome = attempts[index].get("outcome") if len(attempts) > index else None
    if outcome is None or outcome == expected:
        return None
    return f"attempt {index + 1} of {run_dir.name} ended as {outcome!r} ({attempts[index].get('reason')})"


def epochs_logged(run_dir: Path) -> int:
    try:
        return sum('"type": "epoch"' in line for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def start_now(job_id: str, restarted, held: bool = False) -> None:
    """Start a requeued job now: Slurm holds a requeued job back ~2 min (its BeginTime); the wait proves
    nothing here, so the test moves the start time (an ordinary `scontrol update`) and, for a job requeued
    held, releases it. Nothing to do when ``restarted()`` says the job already started again by itself."""
    how = wait_until(lambda: "restarted" if restarted() else job_state(job_id).startswith("PENDING"),
                     f"job {job_id} to be requeued", diagnose=squeue)
    if how == "restarted":
        return
    time.sleep(2)  # slurmd kills a job started in the second its old credential was revoked ("credential revoked")
    update = subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True, text=True)
    if update.returncode != 0 and (held or job_state(job_id).startswith("PENDING")):  # else: it started meanwhile
        raise AssertionError(f"scontrol update JobId={job_id} StartTime=now: {update.stderr.strip()}")
    if held:
        subprocess.run(["scontrol", "release", job_id], check=True)


def kill_task(run_dir: Path) -> None:
    """SIGKILL the Slurm task training a run, as Slurm does KillWait seconds after the SIGTERM of a requeue or a
    cancel (submitit ignores SIGTERM) or as the kernel's OOM killer does: no chance to end its attempt or
    release its lease. The task is the process holding the run's lease, on this host (single-node cluster)."""
    lease = read_lease(run_dir)
    assert lease is not None and lease.get("host") == socket.gethostname(), (
        f"{run_dir.name}: lease {lease} is not held on this host (a single-node cluster, slurm/start-cluster.sh)")
    assert pid_alive(int(lease["pid"]), lease.get("pid_started")), f"{run_dir.name}: its task is not running: {lease}"
    os.kill(int(lease["pid"]), signal.SIGKILL)


def requeue_held(job_id: str) -> None:
    """`scontrol requeuehold`: the job goes back to pending and stays there until released, so the test can look
    at its runs while it waits for as long as it takes. Retried while Slurm is still ending the killed job."""
    said: list[str] = []

    def requeued() -> bool:
        done = subprocess.run(["scontrol", "requeuehold", job_id], capture_output=True, text=True)
        said[:] = [done.stderr.strip()]
        return done.returncode == 0

    wait_until(requeued, f"`scontrol requeuehold {job_id}` to be accepted", poll_s=1,
               diagnose=lambda: f"scontrol said: {said[0] if said else ''}\n{squeue()}")


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

    wait_until(all_done, "the 4 smoke runs to finish", impossible=lambda: grid_stuck(results, "smoke_plugin", arrays),
               diagnose=lambda: squeue() + status_report(results, "smoke_plugin", True)[0])
    by_job = {r["run_name"]: r["job_id"] for r in manifest["runs"]}
    methods = []
    for name, folder in runs(results).items():
        record = json.loads((folder / "record.json").read_text())
        assert record["run_id"] == json.loads((folder / "spec.json").read_text())["run_id"] and record["sessions"] == 1
        methods.append(record["spec"]["method"])
        # the record is written before the task ends its attempt and then releases the lease
        wait_lease_released(folder)
        attempts = GridTask.read_attempts(folder)
        assert [(a["executor"], a["job_id"], a["outcome"]) for a in attempts] == [("slurm", by_job[name], "done")]
        assert not (folder / "error.json").exists()
    assert sorted(methods) == ["gdfq", "gdfq", "gdfq_ie", "gdfq_ie"]

    assert main(["status", "--grid", "smoke_plugin", "--results", str(results)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["grid", "runs", "pending", "running", "done", "failed", "lost", "stale"]
    assert table[1].split() == ["smoke_plugin", "4", "0", "0", "4", "0", "0", "0"]
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
    preemption: submitit checkpoints and requeues), then killed hard and requeued (SIGKILL, as Slurm sends
    KillWait seconds after the SIGTERM of `scontrol requeue`, which submitit ignores: no chance to clean up).
    Each time the job restarts in place and resumes after its last epoch checkpoint; the finished run has every
    epoch exactly once and three sessions. While the job waits after the hard kill, `status` shows the run lost
    (dead lease, no result), never running.

    The test sends that SIGKILL itself and requeues the job held (`scontrol requeuehold`): through `scontrol
    requeue` the task trains on until KillWait ends and may finish the run first, and the requeued job would
    start again by itself ~2 min later, so that "lost" would be a state the test has to catch in time. Held,
    the job waits until the test has seen the run lost and releases it."""
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
    lease = lambda: run_dir() / "lease.json"  # noqa: E731

    # 1. preemption / time limit: USR2 to the running task once 3 epochs are logged (checkpoint after epoch 2)
    wait_until(lambda: runs(results) and epochs_logged(run_dir()) >= 3, "3 epochs",
               impossible=lambda: jobs_ended(job) or (runs(results) and run_ended(run_dir())), diagnose=diagnose)
    assert run_state(run_dir()).state == "running"
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_until(lambda: attempts()[0].get("outcome") == "preempted" and not lease().exists(),
               "the preempted attempt to end and release its lease",
               impossible=lambda: attempt_ended(run_dir(), 0, "preempted") or lease_left_behind(run_dir()),
               diagnose=diagnose)
    state = run_state(run_dir())
    assert state.state == "pending" and state.partial and not (run_dir() / "error.json").exists()
    first_cut = epochs_logged(run_dir())
    start_now(job, restarted=lambda: len(attempts()) > 1)

    # 2. hard kill: the task cannot clean up; its lease is left behind and the held job waits
    wait_until(lambda: len(attempts()) == 2 and epochs_logged(run_dir()) >= first_cut + 3,
               "the resumed run to log 3 more epochs",
               impossible=lambda: attempt_ended(run_dir(), 1) or lease_left_behind(run_dir()) or jobs_ended(job),
               diagnose=diagnose)
    kill_task(run_dir())
    requeue_held(job)
    wait_until(lambda: run_state(run_dir()).state == "lost", "the killed run to show as lost",
               impossible=lambda: run_ended(run_dir()) or (None if lease().exists() else "its lease is gone"),
               diagnose=diagnose)
    assert "lost" in status_report(results, "long")[0] and lease().exists()
    assert not (run_dir() / "record.json").exists()
    second_cut = epochs_logged(run_dir())
    start_now(job, restarted=lambda: len(attempts()) > 2, held=True)

    wait_until(lambda: (run_dir() / "record.json").exists(), "the run to finish",
               impossible=lambda: (jobs_ended(job) or run_ended(run_dir())
                                   or len(attempts()) > 2 and lease_left_behind(run_dir())),
               diagnose=diagnose)
    wait_lease_released(run_dir(), diagnose)
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
    assert capsys.readouterr().out.splitlines()[1].split() == ["long", "1", "0", "0", "1", "0", "0", "0"]


def test_runs_per_gpu_trains_two_runs_at_once_in_one_array_task(tmp_path, partition, capsys):
    """A profile with runs_per_gpu: 2 (gpus: 0, CPU): smoke's 2 w4a4 runs go into one array task, which trains
    them at the same time, each in its own worker process (the task's log: both started before either ended);
    both finish with whole records, their attempts name the task's job, and the manifest has one entry per run."""
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

    wait_until(both_done, "the 2 packed runs to finish", impossible=lambda: grid_stuck(results, "smoke", [job]),
               diagnose=lambda: squeue() + status_report(results, "smoke", True)[0])
    pids = []
    for folder in runs(results).values():
        wait_lease_released(folder)
        record = json.loads((folder / "record.json").read_text())
        assert record["run_id"] == json.loads((folder / "spec.json").read_text())["run_id"] and record["sessions"] == 1
        attempts = GridTask.read_attempts(folder)
        assert [(a["executor"], a["job_id"], a["outcome"]) for a in attempts] == [("slurm", job, "done")]
        assert (folder / "worker.log").exists()
        pids += [a["pid"] for a in attempts]
    assert len(pids) == 2 and pids[0] != pids[1]
    log = "".join(path.read_text() for path in Path(manifest["runs"][0]["log"]).glob(f"{job}_*log.out"))
    assert started_before_any_ended(log, 2), log  # trained at the same time, however fast each one was


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

    def any_of(why) -> str | None:
        return next((reason for reason in map(why, folders()) if reason), None)

    wait_until(lambda: len(folders()) == 2 and all(epochs_logged(f) >= 3 for f in folders()), "3 epochs each",
               impossible=lambda: jobs_ended(job) or any_of(run_ended), diagnose=diagnose)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_until(lambda: all(GridTask.read_attempts(f)[0].get("outcome") == "interrupted"
                           and not (f / "lease.json").exists() for f in folders()),
               "both attempts to end as interrupted and release their leases",
               impossible=lambda: any_of(lambda f: attempt_ended(f, 0, "interrupted") or lease_left_behind(f)),
               diagnose=diagnose)
    for folder in folders():
        state = run_state(folder)
        assert state.state == "pending" and state.partial and not (folder / "error.json").exists()
    start_now(job, restarted=lambda: any(len(GridTask.read_attempts(f)) > 1 for f in folders()))

    wait_until(lambda: all((f / "record.json").exists() for f in folders()), "both runs to finish",
               impossible=lambda: (jobs_ended(job) or any_of(lambda f: (f / "error.json").exists() and run_ended(f))
                                   or any_of(lambda f: len(GridTask.read_attempts(f)) > 1 and lease_left_behind(f))),
               diagnose=diagnose)
    for folder in folders():
        wait_lease_released(folder, diagnose)
        assert json.loads((folder / "record.json").read_text())["sessions"] == 2
        history = GridTask.read_attempts(folder)
        assert [(a["job_id"], a["outcome"]) for a in history] == [(job, "interrupted"), (job, "done")]
        assert history[1]["resumed_after_epoch"] >= 1
        epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()
                  if '"type": "epoch"' in line]
        assert epochs == list(range(10))
