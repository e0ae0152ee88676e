"""`dfqbench status`: per grid, how many launched runs are pending, running, done, failed or lost, and why.

Reads only the results store: launch manifests say which runs belong to which grid (and which Slurm job a
pending run waits in); run folders say each run's state (:mod:`dfqbench.store.state`) and, for a done run,
whether the method code that computed it changed since (*stale*, :mod:`dfqbench.store.codestamp`; a subset of
done, counted in its own column). Never sacct (absent without slurmdbd) nor submitit's job state (which hangs
on a job killed without a result). ``--grid`` takes a grid's name or its YAML file (the name in the file).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from dfqbench.errors import DfqbenchError
from dfqbench.launch.banks import status_bank_document, status_bank_lines
from dfqbench.launch.manifest import latest_jobs, read_manifests
from dfqbench.store import RUN_STATES, ResultsStore, RunFolder, RunState, StoreError, run_state
from dfqbench.store.codestamp import CodeState, code_state

MAX_LISTED = 12
COLUMNS = (*RUN_STATES, "stale")  # stale: done runs whose method code changed since (a subset of done)


def grid_name(results: Path, text: str) -> tuple[str, bool]:
    """The launched name of the grid ``text`` means (a shipped grid's name, a launched grid's name, or a grid YAML
    file, absolute or relative: the ``name`` inside it) and whether it was launched into ``results``. A text that
    is neither a launched name nor a readable grid is the grid loader's one-line error."""
    from dfqbench.store.layout import is_single_name

    if is_single_name(text) and not text.endswith((".yaml", ".yml")) and read_manifests(results, text):
        return text, True
    from dfqbench.launch.grid import load_grid

    name = load_grid(text).name
    return name, bool(read_manifests(results, name))


def code_of(folder: RunFolder, state: RunState) -> CodeState | None:
    """A done run's code state (current, stale, unknown); None for runs that are not done."""
    if state.state != "done":
        return None
    try:
        record = folder.read_record()
    except StoreError:
        return None
    return code_state(record.code if record is not None else None)


def grid_runs(results: Path, manifests: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """grid name → run id → run name: the runs its launches ran (manifests) and the grid's other runs, e.g. ones
    already done when it was launched (its index, :func:`dfqbench.store.grid_index.grid_runs`, as ``report --grid``
    counts them)."""
    from dfqbench.store.grid_index import grid_runs as indexed_runs, read_grid_index

    grids: dict[str, dict[str, Any]] = {}
    for manifest in manifests:
        runs = grids.setdefault(manifest["grid"], {})
        for run in manifest.get("runs", []):
            runs[run["run_id"]] = run["run_name"]
    for name, runs in grids.items():
        try:
            cells = read_grid_index(results, name)
        except DfqbenchError:  # an unreadable index: the manifests alone (report --grid names the file)
            cells = None
        for run_id, run_name in indexed_runs(cells or {}).items():
            runs.setdefault(run_id, run_name)
    return grids


def status_report(results: Path, grid: str | None = None, verbose: bool = False) -> tuple[str, dict[str, Counter]]:
    """The status text and the per-grid counts (for tests and scripts)."""
    store = ResultsStore(results)
    manifests = read_manifests(results, grid)
    grids = grid_runs(results, manifests)
    jobs = latest_jobs(manifests)
    counts: dict[str, Counter] = {}
    details: list[str] = []
    listed: set[str] = set()
    for name, runs in grids.items():
        states: dict[str, RunState] = {}
        for run_id, run_name in runs.items():
            states[run_name] = run_state(store.run(run_name))
            listed.add(run_name)
        codes = _codes(store, states)
        counts[name] = _counts(states, codes)
        details += _details(name, states, {runs[r]: j for r, j in jobs.items() if r in runs}, store, verbose, codes)
    if grid is None:
        others = _unlaunched(store, listed)
        if others:
            codes = _codes(store, others)
            counts["(single runs)"] = _counts(others, codes)
            details += _details("(single runs)", others, {}, store, verbose, codes)
    lines = [_table(counts)] if counts else [f"no launched grids in {results}" + (f" for grid {grid!r}" if grid else "")]
    return "\n".join(lines + details + status_bank_lines(results)), counts  # banks: apart from runs


def _codes(store: ResultsStore, states: dict[str, RunState]) -> dict[str, CodeState]:
    """run name → code state, for the done runs."""
    codes = {name: code_of(store.run(name), s) for name, s in states.items()}
    return {name: c for name, c in codes.items() if c is not None}


def _counts(states: dict[str, RunState], codes: dict[str, CodeState]) -> Counter:
    """Runs per state, and ``stale`` (done runs whose code changed since; not part of the runs' total)."""
    counts = Counter(s.state for s in states.values())
    stale = sum(c.stale for c in codes.values())
    if stale:
        counts["stale"] = stale
    return counts


def _unlaunched(store: ResultsStore, listed: set[str]) -> dict[str, RunState]:
    return {f.name: run_state(f) for f in store.runs() if f.name not in listed}


def _table(counts: dict[str, Counter]) -> str:
    header = ["grid", "runs", *COLUMNS]
    rows = [[name, str(sum(c[s] for s in RUN_STATES)), *(str(c[s]) for s in COLUMNS)] for name, c in counts.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), *(fmt(r) for r in rows)])


def _details(grid: str, states: dict[str, RunState], jobs: dict[str, str], store: ResultsStore,
             verbose: bool, codes: dict[str, CodeState] | None = None) -> list[str]:
    lines = []
    stale = [n for n, c in (codes or {}).items() if c.stale]
    if stale:  # always listed: a stale number looks like any other
        lines.append(f"{grid}: stale: {len(stale)} done runs were computed by method code that changed since "
                     "(dfqbench run … --rerun-stale trains them again)")
        limit = len(stale) if verbose else MAX_LISTED
        lines += [f"  {n}: {codes[n].reason}" for n in stale[:limit]]
        if len(stale) > limit:
            lines.append(f"  … and {len(stale) - limit} more (--verbose lists all)")
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


def _run_rows(states: dict[str, RunState], ids: dict[str, str], jobs: dict[str, str],
              codes: dict[str, CodeState]) -> list[dict[str, Any]]:
    return [{"run_name": name, "run_id": ids.get(name, name.rsplit("_", 1)[-1]), "state": s.state, "reason": s.reason,
             "partial": s.partial, "job_id": jobs.get(name),
             "code": codes[name].state if name in codes else None,
             "code_reason": codes[name].reason if name in codes else None} for name, s in states.items()]


def status_document(results: Path, grid: str | None = None) -> dict[str, Any]:
    """`dfqbench status --json`: per launched grid (and, without ``grid``, the runs of no grid) the counts per
    state and every run with its state, reason and Slurm job."""
    store = ResultsStore(results)
    manifests = read_manifests(results, grid)
    grids = grid_runs(results, manifests)
    jobs = latest_jobs(manifests)
    out: list[dict[str, Any]] = []
    listed: set[str] = set()
    for name, runs in grids.items():
        states = {run_name: run_state(store.run(run_name)) for run_name in runs.values()}
        listed.update(states)
        ids = {run_name: run_id for run_id, run_name in runs.items()}
        run_jobs = {runs[r]: j for r, j in jobs.items() if r in runs}
        codes = _codes(store, states)
        counts = _counts(states, codes)
        out.append({"grid": name, "runs": len(states), "counts": {s: counts[s] for s in RUN_STATES},
                    "stale": counts["stale"], "run_states": _run_rows(states, ids, run_jobs, codes)})
    if grid is None:
        others = _unlaunched(store, listed)
        if others:
            codes = _codes(store, others)
            counts = _counts(others, codes)
            out.append({"grid": None, "runs": len(others), "counts": {s: counts[s] for s in RUN_STATES},
                        "stale": counts["stale"], "run_states": _run_rows(others, {}, {}, codes)})
    return {"results": str(results), "grid": grid, "grids": out, "banks": status_bank_document(results)}
