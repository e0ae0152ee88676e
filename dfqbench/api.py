"""The Python API: run cells and grids, and read results back as pandas DataFrames and PyTorch modules.

::

    import dfqbench

    record = dfqbench.run("gdfq", "resnet20_cifar10", "w4a4", seed=0, protocol="quick")
    runs = dfqbench.load_results("results")               # one row per run
    metrics = dfqbench.load_metrics(runs.iloc[0])          # per-iteration and per-epoch logs
    student = dfqbench.load_student(runs.iloc[0], "best")  # the fake-quantized student, ready to evaluate
    dfqbench.evaluate(student, runs.iloc[0])               # == the record's best_top1

:func:`run` and :func:`run_grid` build the request the command line builds from its flags
(:class:`dfqbench.request.RunRequest`, :class:`dfqbench.launch.launcher.GridRequest`) and go through the same
library code (:func:`dfqbench.runner.run`, :mod:`dfqbench.launch.launcher`) with the same checks; bad input
raises :class:`dfqbench.errors.DfqbenchError` with the CLI's one-line message instead of exiting. Every public
function goes through one error boundary, :func:`public`: arguments checked against their annotations (a wrong
type, an unknown or missing argument is one line), and an ``OSError`` on a given path one line too. Nothing
here imports the command line (``dfqbench.cli``, ``dfqbench.launch.cli``, ``dfqbench.report.cli``). Readers go
through the results store's readers (:mod:`dfqbench.report.load`, :mod:`dfqbench.store`).
This module imports nothing heavy at import time (``import dfqbench`` stays light); torch, pandas and the
trainer load inside the functions.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import numbers
import os
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence, TypeVar, Union

from dfqbench.core.progress import Progress, SilentProgress  # torch-free
from dfqbench.errors import DfqbenchError
from dfqbench.request import RunOptions, RunRequest, check_options

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

Overrides = Union[Sequence[str], Mapping[str, Any], None]
PathText = Union[str, os.PathLike, None]  # a file or folder given as text or a path object
RunRef = Any  # a run folder path, a row of load_results (or any mapping with "path" or "run_name"), a record dict,
# or a run id / run name (with results=)

LEADING_COLUMNS = ("method", "model", "dataset", "bits", "seed", "protocol", "state", "fp_top1", "calibrated_top1",
                   "best_top1", "best_epoch", "final_top1", "diverged", "epochs", "wall_time_s", "device", "engine",
                   "run_id", "run_name", "path", "reason")


# -- the error boundary of the public API --------------------------------------------------------------
_F = TypeVar("_F", bound=Callable[..., Any])
_HINTS: dict[str, dict[str, Any]] = {}


class _Mismatch(Exception):
    """A value that does not match an annotation (turned into a DfqbenchError by :func:`public`)."""


def _resolve(annotation: Any) -> Any:
    """A parameter's annotation as a type (``from __future__ import annotations`` keeps them as text; the
    torch type of :func:`evaluate`'s model is imported only when it is checked)."""
    namespace = dict(globals())
    while isinstance(annotation, str):
        if "nn." in annotation:
            from torch import nn

            namespace["nn"] = nn
        annotation = eval(annotation, namespace)  # noqa: S307  (our own annotations, never user text)
    return annotation


def _describe(tp: Any) -> str:
    """``int | None`` → "an integer or None" (what the one-line message says was expected)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arg) for arg in args))
    names = {type(None): "None", str: "a string", bool: "True or False", int: "an integer", float: "a number",
             os.PathLike: "a path"}
    if tp in names or tp is None:
        return names.get(tp, "None")
    if origin in (collections.abc.Sequence, collections.abc.Iterable):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is collections.abc.Mapping:
        return "a mapping with string keys"
    if origin is collections.abc.Callable:
        return "a function"
    if isinstance(tp, type):
        module = "torch.nn" if tp.__module__.startswith("torch.nn.") else tp.__module__
        return f"a {module}.{tp.__qualname__}"
    return str(tp)


def _convert(value: Any, tp: Any) -> Any:
    """``value`` checked against ``tp`` and converted where the API promises more than the type (a numpy
    integer is an int, a generator of seeds a list); :class:`_Mismatch` if it does not match."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        for arg in args:  # in order: the first that matches (a str before an iterable of str)
            try:
                return _convert(value, arg)
            except _Mismatch:
                pass
        raise _Mismatch
    if tp is None or tp is type(None):
        if value is None:
            return value
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if origin in (collections.abc.Sequence, collections.abc.Iterable):
        if isinstance(value, str) and args[0] is str:
            return value  # one item (an override, a logger): the functions take it as such
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, collections.abc.Iterable):
            raise _Mismatch
        return [_convert(item, args[0]) for item in value]
    if origin is collections.abc.Mapping:
        if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
            return value
        raise _Mismatch
    if origin is collections.abc.Callable:
        if callable(value):
            return value
        raise _Mismatch
    if tp is os.PathLike and isinstance(value, os.PathLike) and isinstance(os.fspath(value), str):
        return os.fspath(value)  # the functions below take a path as text
    if isinstance(tp, type) and tp is not os.PathLike and isinstance(value, tp):
        return value
    raise _Mismatch


def public(function: _F) -> _F:
    """The one error boundary of the Python API: each argument is checked against its annotation (and
    converted, :func:`_convert`) before the function runs, an unknown or missing argument is named, and what a
    user's input or files can foreseeably cause (an ``OSError`` on a path they gave) is a :class:`DfqbenchError`
    with one line, as the command line prints it. Anything else is a bug and is raised as it is."""
    signature = inspect.signature(function)
    name = function.__name__

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        from dfqbench.registry import unknown_choice

        unknown = [key for key in kwargs if key not in signature.parameters]
        if unknown:
            raise DfqbenchError(unknown_choice(f"{name}() argument", unknown[0], list(signature.parameters)))
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise DfqbenchError(f"{exc}; see help(dfqbench.{name})") from None
        hints = _HINTS.get(name)
        if hints is None:
            hints = _HINTS[name] = {key: _resolve(p.annotation) for key, p in signature.parameters.items()}
        for key, value in bound.arguments.items():
            try:
                bound.arguments[key] = _convert(value, hints[key])
            except _Mismatch:
                raise DfqbenchError(f"invalid {name}() argument {key}={_shown(value)}: expected "
                                    f"{_describe(hints[key])}") from None
        try:
            return function(*bound.args, **bound.kwargs)
        except OSError as exc:  # a path given that cannot be read or written (a StoreError is already one line)
            if isinstance(exc, DfqbenchError):
                raise
            where = f" '{exc.filename}'" if exc.filename else ""
            raise DfqbenchError(f"{name}(): cannot use{where} ({exc.strerror or exc})") from exc

    return checked  # type: ignore[return-value]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- running ---------------------------------------------------------------------------------------------
def _override_list(overrides: Overrides) -> list[str]:
    """``["train.epochs=3"]`` as is; ``{"train.epochs": 3}`` as ``["train.epochs=3"]`` (values as YAML)."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        from dfqbench.launch.grid import override_text

        return [override_text(str(key), value) for key, value in overrides.items()]
    return [str(text) for text in overrides]


def _log_list(log: str | Iterable[str] | None) -> list[str]:
    return [log] if isinstance(log, str) else list(log or [])


def _progress(progress: "bool | Progress") -> Progress:
    from dfqbench.core.progress import make_progress

    if isinstance(progress, Progress):
        return progress
    return make_progress() if progress else SilentProgress()


def _options(results: str | os.PathLike | None, overrides: Overrides, log: str | Iterable[str] | None,
             **values: Any) -> RunOptions:
    """The API's keywords as :class:`dfqbench.request.RunOptions` (the command line's run flags)."""
    return RunOptions(results=None if results is None else str(results), overrides=_override_list(overrides),
                      log=_log_list(log), **values)


@public
def run(method: str, model: str, bits: str, seed: int = 0, protocol: str = "paper", overrides: Overrides = None,
        results: str | os.PathLike | None = None, *, weights: PathText = None, weights_dir: PathText = None,
        weights_norm: str | None = None, data_root: PathText = None, device: str = "auto", engine: str = "auto",
        log: str | Iterable[str] | None = None, log_every: int = 50, progress: "bool | Progress" = True,
        rerun_stale: bool = False) -> dict[str, Any]:
    """Run one cell (``dfqbench run``) and return its record (the content of ``record.json``).

    A finished run is not trained again (its record is returned); an interrupted one resumes from its last
    epoch; with ``rerun_stale``, a finished run whose method code changed since it ran (stale) is trained
    again from scratch. ``overrides``: ``["train.epochs=3"]`` or ``{"train.epochs": 3}``; ``log``: ``"tensorboard"``,
    ``"wandb"`` or a list of them; ``progress``: True (progress lines or a live bar), False (silent) or a
    :class:`dfqbench.core.progress.Progress`. Bad input raises :class:`DfqbenchError` before anything is written.
    """
    options = _options(results, overrides, log, weights=weights, weights_dir=weights_dir, weights_norm=weights_norm,
                       data_root=data_root, device=device, engine=engine, log_every=log_every)
    check_options(options)  # as the command line checks its flags, before torch is imported
    request = RunRequest.of(options, method=method, model=model, bits=bits, seed=seed, protocol=protocol)
    from dfqbench.runner import run as run_request

    return run_request(request, _progress(progress), rerun_stale=rerun_stale).to_dict()


def _only_list(only: Mapping[str, Any] | Sequence[str] | None) -> list[str] | None:
    """``{"bits": ["w4a4", "w3a3"], "seed": 0}`` → ``["bits=w4a4,w3a3", "seed=0"]`` (``--only``)."""
    if only is None:
        return None
    if isinstance(only, str):
        return [only]
    if isinstance(only, Mapping):
        texts = []
        for key, values in only.items():
            values = values if isinstance(values, (list, tuple, set)) else [values]
            texts.append(f"{key}=" + ",".join(str(v) for v in values))
        return texts
    return [str(text) for text in only]


def _say(progress: "bool | Callable[[str], None]") -> "Callable[[str], None] | None":
    if callable(progress):
        return progress
    return (lambda text: print(text, flush=True)) if progress else None


@public
def run_grid(grid: str | os.PathLike, results: str | os.PathLike | None = None, *,
             only: Mapping[str, Any] | Sequence[str] | None = None, seeds: str | Iterable[int] | None = None,
             protocol: str | None = None, overrides: Overrides = None, dry_run: bool = False,
             retry_failed: bool = False, rerun_stale: bool = False, executor: str = "local", jobs: int | None = None,
             runs_per_gpu: int | None = None, profile: str | None = None, profiles: PathText = None,
             weights: PathText = None, weights_dir: PathText = None, weights_norm: str | None = None,
             data_root: PathText = None, device: str = "auto", engine: str = "auto",
             log: str | Iterable[str] | None = None, log_every: int = 50,
             progress: "bool | Callable[[str], None]" = False, errors: str = "raise") -> "pd.DataFrame":
    """Run a grid (``dfqbench run --grid``): a shipped grid's name or a YAML file, filtered with ``only``
    (``{"bits": "w4a4"}`` or ``["bits=w4a4"]``) and ``seeds`` (``[0, 1]`` or ``"0-4"``).

    Returns :func:`load_results`' frame of the grid's runs after the launch (one row per run; a run without a
    folder yet is a pending row). With ``dry_run=True`` nothing runs: one row per cell of the plan
    (``--dry-run --json``'s ``cells``), the rest of that document in ``frame.attrs``. A Slurm launch returns
    after submitting (the runs are then pending). The grid is planned once.

    ``rerun_stale``: also train again, from scratch, the done runs whose method code changed since they ran
    (``--rerun-stale``; ``dfqbench status`` and a dry run list them as stale).

    ``progress``: False (default) prints nothing; True prints what ``dfqbench run --grid`` prints (the runs to
    run, each worker's start and end, the submissions); a function is called with each of those lines instead.
    ``errors``: when runs of this launch fail, ``"raise"`` (default) raises :class:`DfqbenchError` naming each
    failed run and its reason (the frame is its ``runs`` attribute, the (run name, reason) pairs its ``failed``);
    ``"return"`` returns the frame, where failed runs have ``state == "failed"`` and their ``reason`` (the pairs
    are also in ``frame.attrs["failed"]``). Ctrl-C stops the local workers and raises KeyboardInterrupt
    (finished runs are kept; run it again to resume).
    """
    from dfqbench.launch import launcher

    if errors not in ("raise", "return"):
        from dfqbench.registry import unknown_choice

        raise DfqbenchError(unknown_choice("errors", errors, ["raise", "return"]))
    if seeds is not None and not isinstance(seeds, str):
        seeds = ",".join(str(int(s)) for s in seeds)
    request = launcher.GridRequest(
        grid=str(grid), only=_only_list(only), seeds=seeds, retry_failed=retry_failed, rerun_stale=rerun_stale,
        executor=executor, jobs=jobs,
        runs_per_gpu=runs_per_gpu, profile=profile, profiles=profiles,
        options=_options(results, overrides, log, protocol=protocol, weights=weights, weights_dir=weights_dir,
                         weights_norm=weights_norm, data_root=data_root, device=device, engine=engine,
                         log_every=log_every))
    inputs = launcher.grid_inputs(request, write=not dry_run)  # checks the request first
    if dry_run:
        return _plan_frame(launcher.dry_plan(inputs), retry_failed, rerun_stale)
    say = _say(progress) or launcher.quiet
    # the workers write to their run folders' worker.log: only what ``say`` is given reaches the caller
    outcome = launcher.launch(launcher.plan_launch(inputs, say), request, say, worker_logs=True)
    if outcome.exit_code == 130:
        raise KeyboardInterrupt("grid interrupted; run it again to resume (finished runs are kept)")
    frame = _grid_results(outcome.plan)
    frame.attrs["failed"] = outcome.failed
    if outcome.failed and errors == "raise":
        launched = len(outcome.plan.to_launch(retry_failed, rerun_stale))
        error = DfqbenchError(f"grid {outcome.plan.grid.name}: {len(outcome.failed)} of {launched} runs failed: "
                              + "; ".join(f"{name}: {reason}" for name, reason in outcome.failed)
                              + " (see their error.json; errors='return' returns them as rows instead)")
        error.exit_code = 1  # type: ignore[attr-defined]  (runs failed at run time, not bad input)
        error.failed = outcome.failed  # type: ignore[attr-defined]
        error.runs = frame  # type: ignore[attr-defined]
        raise error
    return frame


def _plan_frame(plan, retry_failed: bool, rerun_stale: bool = False) -> "pd.DataFrame":
    import pandas as pd

    from dfqbench.launch.summary import plan_document

    document = plan_document(plan, retry_failed, rerun_stale)
    frame = pd.DataFrame(document.pop("cells"))
    frame.attrs.update(document)
    return frame


def _grid_results(plan) -> "pd.DataFrame":
    """The results rows of the planned grid's runs (a run without a folder yet is a pending row)."""
    from dfqbench.report.load import Scan, filter_scan, scan_results

    options = plan.options
    runs = [c for c in plan.runs() if c.run_id is not None]
    root = Path(options.results)
    scan = scan_results(root) if root.is_dir() else Scan(root)
    scan = filter_scan(scan, (), {c.run_id for c in runs})
    found = {r.spec.get("run_id") for r in scan.records} | {u.spec.get("run_id") for u in scan.unfinished if u.spec}
    extra = [{"method": c.cell.method, "model": c.cell.model, "dataset": c.cell.values.get("dataset"),
              "bits": c.cell.bits, "seed": c.cell.seed, "protocol": options.protocol or c.cell.protocol,
              "state": c.status, "reason": c.reason, "run_id": c.run_id, "run_name": c.run_name,
              "path": str(c.run_dir) if c.run_dir else None} for c in runs if c.run_id not in found]
    return _frame(scan, extra)


# -- reading ---------------------------------------------------------------------------------------------
@public
def load_results(results_dir: str | os.PathLike | None = None, grid: str | os.PathLike | None = None, *,
                 protocol: str | None = None) -> "pd.DataFrame":
    """Every run under ``results_dir`` (default ``$DFQBENCH_RESULTS`` or ``./results``) as one row: method,
    model, dataset, bits, seed, protocol, state (done, running, started, pending, failed, lost, unreadable),
    the accuracies (``fp_top1``, ``calibrated_top1``, ``best_top1``, ``best_epoch``, ``final_top1``),
    ``diverged``, ``epochs``, ``wall_time_s``, ``device``, ``engine``, ``run_id``, ``run_name``, ``path``,
    ``reason`` (why a run failed or is held), and the whole spec flattened as ``spec.<dotted key>`` columns
    (lists as tuples).

    ``grid``: only that grid's runs, as its launches into ``results_dir`` planned them (``dfqbench report
    --grid``; its runs without a folder yet are pending rows). ``protocol``: only runs of that protocol.
    """
    from dfqbench.report.load import filter_scan, scan_results

    scan = scan_results(results_dir)
    if grid is not None:
        from dfqbench.report.selection import grid_selection

        run_ids, missing, _ = grid_selection(str(grid), scan.root)
        scan.unfinished += missing
        scan = filter_scan(scan, (), run_ids)
    if protocol is not None:
        from dfqbench.report.load import Where

        scan = filter_scan(scan, [Where("protocol", (protocol,))])
    return _frame(scan)


def _flat_spec(spec: dict[str, Any] | None) -> dict[str, Any]:
    from dfqbench.report.load import flatten

    if not spec:
        return {}
    return {f"spec.{k}": tuple(v) if isinstance(v, list) else v for k, v in flatten(spec).items()}


def _frame(scan, extra: list[dict[str, Any]] = ()) -> "pd.DataFrame":
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for r in scan.records:
        record, spec = r.record, r.spec
        rows.append({
            "method": spec["method"], "model": spec["model"], "dataset": spec.get("dataset"), "bits": spec["bits"],
            "seed": spec["seed"], "protocol": spec.get("protocol", "custom"), "state": "done",
            **{k: record.get(k) for k in ("fp_top1", "calibrated_top1", "best_top1", "best_epoch", "final_top1",
                                          "diverged", "epochs", "wall_time_s", "device", "engine")},
            "run_id": record.get("run_id", spec.get("run_id")), "run_name": r.path.name, "path": str(r.path),
            "reason": None, **_flat_spec(spec),
        })
    for u in scan.unfinished:
        spec = u.spec or {}
        rows.append({
            "method": spec.get("method"), "model": spec.get("model"), "dataset": spec.get("dataset"),
            "bits": spec.get("bits"), "seed": spec.get("seed"), "protocol": spec.get("protocol"), "state": u.state,
            "run_id": spec.get("run_id"), "run_name": u.path.name, "path": str(u.path), "reason": u.message or None,
            **_flat_spec(u.spec),
        })
    for path, why in scan.unreadable:
        rows.append({"state": "unreadable", "run_name": path.parent.name, "path": str(path.parent), "reason": why})
    rows.extend(extra)
    frame = pd.DataFrame(rows)
    spec_columns = sorted({k for row in rows for k in row if k.startswith("spec.")})
    return frame.reindex(columns=[*LEADING_COLUMNS, *spec_columns])


@public
def run_dir(run: RunRef, results: str | os.PathLike | None = None) -> Path:
    """The folder of ``run``: a run folder path; a row of :func:`load_results` or a record dict (its ``path``,
    else its ``run_name`` under ``results``); or a run id or run name under ``results`` (default
    ``$DFQBENCH_RESULTS`` or ``./results``)."""
    from dfqbench.store import results_root

    if hasattr(run, "get") and not isinstance(run, (str, os.PathLike)):  # a mapping or a pandas row
        path = run.get("path")
        if isinstance(path, (str, os.PathLike)) and path:
            return _checked(Path(path))
        run = next((value for value in (run.get("run_name"), run.get("run_id")) if isinstance(value, str) and value),
                   None)
        if not run:
            raise DfqbenchError("a run given as a mapping needs its 'path', 'run_name' or 'run_id' "
                                "(a row of dfqbench.load_results or a record)")
    if not isinstance(run, (str, os.PathLike)) or not isinstance(os.fspath(run), str):
        raise DfqbenchError(f"invalid run {_shown(run)}: expected a run folder, a row of dfqbench.load_results, a "
                            "record dict, or a run id or run name (with results=DIR)")
    text = os.fspath(run)
    path = Path(text).expanduser()
    if path.is_dir():
        return _checked(path)
    from dfqbench.store import ResultsStore

    runs = ResultsStore(results_root(results)).runs_dir
    if (runs / text).is_dir():
        return _checked(runs / text)
    matches = sorted(p for p in runs.glob(f"*_{text}") if p.is_dir()) if runs.is_dir() and "/" not in text else []
    if len(matches) == 1:
        return _checked(matches[0])
    raise DfqbenchError(f"no run {text!r} under '{runs}': give a run folder, a row of dfqbench.load_results, or "
                        "a run id or run name with results=DIR")


def _checked(path: Path) -> Path:
    if not (path / "spec.json").is_file():
        raise DfqbenchError(f"'{path}' is not a run folder (no spec.json)")
    return path


def _spec(path: Path) -> dict[str, Any]:
    from dfqbench.store import RunFolder

    return RunFolder(path).spec()


@public
def load_metrics(run: RunRef, results: str | os.PathLike | None = None) -> "pd.DataFrame":
    """The run's ``metrics.jsonl`` as a frame: one row per logged iteration (``type == "iter"``: every loss
    term and diagnostic) and per epoch (``type == "epoch"``: top1, lr_q, lr_g, seconds), with ``step``, the
    global iteration count the loggers use (iteration rows: epoch × iters_per_epoch + iter + 1; epoch rows:
    the step of the epoch's last iteration)."""
    import pandas as pd

    from dfqbench.report.load import read_metrics

    path = run_dir(run, results)
    rows = read_metrics(path)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["type", "epoch", "iter", "step"])
    iters = int(_spec(path)["train"]["iters_per_epoch"])
    iteration = frame["iter"] if "iter" in frame else pd.Series(float("nan"), index=frame.index)
    frame["step"] = (frame["epoch"] * iters + iteration.fillna(iters - 1) + 1).astype("int64")
    if "iter" in frame:
        frame["iter"] = frame["iter"].astype("Int64")  # epoch rows have none
    first = [c for c in ("type", "epoch", "iter", "step") if c in frame]
    return frame[first + [c for c in frame.columns if c not in first]]


@public
def load_student(run: RunRef, which: str = "best", results: str | os.PathLike | None = None,
                 device: str = "cpu") -> "nn.Module":
    """The run's fake-quantized student with its trained weights, BN statistics and activation ranges, in eval
    mode with the ranges frozen: ``which="best"`` (the epoch of the record's ``best_top1``) or ``"final"``
    (the last epoch). Its input is normalised as the teacher's (the spec's ``normalization``); :func:`evaluate`
    does that."""
    from dfqbench.core.snapshots import load_student_module, student_state
    from dfqbench.store import RunFolder

    path = run_dir(run, results)
    stored = RunFolder(path).read_record()
    state, _epoch = student_state(path, which, None if stored is None else stored.to_dict())
    return load_student_module(_spec(path), state).to(device)


@public
def evaluate(model: "nn.Module", run: RunRef, results: str | os.PathLike | None = None, *,
             data_root: str | os.PathLike | None = None, device: str = "cpu") -> float:
    """Top-1 (percent) of ``model`` on the run's test set, normalised and subsetted as the run evaluated
    (``train.eval_max_images``); ``data_root`` as ``dfqbench run --data-root`` (env ``DFQBENCH_DATA``)."""
    from dfqbench.zoo import Evaluator, Normalization, load_test_set, model_info

    spec = _spec(run_dir(run, results))
    norm = spec["normalization"]
    normalization = Normalization(tuple(norm["mean"]), tuple(norm["std"]), norm.get("name", "custom"))
    test_set = load_test_set(model_info(spec["model"]), data_root)
    evaluator = Evaluator(test_set, normalization, device=device, max_images=spec["train"].get("eval_max_images"))
    model.eval()
    return evaluator.evaluate(model.to(device))

