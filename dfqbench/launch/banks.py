"""Image banks in a plan and in `status`: which banks the planned runs need (one per distinct key, however many
cells share it: W3A3, W4A4 and W5A5 of one seed need one), their state in the results store, and their synthesis
cost, counted apart from the runs' fine-tuning.

A cell's bank comes from its method's :meth:`dfqbench.blocks.interface.Method.needs_bank` when the cell is
planned, and is kept in its :class:`dfqbench.launch.plan.Decision` (``bank``, a JSON-able summary of the key), so a
dry run answered from the plan cache lists banks too. Bank states are read from ``<results>/banks/`` every time.

Synthesis cost (an assumption, as the rest of :mod:`dfqbench.launch.estimate`): a synthesis step is one teacher
forward and backward to the pixels, priced per image as one training image of that model
(:func:`dfqbench.launch.estimate.train_cost_per_image`, which also prices a student and a generator, so this
errs high) plus the per-iteration overhead: (batches × steps + prelude) × (overhead + batch × cost per image), the
prelude being the steps a synthesis makes before its batches whenever it starts or resumes
(:meth:`dfqbench.blocks.interface.Method.bank_prelude_steps`: SynQ's calibration centers with ``method.lbns``). For
IntraQ's CIFAR bank (20 × 1,000 steps at batch 256) that is 7.6 GPU-minutes; for ResNet-18 ImageNet, 3.2 GPU-hours.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfqbench.launch.estimate import ITER_OVERHEAD_S, train_cost_per_image
from dfqbench.store import ResultsStore, StoreError
from dfqbench.store.bank import BANK_STATES, BankState

if TYPE_CHECKING:
    from dfqbench.specs import RunSpec

# A plan and its cells (dfqbench.launch.plan.Plan, PlannedCell) are duck-typed here: plan imports this module.
Plan = PlannedCell = Any


def bank_summary(method_cls: Any, spec: "RunSpec | None") -> dict[str, Any] | None:
    """What planning keeps of the bank a run of ``spec`` needs (None: no bank, or the spec is not known yet)."""
    if spec is None:
        return None
    key = method_cls.needs_bank(spec)
    if key is None:
        return None
    return {"name": key.name, "bank_id": key.bank_id, "method": key.method, "model": key.model,
            "dataset": key.dataset, "seed": key.seed, "num_batches": key.num_batches, "batch_size": key.batch_size,
            "steps": key.steps, "images": key.images, "storage": key.storage, "stored_bytes": key.stored_bytes(),
            "prelude_steps": method_cls.bank_prelude_steps(spec)}


def synthesis_seconds(bank: dict[str, Any], batches: int | None = None) -> float:
    """The module docstring's cost model for ``batches`` (default all) of the bank's batches, in seconds."""
    batches = bank["num_batches"] if batches is None else batches
    per_step = ITER_OVERHEAD_S + bank["batch_size"] * train_cost_per_image(bank["model"], bank["dataset"])
    prelude = bank.get("prelude_steps", 0) if batches > 0 else 0  # plans cached before it have none
    return (batches * bank["steps"] + prelude) * per_step


@dataclass
class PlannedBank:
    """One bank the plan needs: its summary, its state now, the runs that need it, and whether a launch of the
    plan synthesises (the rest of) it."""

    bank: dict[str, Any]
    state: BankState
    runs: list[str] = field(default_factory=list)
    to_synthesise: bool = False

    @property
    def name(self) -> str:
        return self.bank["name"]

    def remaining_seconds(self) -> float:
        if self.state.state == "done":
            return 0.0
        return synthesis_seconds(self.bank, max(0, self.bank["num_batches"] - self.state.batches_done))


def _state(results: Path | None, name: str) -> BankState:
    try:
        return ResultsStore(results).bank(name).state() if results is not None else BankState("pending", 0, None)
    except StoreError as exc:  # a name planted in a cache file: never a path outside banks/
        return BankState("pending", 0, None, str(exc))


def plan_banks(plan: Plan, todo: list[PlannedCell]) -> list[PlannedBank]:
    """The distinct banks of the plan's runs (duplicates and non-runs aside), in first-use order."""
    launching = {id(c) for c in todo}
    banks: dict[str, PlannedBank] = {}
    for c in plan.runs():
        bank = c.decision.bank if c.decision is not None else None
        if not bank:
            continue
        if bank["name"] not in banks:
            banks[bank["name"]] = PlannedBank(bank, _state(plan.options.results, bank["name"]))
        item = banks[bank["name"]]
        item.runs.append(c.name)
        item.to_synthesise |= id(c) in launching and item.state.state != "done"
    return list(banks.values())


def bank_hours(banks: list[PlannedBank]) -> float:
    return sum(b.remaining_seconds() for b in banks if b.to_synthesise) / 3600


def _amount(hours: float) -> str:
    return f"{hours:,.1f} GPU-hours" if hours >= 1 else f"{hours * 60:.1f} GPU-minutes"


def bank_lines(plan: Plan, todo: list[PlannedCell]) -> list[str]:
    """The dry run's bank section (nothing when no run needs a bank)."""
    banks = plan_banks(plan, todo)
    if not banks:
        return []
    counts = Counter(b.state.state for b in banks)
    users = sum(len(b.runs) for b in banks)
    lines = [f"banks: {len(banks)} needed by {users} runs: " + ", ".join(f"{counts[s]} {s}" for s in BANK_STATES
                                                                         if counts[s])]
    todo_banks = [b for b in banks if b.to_synthesise]
    lines.append(f"to synthesise: {len(todo_banks)} banks, estimated {_amount(bank_hours(banks))} (one H100, by a "
                 "cost model whose costs are assumptions, not measurements: dfqbench/launch/banks.py), apart from "
                 "the runs' fine-tuning")
    for b in banks[:12]:
        bank = b.bank
        done = f"{b.state.batches_done}/{bank['num_batches']} batches"
        lines.append(f"  {b.name}: {b.state.state} ({done}; {bank['images']:,} images, {bank['steps']:,} steps per "
                     f"batch, {bank['storage']} {bank['stored_bytes'] / 2**20:,.1f} MiB) for {len(b.runs)} runs"
                     + (f"; {b.state.reason}" if b.state.reason else ""))
    if len(banks) > 12:
        lines.append(f"  … and {len(banks) - 12} more")
    return lines


def bank_document(plan: Plan, todo: list[PlannedCell]) -> dict[str, Any]:
    """The dry run's banks as JSON: each bank with its state and runs, and the synthesis estimate."""
    banks = plan_banks(plan, todo)
    return {
        "banks": [{**b.bank, "state": b.state.state, "batches_done": b.state.batches_done, "reason": b.state.reason,
                   "runs": b.runs, "to_synthesise": b.to_synthesise} for b in banks],
        "banks_to_synthesise": sum(b.to_synthesise for b in banks),
        "bank_gpu_hours": bank_hours(banks),
    }


# -- status ------------------------------------------------------------------------------------------------------
def store_banks(results: Path) -> dict[str, BankState]:
    """Every bank folder of the results root with its state (from its manifest and lease only)."""
    return {folder.name: folder.state() for folder in ResultsStore(results).banks()}


def status_bank_lines(results: Path) -> list[str]:
    """`status`: the banks in the results folder, counted per state, with the unfinished ones listed."""
    states = store_banks(results)
    if not states:
        return []
    counts = Counter(s.state for s in states.values())
    lines = [f"banks: {len(states)} (" + ", ".join(f"{counts[s]} {s}" for s in BANK_STATES if counts[s]) + ")"]
    for name, s in states.items():
        if s.state != "done":
            total = "?" if s.num_batches is None else s.num_batches
            lines.append(f"  {name}: {s.state}, {s.batches_done}/{total} batches" + (f"; {s.reason}" if s.reason else ""))
    return lines


def status_bank_document(results: Path) -> list[dict[str, Any]]:
    return [{"name": name, "state": s.state, "batches_done": s.batches_done, "num_batches": s.num_batches,
             "reason": s.reason} for name, s in store_banks(results).items()]
