"""The grid side of the command line: ``dfqbench run --grid …`` and ``dfqbench status`` (hooked in dfqbench/cli.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfqbench.errors import DfqbenchError


def add_grid_arguments(run: argparse.ArgumentParser) -> None:
    """The grid flags of ``dfqbench run``."""
    group = run.add_argument_group("grids", "run a grid of cells instead of one (--method/--model/--bits/--seed "
                                   "are for single runs; filter a grid with --only)")
    group.add_argument("--grid", metavar="NAME|FILE",
                       help="a shipped grid (paper_table1, qimera_table2, adasg_ablation, quickstart, smoke) "
                            "or a grid YAML file")
    group.add_argument("--executor", choices=["local", "slurm"], default="local",
                       help="local worker processes (default) or Slurm job arrays through submitit")
    group.add_argument("--dry-run", action="store_true",
                       help="print the cells, the runs done/pending/failed and the estimated device time; run nothing "
                            "(answered from the plan cache when nothing it depends on changed; "
                            "DFQBENCH_PLAN_CACHE=off turns it off)")
    group.add_argument("--json", action="store_true",
                       help="with --dry-run: print the plan as one JSON document on stdout (cells, states, estimate)")
    group.add_argument("--only", nargs="+", action="extend", metavar="KEY=VALUE[,VALUE]",
                       help="keep the cells matching every filter, e.g. --only method=adasg,adadfq bits=w3a3 "
                            "(put KEY=VALUE overrides before --only)")
    group.add_argument("--seeds", metavar="LIST", help="replace the grid's seeds, e.g. 0,1,2 or 0-4")
    group.add_argument("--retry-failed", action="store_true", help="run failed runs again (else they are skipped)")
    group.add_argument("--jobs", type=int, metavar="N",
                       help="local: runs at once (default one per visible GPU, else 1); slurm: array tasks at "
                            "once (default the profile's array_parallelism)")
    group.add_argument("--runs-per-gpu", type=int, metavar="N",
                       help="local: N worker processes share each visible GPU (default 1; the default --jobs becomes "
                            "#GPUs x N; without GPUs only --jobs counts); slurm: runs per array task, trained at "
                            "once on its GPU (default the profile's runs_per_gpu)")
    group.add_argument("--profile", help="slurm: use this profile for every run (else the grid's or select rules)")
    group.add_argument("--profiles", metavar="FILE",
                       help="slurm: profiles YAML (env DFQBENCH_SLURM_PROFILES; default ./slurm/profiles.yaml if "
                            "present, else the shipped dfqbench/launch/slurm_profiles.yaml)")


def add_status_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    status = sub.add_parser("status", help="per grid: runs pending, running, done, failed, lost (reads the results)")
    status.add_argument("--grid", metavar="NAME", help="only this grid (its launches; a never-launched grid is planned)")
    status.add_argument("--results", help="results folder (env DFQBENCH_RESULTS; default ./results)")
    status.add_argument("--verbose", "-v", action="store_true", help="list every run with its state")
    status.add_argument("--json", action="store_true", help="print one JSON document on stdout: per grid the "
                        "counts per state and every run with its state and reason")
    return status


def _json(document: object) -> str:
    """One JSON document (``--json``): indented, keys in a stable order, never NaN."""
    import json

    return json.dumps(document, indent=2, default=str, allow_nan=False)


def _path(text: str | None) -> str | None:
    return None if text is None else str(Path(text).expanduser().resolve())


def results_root(text: str | None) -> Path:
    """--results, else $DFQBENCH_RESULTS, else ./results (:func:`dfqbench.store.default_results_root`), resolved."""
    from dfqbench.store import default_results_root

    return (Path(text) if text else default_results_root()).expanduser().resolve()


def _options(args: argparse.Namespace):
    from dfqbench.launch.plan import LaunchOptions

    return LaunchOptions(
        results=results_root(args.results), device=args.device,
        weights=_path(args.weights), weights_dir=_path(args.weights_dir), weights_norm=args.weights_norm,
        data_root=_path(args.data_root), log_every=args.log_every, overrides=list(args.overrides),
        protocol=args.protocol, engine=args.engine, log=list(args.log or []),
    )


def grid_inputs(args: argparse.Namespace):
    """The checked flags of ``run --grid``: (grid, launch options, --only filters, --seeds); one-line errors."""
    from dfqbench.launch.grid import load_grid, parse_filters, parse_seeds

    single = [flag for flag, value in (("--method", args.method), ("--model", args.model), ("--bits", args.bits),
                                       ("--seed", args.seed)) if value is not None]
    if single:
        raise DfqbenchError(f"{single[0]} is for single runs, not with --grid; filter a grid with --only "
                            "(e.g. --only method=gdfq) and set its seeds with --seeds")
    if args.jobs is not None and args.jobs < 1:
        raise DfqbenchError(f"invalid --jobs {args.jobs}: must be >= 1")
    if args.runs_per_gpu is not None and args.runs_per_gpu < 1:
        raise DfqbenchError(f"invalid --runs-per-gpu {args.runs_per_gpu}: must be >= 1")
    grid = load_grid(args.grid)
    options = _options(args)
    from dfqbench.store import ResultsStore

    ResultsStore(options.results).check(write=not args.dry_run)  # before planning writes anything
    return grid, options, parse_filters(args.only), parse_seeds(args.seeds) if args.seeds else None


def run_grid(args: argparse.Namespace) -> int:
    """``dfqbench run --grid …``: plan, then dry-run, run locally or submit to Slurm."""
    from dfqbench.launch.plan import plan_grid
    from dfqbench.launch.plancache import plan_dry, remember
    from dfqbench.launch.summary import describe, plan_document

    grid, options, filters, seeds = grid_inputs(args)
    if args.dry_run:
        plan = plan_dry(grid, options, filters, seeds)
        print(_json(plan_document(plan, args.retry_failed)) if args.json else describe(plan, args.retry_failed))
        return 0
    if args.json:
        raise DfqbenchError("--json prints a dry run's plan: give --dry-run too (a launch prints progress, not JSON)")
    plan = plan_grid(grid, options, filters, seeds)
    remember(plan)
    invalid = plan.invalid()
    if invalid:
        first = invalid[0]
        raise DfqbenchError(f"grid {grid.name!r} has {len(invalid)} invalid cells (e.g. {first.cell.label}: "
                            f"{first.reason}); see --dry-run, fix the grid or leave them out with --only")
    if any(c.spec is None for c in plan.to_launch(args.retry_failed)):
        _fetch_teachers(plan, args.retry_failed)
        plan = plan_grid(grid, options, filters, seeds)
        remember(plan)
    plan.whole = plan_grid(grid, options) if filters or seeds else None  # for the grid index
    return _launch(plan, args)


def _index_grid(plan) -> None:
    """Record the grid's cells for `report --grid` (:mod:`dfqbench.grid_index`) once the launch goes ahead: the
    whole grid as its file defines it (planned without --only/--seeds when those restricted this launch) and
    this launch's cells."""
    from dfqbench.grid_index import write_grid_index

    cells = ([] if plan.whole is None else plan.whole.cells) + plan.cells
    write_grid_index(plan.options.results, plan.grid.name, [_index_entry(c) for c in cells])


def _fetch_teachers(plan, retry_failed: bool) -> None:
    from dfqbench.zoo import load_pretrained

    for cell in {c.cell.model: c for c in plan.to_launch(retry_failed) if c.spec is None}.values():
        print(f"downloading the pretrained {cell.cell.model} (its identity is part of the run id)", flush=True)
        request = cell.request
        load_pretrained(request.model, request.weights, request.weights_dir, request.weights_norm)


def _index_entry(cell) -> dict:
    """A planned cell as the grid index keeps it (:mod:`dfqbench.grid_index`)."""
    return {"label": cell.cell.label, "status": cell.status, "reason": cell.reason, "run_id": cell.run_id,
            "run_name": cell.run_name, "duplicate_of": cell.duplicate_of,
            "spec": cell.spec.to_dict() if cell.spec is not None else None}


def _launch(plan, args: argparse.Namespace) -> int:
    from dfqbench.launch.manifest import write_manifest
    from dfqbench.launch.task import GridTask

    counts, todo = plan.counts(), plan.to_launch(args.retry_failed)
    notes = [f"{counts[s]} {s}" for s in ("done", "running", "failed", "unsupported", "excluded") if counts[s]]
    print(f"grid {plan.grid.name}: {len(plan.runs())} runs, {len(todo)} to run" + (f" ({', '.join(notes)})" if notes else ""))
    if counts["running"]:
        print(f"  {counts['running']} runs are held by live tasks elsewhere and are left to them")
    if counts["failed"] and not args.retry_failed:
        print(f"  {counts['failed']} failed runs are not retried (--retry-failed retries them)")
    if counts["unsupported"]:
        print(f"  {counts['unsupported']} cells skipped as unsupported by their method (reasons: --dry-run)")
    if counts["skipped"]:
        first = next(c for c in plan.cells if c.status == "skipped")
        print(f"  {counts['skipped']} cells skipped: no teacher weights (e.g. {first.reason}; reasons: --dry-run)")
    if not todo:
        _index_grid(plan)
        print("nothing to run")
        return 0
    tasks = [GridTask(c.request, c.spec, plan.grid.name, args.retry_failed) for c in todo]
    if args.executor == "slurm":
        return _submit_slurm(plan, todo, tasks, args)
    from dfqbench.launch.local import default_jobs, run_local

    per_gpu = args.runs_per_gpu or 1
    jobs = args.jobs or default_jobs(args.device, per_gpu)
    write_manifest(plan.options.results, plan.grid, "local",
                   [{"run_id": t.spec.run_id, "run_name": t.spec.run_name, "job_id": None} for t in tasks],
                   {"jobs": jobs, "runs_per_gpu": per_gpu})
    _index_grid(plan)
    result = run_local(tasks, jobs, args.device, runs_per_gpu=per_gpu)
    print(f"grid {plan.grid.name}: {len(result.done)} done, {len(result.failed)} failed, "
          f"{len(result.interrupted)} interrupted, {result.not_started} not started, "
          f"{len(result.busy)} left to other live tasks")
    for name, reason in result.failed:
        print(f"  FAILED {name}: {reason}", file=sys.stderr)
    if result.exit_code == 130:
        print("dfqbench: interrupted; run the same command again to resume (finished runs are kept)", file=sys.stderr)
    return result.exit_code


def _submit_slurm(plan, todo, tasks, args: argparse.Namespace) -> int:
    from dfqbench.launch.manifest import write_manifest
    from dfqbench.launch.slurm import load_profiles, submit

    profiles = load_profiles(args.profiles)
    work = [(task, profiles.for_cell(cell, args.profile)) for task, cell in zip(tasks, todo)]
    _index_grid(plan)
    from dfqbench.store import ResultsStore

    folder = ResultsStore(plan.options.results).slurm_dir(plan.grid.name)
    submitted: list = []
    try:
        submitted = submit(work, folder, plan.grid.name, args.jobs, runs_per_gpu=args.runs_per_gpu)
    except DfqbenchError as exc:
        submitted = getattr(exc, "submitted", [])
        raise
    finally:
        if submitted:
            path = write_manifest(plan.options.results, plan.grid, "slurm", submitted,
                                  {"profiles_file": str(profiles.path)})
            print(f"manifest {path}")
    print(f"follow with: dfqbench status --grid {plan.grid.name} --results {plan.options.results}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from dfqbench.launch.manifest import read_manifests
    from dfqbench.launch.status import status_document, status_report
    from dfqbench.store import ResultsStore

    results = results_root(args.results)
    ResultsStore(results).check(write=False)
    if args.grid and not read_manifests(results, args.grid):
        from dfqbench.launch.grid import load_grid
        from dfqbench.launch.plan import LaunchOptions
        from dfqbench.launch.plancache import plan_dry
        from dfqbench.launch.summary import describe, plan_document

        plan = plan_dry(load_grid(args.grid), LaunchOptions(results=results))
        if args.json:  # never launched: no runs of it to report, and its plan
            print(_json({**status_document(results, args.grid), "launched": False, "plan": plan_document(plan)}))
            return 0
        print(f"grid {args.grid!r} was never launched into {results}; its plan:")
        print(describe(plan))
        return 0
    if args.json:
        print(_json({**status_document(results, args.grid), "launched": True if args.grid else None}))
        return 0
    text, _ = status_report(results, args.grid, args.verbose)
    print(text)
    return 0
