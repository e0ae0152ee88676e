"""From records to table cells: which records are seeds of one configuration, and what a cell shows.

Only records that differ in nothing but the seed are averaged. When a cell (say GDFQ at W4A4 on one teacher
and protocol) holds several configurations (an override, another method version), the one with the most
finished seeds is shown (ties: the most recently finished) and the others are named in a footnote with the
spec fields that differ. Runs without a record in the same cell are counted as running / pending / failed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, TypeVar

from dfqbench.report.load import RunRecord, Unfinished, flatten, teacher_key
from dfqbench.report.stats import Summary, summarize

K = TypeVar("K", bound=Hashable)

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet", "tiny": "tiny"}
METHOD_ORDER = ("gdfq", "zeroq", "zeroq_kd", "zaq", "qimera", "adasg", "adadfq")
METHOD_LABELS = {"gdfq": "GDFQ", "zeroq": "ZeroQ", "zeroq_kd": "ZeroQ+KD", "zaq": "ZAQ", "qimera": "Qimera",
                 "adasg": "AdaSG", "adadfq": "AdaDFQ"}
PROTOCOL_ORDER = ("paper", "quick")


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def method_sort_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def protocol_sort_key(protocol: str) -> tuple[int, str]:
    return (PROTOCOL_ORDER.index(protocol) if protocol in PROTOCOL_ORDER else len(PROTOCOL_ORDER), protocol)


def bits_sort_key(bits: str) -> tuple[str, str]:
    return (bits[1:].split("a")[0].zfill(3), bits)


def is_papers_teacher(teacher: dict[str, Any]) -> bool:
    """The papers' teachers are pytorchcv's pretrained weights; any other file is a different teacher."""
    return teacher.get("source") == "pytorchcv"


def group_by(items: Iterable[Any], key: Callable[[Any], K]) -> dict[K, list[Any]]:
    groups: dict[K, list[Any]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return groups


def spec_diff(shown: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """``key=value`` of the other spec's fields that differ from the shown one (seed and run id excepted)."""
    a, b = flatten(shown), flatten(other)
    keys = sorted((set(a) | set(b)) - {"seed", "run_id"})
    return [f"{k}={_short(b.get(k))}" for k in keys if a.get(k) != b.get(k)]


def _short(value: Any) -> str:
    text = str(list(value)) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= 24 else text[:21] + "…"


@dataclass
class Cell:
    """What one table cell shows: the summary of the chosen configuration's seeds and what was left out."""

    summary: Summary | None = None
    fp: Summary | None = None
    records: list[RunRecord] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # "n run(s) with k=v, …" for configurations not shown
    states: Counter = field(default_factory=Counter)  # running / pending / failed runs in this cell
    no_metric: int = 0  # finished runs without a value for the metric (never evaluated)
    diverged: int = 0  # shown runs whose training diverged (NaN/inf) and stopped: best is over the epochs before

    def diverged_note(self, label: str) -> str:
        return (f"{label}: {self.diverged} of {len(self.records)} run(s) diverged (NaN/inf) and stopped there; "
                "their best top-1 is over the epochs before, they have no final epoch.")

    def state_text(self) -> str:
        return ", ".join(f"{n} {state}" for state, n in sorted(self.states.items()))


def choose_configuration(records: list[RunRecord]) -> tuple[list[RunRecord], list[list[RunRecord]]]:
    """(the seeds of the configuration shown, the other configurations' records)."""
    configs = group_by(records, lambda r: r.config)
    ranked = sorted(configs.values(),
                    key=lambda rs: (len(rs), max(str(r.record.get("finished_at", "")) for r in rs), rs[0].config),
                    reverse=True)
    return ranked[0], ranked[1:]


def make_cell(records: list[RunRecord], unfinished: list[Unfinished], metric: str) -> Cell:
    cell = Cell(states=Counter(u.state for u in unfinished))
    if not records:
        return cell
    usable = [r for r in records if r.metric(metric) is not None]
    cell.no_metric = len(records) - len(usable)
    if not usable:
        return cell
    shown, others = choose_configuration(usable)
    cell.records = shown
    cell.summary = summarize(r.metric(metric) for r in shown)
    cell.fp = summarize(r.fp for r in shown)
    cell.diverged = sum(1 for r in shown if r.record.get("diverged"))
    for other in others:
        diff = spec_diff(shown[0].spec, other[0].spec)
        cell.others.append(f"{len(other)} run{'s' if len(other) > 1 else ''} with {', '.join(diff[:4])}"
                           + (" …" if len(diff) > 4 else ""))
    return cell


def spec_key(spec: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """(protocol, model, teacher, bits, method): the table cell a run belongs to."""
    return (spec.get("protocol", "custom"), spec["model"], teacher_key(spec["teacher"]), spec["bits"], spec["method"])


def unfinished_key(item: Unfinished) -> tuple[str, str, str, str, str] | None:
    """:func:`spec_key` of an unfinished run, or None without a readable spec."""
    try:
        return spec_key(item.spec)
    except (AttributeError, KeyError, TypeError):
        return None


def record_key(record: RunRecord) -> tuple[str, str, str, str, str]:
    return spec_key(record.spec)
