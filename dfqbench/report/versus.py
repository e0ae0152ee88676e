"""The comparison view (``report --table methods``): every method and configuration in the results side by side,
and each against a chosen baseline.

One table per protocol (quick and paper runs are never mixed). Rows: dataset, model, bits (and the teacher
where a model has runs on several). Columns: one per (method, configuration) found in the results — each
method's default configuration first (:mod:`dfqbench.report.defaults`), then its other configurations,
labelled by how they differ from it in the short form the published tables' footnotes use
(``quant.tracker=ema``). Settings that every column of a table shares (a grid's ``base``, e.g.
``train.epochs=3``) are stated once in a note and left out of the labels. Only runs that differ in nothing
but the seed are averaged (:func:`dfqbench.report.cells.split_configurations`).

Each cell: top-1 mean ± sample std over seeds (n). With a baseline (``--baseline METHOD[:KEY=VALUE,…]``), every
other column adds Δ = its mean − the baseline's mean in the same row and Welch's two-sided t-test
(:func:`dfqbench.report.stats.welch_test`, SciPy). **Outside the seed noise** (marked ⋆): p < 0.05 with n ≥ 2
seeds on both sides; with n = 1 on a side there is no noise estimate, and the cell says ``n=1, no test``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dfqbench.errors import DfqbenchError
from dfqbench.report.cells import (DATASET_LABELS, Cell, Configuration, Items, bits_sort_key, group_by, method_label,
                                   method_sort_key, protocol_sort_key, record_key, shared_settings,
                                   split_configurations, summarize_cell, unfinished_key, without)
from dfqbench.report.defaults import diff_text
from dfqbench.report.load import RunRecord, Scan, Unfinished, equal_values
from dfqbench.report.model import Footnotes, Group, Table, TableRow, Text
from dfqbench.report.published import Published
from dfqbench.report.stats import ALPHA, NoiseTest, Summary, summarize, welch_test
from dfqbench.report.tables import (METRIC_TEXT, bold_best, counts_text, fmt_delta, fmt_number, numbered,
                                    protocol_text)

OUTSIDE_NOISE = "⋆"
NO_TEST = "n=1, no test"
RowKey = tuple[str, str, str]  # (model, teacher, bits)


@dataclass(frozen=True)
class Column:
    """One method in one configuration: ``diff`` is how it differs from the method's default (``()``: the
    default; None: the default is unknown here and ``full`` names the configuration against the one shown)."""

    method: str
    diff: Items | None
    full: str  # "default", or the whole configuration ("quant.tracker=ema, train.epochs=3")

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.full

    @property
    def is_default(self) -> bool:
        return self.diff == ()


@dataclass
class Baseline:
    """A parsed ``--baseline``: the method, and ``None`` (its default or only column), ``"default"`` or the
    configuration's ``{override key: value}``."""

    text: str
    method: str
    config: dict[str, Any] | str | None


# -- columns and their labels -----------------------------------------------------------------------------
def shared_items(columns: list[Column]) -> Items:
    """The settings every column of a table sets (:func:`dfqbench.report.cells.shared_settings`)."""
    return shared_settings([c.diff for c in columns])


def remaining(column: Column, shared: Items) -> Items:
    """The column's configuration without the table's shared settings."""
    return without(column.diff, shared)


def title(column: Column, shared: Items) -> str:
    """``GDFQ`` (the default, or nothing beyond the shared settings), ``GDFQ (quant.tracker=ema)``."""
    if column.diff is None:
        return f"{method_label(column.method)} ({column.full})"
    rest = remaining(column, shared)
    return method_label(column.method) + (f" ({diff_text(rest)})" if rest else "")


def spelling(column: Column, shared: Items) -> str:
    """How ``--baseline`` names the column: ``gdfq``, ``gdfq:quant.tracker=ema,method.kd_reduction=batchmean``."""
    rest = remaining(column, shared)
    if column.diff is None or not rest:
        return column.method
    values = [f"{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, (list, tuple, dict)) else v}"
              for k, v in rest]
    return f"{column.method}:{','.join(values)}"


def column_order(column: Column) -> tuple:
    return (method_sort_key(column.method), not column.is_default, column.diff is None, column.full)


# -- --baseline -------------------------------------------------------------------------------------------
def _split_top_level(text: str) -> list[str]:
    """``a=1,b=[2, 3]`` → ``["a=1", "b=[2, 3]"]``: commas inside brackets stay."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def parse_baseline(text: str) -> Baseline:
    """``METHOD``, ``METHOD:default`` or ``METHOD:KEY=VALUE[,KEY=VALUE…]`` (keys as overrides spell them,
    values read as YAML); a malformed one is a one-line error."""
    from dfqbench.specs import read_flag_value

    method, sep, config = text.partition(":")
    method, config = method.strip(), config.strip()
    if not method or (sep and not config):
        raise DfqbenchError(f"invalid --baseline {text!r}: expected METHOD or METHOD:KEY=VALUE[,KEY=VALUE…], "
                            "e.g. gdfq or gdfq:quant.tracker=ema")
    if not sep:
        return Baseline(text, method, None)
    if config == "default":
        return Baseline(text, method, "default")
    pairs: dict[str, Any] = {}
    for part in _split_top_level(config):
        key, eq, raw = part.partition("=")
        key = key.strip()
        if not eq or not key or not raw.strip():
            raise DfqbenchError(f"invalid --baseline {text!r}: {part.strip()!r} is not KEY=VALUE "
                                "(e.g. gdfq:quant.tracker=ema,train.epochs=3)")
        if key.startswith("method_config."):
            key = "method." + key[len("method_config."):]
        pairs[key] = read_flag_value(f"--baseline {key}", raw.strip())
    return Baseline(text, method, pairs)


def _same(items: Items, wanted: dict[str, Any]) -> bool:
    found = dict(items)
    return set(found) == set(wanted) and all(equal_values(found[k], v) for k, v in wanted.items())


def match_baseline(baseline: Baseline, columns: list[Column], shared: Items) -> Column | None:
    """The column of one table the baseline names, or None."""
    own = [c for c in columns if c.method == baseline.method]
    if baseline.config is None:
        plain = [c for c in own if c.diff is not None and not remaining(c, shared)]
        if len(plain) == 1:
            return plain[0]
        return own[0] if len(own) == 1 else None
    if baseline.config == "default":
        return next((c for c in own if c.is_default), None)
    return next((c for c in own if c.diff is not None
                 and (_same(c.diff, baseline.config) or _same(remaining(c, shared), baseline.config))), None)


# -- building ---------------------------------------------------------------------------------------------
@dataclass
class _Protocol:
    """The cells of one protocol: (row, column key) → the configuration's runs."""

    records: list[RunRecord]
    unfinished: list[Unfinished]
    cells: dict[tuple[RowKey, tuple[str, str]], Configuration]
    columns: dict[tuple[str, str], Column]
    unknown: dict[tuple[RowKey, tuple[str, str]], str]  # why a cell's default is unknown here


def _collect(records: list[RunRecord], unfinished: list[Unfinished]) -> dict[str, _Protocol]:
    by_cell = group_by(records, record_key)
    unfinished_by_cell = group_by([u for u in unfinished if unfinished_key(u) is not None], unfinished_key)
    out: dict[str, _Protocol] = {}
    for key in set(by_cell) | set(unfinished_by_cell):
        protocol, model, teacher, bits, method = key
        part = out.setdefault(protocol, _Protocol([], [], {}, {}, {}))
        cell_records, cell_unfinished = by_cell.get(key, []), unfinished_by_cell.get(key, [])
        part.records += cell_records
        part.unfinished += cell_unfinished
        default, others, unknown = split_configurations(cell_records, cell_unfinished)
        row = (model, teacher, bits)
        for conf in [default, *others]:
            if not conf.records and not conf.unfinished:
                continue
            is_default = conf is default
            column = Column(method, () if is_default else conf.diff,
                            "default" if is_default else conf.full_label)
            part.columns[column.key] = column
            part.cells[(row, column.key)] = conf
            if is_default and unknown:
                part.unknown[(row, column.key)] = unknown
    return out


def methods_tables(scan: Scan, published: Published, metric: str = "best", baseline: str | None = None) -> list[Table]:
    """One comparison table per protocol; a ``baseline`` that names no column is a one-line error listing the
    columns it could name."""
    parts = _collect(scan.records, [u for u in scan.unfinished if u.spec is not None])
    wanted = parse_baseline(baseline) if baseline is not None else None
    chosen: dict[str, Column | None] = {}
    if wanted is not None:
        choices: list[str] = []
        for protocol, part in parts.items():
            columns = sorted(part.columns.values(), key=column_order)
            shared = shared_items(columns)
            chosen[protocol] = match_baseline(wanted, columns, shared)
            choices += [s for s in dict.fromkeys(spelling(c, shared) for c in columns) if s not in choices]
        if not any(chosen.values()):
            raise DfqbenchError(_baseline_error(wanted, parts, choices))
    return [_table(protocol, parts[protocol], published, metric, wanted, chosen.get(protocol))
            for protocol in sorted(parts, key=protocol_sort_key)]


def _baseline_error(wanted: Baseline, parts: dict[str, _Protocol], choices: list[str]) -> str:
    """The one line for a ``--baseline`` that names no column: the method unknown, ambiguous, or not in that
    configuration, with the valid spellings."""
    from dfqbench.registry import unknown_choice

    methods = sorted({m for part in parts.values() for m, _ in part.columns}, key=method_sort_key)
    if wanted.method not in methods:
        return unknown_choice("--baseline method", wanted.method, methods) if methods else (
            f"unknown --baseline {wanted.text!r}: no finished or planned runs here to compare")
    listed = "; ".join(choices)
    if wanted.config is None:
        return (f"--baseline {wanted.text!r} is ambiguous: {wanted.method} has several configurations here and none is "
                f"its default; name one, choices: {listed}")
    return f"unknown --baseline {wanted.text!r}: {wanted.method} has no runs in that configuration here; choices: {listed}"


def _row_labels(part: _Protocol, published: Published) -> tuple[list[str], dict[RowKey, list[str]]]:
    rows = {row for row, _ in part.cells}
    datasets = {r.model: r.spec.get("dataset", "") for r in part.records}
    datasets.update({u.spec["model"]: u.spec.get("dataset", "") for u in part.unfinished if u.spec})
    teachers_per_model = {m: {t for mm, t, _ in rows if mm == m} for m, _, _ in rows}
    several = any(len(t) > 1 for t in teachers_per_model.values())
    fps = group_by([r for r in part.records if r.fp is not None], lambda r: (r.model, r.teacher))
    labels: dict[RowKey, list[str]] = {}
    for model, teacher, bits in rows:
        printed = published.any_row(model)
        name = printed.model_label if printed else model
        dataset = printed.dataset if printed else DATASET_LABELS.get(datasets.get(model, ""), datasets.get(model, ""))
        fp = summarize(r.fp for r in fps.get((model, teacher), []))
        labels[(model, teacher, bits)] = ([dataset, f"{name} (FP {fmt_number(fp.mean) if fp else '–'})"]
                                          + ([teacher] if several else []) + [bits.upper()])
    header = ["dataset", "model (FP teacher)"] + (["teacher"] if several else []) + ["bits"]
    return header, labels


def _top1(cell: Cell, notes: Footnotes, label: str, unknown: str, metric: str) -> tuple[str, str]:
    """(mean ± std (n) with its footnote marks, the unfinished runs' status)."""
    s = cell.summary
    if s is None:
        text, status = "–", (f" ({cell.state_text()})" if cell.states else "")
    else:
        text = fmt_number(s.mean) + (f" ± {fmt_number(s.std)}" if s.std is not None else "") + f" (n={s.n})"
        status = f"; +{cell.state_text()}" if cell.states else ""
    if unknown:
        text += notes.mark(f"{label}: the method's default configuration is unknown here ({unknown}); this column "
                           "shows its configuration with the most finished seeds.")
    if cell.no_metric:
        text += notes.mark(f"{cell.no_metric} finished run(s) without a {metric} top-1 (never evaluated, or training "
                           "diverged before the last epoch).")
    if cell.diverged:
        text += notes.mark(cell.diverged_note(label))
    return text, status


def noise_text(test: NoiseTest, a: Summary, b: Summary) -> str:
    """``p = 0.012``, or ``n=1, no test`` without a noise estimate (a side with one seed)."""
    if test.p is None:
        return NO_TEST
    return f"p = {test.p:.2g}" + (" (all seeds equal)" if a.std == 0.0 and b.std == 0.0 else "")


def _table(protocol: str, part: _Protocol, published: Published, metric: str, wanted: Baseline | None,
           base: Column | None) -> Table:
    notes = Footnotes()
    columns = sorted(part.columns.values(), key=column_order)
    shared = shared_items(columns)
    if base is not None:
        columns = [base] + [c for c in columns if c is not base]
    titles = {c.key: title(c, shared) for c in columns}
    header, row_labels = _row_labels(part, published)
    with_test = base is not None
    groups = [Group(titles[c.key] + (" [baseline]" if c is base else ""),
                    ("top-1",) if c is base or not with_test else ("top-1", "Δ", "test")) for c in columns]
    table = Table("methods", f"Methods and configurations — protocol {protocol}", "", header, groups)
    rows = sorted({row for row, _ in part.cells},
                  key=lambda r: (row_labels[r][0], r[0], bits_sort_key(r[2]), r[1]))
    outside = tested = 0
    for row in rows:
        cells = {c.key: summarize_cell(part.cells[(row, c.key)].records, part.cells[(row, c.key)].unfinished, metric)
                 if (row, c.key) in part.cells else None for c in columns}
        base_cell = cells.get(base.key) if base is not None else None
        texts, means = [], []
        for column in columns:
            cell = cells[column.key]
            label = f"{titles[column.key]} {row[2].upper()} ({row[0]})"
            if cell is None:
                texts.append([Text("")] * len(groups[len(texts)].subtitles))
                means.append(None)
                continue
            top1, status = _top1(cell, notes, label, part.unknown.get((row, column.key), ""), metric)
            if cell.states:
                table.cell_status.append(f"{label}: {cell.state_text()}")
            sub = [Text(top1, status=status)]
            test = None
            if with_test and column is not base:
                if cell.summary is not None and base_cell is not None and base_cell.summary is not None:
                    test = welch_test(base_cell.summary, cell.summary)
                    tested += test.p is not None
                    outside += bool(test.outside_noise)
                    sub += [Text(fmt_delta(test.delta) + (f" {OUTSIDE_NOISE}" if test.outside_noise else "")),
                            Text(noise_text(test, base_cell.summary, cell.summary))]
                else:
                    sub += [Text("–"), Text("no baseline run" if cell.summary is not None else "–")]
            texts.append(sub)
            means.append(cell.summary.mean if cell.summary else None)
            table.records.append(_record(protocol, row, row_labels[row], column, titles[column.key], metric, cell,
                                         base, titles.get(base.key) if base else None, base_cell, test))
        bold = bold_best(means)
        table.rows.append(TableRow(row_labels[row], [[Text(t[0].text, b, t[0].status), *t[1:]] if t[0].text else t
                                                     for t, b in zip(texts, bold)]))
    what = "top-1 as mean ± std over seeds (n) per method and configuration"
    if base is not None:
        what += f", with Δ to the baseline {titles[base.key]} and Welch's test ({OUTSIDE_NOISE}: outside the seed noise)"
    table.caption = (f"Every method and configuration in the results under protocol {protocol}"
                     + (", a shortened schedule" if protocol != "paper" else "") + f": {what}.")
    table.status = [counts_text(part.records, part.unfinished)]
    table.settings = diff_text(shared, limit=None)
    table.notes = notes.marked() + numbered(_notes(protocol, part, metric, columns, shared, titles, wanted, base,
                                                   outside, tested))
    return table


def _notes(protocol: str, part: _Protocol, metric: str, columns: list[Column], shared: Items,
           titles: dict[tuple[str, str], str], wanted: Baseline | None, base: Column | None, outside: int,
           tested: int) -> list[str]:
    lines = [protocol_text(protocol, part.records, part.unfinished), f"Metric: {METRIC_TEXT[metric]}.",
             "Columns: each method's default configuration (its defaults and paper presets for the cell under the "
             "protocol, no overrides) first, then its other configurations, labelled by the override keys in which "
             "they differ from it; only runs that differ in nothing but the seed are averaged. Best mean per row "
             "in bold."]
    if shared:
        lines.append(f"Every column here also sets {diff_text(shared, limit=None)} (left out of the labels).")
    for column in columns:
        rest = remaining(column, shared)
        if column.diff is not None and rest and diff_text(rest) != diff_text(rest, limit=None):
            lines.append(f"{titles[column.key]}: in full, {diff_text(rest, limit=None)}.")
    if base is not None:
        lines.append(f"Δ = the column's mean − the baseline's ({titles[base.key]}) in the same row. Test: Welch's "
                     f"two-sided t-test (Welch–Satterthwaite degrees of freedom); {OUTSIDE_NOISE} outside the seed "
                     f"noise: p < {ALPHA} with n ≥ 2 seeds on both sides ({outside} of {tested} tested cells); "
                     f"{NO_TEST}: a side has one seed, so there is no noise estimate; where every seed on both sides "
                     "is equal the noise is 0 and any Δ ≠ 0 counts as outside it.")
    elif wanted is not None:
        lines.append(f"The baseline {wanted.text!r} has no run under this protocol: no Δ here.")
    else:
        spellings = "; ".join(spelling(c, shared) for c in columns)
        lines.append(f"--baseline METHOD[:KEY=VALUE,…] adds Δ to a baseline column and Welch's test; here: {spellings}.")
    return lines


def _record(protocol: str, row: RowKey, labels: list[str], column: Column, column_title: str, metric: str, cell: Cell,
            base: Column | None, base_title: str | None, base_cell: Cell | None, test: NoiseTest | None
            ) -> dict[str, Any]:
    s, b = cell.summary, base_cell.summary if base_cell is not None else None
    return {
        "table": "methods", "protocol": protocol, "dataset": labels[0], "model": row[0], "teacher": row[1],
        "bits": row[2], "method": column.method, "configuration": column.full, "column": column_title,
        "baseline": "yes" if column is base else "no", "metric": metric,
        "n": s.n if s else 0, "mean": s.mean if s else None, "std": s.std if s else None,
        "fp": cell.fp.mean if cell.fp else None,
        "baseline_column": base_title or "", "baseline_n": b.n if b else None, "baseline_mean": b.mean if b else None,
        "baseline_std": b.std if b else None,
        "delta": test.delta if test else None, "t": test.t if test else None, "df": test.df if test else None,
        "p": test.p if test else None,
        "outside_noise": "" if test is None or test.outside_noise is None else ("yes" if test.outside_noise else "no"),
        "running": cell.states.get("running", 0), "pending": cell.states.get("pending", 0),
        "failed": cell.states.get("failed", 0),
        "run_ids": " ".join(r.record.get("run_id", "") for r in cell.records),
    }
