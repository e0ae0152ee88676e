"""The grid side of the command line: ``dfqbench run --grid …`` and ``dfqbench status`` (hooked in dfqbench/cli.py).

Argparse and printing only: the flags become a :class:`dfqbench.launch.launcher.GridRequest`, and
:mod:`dfqbench.launch.launcher` plans and launches it (its messages are printed here). Nothing in dfqbench but
``dfqbench.cli`` imports this module.
"""

from __future__ import annotations

import argparse
import sys

from dfqbench.errors import DfqbenchError
from dfqbench.launch import launcher
from dfqbench.launch.launcher import GridRequest, results_root
from dfqbench.request import RunOptions

__all__ = ["add_grid_arguments", "add_status_parser", "grid_request", "results_root", "run_grid", "run_status"]


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
    group.add_argument("--only", action="append", metavar="KEY=VALUE[,VALUE]",
                       help="keep the cells matching every filter; one filter per --only (repeatable), e.g. "
                            "--only method=adasg,adadfq --only bits=w3a3")
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
    status.add_argument("--grid", metavar="NAME|FILE", help="only this grid, by name or grid YAML file (its launches; a "
                        "never-launched grid is planned)")
    status.add_argument("--results", help="results folder (env DFQBENCH_RESULTS; default ./results)")
    status.add_argument("--verbose", "-v", action="store_true", help="list every run with its state")
    status.add_argument("--json", action="store_true", help="print one JSON document on stdout: per grid the "
                        "counts per state and every run with its state and reason")
    return status


def _json(document: object) -> str:
    """One JSON document (``--json``): indented, keys in a stable order, never NaN."""
    import json

    return json.dumps(document, indent=2, default=str, allow_nan=False)


def _say(text: str) -> None:
    print(text, flush=True)


def grid_request(args: argparse.Namespace, options: RunOptions) -> GridRequest:
    """The flags of ``run --grid`` as a :class:`GridRequest` (``options``: the run flags, see dfqbench/cli.py;
    which flags may go with ``--grid``: :func:`dfqbench.cli.check_run_mode`)."""
    return GridRequest(grid=args.grid, options=options, only=args.only, seeds=args.seeds,
                       retry_failed=args.retry_failed, rerun_stale=args.rerun_stale, executor=args.executor,
                       jobs=args.jobs, runs_per_gpu=args.runs_per_gpu, profile=args.profile, profiles=args.profiles)


def run_grid(args: argparse.Namespace, options: RunOptions) -> int:
    """``dfqbench run --grid …``: plan, then dry-run (print the plan), run locally or submit to Slurm."""
    from dfqbench.launch.summary import describe, plan_document

    request = grid_request(args, options)
    inputs = launcher.grid_inputs(request, write=not args.dry_run)
    if args.dry_run:
        plan = launcher.dry_plan(inputs)
        print(_json(plan_document(plan, args.retry_failed, args.rerun_stale)) if args.json
              else describe(plan, args.retry_failed, args.rerun_stale))
        return 0
    if args.json:
        raise DfqbenchError("--json prints a dry run's plan: give --dry-run too (a launch prints progress, not JSON)")
    outcome = launcher.launch(launcher.plan_launch(inputs, _say), request, _say)
    for name, reason in outcome.failed:
        print(f"  FAILED {name}: {reason}", file=sys.stderr)
    if outcome.exit_code == 130:
        print("dfqbench: interrupted; run the same command again to resume (finished runs are kept)", file=sys.stderr)
    if outcome.submitted:
        print(f"follow with: dfqbench status --grid {outcome.plan.grid.name} --results {outcome.plan.options.results}")
    return outcome.exit_code


def run_status(args: argparse.Namespace) -> int:
    from dfqbench.launch.status import grid_name, status_document, status_report
    from dfqbench.store import ResultsStore

    results = results_root(args.results)
    ResultsStore(results).check(write=False)
    grid, launched = grid_name(results, args.grid) if args.grid else (None, None)  # a name or a YAML file
    if grid is not None and not launched:
        from dfqbench.launch.grid import load_grid
        from dfqbench.launch.plan import LaunchOptions
        from dfqbench.launch.plancache import plan_dry
        from dfqbench.launch.summary import describe, plan_document

        plan = plan_dry(load_grid(args.grid), LaunchOptions(results=results))
        if args.json:  # never launched: no runs of it to report, and its plan
            print(_json({**status_document(results, grid), "launched": False, "plan": plan_document(plan)}))
            return 0
        print(f"grid {grid!r} was never launched into {results}; its plan:")
        print(describe(plan))
        return 0
    if args.json:
        print(_json({**status_document(results, grid), "launched": True if grid else None}))
        return 0
    text, _ = status_report(results, grid, args.verbose)
    print(text)
    return 0
