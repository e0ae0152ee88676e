"""`dfqbench status`: per grid, how many launched runs are pending, running, done, failed or lost, and why.

Reads only the results store: launch manifests say which runs belong to which grid (and which Slurm job a
pending run waits in); run folders say each run's state (:mod:`dfqbench.store.state`). Never sacct
(absent without slurmdbd) nor submitit's job state (which hangs on a job killed without a result).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from dfqbench.launch.manifest import latest_jobs, read_manifests
from dfqbench.store import RUN_STATES, ResultsStore, RunState, run_state

MAX_LISTED = 12


def grid_runs(manifests: list[dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """grid name → run id → run name (all its launches together)."""
    grids: dict[str, dict[str, Any]] = {}
    for manifest in manifests:
        runs = grids.setdefault(manifest["grid"], {})
        for run in manifest.get("runs", []):
            runs[run["run_id"]] = run["run_name"]
    return grids


def status_report(results: Path, grid: str | None = None, verbose: bool = False) -> tuple[str, dict[str, Counter]]:
    """The status text and the per-grid counts (for tests and scripts)."""
    store = ResultsStore(results)
    manifests = read_manifests(results, grid)
    grids = grid_runs(manifests)
    jobs = latest_jobs(manifests)
    counts: dict[str, Counter] = {}
    details: list[str] = []
    listed: set[str] = set()
    for name, runs in grids.items():
        states: dict[str, RunState] = {}
        for run_id, run_name in runs.items():
            states[run_name] = run_state(store.run(run_name))
            listed.add(run_name)
        counts[name] = Counter(s.state for s in states.values())
        details += _details(name, states, {runs[r]: j for r, j in jobs.items() if r in runs}, store, verbose)
    if grid is None:
        others = _unlaunched(store, listed)
        if others:
            counts["(single runs)"] = Counter(s.state for s in others.values())
            details += _details("(single runs)", others, {}, store, verbose)
    lines = [_table(counts)] if counts else [f"no launched grids in {results}" + (f" for grid {grid!r}" if grid else "")]
    return "\n".join(lines + details), counts


def _unlaunched(store: ResultsStore, listed: set[str]) -> dict[str, RunState]:
    return {f.name: run_state(f) for f in store.runs() if f.name not in listed}


def _table(counts: dict[str, Counter]) -> str:
    header = ["grid", "runs", *RUN_STATES]
    rows = [[name, str(sum(c.values())), *(str(c[s]) for s in RUN_STATES)] for name, c in counts.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), *(fmt(r) for r in rows)])


def _details(grid: str, states: dict[str, RunState], jobs: dict[str, str], store: ResultsStore,
             verbose: bool) -> list[str]:
    lines = []
    titles = {"failed": "failed (re-run with --retry-failed)",
              "lost": "lost: died without a result (running the grid again resumes them)", "running": "running"}
    shown = ("failed", "lost", "running", "pending", "done") if verbose else ("failed", "lost")
    for state in shown:
        names = [n for n, s in states.items() if s.state == state]
        if not names:
            continue
        lines.append(f"{grid}: {titles.get(state, state)}: {len(names)}")
        limit = len(names) if verbose else MAX_LISTED
        for run_name in names[:limit]:
            s = states[run_name]
            extra = [s.reason] if s.reason else []
            if state == "failed" and store.run(run_name).error_path.exists():
                extra.append(f"traceback in {store.run(run_name).error_path}")
            if state in ("pending", "lost") and run_name in jobs:
                extra.append(f"Slurm job {jobs[run_name]}")
            if s.partial and state != "done":
                extra.append("has a checkpoint")
            lines.append(f"  {run_name}" + (f": {'; '.join(extra)}" if extra else ""))
        if len(names) > limit:
            lines.append(f"  … and {len(names) - limit} more (--verbose lists all)")
    return lines


def _run_rows(states: dict[str, RunState], ids: dict[str, str], jobs: dict[str, str]) -> list[dict[str, Any]]:
    return [{"run_name": name, "run_id": ids.get(name, name.rsplit("_", 1)[-1]), "state": s.state, "reason": s.reason,
             "partial": s.partial, "job_id": jobs.get(name)} for name, s in states.items()]


def status_document(results: Path, grid: str | None = None) -> dict[str, Any]:
    """`dfqbench status --json`: per launched grid (and, without ``grid``, the runs of no grid) the counts per
    state and every run with its state, reason and Slurm job."""
    store = ResultsStore(results)
    manifests = read_manifests(results, grid)
    grids = grid_runs(manifests)
    jobs = latest_jobs(manifests)
    out: list[dict[str, Any]] = []
    listed: set[str] = set()
    for name, runs in grids.items():
        states = {run_name: run_state(store.run(run_name)) for run_name in runs.values()}
        listed.update(states)
        ids = {run_name: run_id for run_id, run_name in runs.items()}
        run_jobs = {runs[r]: j for r, j in jobs.items() if r in runs}
        counts = Counter(s.state for s in states.values())
        out.append({"grid": name, "runs": len(states), "counts": {s: counts[s] for s in RUN_STATES},
                    "run_states": _run_rows(states, ids, run_jobs)})
    if grid is None:
        others = _unlaunched(store, listed)
        if others:
            counts = Counter(s.state for s in others.values())
            out.append({"grid": None, "runs": len(others), "counts": {s: counts[s] for s in RUN_STATES},
                        "run_states": _run_rows(others, {}, {})})
    return {"results": str(results), "grid": grid, "grids": out}
