"""The ``dfqbench`` command: ``run`` one cell, ``list methods|models``; ``run --grid`` and ``status`` are in
:mod:`dfqbench.launch.cli`, ``report`` in :mod:`dfqbench.report.cli`.

The command line is the top layer: these three modules hold argparse and printing only, on top of the
library (:mod:`dfqbench.request`, :mod:`dfqbench.runner`, :mod:`dfqbench.launch.launcher`,
:mod:`dfqbench.report`), and nothing else in dfqbench imports them (the Python API, :mod:`dfqbench.api`,
included).

Bad input prints one line (``dfqbench: error: …``) naming the bad value and the valid choices or the fix,
and exits with status 2; nothing is written to the results folder. A run that runs out of CUDA memory also
prints one line (the device and the fix: fewer runs per GPU or a smaller batch) but exits with status 1, and
its ``error.json`` is written like any failed run's.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Sequence

from dfqbench.errors import DfqbenchError  # everything else is imported inside main(), where Ctrl-C is caught

if TYPE_CHECKING:
    from dfqbench.request import RunOptions
    from dfqbench.store import RunRecord

OFFLINE_HELP = (
    "offline use: --weights FILE (or DFQBENCH_WEIGHTS) with --weights-norm imagenet|cifar10|… "
    "(or DFQBENCH_WEIGHTS_NORM), --data-root DIR (or DFQBENCH_DATA)"
)


def build_parser() -> argparse.ArgumentParser:
    from dfqbench.launch.cli import add_grid_arguments, add_status_parser
    from dfqbench.report.cli import add_report_parser

    parser = argparse.ArgumentParser(prog="dfqbench", description="Data-free quantization benchmark harness.",
                                     epilog=OFFLINE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one method × model × bits × seed cell", epilog=OFFLINE_HELP)
    run.add_argument("--method", help="a registered method (dfqbench list methods); required without --grid")
    run.add_argument("--model", help="a zoo model or any pytorchcv name (dfqbench list models); required without --grid")
    run.add_argument("--bits", help="weight/activation bits, e.g. w4a4, w3a3, w4a8; required without --grid")
    run.add_argument("--seed", type=int, help="default 0")
    run.add_argument("--protocol", help="paper (published schedule; default) or quick (minutes on CPU); "
                     "with --grid, replaces the grid's protocol")
    run.add_argument("--weights", help="local pretrained weights file (env DFQBENCH_WEIGHTS)")
    run.add_argument("--weights-dir", help="folder of <model>.pth weights files (env DFQBENCH_WEIGHTS_DIR)")
    run.add_argument("--weights-norm", help="input normalisation of local weights: imagenet, cifar10, cifar100, "
                     "cifar10_pytorchcv or m,m,m/s,s,s (env DFQBENCH_WEIGHTS_NORM)")
    run.add_argument("--data-root", help="test data root (env DFQBENCH_DATA); CIFAR-10 as cifar10-test/ ImageFolder")
    run.add_argument("--results", help="results folder (env DFQBENCH_RESULTS; default ./results)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--engine", default="auto", metavar="auto|eager|compiled",
                     help="how the training step runs: eager PyTorch or compiled (torch.compile + CUDA graphs); "
                          "auto (default) is compiled on CUDA, eager on CPU. Recorded, not part of the run hash")
    run.add_argument("--log-every", type=int, default=50, help="iterations between logged diagnostics")
    run.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")
    run.add_argument("--restart", action="store_true",
                     help="start this run from scratch: delete its folder's checkpoint, metrics and record first "
                          "(e.g. after an unreadable file); single runs only")
    run.add_argument("--rerun-stale", action="store_true",
                     help="train again, from scratch, the done runs whose method code changed since they ran (stale: "
                          "shown by status, dry runs and report); single runs and grids")
    run.add_argument("--log", action="append", default=[], metavar="tensorboard|wandb",
                     help="also log every loss term, diagnostic and per-epoch top-1 to TensorBoard (event files in "
                          "the run folder's tensorboard/) or Weights & Biases (WANDB_MODE=offline works offline); "
                          "repeatable; optional extras: pip install 'dfqbench[tensorboard]' / 'dfqbench[wandb]'")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="dotted overrides, e.g. train.epochs=3 method.temperature=10 quant.tracker=ema")
    add_grid_arguments(run)

    lst = sub.add_parser("list", help="list registered methods or models")
    lst.add_argument("what", choices=["methods", "models"])
    lst.add_argument("--json", action="store_true", help="print one JSON document (a list of objects) on stdout")
    add_report_parser(sub)
    add_status_parser(sub)
    add_export_parser(sub)
    return parser


def run_options(args: argparse.Namespace) -> "RunOptions":
    """The run flags of ``dfqbench run`` as :class:`dfqbench.request.RunOptions` (the flags' destinations are its
    field names), checked (:func:`dfqbench.request.check_options`: torch-free, before a cached dry run)."""
    from dfqbench.request import RunOptions, check_options

    options = RunOptions(**{name: getattr(args, name) for name in RunOptions.option_names()})
    check_options(options)
    return options


# `dfqbench run` flags that only a grid launch reads (argparse dest → flag), and those only a single run reads
GRID_ONLY_FLAGS = {"dry_run": "--dry-run", "only": "--only", "seeds": "--seeds", "retry_failed": "--retry-failed",
                   "jobs": "--jobs", "runs_per_gpu": "--runs-per-gpu", "profile": "--profile", "profiles": "--profiles"}
SINGLE_RUN_FLAGS = {"method": "--method", "model": "--model", "bits": "--bits", "seed": "--seed"}


def check_run_mode(args: argparse.Namespace) -> None:
    """``dfqbench run`` trains one cell or launches a grid (``--grid``): a flag that only the other reads is one
    line, never silently ignored (a single run's ``--dry-run`` would train for real)."""
    if args.grid is not None:
        if args.restart:
            raise DfqbenchError("--restart is for single runs, not with --grid; to start a grid run from scratch, "
                                "delete its folder (named in the error) and run the grid again")
        single = [flag for dest, flag in SINGLE_RUN_FLAGS.items() if getattr(args, dest) is not None]
        if single:
            raise DfqbenchError(f"{single[0]} is for single runs, not with --grid; filter a grid with --only "
                                "(e.g. --only method=gdfq) and set its seeds with --seeds")
        filters = [text for text in args.overrides if "." not in text.partition("=")[0]]
        if filters:  # `--only a=1 b=2`: each --only takes one filter, so b=2 arrived here as an override
            raise DfqbenchError(f"override {filters[0]!r} has no section (train., method. or quant.); to keep only "
                                f"some cells, give each filter its own --only: --only {filters[0]}")
        return
    if args.json:
        raise DfqbenchError("--json prints a grid's dry-run plan (run --grid NAME --dry-run --json); a single run "
                            "writes its record to <results>/runs/<run>/record.json")
    grid_only = [flag for dest, flag in GRID_ONLY_FLAGS.items() if getattr(args, dest, None) not in (None, False)]
    if args.executor != "local":
        grid_only.append("--executor")
    if grid_only:
        raise DfqbenchError(f"{', '.join(grid_only)} {'is' if len(grid_only) == 1 else 'are'} for grids "
                            "(run --grid NAME|FILE …), not for a single run")


def _cmd_run(args: argparse.Namespace) -> int:
    options = run_options(args)
    check_run_mode(args)
    if args.grid is not None:  # before the imports below: a dry run from the plan cache never imports torch
        from dfqbench.launch.cli import run_grid

        return run_grid(args, options)
    from dfqbench.core.progress import make_progress  # torch-free

    missing = [flag for flag in ("method", "model", "bits") if getattr(args, flag) is None]
    if missing:
        raise DfqbenchError(f"--{missing[0]} is required (or run a grid with --grid NAME|FILE)")
    progress = make_progress(force_plain=args.plain)
    progress.stage(f"preparing {args.method} {args.model} {args.bits} seed {args.seed or 0}: importing torch, "
                   "checking the request")
    from dfqbench.request import RunRequest
    from dfqbench.runner import run

    request = RunRequest.of(options, method=args.method, model=args.model, bits=args.bits, seed=args.seed or 0,
                            protocol=args.protocol or "paper")
    if args.protocol is None:  # the faithful default, which can be long: say which schedule and how to pick quick
        from dfqbench.launch.estimate import protocol_notice

        progress.message(protocol_notice(request))
    record = run(request, progress, restart=args.restart, rerun_stale=args.rerun_stale)
    progress.stop()
    print(summarize(record, request.overrides, record_path(request, record)), flush=True)
    return 0


def record_path(request, record: "RunRecord"):
    """The absolute path of the run's record.json."""
    from dfqbench.store import ResultsStore

    return ResultsStore(request.results).run(record.run_name).record_path.resolve()


def summarize(record: "RunRecord", overrides: Sequence[str] = (), path: object = None) -> str:
    """A short, readable summary of a finished run's record: the overrides asked for, the numbers, and the
    record's absolute path. The best epoch is shown as the record's 0-based index (``best_epoch``, as in
    ``top1_per_epoch`` and metrics.jsonl) and as the 1-based count the progress lines use."""
    spec = record.spec

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    teacher = spec["teacher"].get("source", "?")
    best = record.best_epoch
    best_at = "" if best is None else f"(best_epoch {best}: epoch {best + 1} of {record.epochs})"
    return "\n".join([
        f"{spec['method']} {spec['model']} {spec['bits']} seed {spec['seed']} ({spec['protocol']} protocol, "
        f"teacher from {teacher})",
        *([f"  overrides             {' '.join(overrides)}"] if overrides else []),
        f"  FP teacher top-1      {pct(record.fp_top1)}",
        f"  calibrated only       {pct(record.calibrated_top1)}   (ranges calibrated, no fine-tuning)",
        f"  best over epochs      {pct(record.best_top1)}   {best_at}",
        f"  final epoch           {pct(record.final_top1)}",
        *([f"  DIVERGED              {record.diverged} (training stopped; best is over the epochs before)"]
          if record.diverged else []),
        f"  wall time             {record.wall_time_s or 0:.0f} s on {record.device}",
        f"  record                {path or f'{record.run_name}/record.json'}",
    ])


def list_document(what: str) -> list[dict]:
    """``dfqbench list methods|models --json``: one object per registered method or zoo model."""
    if what == "methods":
        from dfqbench.plugins import METHOD_SOURCES, load_methods

        registry = load_methods()
        return [{"name": name, "version": registry.get(name).version, "paper": registry.get(name).paper,
                 "steps": list(registry.get(name).steps), "from": METHOD_SOURCES.get(name, "?"),
                 "data_free": registry.get(name).data_free} for name in registry]
    from dfqbench.zoo.models import KNOWN_MODELS

    return [{"name": name, "dataset": info.dataset, "num_classes": info.num_classes, "input_size": info.input_size,
             "normalization": {"name": info.normalization.name, "mean": list(info.normalization.mean),
                               "std": list(info.normalization.std)}} for name, info in KNOWN_MODELS.items()]


def _cmd_list(args: argparse.Namespace) -> int:
    if args.json:
        import json

        print(json.dumps(list_document(args.what), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    if args.what == "methods":
        from dfqbench.plugins import METHOD_SOURCES, load_methods

        registry = load_methods()
        for column in ("method", "version", "data", "paper", "from"):
            table.add_column(column)
        for name in registry:  # "data": a method with data_free = False (real_kd) fine-tunes on real images
            cls = registry.get(name)
            data = "data-free" if cls.data_free else "REAL DATA (not data-free)"
            table.add_row(name, cls.version, data, cls.paper, METHOD_SOURCES.get(name, "?"))
    else:
        from dfqbench.zoo.models import KNOWN_MODELS

        for column in ("model", "dataset", "classes", "input", "normalisation"):
            table.add_column(column)
        for name, info in KNOWN_MODELS.items():
            table.add_row(name, info.dataset, str(info.num_classes), str(info.input_size), info.normalization.name)
    Console(width=max(132, Console().width)).print(table)
    if args.what == "models":
        print("Any other pytorchcv model name works too (dataset inferred from its suffix).")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from dfqbench.report.cli import run_report

    return run_report(args)


def _cmd_status(args: argparse.Namespace) -> int:
    from dfqbench.launch.cli import run_status

    return run_status(args)


def add_export_parser(sub) -> None:
    export = sub.add_parser("export", help="export a finished run's quantized student as ONNX (QDQ) or integer "
                            "tensors, checked on the run's test images (docs/export.md)")
    export.add_argument("run", metavar="RUN", help="a run folder, or a run id or run name under --results")
    export.add_argument("--format", default="onnx", metavar="onnx|int",
                        help="onnx (QuantizeLinear/DequantizeLinear, opset 21; default) or int (integer weights, "
                             "scales and zero points in safetensors + manifest.json; dfqbench.export.load_int)")
    export.add_argument("--which", default="best", metavar="best|final", help="the best epoch's student (default) "
                        "or the last epoch's")
    export.add_argument("--results", help="results folder of a run id or name (env DFQBENCH_RESULTS; default "
                        "./results)")
    export.add_argument("--out", help="output file (onnx) or folder (int); default <run folder>/export/"
                        "student-<which>.onnx or student-<which>-int/")
    export.add_argument("--force", action="store_true", help="overwrite an existing output")
    export.add_argument("--no-check", action="store_true",
                        help="skip evaluating the export on the run's test images")
    export.add_argument("--data-root", help="test data root (env DFQBENCH_DATA), for the check")


def _cmd_export(args: argparse.Namespace) -> int:
    from dfqbench.api import run_dir
    from dfqbench.export import export_run

    outcome = export_run(run_dir(args.run, args.results), args.format, args.which, out=args.out, force=args.force,
                         check=not args.no_check, data_root=args.data_root)
    what = "ONNX QDQ model (opset 21)" if outcome.format == "onnx" else "integer pack"
    print(f"wrote {outcome.path}: {what} of the {outcome.which} student (epoch {outcome.epoch})")
    check = outcome.check
    if check is None:
        return 0
    runtime = "onnxruntime, CPU" if outcome.format == "onnx" else "dfqbench.export.load_int"
    verdict = "ok" if check.passed else "FAILED: outside the tolerance"
    print(f"check on {check.images} test images ({runtime}): top-1 {check.exported_top1:.2f} % vs recorded "
          f"{check.recorded_top1:.2f} %, tolerance ±{check.tolerance:.2f} points: {verdict}; same class as the "
          f"PyTorch student on {check.agree}/{check.images} images, max |Δ logit| {check.max_logit_diff:.3g}")
    return 0 if check.passed else 1


def check_no_empty_values(args: argparse.Namespace) -> None:
    """A flag given an empty value (``--results ""``, ``--protocol ""``, ``--seeds ""``: an unset shell variable,
    most often) is one line naming it, never the flag's default taken silently."""
    for dest, value in vars(args).items():
        if isinstance(value, str) and not value.strip() and dest != "command":
            raise DfqbenchError(f"invalid --{dest.replace('_', '-')} {value!r}: empty; give a value or leave the "
                                "flag out")


def main(argv: Sequence[str] | None = None) -> int:
    """Ctrl-C at any point, imports included, is one line and exit status 130 (no traceback)."""
    try:
        args = build_parser().parse_args(argv)
        check_no_empty_values(args)
        return {"run": _cmd_run, "list": _cmd_list, "report": _cmd_report,
                "status": _cmd_status, "export": _cmd_export}[args.command](args)
    except DfqbenchError as exc:
        print(f"dfqbench: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # 2: bad input; a run that failed at run time (CUDA OOM) sets 1
    except KeyboardInterrupt:
        print("dfqbench: interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
