"""Launch manifests: one file per launch of a grid, ``<results>/launch/<grid>/<time>-<executor>-<id>.json``.

A manifest records what was launched and from which code: the grid (name, file, its sha256), the command
line, the git commit and dirty flag of the dfqbench checkout at submission, the host, and every launched
run (run id, run name, Slurm job id and profile). `dfqbench status` uses manifests to list grids and to
say which job a pending run waits in; the run states themselves come from the run folders.
"""

from __future__ import annotations

import hashlib
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

from dfqbench.launch.grid import Grid
from dfqbench.store.files import read_json_object


def launch_dir(results: Path) -> Path:
    from dfqbench.store import ResultsStore

    return ResultsStore(results).launch_dir()


def write_manifest(results: Path, grid: Grid, executor: str, runs: list[dict[str, Any]],
                   extra: dict[str, Any] | None = None) -> Path:
    from dfqbench.store import atomic_write_json, git_state

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = launch_dir(results) / grid.name / f"{stamp}-{executor}-{secrets.token_hex(3)}.json"
    atomic_write_json(path, {
        "grid": grid.name, "grid_file": str(grid.path), "grid_sha256": hashlib.sha256(grid.path.read_bytes()).hexdigest(),
        "executor": executor, "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(), "argv": sys.argv, "git": git_state(), "runs": runs, **(extra or {}),
    })
    return path


def read_manifests(results: Path, grid: str | None = None) -> list[dict[str, Any]]:
    """Every manifest under the results folder (of one grid if given), oldest first."""
    root = launch_dir(results)
    pattern = f"{grid}/*.json" if grid else "*/*.json"
    manifests = []
    for path in sorted(root.glob(pattern), key=lambda p: p.name):
        manifest = read_json_object(path)  # a manifest that is unreadable or not an object is skipped
        if manifest is not None:
            manifests.append({**manifest, "path": str(path)})
    return manifests


def latest_jobs(manifests: list[dict[str, Any]]) -> dict[str, str]:
    """run id → the Slurm job id of its latest submission."""
    jobs: dict[str, str] = {}
    for manifest in manifests:
        for run in manifest.get("runs", []):
            if run.get("job_id"):
                jobs[run["run_id"]] = run["job_id"]
    return jobs
