"""The state of a run, read from its folder in the results store only (never from sacct or squeue).

done     ``record.json`` exists
running  a live lease (see :mod:`dfqbench.launch.lease`)
failed   ``error.json`` exists (its type and message are the reason); retried only with --retry-failed
lost     a lease that is no longer alive and neither record nor error: the task died without a result
pending  none of these (never started, interrupted cleanly, or waiting in a Slurm queue)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dfqbench.launch.lease import describe_lease, lease_alive, read_lease
from dfqbench.store import RunFolder

RUN_STATES = ("pending", "running", "done", "failed", "lost")


@dataclass(frozen=True)
class RunState:
    state: str
    reason: str | None = None  # failed: "Type: message"; lost/running: who held it
    partial: bool = False  # a checkpoint exists (the run resumes from it)


def error_reason(path: Path) -> str:
    try:
        error = json.loads(path.read_text())
        message = str(error.get("message", "")).strip().splitlines()
        return f"{error.get('type', 'Error')}: {message[0] if message else ''}".rstrip(": ")
    except (OSError, ValueError):
        return "error.json unreadable"


def run_state(run_dir: Path) -> RunState:
    folder = RunFolder(run_dir)
    if folder.is_done():
        return RunState("done")
    partial = folder.checkpoint_path.exists()
    lease = read_lease(run_dir)
    if lease is not None and lease_alive(lease):
        return RunState("running", describe_lease(lease), partial)
    if folder.error_path.exists():
        return RunState("failed", error_reason(folder.error_path), partial)
    if lease is not None:
        return RunState("lost", f"died without a result: {describe_lease(lease)}", partial)
    return RunState("pending", None, partial)
