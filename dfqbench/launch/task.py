"""One grid run as a task: the same code runs it in a local worker process and in a Slurm array task.

A task takes the run's lease (skipping a run that is done unless stale and ``rerun_stale``, leased by a live
task, or failed unless retrying), appends an attempt to ``attempts.json`` (job id, host, the checkpoint epoch it resumes after),
calls :func:`dfqbench.runner.run` (which skips done runs, resumes from ``checkpoint.pt`` and writes
``error.json`` with the traceback when training raises, e.g. an exception or CUDA out-of-memory; a diverged
run is recorded as finished, not raised), and records a failure that happens before training (``prepare``
errors, e.g. a weights file missing on the node) in the run folder too. The Slurm flavours of a task
(:class:`dfqbench.launch.slurm.SlurmGridTask`, :class:`dfqbench.launch.slurm.SlurmTaskGroup`) live with the
Slurm executor; this module knows neither Slurm nor the local executor.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfqbench.core.progress import Progress, make_progress
from dfqbench.request import RunRequest
from dfqbench.specs import RunSpec
from dfqbench.store import ResultsStore, RunFolder, atomic_write_json
from dfqbench.store.files import StoreError, first_line, parse_json, read_json_object
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
    rerun_stale: bool = False  # a done run whose method code changed since is trained again from scratch

    @property
    def folder(self) -> RunFolder:
        return ResultsStore(self.request.results).folder(self.spec)

    def to_json(self) -> str:
        return json.dumps({"request": dataclasses.asdict(self.request), "spec": self.spec.to_dict(),
                           "grid": self.grid, "retry_failed": self.retry_failed, "rerun_stale": self.rerun_stale},
                          default=list)

    @classmethod
    def from_json(cls, text: str) -> "GridTask":
        data = json.loads(text)
        return cls(RunRequest(**data["request"]), RunSpec.from_dict(data["spec"]), data["grid"], data["retry_failed"],
                   data.get("rerun_stale", False))

    def execute(self, job_id: str, executor: str, progress: Progress | None = None,
                preempted: Any = lambda: False) -> Outcome:
        folder = self.folder
        done = folder.is_done()
        if done and not self.stale_to_rerun():
            return Outcome("done", "already done")
        if not done and (folder.error_path.exists() or folder.has_record()) and not self.retry_failed:  # error, bad record
            return Outcome("failed", "failed before; not retried without --retry-failed")
        lease = Lease(folder.path, job_id, executor)
        try:
            holder = lease.acquire()
        except StoreError as exc:  # the results folder cannot be written: nothing can be recorded there either
            return Outcome("failed", str(exc), ran=True)
        if holder is not None:
            return Outcome("busy", f"held by job {holder.get('job_id')} on {holder.get('host')}")
        if folder.is_done() and not self.stale_to_rerun():  # finished by another task between our check and the lease
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
            record = run(self.request, progress, leased=True, rerun_stale=self.rerun_stale)
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

    def stale_to_rerun(self) -> bool:
        """With ``rerun_stale``: whether the done run's record was computed by method code that changed since."""
        if not self.rerun_stale:
            return False
        from dfqbench.store.codestamp import code_state

        try:
            record = self.folder.read_record()
        except StoreError:
            return False
        return record is not None and code_state(record.code).stale

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
            attempts = parse_json(RunFolder(run_dir).attempts_path.read_bytes())  # bounded: deep nesting too
        except (OSError, ValueError):
            return []
        return [a for a in attempts if isinstance(a, dict)] if isinstance(attempts, list) else []


def _drop_error(folder: RunFolder, exc_type: str) -> None:
    error = read_json_object(folder.error_path)  # None for anything but a readable JSON object
    try:
        if error is not None and error.get("type") == exc_type:
            folder.error_path.unlink(missing_ok=True)
    except OSError:
        pass


# The Slurm task wrappers moved to dfqbench.launch.slurm; jobs pickled before the move name them here.
_MOVED_TO_SLURM = ("SlurmGridTask", "SlurmTaskGroup")


def __getattr__(name: str) -> Any:
    """``dfqbench.launch.task.SlurmGridTask`` / ``SlurmTaskGroup``: the classes of :mod:`dfqbench.launch.slurm`
    under their old names, for Slurm jobs pickled before they moved (one release; a DeprecationWarning)."""
    if name in _MOVED_TO_SLURM:
        from dfqbench.launch import slurm

        warnings.warn(f"dfqbench.launch.task.{name} moved to dfqbench.launch.slurm.{name}; the old name goes in "
                      "the next release", DeprecationWarning, stacklevel=2)
        return getattr(slurm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
