"""One grid run as a task: the same code runs it in a local worker process and in a Slurm array task.

A task takes the run's lease (skipping a run that is done, leased by a live task, or failed unless
retrying), appends an attempt to ``attempts.json`` (job id, host, the checkpoint epoch it resumes after),
calls :func:`dfqbench.runner.run` (which skips done runs, resumes from ``checkpoint.pt`` and writes
``error.json`` with the traceback when training raises, e.g. an exception or CUDA out-of-memory; a diverged
run is recorded as finished, not raised), and records a failure that happens before training (``prepare``
errors, e.g. a weights file missing on the node) in the run folder too. The Slurm flavour is a
``submitit.helpers.Checkpointable``: on preemption or timeout submitit calls
:meth:`SlurmGridTask.checkpoint` and requeues the job; the requeued task resumes the run from its last
epoch checkpoint (the trainer writes one every epoch). A Slurm profile with ``runs_per_gpu: N > 1`` packs N
runs into each array task, a :class:`SlurmTaskGroup`: it trains them at once, each in its own local worker
process on the task's GPU, and requeues itself with the same runs (done ones are then skipped).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from dfqbench.core.progress import Progress, make_progress
from dfqbench.runner import RunRequest
from dfqbench.specs import RunSpec
from dfqbench.store import ResultsStore, RunFolder, atomic_write_json
from dfqbench.store.files import StoreError, first_line
from dfqbench.store.lease import Lease

EXIT_CODES = {"done": 0, "failed": 1, "busy": 3, "interrupted": 130, "preempted": 143}


@dataclass
class Outcome:
    status: str  # done | failed | busy | interrupted | preempted
    reason: str | None = None
    ran: bool = False  # False: nothing was executed (already done, held elsewhere, failed and not retried)


@dataclass
class GridTask:
    """Everything one run needs, picklable and JSON-able (the local worker gets it as JSON)."""

    request: RunRequest
    spec: RunSpec
    grid: str
    retry_failed: bool = False

    @property
    def folder(self) -> RunFolder:
        return ResultsStore(self.request.results).folder(self.spec)

    def to_json(self) -> str:
        return json.dumps({"request": dataclasses.asdict(self.request), "spec": self.spec.to_dict(),
                           "grid": self.grid, "retry_failed": self.retry_failed}, default=list)

    @classmethod
    def from_json(cls, text: str) -> "GridTask":
        data = json.loads(text)
        return cls(RunRequest(**data["request"]), RunSpec.from_dict(data["spec"]), data["grid"], data["retry_failed"])

    def execute(self, job_id: str, executor: str, progress: Progress | None = None,
                preempted: Any = lambda: False) -> Outcome:
        folder = self.folder
        if folder.is_done():
            return Outcome("done", "already done")
        if (folder.error_path.exists() or folder.has_record()) and not self.retry_failed:  # error or bad record
            return Outcome("failed", "failed before; not retried without --retry-failed")
        lease = Lease(folder.path, job_id, executor)
        try:
            holder = lease.acquire()
        except StoreError as exc:  # the results folder cannot be written: nothing can be recorded there either
            return Outcome("failed", str(exc), ran=True)
        if holder is not None:
            return Outcome("busy", f"held by job {holder.get('job_id')} on {holder.get('host')}")
        if folder.is_done():  # finished by another task between our check and the lease
            lease.release()
            return Outcome("done", "already done")
        lease.start()
        attempt = self._start_attempt(job_id, executor)
        outcome = Outcome("failed", "unknown", ran=True)
        try:
            outcome = self._run(progress or make_progress(force_plain=True))
            return outcome
        except KeyboardInterrupt:
            outcome = Outcome("interrupted", "interrupted; resumes from its checkpoint", ran=True)
            raise
        except SystemExit:
            if not preempted():
                outcome = Outcome("failed", "SystemExit", ran=True)
                raise
            _drop_error(folder, "SystemExit")  # runner.run recorded the exit submitit uses to requeue
            outcome = Outcome("preempted", "preempted or timed out; requeued, resumes from its checkpoint", ran=True)
            raise
        finally:
            self._end_attempt(attempt, outcome)
            lease.release()

    def _run(self, progress: Progress) -> Outcome:
        from dfqbench.runner import run
        from dfqbench.store import error_reason

        folder = self.folder
        try:
            record = run(self.request, progress, leased=True)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001  (every failure is recorded, the grid goes on)
            if not folder.error_path.exists():  # failed before training started (e.g. an unreadable record)
                self._record_error(exc)
            return Outcome("failed", error_reason(folder) if folder.error_path.exists() else first_line(exc),
                           ran=True)
        if record.run_id != self.spec.run_id:
            message = (f"ran as {record.run_name}, not as planned: the teacher weights or settings changed "
                       "between planning and running; plan the grid again")
            try:
                raise RuntimeError(message)
            except RuntimeError as exc:
                self._record_error(exc)
            return Outcome("failed", message, ran=True)
        return Outcome("done", None, ran=True)

    def _start_attempt(self, job_id: str, executor: str) -> dict[str, Any]:
        attempt = {"job_id": job_id, "executor": executor, "host": socket.gethostname(), "pid": os.getpid(),
                   "started_at": time.time(), "resumed_after_epoch": self.folder.checkpoint_epoch()}
        self._write_attempts(self.read_attempts(self.folder.path) + [attempt])
        return attempt

    def _end_attempt(self, attempt: dict[str, Any], outcome: Outcome) -> None:
        attempts = self.read_attempts(self.folder.path)
        for item in reversed(attempts):
            if item.get("started_at") == attempt["started_at"] and item.get("pid") == attempt["pid"]:
                item.update(ended_at=time.time(), outcome=outcome.status, reason=outcome.reason)
                break
        self._write_attempts(attempts)

    def _record_error(self, exc: BaseException) -> None:
        """error.json for a failure runner.run did not record (best effort: a read-only folder takes nothing)."""
        try:
            self.folder.create(self.spec)
        except StoreError:
            pass
        self.folder.write_error(exc)

    def _write_attempts(self, attempts: list[dict[str, Any]]) -> None:
        try:
            atomic_write_json(self.folder.attempts_path, attempts)
        except StoreError:
            pass  # bookkeeping only: a folder that takes no writes fails the run itself, with its own message

    @staticmethod
    def read_attempts(run_dir: Path) -> list[dict[str, Any]]:
        try:
            attempts = json.loads(RunFolder(run_dir).attempts_path.read_text())
        except (OSError, ValueError):
            return []
        return [a for a in attempts if isinstance(a, dict)] if isinstance(attempts, list) else []


def _drop_error(folder: RunFolder, exc_type: str) -> None:
    try:
        if json.loads(folder.error_path.read_text()).get("type") == exc_type:
            folder.error_path.unlink(missing_ok=True)
    except (OSError, ValueError):
        pass


class SlurmGridTask(submitit.helpers.Checkpointable):
    """A grid run in a Slurm array task; requeued (with itself) on preemption or timeout."""

    def __init__(self, task: GridTask) -> None:
        self.task = task
        self._preempted = False

    def __call__(self) -> dict[str, Any]:
        self._preempted = False
        env = submitit.JobEnvironment()
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and "OMP_NUM_THREADS" not in os.environ:
            import torch

            torch.set_num_threads(int(cpus))
        outcome = self.task.execute(env.job_id, "slurm", preempted=lambda: self._preempted)
        if outcome.status == "failed" and outcome.ran:
            raise RuntimeError(f"{self.task.spec.run_name} failed: {outcome.reason} (see its error.json)")
        return dataclasses.asdict(outcome)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's signal handler before requeueing: the trainer's epoch checkpoint is the state."""
        self._preempted = True
        return submitit.helpers.DelayedSubmission(SlurmGridTask(self.task))


class SlurmTaskGroup(submitit.helpers.Checkpointable):
    """Several grid runs in one Slurm array task (a profile's ``runs_per_gpu``), trained concurrently, each in
    its own worker process (:func:`dfqbench.launch.local.run_local`) sharing the task's GPU and CPUs.

    Fails (raises) when any run failed; the others still finish. On preemption or timeout submitit calls
    :meth:`checkpoint`: the workers get SIGINT (each ends its attempt and releases its lease; its run keeps
    its last epoch checkpoint) and a fresh group with the same runs is requeued.
    """

    def __init__(self, tasks: list[GridTask], runs_per_gpu: int | None = None) -> None:
        self.tasks = list(tasks)
        self.runs_per_gpu = runs_per_gpu or len(self.tasks)
        self._procs: list[Any] = []

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_procs": []}  # worker processes are not pickled (requeue, result)

    def __call__(self) -> dict[str, Any]:
        import sys

        from dfqbench.launch.local import run_local

        self._procs = []
        env = submitit.JobEnvironment()
        extra = {"DFQBENCH_WORKER_JOB_ID": str(env.job_id), "DFQBENCH_WORKER_EXECUTOR": "slurm"}
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and "OMP_NUM_THREADS" not in os.environ:  # the task's CPUs, shared by its workers
            extra["OMP_NUM_THREADS"] = str(max(1, int(cpus) // len(self.tasks)))
        result = run_local(self.tasks, jobs=len(self.tasks), device=self.tasks[0].request.device, out=sys.stdout,
                           runs_per_gpu=self.runs_per_gpu, extra_env=extra, started=self._procs.append)
        if result.failed:
            raise RuntimeError(f"{len(result.failed)} of {len(self.tasks)} runs failed: "
                               + "; ".join(f"{name}: {reason}" for name, reason in result.failed)
                               + " (see their error.json)")
        return dataclasses.asdict(result)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's signal handler before requeueing: stop the workers, requeue the same runs."""
        from dfqbench.launch.local import GRACE_S

        live = [p for p in self._procs if p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGINT)
        deadline = time.time() + GRACE_S
        for proc in live:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return submitit.helpers.DelayedSubmission(SlurmTaskGroup(self.tasks, self.runs_per_gpu))
