"""Launching a grid, without a command line: check the request, plan, then run locally or submit to Slurm.

The command line (:mod:`dfqbench.launch.cli`) and the Python API (:func:`dfqbench.run_grid`) both go through
here. Nothing here prints: what a launch has to say (teacher downloads, the runs to run, each worker's start
and end, the Slurm submissions, the manifest) goes to the ``say`` callback, one line per call; what happened
comes back as a :class:`LaunchOutcome`. Importing this module imports no other part of the launcher; torch
is imported only when a grid is planned in full (a dry run answered from the plan cache never imports it).

One launch plans its grid once (:func:`dfqbench.launch.plan.plan_grid`, the grid as its file defines it
included when ``only``/``seeds`` restrict the launch), and a second time only after downloading a pretrained
teacher whose identity was unknown (it is part of the run ids).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dfqbench.errors import DfqbenchError
from dfqbench.request import RunOptions, check_options
from dfqbench.store.layout import results_root

if TYPE_CHECKING:  # imported where used: importing this module stays as light as the command line's parser
    from dfqbench.launch.grid import Grid
    from dfqbench.launch.local import LocalResult
    from dfqbench.launch.plan import LaunchOptions, Plan, PlannedCell

Say = Callable[[str], None]
EXECUTORS = ("local", "slurm")


def quiet(text: str) -> None:
    pass


@dataclass(kw_only=True)
class GridRequest:
    """A grid launch: the grid, which of its cells, the run options of every cell and how to run them."""

    grid: str | Path  # a shipped grid's name or a grid YAML file
    options: RunOptions = field(default_factory=RunOptions)
    only: list[str] | None = None  # --only filters, e.g. ["method=adasg,adadfq", "bits=w3a3"]
    seeds: str | None = None  # --seeds, e.g. "0,1,2" or "0-4": replaces the grid's seeds
    retry_failed: bool = False
    rerun_stale: bool = False  # train again the done runs whose method code changed since (stale)
    executor: str = "local"  # local | slurm
    jobs: int | None = None  # local: runs at once; slurm: array tasks at once
    runs_per_gpu: int | None = None
    profile: str | None = None  # slurm: this profile for every run
    profiles: str | None = None  # slurm: the profiles YAML

    def check(self) -> None:
        """The request's own checks (executor, options, ``jobs``, ``runs_per_gpu``), one-line errors."""
        if self.executor not in EXECUTORS:
            from dfqbench.registry import unknown_choice

            raise DfqbenchError(unknown_choice("executor", self.executor, list(EXECUTORS)))
        check_options(self.options)
        if self.jobs is not None and self.jobs < 1:
            raise DfqbenchError(f"invalid --jobs {self.jobs}: must be >= 1")
        if self.runs_per_gpu is not None and self.runs_per_gpu < 1:
            raise DfqbenchError(f"invalid --runs-per-gpu {self.runs_per_gpu}: must be >= 1")


@dataclass
class GridInputs:
    """A checked grid request, its grid file loaded: what planning takes."""

    request: GridRequest
    grid: "Grid"
    options: "LaunchOptions"
    filters: dict[str, list[Any]]
    seeds: list[int] | None


@dataclass
class LaunchOutcome:
    """What a launch did: its plan, the local executor's result (None for Slurm or nothing to run), the Slurm
    manifest entries and file, and the exit status the command line ends with (0, 1 failed runs, 130
    interrupted)."""

    plan: "Plan"
    exit_code: int = 0
    local: "LocalResult | None" = None
    submitted: list[dict[str, Any]] = field(default_factory=list)
    manifest: Path | None = None

    @property
    def failed(self) -> list[tuple[str, str]]:
        """(run name, reason) of each run that failed in this launch."""
        return list(self.local.failed) if self.local is not None else []


def _path(text: str | None) -> str | None:
    return None if text is None else str(Path(text).expanduser().resolve())


def launch_options(options: RunOptions) -> "LaunchOptions":
    """The options of a launch: ``options`` with the results folder, weights and data paths resolved."""
    from dfqbench.launch.plan import LaunchOptions

    values = options.option_values()
    values.update(results=results_root(options.results), weights=_path(options.weights),
                  weights_dir=_path(options.weights_dir), data_root=_path(options.data_root))
    return LaunchOptions(**values)


def grid_inputs(request: GridRequest, *, write: bool = True) -> GridInputs:
    """Check ``request``, load its grid, check the results folder (``write``: that it can be written, for a
    launch) and parse its filters and seeds; one-line errors, nothing written."""
    from dfqbench.launch.grid import load_grid, parse_filters, parse_seeds

    request.check()
    grid = load_grid(request.grid)
    options = launch_options(request.options)
    from dfqbench.store import ResultsStore

    ResultsStore(options.results).check(write=write)  # before planning writes anything
    filters = parse_filters(request.only)
    return GridInputs(request, grid, options, filters, parse_seeds(request.seeds) if request.seeds else None)


def dry_plan(inputs: GridInputs) -> "Plan":
    """The plan of a dry run: from the plan cache when it has every cell, else planned in full (and cached)."""
    from dfqbench.launch.plancache import plan_dry

    return plan_dry(inputs.grid, inputs.options, inputs.filters, inputs.seeds)


def plan_launch(inputs: GridInputs, say: Say = quiet) -> "Plan":
    """The full plan of a launch (cached for later dry runs). Invalid cells are an error; pretrained teachers
    not downloaded yet are downloaded first (then the grid is planned again: their identities are in the run
    ids)."""
    from dfqbench.launch.plan import plan_grid
    from dfqbench.launch.plancache import remember

    grid, options, filters, seeds = inputs.grid, inputs.options, inputs.filters, inputs.seeds
    retry = inputs.request.retry_failed
    plan = plan_grid(grid, options, filters, seeds, whole=True)
    remember(plan)
    invalid = plan.invalid()
    if invalid:
        first = invalid[0]
        raise DfqbenchError(f"grid {grid.name!r} has {len(invalid)} invalid cells (e.g. {first.cell.label}: "
                            f"{first.reason}); see --dry-run, fix the grid or leave them out with --only")
    if any(c.spec is None for c in plan.to_launch(retry, inputs.request.rerun_stale)):
        fetch_teachers(plan, retry, say)
        plan = plan_grid(grid, options, filters, seeds, whole=True)
        remember(plan)
    return plan


def fetch_teachers(plan: "Plan", retry_failed: bool, say: Say = quiet) -> None:
    """Download the pretrained teachers of the runs to launch whose identity is not known yet."""
    from dfqbench.zoo import load_pretrained

    for cell in {c.cell.model: c for c in plan.to_launch(retry_failed) if c.spec is None}.values():
        say(f"downloading the pretrained {cell.cell.model} (its identity is part of the run id)")
        request = cell.request
        load_pretrained(request.model, request.weights, request.weights_dir, request.weights_norm)


def run_grid(request: GridRequest, say: Say = quiet) -> LaunchOutcome:
    """Check, plan and launch ``request`` (:func:`grid_inputs`, :func:`plan_launch`, :func:`launch`)."""
    inputs = grid_inputs(request)
    return launch(plan_launch(inputs, say), request, say)


def index_grid(plan: "Plan") -> None:
    """Record the grid's cells for `report --grid` (:mod:`dfqbench.store.grid_index`) once the launch goes ahead: the
    whole grid as its file defines it (planned without --only/--seeds when those restricted this launch) and
    this launch's cells."""
    from dfqbench.store.grid_index import write_grid_index

    cells = ([] if plan.whole is None else plan.whole.cells) + plan.cells
    write_grid_index(plan.options.results, plan.grid.name, [_index_entry(c) for c in cells])


def _index_entry(cell: "PlannedCell") -> dict:
    """A planned cell as the grid index keeps it (:mod:`dfqbench.store.grid_index`)."""
    return {"label": cell.cell.label, "status": cell.status, "reason": cell.reason, "run_id": cell.run_id,
            "run_name": cell.run_name, "duplicate_of": cell.duplicate_of,
            "spec": cell.spec.to_dict() if cell.spec is not None else None}


class _Lines(io.TextIOBase):
    """A text stream that hands each complete line to ``say`` (the local executor writes to a stream)."""

    def __init__(self, say: Say) -> None:
        super().__init__()
        self.say, self.pending = say, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self.say(line)
        return len(text)


def launch(plan: "Plan", request: GridRequest, say: Say = quiet, worker_logs: bool | None = None) -> LaunchOutcome:
    """Run the plan's runs to launch: local worker processes, or Slurm job arrays (returns once submitted).

    ``worker_logs``: local workers write to their run folders' ``worker.log`` rather than this process's
    terminal (:func:`dfqbench.launch.local.run_local`; default: when several run at once). The Python API
    passes True, so that nothing reaches the terminal but what ``say`` is given."""
    from dfqbench.launch.manifest import write_manifest
    from dfqbench.launch.task import GridTask

    retry = request.retry_failed
    counts, todo = plan.counts(), plan.to_launch(retry, request.rerun_stale)
    stale = plan.stale()
    notes = [f"{counts[s]} {s}" for s in ("done", "running", "failed", "unsupported", "excluded") if counts[s]]
    say(f"grid {plan.grid.name}: {len(plan.runs())} runs, {len(todo)} to run"
        + (f" ({', '.join(notes)})" if notes else ""))
    if counts["running"]:
        say(f"  {counts['running']} runs are held by live tasks elsewhere and are left to them")
    if counts["failed"] and not retry:
        say(f"  {counts['failed']} failed runs are not retried (--retry-failed retries them)")
    if stale:
        say(f"  {len(stale)} done runs are stale (their method's code changed since: {stale[0].code.reason}): "
            + ("trained again from scratch" if request.rerun_stale else "kept (--rerun-stale trains them again)"))
    if counts["unsupported"]:
        say(f"  {counts['unsupported']} cells skipped as unsupported by their method (reasons: --dry-run)")
    if counts["skipped"]:
        first = next(c for c in plan.cells if c.status == "skipped")
        say(f"  {counts['skipped']} cells skipped: no teacher weights (e.g. {first.reason}; reasons: --dry-run)")
    if not todo:
        index_grid(plan)
        say("nothing to run")
        return LaunchOutcome(plan)
    tasks = [GridTask(c.request, c.spec, plan.grid.name, retry, request.rerun_stale) for c in todo]
    if request.executor == "slurm":
        return _submit_slurm(plan, todo, tasks, request, say)
    from dfqbench.launch.local import default_jobs, run_local

    device = plan.options.device
    per_gpu = request.runs_per_gpu or 1
    jobs = request.jobs or default_jobs(device, per_gpu)
    write_manifest(plan.options.results, plan.grid, "local",
                   [{"run_id": t.spec.run_id, "run_name": t.spec.run_name, "job_id": None} for t in tasks],
                   {"jobs": jobs, "runs_per_gpu": per_gpu})
    index_grid(plan)
    result = run_local(tasks, jobs, device, out=_Lines(say), runs_per_gpu=per_gpu, worker_logs=worker_logs)
    say(f"grid {plan.grid.name}: {len(result.done)} done, {len(result.failed)} failed, "
        f"{len(result.interrupted)} interrupted, {result.not_started} not started, "
        f"{len(result.busy)} left to other live tasks")
    return LaunchOutcome(plan, result.exit_code, local=result)


def _submit_slurm(plan: "Plan", todo: "list[PlannedCell]", tasks: list, request: GridRequest,
                  say: Say) -> LaunchOutcome:
    from dfqbench.launch.manifest import write_manifest
    from dfqbench.launch.slurm import load_profiles, submit
    from dfqbench.store import ResultsStore

    profiles = load_profiles(request.profiles)
    work = [(task, profiles.for_cell(cell, request.profile)) for task, cell in zip(tasks, todo)]
    index_grid(plan)
    folder = ResultsStore(plan.options.results).slurm_dir(plan.grid.name)
    outcome = LaunchOutcome(plan)
    try:
        outcome.submitted = submit(work, folder, plan.grid.name, request.jobs, say=say,
                                   runs_per_gpu=request.runs_per_gpu)
    except DfqbenchError as exc:
        outcome.submitted = getattr(exc, "submitted", [])
        raise
    finally:
        if outcome.submitted:
            outcome.manifest = write_manifest(plan.options.results, plan.grid, "slurm", outcome.submitted,
                                              {"profiles_file": str(profiles.path)})
            say(f"manifest {outcome.manifest}")
    return outcome
