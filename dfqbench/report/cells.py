"""From records to table cells: which records are seeds of one configuration, and what a cell shows.

Only records that differ in nothing but the seed are averaged. A cell (say GDFQ at W4A4 on one teacher and
protocol) shows the method's *default configuration* for that cell (:mod:`dfqbench.report.defaults`: its
defaults and paper presets under the protocol, no overrides). Runs of other configurations (an override,
another method version) never replace it: they are named in a footnote, or shown as their own labelled rows
when asked for (``report --all-configurations`` or ``--where``). A cell whose default configuration has no
finished run shows what was run instead (:attr:`Cell.fallback`): the configuration with the most finished
seeds in its place, labelled in a footnote, and the others as labelled rows. Where the default cannot be
resolved here (a method plugin not installed), the configuration with the most finished seeds is shown (ties:
the most recently finished) and the footnote says so. Runs without a record are counted with their configuration.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, TypeVar

from dfqbench.report.defaults import configuration_diff, diff_text, override_key, value_text
from dfqbench.report.load import RunRecord, Unfinished, config_key, flatten, teacher_key
from dfqbench.report.stats import Summary, summarize

K = TypeVar("K", bound=Hashable)

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet", "tiny": "tiny"}
METHOD_ORDER = ("gdfq", "zeroq", "zeroq_kd", "zaq", "qimera", "adasg", "adadfq", "intraq", "hast", "synq")
METHOD_LABELS = {"gdfq": "GDFQ", "zeroq": "ZeroQ", "zeroq_kd": "ZeroQ+KD", "zaq": "ZAQ", "qimera": "Qimera",
                 "adasg": "AdaSG", "adadfq": "AdaDFQ", "intraq": "IntraQ", "hast": "HAST", "synq": "SynQ",
                 "real_kd": "real_kd (not data-free)"}  # real training images: report.reference keeps it apart
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


def spec_diff(shown: dict[str, Any], other: dict[str, Any], cut: bool = True) -> list[str]:
    """``key=value`` of the other spec's fields that differ from the shown one (seed, run id and the derived
    ``changed`` excepted); long values cut with ``…`` unless ``cut`` is False."""
    a, b = flatten(shown), flatten(other)
    keys = sorted(k for k in set(a) | set(b) if k not in ("seed", "run_id", "changed") and not k.startswith("changed."))
    return [f"{override_key(k)}={_short(b.get(k), cut)}" for k in keys if a.get(k) != b.get(k)]


def _short(value: Any, cut: bool = True) -> str:
    text = value_text(value)
    return text if len(text) <= 24 or not cut else text[:21] + "…"


@dataclass
class Cell:
    """What one table cell shows: the summary of one configuration's seeds, and the configurations not shown."""

    summary: Summary | None = None
    fp: Summary | None = None
    drop: Summary | None = None  # FP − top-1 per run (the record's own teacher top-1), over the seeds
    records: list[RunRecord] = field(default_factory=list)
    others: list["Configuration"] = field(default_factory=list)  # the cell's other configurations
    default_unknown: str = ""  # why the cell's default configuration is unknown here ("" when known)
    states: Counter = field(default_factory=Counter)  # running / pending / failed runs in this cell
    no_metric: int = 0  # finished runs without a value for the metric (never evaluated)
    diverged: int = 0  # shown runs whose training diverged (NaN/inf) and stopped: best is over the epochs before
    fallback: "Configuration | None" = None  # shown instead of the default, which has no finished run here

    def diverged_note(self, label: str) -> str:
        return (f"{label}: {self.diverged} of {len(self.records)} run(s) diverged (NaN/inf) and stopped there; "
                "their best top-1 is over the epochs before, they have no final epoch.")

    def state_text(self) -> str:
        return ", ".join(f"{n} {state}" for state, n in sorted(self.states.items()))

    def others_text(self) -> str:
        """``1 run with quant.tracker=ema; 2 runs (1 pending) with method.ds_weight=0.2``."""
        parts = []
        for conf in self.others:
            n = len(conf.records) + len(conf.unfinished)
            states = Counter(u.state for u in conf.unfinished)
            state = f" ({', '.join(f'{k} {s}' for s, k in sorted(states.items()))})" if states else ""
            parts.append(f"{n} run{'s' if n > 1 else ''}{state} with {conf.label}")
        return "; ".join(parts)


@dataclass
class Configuration:
    """The runs of one configuration in a cell; ``label`` names how it differs from the cell's default (short:
    at most 4 keys, long values cut), ``diff`` is that difference whole (``()`` for the default; None when the
    cell's default is unknown here) and ``full`` its label uncut."""

    records: list[RunRecord]
    unfinished: list[Unfinished]
    label: str
    diff: tuple[tuple[str, Any], ...] | None = ()
    full: str = ""

    @property
    def full_label(self) -> str:
        """The label with every key and whole values (CSV, footnotes): never cut with ``…``."""
        return self.full or self.label


Items = tuple[tuple[str, Any], ...]  # (override key, value) pairs: how a configuration differs from its default


def _pairs(items: Items) -> set[tuple[str, str]]:
    return {(k, json.dumps(v, sort_keys=True, default=list)) for k, v in items}


def shared_settings(diffs: list[Items | None]) -> Items:
    """The (key, value) pairs that every configuration sets (none when one is a default, or has no known
    default): a grid's shared settings, named once rather than in every label."""
    if not diffs or any(not d for d in diffs):
        return ()
    common = set.intersection(*(_pairs(d) for d in diffs))
    return tuple(item for item in diffs[0] if _pairs((item,)) <= common)


def without(diff: Items | None, shared: Items) -> Items:
    """A configuration's difference from its default less the ``shared`` settings (``()`` for None)."""
    common = _pairs(shared)
    return tuple(item for item in diff or () if not _pairs((item,)) <= common)


Ignore = Callable[[str, Any], bool]
_DIFFS: dict[str, list[tuple[str, Any]] | None] = {}  # config key -> configuration_diff (specs equal but the seed)


def _version_order(version: Any) -> tuple:
    text = str(version)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _latest_default_version(items: list[RunRecord | Unfinished]) -> str | None:
    """The newest method version among a cell's runs that recorded themselves as the default configuration
    (runs record ``changed`` against their own version's default: a newer version's default wins the cell)."""
    versions = {str(i.spec.get("method_version")) for i in items
                if isinstance(i.spec.get("changed"), dict) and not i.spec["changed"]}
    return max(versions, key=_version_order) if versions else None


def split_configurations(records: list[RunRecord], unfinished: list[Unfinished], ignore: Ignore | None = None
                         ) -> tuple[Configuration, list[Configuration], str]:
    """(the cell's default configuration, the others ranked by finished seeds, why the default is unknown).

    ``ignore(key, value)`` drops differences that still count as default (the ablation rows: a term's weight
    set to 0). Without a known default, the configuration with the most finished seeds is returned as the
    first (ties: the most recently finished) and the reason is the third item.
    """
    groups: dict[str, Configuration] = {}
    unknown = ""
    items = list(records) + list(unfinished)
    latest = _latest_default_version(items)
    for item in items:
        spec = item.spec
        key = item.config if isinstance(item, RunRecord) else config_key(spec)
        if key not in _DIFFS:  # seeds of one configuration share it: resolved once per configuration
            _DIFFS[key] = configuration_diff(spec)
        diff = _DIFFS[key]
        if diff == [] and latest is not None and isinstance(spec.get("changed"), dict) \
                and str(spec.get("method_version")) != latest:  # the default of an older method version
            diff = [("method_version", spec.get("method_version"))]
        if diff is None:
            from dfqbench.report.defaults import default_configuration

            unknown = unknown or default_configuration(spec)[1]
        else:
            diff = [(k, v) for k, v in diff if ignore is None or not ignore(k, v)]
        key = "" if diff == [] else key
        if key not in groups:
            label = "default" if diff == [] else (diff_text(diff) if diff else f"configuration {key}")
            groups[key] = Configuration([], [], label, None if diff is None else tuple(diff),
                                        diff_text(diff, limit=None) if diff else label)
        (groups[key].records if isinstance(item, RunRecord) else groups[key].unfinished).append(item)
    default = groups.pop("", None)
    ranked = sorted(groups.values(), key=lambda c: (
        len(c.records), max((str(r.record.get("finished_at", "")) for r in c.records), default=""),
        len(c.unfinished), c.label), reverse=True)
    if default is None and unknown and ranked:
        default, ranked = ranked[0], ranked[1:]
        shown = (default.records + default.unfinished)[0].spec
        for conf in ranked:  # no default to name the differences against: name them against the shown one
            other = (conf.records + conf.unfinished)[0].spec
            diff = spec_diff(shown, other)
            conf.label = ", ".join(diff[:4]) + (" …" if len(diff) > 4 else "") if diff else conf.label
            conf.full = ", ".join(spec_diff(shown, other, cut=False)) or conf.label
    return default or Configuration([], [], "default"), ranked, unknown


def choose_configuration(records: list[RunRecord]) -> tuple[list[RunRecord], list[list[RunRecord]]]:
    """(the seeds of the configuration with the most finished seeds, the other configurations' records);
    ties: the most recently finished. Used where no default applies (comparing two results folders)."""
    configs = group_by(records, lambda r: r.config)
    ranked = sorted(configs.values(),
                    key=lambda rs: (len(rs), max(str(r.record.get("finished_at", "")) for r in rs), rs[0].config),
                    reverse=True)
    return ranked[0], ranked[1:]


def summarize_cell(records: list[RunRecord], unfinished: list[Unfinished], metric: str) -> Cell:
    """The cell of one configuration's runs (all seeds averaged; runs without the metric counted apart)."""
    cell = Cell(states=Counter(u.state for u in unfinished))
    usable = [r for r in records if r.metric(metric) is not None]
    cell.no_metric = len(records) - len(usable)
    if not usable:
        return cell
    cell.records = usable
    cell.summary = summarize(r.metric(metric) for r in usable)
    cell.fp = summarize(r.fp for r in usable)
    cell.drop = summarize(r.fp - r.metric(metric) for r in usable if r.fp is not None)
    cell.diverged = sum(1 for r in usable if r.record.get("diverged"))
    return cell


def make_cell(records: list[RunRecord], unfinished: list[Unfinished], metric: str, ignore: Ignore | None = None) -> Cell:
    """The cell of the default configuration, with the other configurations in :attr:`Cell.others`; when the
    default has no finished run with the metric, the other configuration with the most finished seeds that has
    one (:attr:`Cell.fallback`), counting the default's unfinished runs in its states."""
    default, others, unknown = split_configurations(records, unfinished, ignore)
    cell = summarize_cell(default.records, default.unfinished, metric)
    if cell.summary is None:
        shown = next((c for c in others if any(r.metric(metric) is not None for r in c.records)), None)
        if shown is not None:
            states = cell.states
            cell = summarize_cell(shown.records, shown.unfinished, metric)
            cell.states += states
            cell.fallback = shown
            others = [c for c in others if c is not shown]
    cell.others, cell.default_unknown = others, unknown
    return cell


def shown_configurations(records: list[RunRecord], metric: str, all_configurations: bool = False,
                         ignore: Ignore | None = None) -> list[Configuration]:
    """The configurations of one cell's finished runs that the tables show, default first: the default (when it
    has a run with the metric) and, with ``all_configurations``, the others; without such a default run, every
    configuration with one (the tables show the first in the default's place, the others as labelled rows)."""
    default, others, _ = split_configurations(records, [], ignore)
    usable = [c for c in [default, *others] if any(r.metric(metric) is not None for r in c.records)]
    if usable and usable[0] is default and not all_configurations:
        return [default]
    return usable


def make_choice_cell(records: list[RunRecord], metric: str) -> Cell:
    """The cell of the configuration with the most finished seeds (no default: see :func:`choose_configuration`)."""
    usable = [r for r in records if r.metric(metric) is not None]
    if not usable:
        return summarize_cell(records, [], metric)
    return summarize_cell(choose_configuration(usable)[0], [], metric)


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
