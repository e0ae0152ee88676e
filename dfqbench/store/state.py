"""The state of a run, read from its folder in the results store only (never from sacct or squeue).

done     ``record.json`` reads as a valid record (:mod:`dfqbench.store.records`)
running  a live lease (see :mod:`dfqbench.store.lease`)
failed   ``error.json`` exists (its type and message are the reason), or ``record.json`` exists but is
         unreadable (the reason names it and how to start over); retried only with --retry-failed
lost     a lease that is no longer alive and neither record nor error: the task died without a result
pending  none of these (never started, interrupted cleanly, or waiting in a Slurm queue)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dfqbench.store.files import StoreError
from dfqbench.store.layout import RunFolder
from dfqbench.store.lease import describe_lease, lease_alive, read_lease

RUN_STATES = ("pending", "running", "done", "failed", "lost")
# A grid cell that is no run: excluded by the grid file, unsupported by its method, skipped (no teacher weights
# for its model), or invalid. The planner gives these; the grid index keeps them for `report --grid`.
CELL_ONLY_STATES = ("excluded", "unsupported", "skipped", "invalid")


@dataclass(frozen=True)
class RunState:
    state: str
    reason: str | None = None  # failed: "Type: message"; lost/running: who held it
    partial: bool = False  # a checkpoint exists (the run resumes from it)


def error_reason(folder: RunFolder | Path) -> str:
    """``Type: first line of the message`` of a failed run's error.json."""
    folder = folder if isinstance(folder, RunFolder) else RunFolder(Path(folder))
    error = folder.read_error()
    if error is None:
        return "error.json unreadable"
    message = str(error.get("message", "")).strip().splitlines()
    return f"{error.get('type', 'Error')}: {message[0] if message else ''}".rstrip(": ")


def run_state(run: RunFolder | Path) -> RunState:
    folder = run if isinstance(run, RunFolder) else RunFolder(Path(run))
    bad_record = None
    try:
        if folder.read_record() is not None:
            return RunState("done")
    except StoreError as exc:
        bad_record = str(exc)
    partial = folder.checkpoint_path.exists()
    lease = read_lease(folder.path)
    if lease is not None and lease_alive(lease):
        return RunState("running", describe_lease(lease), partial)
    if folder.error_path.exists():
        return RunState("failed", error_reason(folder), partial)
    if bad_record is not None:
        return RunState("failed", bad_record, partial)
    if lease is not None:
        return RunState("lost", f"died without a result: {describe_lease(lease)}", partial)
    return RunState("pending", None, partial)
