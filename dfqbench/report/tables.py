"""Table layouts: the papers' main tables (AdaSG Table 1, Qimera Table 2) and the generator-loss ablation.

Main tables: rows dataset / model (FP ours / FP paper) / teacher / bits, one column group per method with
ours (mean ± std over seeds, n) / the published number / Δ. One table per protocol: ``quick`` records are
never mixed with ``paper`` ones. Δ = ours − paper when the run's teacher is the papers' (pytorchcv); on rows
with another teacher Δ compares drops from FP, (ours − FP ours) − (paper − FP paper), and says so. Best of
ours per row in bold. Each cell shows the method's default configuration (:mod:`dfqbench.report.cells`);
other configurations get labelled rows only when asked for, or when the default has no finished run in the
cell (then the configurations that were run are shown: the first in its place, labelled in a footnote).
Under the paper protocol, Δ carries the reproduced mark (:data:`REPRODUCED_RULE`; the notes count the default
configurations' marks); quick runs show Δ without one. Ablation tables: rows = which
of L_ds, L_as, L_b, L_BNS are on (the default configuration with those weights at 0), columns = bit-widths,
best of ours per column in bold. Every caption is one sentence; the rest follows as numbered notes below the
table (:func:`numbered`), after the lettered footnotes of the cells.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from dfqbench.report.ablation import ablation_terms, is_full, terms_label
from dfqbench.report.ablation import TERM_WEIGHT_FIELDS
from dfqbench.report.cells import (DATASET_LABELS, Cell, Configuration, bits_sort_key, group_by, is_papers_teacher,
                                   make_cell, method_label, method_sort_key, protocol_sort_key, record_key,
                                   summarize_cell, unfinished_key)
from dfqbench.report.load import RunRecord, Scan, Unfinished
from dfqbench.report.model import Footnotes, Group, Table, TableRow, Text
from dfqbench.report.published import ABLATION_TERMS, Published, PublishedTable, PublishedValue
from dfqbench.report.stats import summarize

SUBCOLUMNS = ("ours", "paper", "Δ")
METRIC_TEXT = {"best": "best test top-1 over epochs (as the papers report)",
               "final": "final-epoch test top-1 (the papers report the best epoch; Δ compares our final with their best)"}
MISSING_NOTE = ("– no finished run of this method in this cell (of its default or any other configuration); runs without a record are "
                "counted (in the cell in markdown, in the header comments of the LaTeX file): running (a live launcher "
                "lease), started (has logs but no live lease: run outside the launcher, or interrupted), pending, "
                "failed, lost.")
DAGGER_NOTE = "† re-run by a later paper's authors with the original code, not by the method's authors."
DROP_NOTE = ("{teacher}: not the papers' pytorchcv teacher (FP ours / FP paper in the model column); "
             "on its rows Δ compares drops from FP: (ours − FP ours) − (paper − FP paper).")
REPRODUCED, NOT_REPRODUCED = "✓", "✗"
REPRODUCED_MIN_PP = 0.5
REPRODUCED_RULE = (f"{REPRODUCED} reproduced, {NOT_REPRODUCED} not: |our mean drop from FP − the published drop from FP| "
                   f"≤ max({REPRODUCED_MIN_PP} pp, 2 · the std of our drop over seeds), the std being 0 with one seed; "
                   "our FP is each run's teacher top-1 (its record), the published FP the paper's; marked only under "
                   "the paper protocol, where a published number exists.")
NO_MARKS_TEXT = (f"No {REPRODUCED}/{NOT_REPRODUCED} marks: only runs under the paper protocol are checked against "
                 "the published numbers.")
DEFAULT_TEXT = ("Ours: the method's default configuration for the cell (its defaults and paper presets under "
                "the protocol, no overrides); where it has no finished run, the configurations that were run, "
                "labelled.")
FALLBACK_NOTE = "no finished run of the default configuration here; shown: the runs with {label}."
# images in each evaluation set (the report stays torch-free: tiny's is dfqbench.zoo.tiny.TEST_IMAGES, tested equal)
TEST_SET_IMAGES = {"cifar10": 10_000, "cifar100": 10_000, "imagenet": 50_000, "tiny": 256}


# -- formatting ----------------------------------------------------------------------------------------
def fmt_number(x: float) -> str:
    return f"{x:.2f}"


def fmt_delta(x: float | None, mark: bool | None = None) -> str:
    """Δ with its reproduced mark (``+0.12 ✓``); ``mark`` None: no mark."""
    text = "–" if x is None else f"{x:+.2f}".replace("-", "−")
    return text if mark is None else f"{text} {REPRODUCED if mark else NOT_REPRODUCED}"


def fmt_ours(cell: Cell, notes: Footnotes, label: str, metric: str | None = None,
             others_shown: bool = False) -> tuple[str, str]:
    """(our cell text with its footnote marks, its status: unfinished runs). Marks: the configurations not shown
    (``others_shown`` False), (with ``metric``) finished runs without that metric, diverged runs; ``label``
    names the cell in the footnotes."""
    s = cell.summary
    if s is None:
        states = cell.state_text()
        text, status = f"–{notes.mark(MISSING_NOTE)}", (f" ({states})" if states else "")
    else:
        text = fmt_number(s.mean) + (f" ± {fmt_number(s.std)}" if s.std is not None else "") + f" (n={s.n})"
        status = f"; +{cell.state_text()}" if cell.states else ""
    if cell.fallback is not None:
        text += notes.mark(FALLBACK_NOTE.format(label=cell.fallback.full_label))
    if cell.default_unknown:
        text += notes.mark(f"{label}: the default configuration is unknown here ({cell.default_unknown}); shown: "
                           "the configuration with the most finished seeds.")
    if cell.others and not others_shown:
        shown = "the default configuration" if not cell.default_unknown else "that configuration"
        text += notes.mark(f"{label}: shown {shown} only; not shown: {cell.others_text()} "
                           "(--all-configurations shows them as labelled rows).")
    if metric is not None and cell.no_metric:
        text += notes.mark(f"{cell.no_metric} finished run(s) without a {metric} top-1 (never evaluated, or "
                           "training diverged before the last epoch).")
    if cell.diverged:
        text += notes.mark(cell.diverged_note(label))
    return text, status


def reproduced(cell: Cell, paper: PublishedValue | None, paper_fp: float | None, protocol: str
               ) -> bool | None:
    """The reproduced mark (:data:`REPRODUCED_RULE`), or None without a published number or an FP, or under
    another protocol than ``paper`` (a shortened schedule reproduces nothing)."""
    if cell.drop is None or paper is None or paper_fp is None or protocol != "paper":
        return None
    threshold = max(REPRODUCED_MIN_PP, 2.0 * (cell.drop.std or 0.0))
    return abs(cell.drop.mean - (paper_fp - paper.mean)) <= threshold + 1e-9  # 1e-9: float noise at the boundary


def reproduced_note(marks: list[bool]) -> str:
    yes = sum(marks)
    return (f"Reproduced ({REPRODUCED}): {yes} cell{'' if yes == 1 else 's'}; not reproduced ({NOT_REPRODUCED}): "
            f"{len(marks) - yes} cell{'' if len(marks) - yes == 1 else 's'} (default configurations; rule in the notes).")


def numbered(notes: list[str]) -> list[str]:
    """``["1. …", "2. …"]``: the notes that follow a one-sentence caption."""
    return [f"{i}. {note}" for i, note in enumerate(notes, 1)]


def caption_sentence(title: str, protocol: str, what: str) -> str:
    """A table's one-sentence caption: what it shows under which protocol, and for a protocol other than
    ``paper`` that its numbers are not comparable with the published ones (so no reproduced marks)."""
    if protocol == "paper":
        return f"{title} regenerated by dfqbench under the paper protocol: {what}."
    return (f"{title} regenerated by dfqbench under protocol {protocol}, a shortened schedule not comparable with "
            f"the published numbers (Δ without reproduced marks): {what}.")


def fmt_published(value: PublishedValue | None) -> str:
    if value is None:
        return "–"
    text = fmt_number(value.mean) + (f" ± {fmt_number(value.std)}" if value.std is not None else "") + value.mark
    return text + (f" ({value.note})" if value.note else "")


def delta(cell: Cell, paper: PublishedValue | None, paper_fp: float | None, papers_teacher: bool) -> tuple[float | None, str]:
    """(Δ, kind): ``absolute`` ours − paper, or ``drop`` (ours − FP ours) − (paper − FP paper)."""
    if cell.summary is None or paper is None:
        return None, ""
    if papers_teacher:
        return cell.summary.mean - paper.mean, "absolute"
    if cell.fp is None or paper_fp is None:
        return None, ""
    return (cell.summary.mean - cell.fp.mean) - (paper.mean - paper_fp), "drop"


def teacher_label(teacher: dict[str, Any] | None, key: str | None) -> str:
    if teacher is None:
        return "–"
    return "pytorchcv (papers')" if is_papers_teacher(teacher) else key or "?"


def schedule_text(records: list[RunRecord]) -> str:
    schedules = Counter()
    for r in records:
        train = r.spec.get("train", {})
        epochs, iters = train.get("epochs", "?"), train.get("iters_per_epoch", "?")
        schedules[f"{epochs} epoch{'' if epochs == 1 else 's'} × {iters} iteration{'' if iters == 1 else 's'}, "
                  f"batch {train.get('batch_size', '?')}"] += 1
    if not schedules:
        return "no finished runs"
    if len(schedules) > 3:
        return f"{len(schedules)} different schedules"
    if len(schedules) == 1:
        return next(iter(schedules))
    return "; ".join(f"{s} ({n} run{'' if n == 1 else 's'})" for s, n in schedules.most_common())


def evaluation_text(specs: list[dict[str, Any]]) -> str:
    """Which test images the top-1 is over: the full test set, or the protocol's fixed subset."""
    texts: Counter = Counter()
    for spec in specs:
        dataset = spec.get("dataset", "")
        limit, total = spec.get("train", {}).get("eval_max_images"), TEST_SET_IMAGES.get(dataset)
        name = DATASET_LABELS.get(dataset, dataset)
        kind = "validation set" if dataset == "imagenet" else "test set"
        if limit is None or (total is not None and isinstance(limit, int) and limit >= total):
            texts[f"the full {name} {kind}" + (f" ({total:,} images)" if total else "")] += 1
        else:
            texts[f"a fixed seeded subset of {limit:,}" + (f" of the {total:,}" if total else "")
                  + f" {name} {kind} images"] += 1
    if not texts:
        return ""
    many = len(texts) > 1
    return "Top-1 over " + "; ".join(t + (f" ({n} run{'' if n == 1 else 's'})" if many else "")
                                     for t, n in texts.most_common()) + "."


def protocol_text(protocol: str, records: list[RunRecord], unfinished: list[Unfinished] = ()) -> str:
    warning = "" if protocol == "paper" else " — a shortened schedule, not comparable with the published numbers"
    evaluation = evaluation_text([r.spec for r in records] + [u.spec for u in unfinished if u.spec])
    return f"Protocol: {protocol} ({schedule_text(records)}){warning}." + (f" {evaluation}" if evaluation else "")


def mark_notes(protocol: str) -> list[str]:
    """The reproduced rule under the paper protocol, else why there are no marks."""
    return [REPRODUCED_RULE] if protocol == "paper" else [NO_MARKS_TEXT]


def counts_text(records: list[RunRecord], unfinished: list[Unfinished]) -> str:
    states = Counter(u.state for u in unfinished)
    parts = [f"{len(records)} finished"] + [f"{n} {s}" for s, n in sorted(states.items())]
    return "Runs: " + ", ".join(parts) + "."


def bold_best(values: list[float | None]) -> list[bool]:
    """Which values are the best (max) at the printed precision."""
    shown = [None if v is None else round(v, 2) for v in values]
    best = max((v for v in shown if v is not None), default=None)
    return [v is not None and v == best for v in shown]


# -- main tables ---------------------------------------------------------------------------------------
def main_tables(scan: Scan, layout: PublishedTable, published: Published, metric: str, all_rows: bool = False,
                all_columns: bool = False, extra_methods: bool = True, all_configurations: bool = False) -> list[Table]:
    """One table per protocol in the scan (only full configurations; ablated AdaSG-family runs are left out)."""
    records = [r for r in scan.records if is_full(r.spec.get("method_config", {}))]
    unfinished = [u for u in scan.unfinished
                  if unfinished_key(u) is not None and is_full((u.spec or {}).get("method_config", {}))]
    protocols = {r.protocol for r in records} | {unfinished_key(u)[0] for u in unfinished}
    if all_rows and not protocols:
        protocols = {"paper"}
    return [_main_table(layout, published, protocol, [r for r in records if r.protocol == protocol],
                        [u for u in unfinished if unfinished_key(u)[0] == protocol], metric, all_rows, all_columns,
                        extra_methods, all_configurations)
            for protocol in sorted(protocols, key=protocol_sort_key)]


def _configuration_cells(table: Table, notes: Footnotes, label: str, cell: Cell, paper: Any, paper_fp: Any,
                         papers_teacher: bool, width: int, index: int, protocol: str, metric: str | None = None
                         ) -> tuple[list[list[Text]], Any, Any, Any]:
    """A labelled row of another configuration: ours / published / Δ (with the reproduced mark) in column
    ``index`` of ``width``, the others empty; the cell's run states go to the table's status lines. Returns the
    row's cells and the Δ, its kind and the mark (for the table's records)."""
    ours, status = fmt_ours(cell, notes, label, metric)
    if cell.states:
        table.cell_status.append(f"{label}: {cell.state_text()}")
    diff, kind = delta(cell, paper, paper_fp, papers_teacher)
    mark = reproduced(cell, paper, paper_fp, protocol)
    row_cells = [[Text("")] * len(SUBCOLUMNS) for _ in range(width)]
    row_cells[index] = [Text(ours, status=status), Text(fmt_published(paper)), Text(fmt_delta(diff, mark))]
    return row_cells, diff, kind, mark


def _main_table(layout: PublishedTable, published: Published, protocol: str, records: list[RunRecord],
                unfinished: list[Unfinished], metric: str, all_rows: bool, all_columns: bool,
                extra_methods: bool, all_configurations: bool = False) -> Table:
    notes = Footnotes()
    if not extra_methods:  # only the methods of the paper's columns make rows
        records = [r for r in records if r.method in layout.method_of.values()]
        unfinished = [u for u in unfinished if unfinished_key(u)[4] in layout.method_of.values()]
    by_cell = group_by(records, record_key)
    by_row = group_by(records, lambda r: (r.model, r.teacher, r.bits))
    unfinished_by_cell = group_by(unfinished, unfinished_key)
    teachers = {r.teacher: r.spec["teacher"] for r in records}
    teachers.update({unfinished_key(u)[2]: u.spec["teacher"] for u in unfinished})
    datasets = {r.model: r.spec.get("dataset", "") for r in records}
    datasets.update({u.spec["model"]: u.spec.get("dataset", "") for u in unfinished})

    columns: list[tuple[str, str | None]] = [(c, layout.method_of.get(c)) for c in layout.columns
                                             if all_columns or c in layout.method_of]
    omitted = [c for c in layout.columns if not all_columns and c not in layout.method_of]
    if extra_methods:
        mapped = set(layout.method_of.values())
        present = {k[4] for k in by_cell} | {k[4] for k in unfinished_by_cell}
        columns += [(method_label(m), m) for m in sorted(present - mapped, key=method_sort_key)]

    row_keys = {k[1:4] for k in by_cell} | {k[1:4] for k in unfinished_by_cell}
    if all_rows:
        covered = {(m, b) for m, _, b in row_keys}
        row_keys |= {(row.model, None, row.bits) for row in layout.rows if (row.model, row.bits) not in covered}
    paper_index = {(row.model, row.bits): i for i, row in enumerate(layout.rows)}

    def row_order(key: tuple[str, str | None, str]) -> tuple:
        model, teacher, bits = key
        return (paper_index.get((model, bits), len(paper_index)), datasets.get(model, ""), model,
                bits_sort_key(bits), teacher or "")

    table = Table(layout.name, f"{layout.title} — protocol {protocol}", "",
                  ["dataset", "model (FP ours / paper)", "teacher", "bits"],
                  [Group(method_label(method) if method else title, SUBCOLUMNS) for title, method in columns])
    marks: list[bool] = []
    configured_rows = False
    for model, teacher, bits in sorted(row_keys, key=row_order):
        paper_row = layout.row(model, bits)
        paper_fp = paper_row.fp if paper_row else None
        teacher_spec = teachers.get(teacher) if teacher else None
        papers_teacher = teacher_spec is not None and is_papers_teacher(teacher_spec)
        teacher_text = teacher_label(teacher_spec, teacher)
        if teacher_spec is not None and not papers_teacher:
            teacher_text += notes.mark(DROP_NOTE.format(teacher=teacher_text))
        cells, means = [], []
        extra: list[tuple[int, Configuration, Cell, PublishedValue | None]] = []
        for index, (title, method) in enumerate(columns):
            paper = paper_row.values.get(title) if paper_row is not None and title in paper_row.values else None
            if paper is not None and paper.mark == "†":
                notes.note(DAGGER_NOTE)
            if method is None:
                cells.append([Text("n/a (not in dfqbench)"), Text(fmt_published(paper)), Text("–")])
                means.append(None)
                continue
            label = f"{method_label(method)} {bits.upper()} ({model})"
            cell = make_cell(by_cell.get((protocol, model, teacher, bits, method), []),
                             unfinished_by_cell.get((protocol, model, teacher, bits, method), []), metric)
            shows_all = all_configurations or cell.fallback is not None  # no default run: show what was run
            cells.append(compared_cell(table, marks, notes, cell, label, metric, paper, paper_fp, papers_teacher,
                                       (layout.name, protocol, model, datasets.get(model, ""), teacher, bits, method),
                                       shows_all))
            means.append(cell.summary.mean if cell.summary else None)
            if shows_all:
                extra += [(index, conf, summarize_cell(conf.records, conf.unfinished, metric), paper)
                          for conf in cell.others]
        fp_ours = summarize(r.fp for r in by_row.get((model, teacher, bits), []))  # the teacher's, any configuration
        bold = bold_best(means)
        same_model = paper_row or next((r for r in layout.rows if r.model == model), None)
        dataset = same_model.dataset if same_model else DATASET_LABELS.get(datasets.get(model, ""), datasets.get(model, ""))
        name = same_model.model_label if same_model else model
        fp_text = " / ".join(["–" if fp_ours is None else fmt_number(fp_ours.mean),
                              "–" if same_model is None else fmt_number(same_model.fp)])
        labels = [dataset, f"{name} ({fp_text})", teacher_text, bits.upper()]
        table.rows.append(TableRow(labels + ["default"],
                                   [[dataclasses.replace(c[0], bold=b), c[1], c[2]] for c, b in zip(cells, bold)]))
        for index, conf, cell, paper in extra:  # other configurations: one labelled row each, never bold
            configured_rows = True
            method = columns[index][1]
            label = f"{method_label(method)} {bits.upper()} ({model}) with {conf.label}"
            row_cells, diff, kind, mark = _configuration_cells(table, notes, label, cell, paper, paper_fp,
                                                               papers_teacher, len(columns), index, protocol, metric)
            table.rows.append(TableRow(labels + [f"{method_label(method)} ({conf.label})"], row_cells))
            table.records.append(_record(layout.name, protocol, model, datasets.get(model, ""), teacher, bits, method,
                                         metric, cell, paper, paper_fp, diff, kind, mark, conf.full_label))
    _configuration_column(table, configured_rows)
    if omitted:
        notes.note(f"Published-only columns not shown (no dfqbench method): {', '.join(omitted)}; --all-columns shows them.")
    if protocol == "paper":
        notes.note(reproduced_note(marks))
    table.caption = caption_sentence(layout.title, protocol, "ours as mean ± std over seeds (n) / published / "
                                     "Δ = ours − published per method, best of ours per row in bold")
    table.status = [counts_text(records, unfinished)]
    table.notes = notes.marked() + numbered(
        [f"Published numbers: {layout.source}.", protocol_text(protocol, records, unfinished),
         f"Metric: {METRIC_TEXT[metric]}.", DEFAULT_TEXT, *mark_notes(protocol), *notes.plain(), *layout.notes])
    return table


def shown_label(cell: Cell) -> str:
    """The configuration a cell in a default row shows: ``default``, or the whole label of the one shown in its
    place (:attr:`Cell.fallback`)."""
    return "default" if cell.fallback is None else cell.fallback.full_label


def _configuration_column(table: Table, needed: bool) -> None:
    """Keep the last label ("default" or the configuration) as a ``configuration`` column only when some row
    shows another configuration; otherwise drop it."""
    if needed:
        table.label_columns.append("configuration")
        return
    for row in table.rows:
        row.labels.pop()


def compared_cell(table: Table, marks: list[bool] | None, notes: Footnotes, cell: Cell, label: str, metric: str,
                  paper: PublishedValue | None, paper_fp: float | None, papers_teacher: bool,
                  where: tuple[str, str, str, str, str | None, str, str], shows_all: bool,
                  configuration: str | None = None) -> list[Text]:
    """One method's ours / paper / Δ sub-cells in a published layout (AdaSG Table 1, Qimera Table 2, SynQ
    Table 1), with what goes with them: the cell's run states, its reproduced mark (added to ``marks`` when
    the default configuration is shown; ``marks=None`` for a non-default configuration's row, whose marks the
    note does not count) and its CSV record. ``where`` is (table, protocol, model, dataset, teacher, bits,
    method); ``shows_all``: the cell's other configurations get rows of their own; ``configuration``: the CSV's
    configuration text (default: the one the cell shows)."""
    table_name, protocol = where[0], where[1]
    ours, status = fmt_ours(cell, notes, label, metric, others_shown=shows_all)
    if cell.states:
        table.cell_status.append(f"{label}: {cell.state_text()}")
    diff, kind = delta(cell, paper, paper_fp, papers_teacher)
    mark = reproduced(cell, paper, paper_fp, protocol)
    if marks is not None and mark is not None and cell.fallback is None:
        marks.append(mark)
    table.records.append(_record(table_name, *where[1:], metric, cell, paper, paper_fp, diff, kind, mark,
                                 shown_label(cell) if configuration is None else configuration))
    return [Text(ours, status=status), Text(fmt_published(paper)), Text(fmt_delta(diff, mark))]


def _record(table: str, protocol: str, model: str, dataset: str, teacher: str | None, bits: str, column: str,
            metric: str, cell: Cell, paper: PublishedValue | None, paper_fp: float | None, diff: float | None,
            kind: str, mark: bool | None, configuration: str, **extra: Any) -> dict[str, Any]:
    s = cell.summary
    return {
        "table": table, "protocol": protocol, "dataset": dataset, "model": model, "teacher": teacher or "",
        "bits": bits, "column": column, **extra, "configuration": configuration, "metric": metric,
        "n": s.n if s else 0, "mean": s.mean if s else None, "std": s.std if s else None,
        "fp": cell.fp.mean if cell.fp else None, "paper": paper.mean if paper else None,
        "paper_std": paper.std if paper else None, "paper_mark": paper.mark if paper else "",
        "paper_fp": paper_fp, "delta": diff, "delta_kind": kind,
        "drop": cell.drop.mean if cell.drop else None, "drop_std": cell.drop.std if cell.drop else None,
        "paper_drop": None if paper is None or paper_fp is None else paper_fp - paper.mean,
        "reproduced": "" if mark is None else ("yes" if mark else "no"),
        "running": cell.states.get("running", 0), "pending": cell.states.get("pending", 0),
        "failed": cell.states.get("failed", 0),
        "run_ids": " ".join(r.record.get("run_id", "") for r in cell.records),
    }


# -- ablation tables -----------------------------------------------------------------------------------
def ablation_tables(scan: Scan, published: Published, metric: str, all_rows: bool = False,
                    only_ablated: bool = False, all_configurations: bool = False) -> list[Table]:
    """One table per (protocol, method, model, teacher) among AdaSG-family records (a term mapping exists);
    with ``only_ablated``, only groups holding a run with some term off."""
    records = [(r, ablation_terms(r.spec.get("method_config", {}))) for r in scan.records]
    records = [(r, t) for r, t in records if t is not None]
    unfinished = []
    for u in scan.unfinished:
        key = unfinished_key(u)
        terms = ablation_terms((u.spec or {}).get("method_config", {})) if key else None
        if terms is not None:
            unfinished.append((u, terms))
    groups = group_by(records, lambda rt: (rt[0].protocol, rt[0].method, rt[0].model, rt[0].teacher))
    keys = set(groups) | {(unfinished_key(u)[0], unfinished_key(u)[4], unfinished_key(u)[1], unfinished_key(u)[2])
                          for u, _ in unfinished}
    if all_rows:
        covered = {(k[1], k[2]) for k in keys}
        keys |= {("paper", a.method, a.model, None) for a in published.ablations.values() if (a.method, a.model) not in covered}
    if only_ablated:
        ablated = {k for k, rts in groups.items() if any(not all(t) for _, t in rts)}
        ablated |= {(unfinished_key(u)[0], unfinished_key(u)[4], unfinished_key(u)[1], unfinished_key(u)[2])
                    for u, t in unfinished if not all(t)}
        keys = {k for k in keys if k in ablated or k[3] is None}
    tables = []
    for key in sorted(keys, key=lambda k: (protocol_sort_key(k[0]), method_sort_key(k[1]), k[2], k[3] or "")):
        unf = [(u, t) for u, t in unfinished if (unfinished_key(u)[0], unfinished_key(u)[4], unfinished_key(u)[1],
                                                 unfinished_key(u)[2]) == key]
        tables.append(_ablation_table(key, groups.get(key, []), unf, published, metric, all_configurations))
    return tables


def ablation_weight_off(key: str, value: Any) -> bool:
    """A difference from the default that an ablation row allows: a generator-loss term's weight set to 0."""
    weights = {f"method.{name}" for candidates in TERM_WEIGHT_FIELDS.values() for fields in candidates for name in fields}
    return key in weights and isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def _ablation_table(key: tuple[str, str, str, str | None], records: list[tuple[RunRecord, tuple[bool, ...]]],
                    unfinished: list[tuple[Unfinished, tuple[bool, ...]]], published: Published, metric: str,
                    all_configurations: bool = False) -> Table:
    protocol, method, model, teacher = key
    notes = Footnotes()
    pub = published.ablation_for(method)
    pub = pub if pub is not None and pub.model == model else None
    teacher_spec = records[0][0].spec["teacher"] if records else (unfinished[0][0].spec["teacher"] if unfinished else None)
    papers_teacher = teacher_spec is not None and is_papers_teacher(teacher_spec)
    bits_list = sorted({r.bits for r, _ in records} | {u.spec["bits"] for u, _ in unfinished} | set(pub.bits if pub else ()),
                       key=bits_sort_key)
    row_terms: list[tuple[bool, ...]] = [terms for terms, _ in pub.rows] if pub else []
    ours_terms = {t for _, t in records} | {t for _, t in unfinished}
    row_terms += sorted(ours_terms - set(row_terms), key=lambda t: (-sum(t), [not x for x in t]))
    fp_ours = summarize(r.fp for r, _ in records)
    paper_fp = pub.fp if pub else published.paper_fp(model)
    dataset = records[0][0].spec.get("dataset", "") if records else ""
    teacher_text = teacher_label(teacher_spec, teacher)
    if teacher_spec is not None and not papers_teacher:
        teacher_text += notes.mark(DROP_NOTE.format(teacher=teacher_text))
    title = f"{method_label(method)} generator-loss ablation — {published.model_text(model)} — protocol {protocol}"
    table = Table("ablation", title, "", [f"{'L_' + ('BNS' if t == 'bns' else t)}" for t in ABLATION_TERMS],
                  [Group(b.upper(), SUBCOLUMNS) for b in bits_list])
    by_cell = group_by(records, lambda rt: (rt[1], rt[0].bits))
    unf_by_cell = group_by(unfinished, lambda ut: (ut[1], ut[0].spec["bits"]))
    grid: list[list[list[Text]]] = []
    means: list[list[float | None]] = []
    extra: list[list[tuple[int, Configuration, Cell, PublishedValue | None]]] = []
    marks: list[bool] = []
    for i, terms in enumerate(row_terms):
        pub_values = pub.rows[i][1] if pub and i < len(pub.rows) else {}
        row_cells, row_means, row_extra = [], [], []
        for j, bits in enumerate(bits_list):
            label = f"{terms_label(terms)} {bits.upper()}"
            cell = make_cell([r for r, _ in by_cell.get((terms, bits), [])],
                             [u for u, _ in unf_by_cell.get((terms, bits), [])], metric, ablation_weight_off)
            shows_all = all_configurations or cell.fallback is not None  # no default run: show what was run
            ours, status = fmt_ours(cell, notes, label, others_shown=shows_all)
            if cell.states:
                table.cell_status.append(f"{label}: {cell.state_text()}")
            paper = pub_values.get(bits)
            diff, kind = delta(cell, paper, paper_fp, papers_teacher)
            mark = reproduced(cell, paper, paper_fp, protocol)
            if mark is not None and cell.fallback is None:
                marks.append(mark)
            row_cells.append([Text(ours, status=status), Text(fmt_published(paper)), Text(fmt_delta(diff, mark))])
            row_means.append(cell.summary.mean if cell.summary else None)
            table.records.append(_record("ablation", protocol, model, dataset, teacher, bits, method, metric, cell,
                                         paper, paper_fp, diff, kind, mark, shown_label(cell), terms=terms_label(terms)))
            if shows_all:
                row_extra += [(j, conf, summarize_cell(conf.records, conf.unfinished, metric), paper)
                              for conf in cell.others]
        grid.append(row_cells)
        means.append(row_means)
        extra.append(row_extra)
    bold_columns = [bold_best([m[j] for m in means]) for j in range(len(bits_list))]
    for i, terms in enumerate(row_terms):
        labels = ["yes" if on else "–" for on in terms]
        table.rows.append(TableRow(labels + ["default"], [[dataclasses.replace(c[0], bold=bold_columns[j][i]), c[1], c[2]]
                                                          for j, c in enumerate(grid[i])]))
        for j, conf, cell, paper in extra[i]:
            label = f"{terms_label(terms)} {bits_list[j].upper()} with {conf.label}"
            row_cells, diff, kind, mark = _configuration_cells(table, notes, label, cell, paper, paper_fp,
                                                               papers_teacher, len(bits_list), j, protocol)
            table.rows.append(TableRow(labels + [conf.label], row_cells))
            table.records.append(_record("ablation", protocol, model, dataset, teacher, bits_list[j], method, metric,
                                         cell, paper, paper_fp, diff, kind, mark, conf.full_label,
                                         terms=terms_label(terms)))
    _configuration_column(table, any(extra))
    if protocol == "paper":
        notes.note(reproduced_note(marks))
    fp_text = f"FP ours {fmt_number(fp_ours.mean) if fp_ours else '–'} / paper {fmt_number(paper_fp) if paper_fp else '–'}"
    source = f"Published numbers: {pub.source}." if pub else "No published ablation for this model."
    finished = [r for r, _ in records]
    table.caption = caption_sentence(
        f"{method_label(method)}'s generator-loss ablation on {published.model_text(model)} (teacher {teacher_text})",
        protocol, "which terms are on (yes) or off (–), and per bit-width ours mean ± std over seeds (n) / published / "
        "Δ, best of ours per column in bold")
    table.status = [counts_text(finished, [u for u, _ in unfinished])]
    table.notes = notes.marked() + numbered(
        [f"{source} {fp_text}.", protocol_text(protocol, finished, [u for u, _ in unfinished]),
         f"Metric: {METRIC_TEXT[metric]}.", "Each row: the method's default configuration with the row's terms off "
         "(weight 0); where it has no finished run, the configurations that were run, labelled.",
         *mark_notes(protocol), *notes.plain(), *(pub.notes if pub else [])])
    return table


def build_tables(scan: Scan, published: Published, which: str = "all", metric: str = "best", all_rows: bool = False,
                 all_columns: bool = False, all_configurations: bool = False) -> list[Table]:
    """The requested layouts (``table1``, ``qimera_t2``, ``ablation`` or ``all``) over a scan; with
    ``all_configurations``, other configurations than a cell's default get their own labelled rows."""
    tables: list[Table] = []
    if which in ("all", "table1"):
        tables += main_tables(scan, published.tables["table1"], published, metric, all_rows, all_columns, True,
                              all_configurations)
    if which in ("all", "qimera_t2"):
        tables += main_tables(scan, published.tables["qimera_t2"], published, metric, all_rows, all_columns, False,
                              all_configurations)
    if which in ("all", "ablation"):  # "all" shows ablation tables only where some run has a term off
        tables += ablation_tables(scan, published, metric, all_rows, only_ablated=which == "all",
                                  all_configurations=all_configurations)
    return tables
