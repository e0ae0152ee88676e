"""From grid cells to planned runs: validity per cell, the run each cell maps to, and that run's state.

Every cell ends in exactly one status: a run state (pending, running, done, failed, lost; see
:mod:`dfqbench.store.state`) or ``excluded`` (by the grid file), ``unsupported`` (the method's
``unsupported_reason``), ``skipped`` (no teacher weights for the cell's model: a single ``DFQBENCH_WEIGHTS``
file is another model's, ``zoo.single_file_misfit``) or ``invalid`` (anything ``runner.prepare`` would
reject: an unregistered method, bad bits, an unknown override key, a missing weights file…), always with
its reason. Cells that map to
the same run id are counted once (the later ones are marked duplicates). A done run is also *stale* when the
method code that computed it changed since (:mod:`dfqbench.store.codestamp`; ``--rerun-stale`` trains it
again). Nothing here loads a model.

Planning is two steps: :func:`decide` (per cell, from the method registry, the zoo and the teacher's
identity: what :mod:`dfqbench.launch.plancache` may remember) and :func:`assemble` (the run states, read
from the results store every time). This module imports torch only inside :func:`plan_grid`, so that a
dry run answered from the plan cache never imports it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dfqbench.errors import DfqbenchError
from dfqbench.launch.banks import bank_summary
from dfqbench.launch.estimate import Estimate
from dfqbench.launch.grid import Cell, Grid, apply_filters, dataset_of, expand
from dfqbench.request import RunOptions, RunRequest
from dfqbench.store import CELL_ONLY_STATES, ResultsStore, RunFolder, RunState, StoreError, run_state
from dfqbench.store.codestamp import CodeState, code_state

if TYPE_CHECKING:
    from dfqbench.specs import RunSpec
    from dfqbench.zoo.teacher import Teacher
    from dfqbench.store import RunRecord


@dataclass(kw_only=True)
class LaunchOptions(RunOptions):
    """The run options of a grid launch (:class:`dfqbench.request.RunOptions`, none of which is in the grid file),
    with the results folder resolved: every cell's :class:`RunRequest` is the cell with these options."""

    results: Path

    def request(self, cell: Cell) -> RunRequest:
        return RunRequest.of(self, method=cell.method, model=cell.model, bits=cell.bits, seed=cell.seed,
                             protocol=self.protocol or cell.protocol, overrides=self.overrides_for(cell),
                             results=str(self.results))

    def overrides_for(self, cell: Cell) -> list[str]:
        return list(cell.overrides) + list(self.overrides)


@dataclass(frozen=True)
class Decision:
    """What planning decides for one cell before its run's state is read (kept by the plan cache).

    ``kind`` is excluded, unsupported, invalid or run; a run has its ``run_name``/``run_id`` (None while its
    pytorchcv teacher is not downloaded: ``reason`` says so), its resolved train settings and Q steps per
    iteration (for the estimate).
    """

    kind: str
    reason: str | None = None
    run_name: str | None = None
    run_id: str | None = None
    train: dict[str, Any] | None = None
    q_steps: int | None = None
    bank: dict[str, Any] | None = None  # the image bank the run needs (dfqbench.launch.banks.bank_summary)
    data_free: bool = True  # False: the method fine-tunes on real data (real_kd); the dry run says so


@dataclass
class PlannedCell:
    cell: Cell
    status: str
    reason: str | None = None
    run_name: str | None = None
    run_id: str | None = None
    train: dict[str, Any] | None = None
    q_steps: int | None = None
    results: Path | None = None
    duplicate_of: str | None = None
    decision: Decision | None = None
    request: RunRequest | None = None  # set by a full plan (plan_grid), None from the plan cache
    spec: "RunSpec | None" = None
    code: CodeState | None = None  # a done run's code: current, stale or unknown (None for other states)

    @property
    def stale(self) -> bool:
        return self.status == "done" and self.code is not None and self.code.stale

    @property
    def is_run(self) -> bool:
        return self.status not in CELL_ONLY_STATES and self.duplicate_of is None

    @property
    def run_dir(self) -> Path | None:
        if self.run_name is None or self.results is None:
            return None
        return ResultsStore(self.results).run_dir(self.run_name)

    @property
    def name(self) -> str:
        return self.run_name or self.cell.label


@dataclass
class Plan:
    grid: Grid
    cells: list[PlannedCell]
    filtered_out: int
    options: LaunchOptions
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # model → dataset, teacher file (full plans)
    whole: "Plan | None" = None  # the unrestricted grid, when --only/--seeds restricted this plan (the grid index)

    def runs(self) -> list[PlannedCell]:
        return [c for c in self.cells if c.is_run]

    def counts(self) -> Counter:
        counts: Counter = Counter(c.status for c in self.cells if c.duplicate_of is None)
        counts["duplicate"] = sum(c.duplicate_of is not None for c in self.cells)
        return counts

    def to_launch(self, retry_failed: bool = False, rerun_stale: bool = False) -> list[PlannedCell]:
        wanted = {"pending", "lost"} | ({"failed"} if retry_failed else set())
        return [c for c in self.runs() if c.status in wanted or (rerun_stale and c.stale)]

    def stale(self) -> list[PlannedCell]:
        """Done runs computed by method code that changed since (``--rerun-stale`` trains them again)."""
        return [c for c in self.runs() if c.stale]

    def invalid(self) -> list[PlannedCell]:
        return [c for c in self.cells if c.status == "invalid"]

    def estimate(self, runs: list[PlannedCell]) -> Estimate:
        measured: dict[str, list[float]] = {}
        for c in self.runs():
            if c.status == "done":
                record = _read_record(c.run_dir)
                if record and str(record.device).startswith("cuda") and record.wall_time_s is not None:
                    measured.setdefault(_cost_key(c), []).append(float(record.wall_time_s))
        estimate = Estimate()
        for c in runs:
            if c.train is None or c.q_steps is None:
                estimate.unknown_runs += 1
            elif _cost_key(c) in measured:
                times = measured[_cost_key(c)]
                estimate.hours += sum(times) / len(times) / 3600
                estimate.measured_runs += 1
            else:
                dataset = c.cell.values.get("dataset") or "cifar10"
                estimate.add_formula_run(c.cell.method, c.cell.model, dataset, c.train, c.q_steps)
        return estimate


def _cost_key(c: PlannedCell) -> str:
    return json.dumps([c.cell.method, c.cell.model, c.train], sort_keys=True, default=str)


def _read_record(run_dir: Path | None) -> "RunRecord | None":
    try:
        return RunFolder(run_dir).read_record() if run_dir else None
    except StoreError:
        return None


def select_cells(grid: Grid, filters: dict[str, list[Any]] | None, seeds: list[int] | None,
                 datasets: Callable[[str], str | None] = dataset_of) -> tuple[list[Cell], int, list[str]]:
    """The grid's cells kept by the filters, how many the filters removed, and every model of the grid."""
    cells = expand(grid, seeds, datasets)
    kept = apply_filters(cells, filters, grid) if filters else cells
    return kept, len(cells) - len(kept), sorted({c.model for c in cells})


def assemble(grid: Grid, options: LaunchOptions, cells: list[Cell], decisions: list[Decision], filtered_out: int,
             extras: list[tuple[Any, Any]] | None = None) -> Plan:
    """The plan: each decided cell with its run's state read from the results store now."""
    planned: list[PlannedCell] = []
    seen: dict[str, str] = {}
    for i, (cell, decision) in enumerate(zip(cells, decisions)):
        if decision.kind != "run":
            state = RunState(decision.kind, decision.reason)
        elif decision.run_name is None:
            state = RunState("pending", decision.reason)
        else:
            state = run_state(ResultsStore(options.results).run_dir(decision.run_name))
        item = PlannedCell(cell, state.state, state.reason, decision.run_name, decision.run_id, decision.train,
                           decision.q_steps, options.results, decision=decision)
        if state.state == "done":
            record = _read_record(item.run_dir)
            item.code = code_state(record.code if record is not None else None)
        if extras is not None:
            item.request, item.spec = extras[i]
        if decision.run_id is not None:
            first = seen.setdefault(decision.run_id, cell.label)
            if first != cell.label:
                item.duplicate_of = first
        planned.append(item)
    return Plan(grid, planned, filtered_out, options)


def plan_grid(grid: Grid, options: LaunchOptions, filters: dict[str, list[Any]] | None = None,
              seeds: list[int] | None = None, *, whole: bool = False) -> Plan:
    """Expand, filter and classify every cell of ``grid`` (the full planner: imports torch and the methods).

    ``whole``: when ``filters`` or ``seeds`` restrict the plan, also plan the grid as its file defines it
    (``plan.whole``, which the grid index records) in the same pass: the method registry, the teachers'
    identities and the decisions of the cells both have are shared."""
    from dfqbench.plugins import load_methods

    registry = load_methods()
    teachers: dict[str, Teacher | DfqbenchError] = {}
    decided: dict[Cell, tuple[Decision, Any, Any]] = {}

    def one(filters: dict[str, list[Any]] | None, seeds: list[int] | None) -> Plan:
        kept, filtered_out, models = select_cells(grid, filters, seeds)
        for cell in kept:
            if cell not in decided:
                decided[cell] = decide(cell, options, registry, teachers)
        results = [decided[cell] for cell in kept]
        plan = assemble(grid, options, kept, [d for d, *_ in results], filtered_out, [tuple(x) for _, *x in results])
        for model in models:
            teacher = teachers.get(_zoo_name(model))
            plan.models[model] = {"dataset": dataset_of(model), "teacher_resolved": teacher is not None,
                                  "teacher_file": getattr(teacher, "file", None)}
        return plan

    plan = one(filters, seeds)
    if whole and (filters or seeds):
        plan.whole = one(None, None)
    return plan


def _zoo_name(model: str) -> str | None:
    from dfqbench.zoo import model_info

    try:
        return model_info(model).name
    except DfqbenchError:
        return None


def decide(cell: Cell, options: LaunchOptions, registry, teachers: dict) -> tuple[Decision, Any, Any]:
    """One cell's decision, with the run request and spec a launch needs (None where there is no run)."""
    from dfqbench.quant import parse_bits
    from dfqbench.runner import build_spec, request_settings
    from dfqbench.zoo import model_info, single_file_misfit
    from dfqbench.zoo.teacher import teacher_identity

    if cell.excluded:
        return Decision("excluded", cell.excluded), None, None
    request = options.request(cell)
    try:
        method_cls = registry.get(cell.method)
        info = model_info(cell.model)
        wbits, abits = parse_bits(cell.bits)
        reason = method_cls.unsupported_reason(info.dataset, info.name, wbits, abits)
        if reason:
            return Decision("unsupported", f"{cell.method} does not support {info.name} at {cell.bits}: {reason}"), \
                request, None
        misfit = single_file_misfit(info.name, request.weights)  # one weights file is one model's teacher
        if misfit:
            return Decision("skipped", misfit), request, None
        settings = request_settings(method_cls, request)
        if info.name not in teachers:
            try:
                teachers[info.name] = teacher_identity(
                    request.model, request.weights, request.weights_dir, request.weights_norm)
            except DfqbenchError as exc:
                teachers[info.name] = exc
        teacher = teachers[info.name]
        if isinstance(teacher, DfqbenchError):
            raise teacher
        spec = build_spec(method_cls, request, settings, teacher)
    except DfqbenchError as exc:
        return Decision("invalid", str(exc)), request, None
    if spec is None:
        return Decision("run", f"teacher {info.name} not downloaded yet (its run id is known once it is)",
                        train=settings[0], q_steps=method_cls.q_steps_per_iter,
                        data_free=method_cls.data_free), request, None
    try:
        bank = bank_summary(method_cls, spec)
    except DfqbenchError as exc:
        return Decision("invalid", f"{cell.method}: its image bank: {exc}"), request, None
    return Decision("run", None, spec.run_name, spec.run_id, settings[0], method_cls.q_steps_per_iter,
                    bank, method_cls.data_free), request, spec
