"""SynQ Table 1's layout (``report --table synq_table1``): the paper's method rows with ours beside each number.

SynQ (ICLR 2025) prints one row per method and one column per (dataset, model, bit-width). Columns here are the
printed cells in the order of dfqbench's transcription (``published.yaml`` ``synq_t1``: per model W4A4 then
W3A3; CIFAR-10 and CIFAR-100 ResNet-20, ImageNet ResNet-18, ResNet-50, MobileNetV2), then cells where our runs
of the table's methods exist but SynQ prints nothing (e.g. W5A5). Every printed column is shown even without a
run of ours. A column is also split by teacher: a non-pytorchcv teacher's columns compare drops from FP (Δ as
in :mod:`dfqbench.report.tables`). Each cell holds ours (mean ± std over seeds, n) / published / Δ with the
reproduced mark, which is given under the paper protocol only (:func:`dfqbench.report.tables.reproduced`).

Rows: first the generator-based baselines dfqbench implements (GDFQ, ZeroQ, ZAQ, Qimera, AdaSG, AdaDFQ). SynQ
Table 1 prints its own numbers for them, which dfqbench's transcription does not hold, so their published
sub-cells are those of the first other table in ``published.yaml`` that prints the cell (AdaSG Table 1, else
Qimera Table 2), and a note names the table of each row. Then the printed methods (IntraQ, HAST, TexQ, SynQ;
TexQ's code is not released, so its cells say ``unsupported``), then other methods with runs in these columns
(published ``–``), then, when asked for, other configurations as labelled rows.
One table per protocol; one sentence of caption, numbered notes below.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dfqbench.report.ablation import is_full
from dfqbench.report.cells import (DATASET_LABELS, Cell, bits_sort_key, group_by, is_papers_teacher, make_cell,
                                   method_label, method_sort_key, protocol_sort_key, record_key, summarize_cell,
                                   unfinished_key)
from dfqbench.report.load import RunRecord, Scan, Unfinished
from dfqbench.report.model import Footnotes, Group, Table, TableRow, Text
from dfqbench.report.published import Published, PublishedTable, PublishedValue
from dfqbench.report.stats import summarize
from dfqbench.report.tables import (DAGGER_NOTE, DEFAULT_TEXT, DROP_NOTE, METRIC_TEXT, SUBCOLUMNS, bold_best,
                                    caption_sentence, compared_cell, counts_text, fmt_number, fmt_published,
                                    mark_notes, numbered, protocol_text, reproduced_note, teacher_label)

LAYOUT = "synq_t1"  # the published.yaml table this layout shows
ColumnKey = tuple[str, str | None, str]  # (model, teacher key or None without a run, bits)
ORDER_NOTE = ("Columns: SynQ Table 1's cells in the order of dfqbench's transcription, then cells with runs of "
              "the table's methods that it does not print; FP in a column's header: ours / published.")
EXTRA_NOTE = ("{methods}: runs here, but not among the transcribed columns of SynQ Table 1 (published –).")
BASELINE_NOTE = ("Published numbers of {sources}: SynQ Table 1 prints its own for these baselines, which dfqbench's "
                 "transcription does not hold; they may differ from the ones shown.")
OUTSIDE_NOTE = ("{n} finished run(s) of {methods} in cells SynQ Table 1 does not print are not shown here "
                "(--table table1 or --table methods shows them).")


def synq_tables(scan: Scan, published: Published, metric: str = "best", all_configurations: bool = False,
                only_with_runs: bool = False) -> list[Table]:
    """One table per protocol; without any run, one of the paper protocol with the published numbers alone.
    ``only_with_runs`` (``--table all``): only the protocols holding a run of the table's own methods."""
    layout = published.tables[LAYOUT]
    own = set(layout.method_of.values())
    records = [r for r in scan.records if is_full(r.spec.get("method_config", {}))]
    unfinished = [u for u in scan.unfinished
                  if unfinished_key(u) is not None and is_full((u.spec or {}).get("method_config", {}))]
    runs = [(r.protocol, r.method) for r in records]
    runs += [(unfinished_key(u)[0], unfinished_key(u)[4]) for u in unfinished]
    protocols = {p for p, m in runs if m in own or not only_with_runs}
    if not protocols and not only_with_runs:
        protocols = {"paper"}
    return [_table(layout, published, protocol, [r for r in records if r.protocol == protocol],
                   [u for u in unfinished if unfinished_key(u)[0] == protocol], metric, all_configurations)
            for protocol in sorted(protocols, key=protocol_sort_key)]


def _columns(layout: PublishedTable, records: list[RunRecord], unfinished: list[Unfinished]) -> list[ColumnKey]:
    """The printed cells (split by the teachers of their runs), then the cells of the layout's methods' runs
    that the paper does not print."""
    own = set(layout.method_of.values())
    keys = {(r.model, r.teacher, r.bits, r.method) for r in records}
    keys |= {unfinished_key(u)[1:] for u in unfinished}
    columns: list[ColumnKey] = []
    for row in layout.rows:
        teachers = sorted({t for m, t, b, _ in keys if (m, b) == (row.model, row.bits)})
        columns += [(row.model, t, row.bits) for t in teachers] or [(row.model, None, row.bits)]
    printed = {(row.model, row.bits) for row in layout.rows}
    extra = {(m, t, b) for m, t, b, method in keys if method in own and (m, b) not in printed}
    return columns + sorted(extra, key=lambda k: (k[0], bits_sort_key(k[2]), k[1]))


def _table(layout: PublishedTable, published: Published, protocol: str, records: list[RunRecord],
           unfinished: list[Unfinished], metric: str, all_configurations: bool) -> Table:
    notes = Footnotes()
    columns = _columns(layout, records, unfinished)
    column_set = {(m, b) for m, _, b in columns}
    by_cell = group_by(records, record_key)
    unfinished_by_cell = group_by(unfinished, unfinished_key)
    teachers = {r.teacher: r.spec["teacher"] for r in records}
    teachers.update({unfinished_key(u)[2]: u.spec["teacher"] for u in unfinished})
    datasets = {r.model: r.spec.get("dataset", "") for r in records}
    datasets.update({u.spec["model"]: u.spec.get("dataset", "") for u in unfinished})

    mapped = set(layout.method_of.values())
    baselines = baseline_sources(layout, published)
    present = {r.method for r in records if (r.model, r.bits) in column_set}
    present |= {unfinished_key(u)[4] for u in unfinished if (u.spec["model"], u.spec["bits"]) in column_set}
    extra_methods = sorted(present - mapped - set(baselines), key=method_sort_key)
    outside = [r for r in records if r.method not in mapped and (r.model, r.bits) not in column_set]
    method_rows: list[tuple[str, str | None]] = [(method_label(m), m) for m in baselines]
    method_rows += [(c, layout.method_of.get(c)) for c in layout.columns]
    method_rows += [(method_label(m), m) for m in extra_methods]

    groups, column_info = [], []
    for model, teacher, bits in columns:
        paper_row = layout.row(model, bits)
        printed = paper_row or published.any_row(model)
        teacher_spec = teachers.get(teacher) if teacher else None
        papers_teacher = teacher_spec is not None and is_papers_teacher(teacher_spec)
        fp_ours = summarize(r.fp for r in records if (r.model, r.teacher) == (model, teacher))
        fp_text = " / ".join(([] if fp_ours is None else [fmt_number(fp_ours.mean)])
                             + ["–" if printed is None else fmt_number(printed.fp)])
        dataset = printed.dataset if printed else DATASET_LABELS.get(datasets.get(model, ""), datasets.get(model, ""))
        name = printed.model_label if printed else model
        title = f"{dataset} {name} ({fp_text}) {bits.upper()}"
        if teacher_spec is not None and not papers_teacher:
            label = teacher_label(teacher_spec, teacher)
            title += f" · teacher {label}{notes.mark(DROP_NOTE.format(teacher=label))}"
        groups.append(Group(title, SUBCOLUMNS))
        column_info.append((paper_row, None if printed is None else printed.fp, papers_teacher))

    table = Table(layout.name, f"{layout.title} — protocol {protocol}", "", ["method"], groups)
    marks: list[bool] = []
    configured: list[list[TableRow]] = []
    grid: list[list[list[Text]]] = []
    means: list[list[float | None]] = []
    for title, method in method_rows:
        cells, row_means = [], []
        others: dict[str, dict[int, tuple[Any, Cell, PublishedValue | None]]] = {}
        for index, (model, teacher, bits) in enumerate(columns):
            paper_row, paper_fp, papers_teacher = column_info[index]
            paper = printed_value(layout, published, paper_row, title, method)
            if paper is not None and paper.mark == "†":
                notes.note(DAGGER_NOTE)
            if method is None:
                reason = layout.unsupported.get(title)
                text = (f"unsupported{notes.mark(f'{title}: unsupported: {reason}.')}" if reason
                        else "n/a (not in dfqbench)")
                cells.append([Text(text), Text(fmt_published(paper)), Text("–")])
                row_means.append(None)
                continue
            label = f"{title} {bits.upper()} ({model})"
            cell = make_cell(by_cell.get((protocol, model, teacher, bits, method), []),
                             unfinished_by_cell.get((protocol, model, teacher, bits, method), []), metric)
            shows_all = all_configurations or cell.fallback is not None
            cells.append(compared_cell(table, marks, notes, cell, label, metric, paper, paper_fp, papers_teacher,
                                       (layout.name, protocol, model, datasets.get(model, ""), teacher, bits, method),
                                       shows_all))
            row_means.append(cell.summary.mean if cell.summary else None)
            if shows_all:
                for conf in cell.others:
                    others.setdefault(conf.label, {})[index] = (
                        conf, summarize_cell(conf.records, conf.unfinished, metric), paper)
        grid.append(cells)
        means.append(row_means)
        configured.append(_configuration_rows(table, notes, title, method, others, columns, column_info, datasets,
                                              protocol, metric))
    bold = [bold_best([m[j] for m in means]) for j in range(len(columns))]
    for i, (title, method) in enumerate(method_rows):
        row = [[dataclasses.replace(c[0], bold=bold[j][i]), c[1], c[2]] for j, c in enumerate(grid[i])]
        table.rows.append(TableRow([title, "default"], row))
        table.rows += configured[i]
    if any(configured):
        table.label_columns.append("configuration")
    else:
        for row in table.rows:
            row.labels.pop()

    plain = [ORDER_NOTE, baseline_note(baselines)]
    if extra_methods:
        plain.append(EXTRA_NOTE.format(methods=", ".join(method_label(m) for m in extra_methods)))
    if outside:
        plain.append(OUTSIDE_NOTE.format(n=len(outside), methods=", ".join(
            method_label(m) for m in sorted({r.method for r in outside}, key=method_sort_key))))
    if protocol == "paper":
        notes.note(reproduced_note(marks))
    table.caption = caption_sentence(
        layout.title, protocol, "per method (rows) and cell (columns) ours as mean ± std over seeds (n) / published / "
        "Δ = ours − published, best of ours per column in bold")
    table.status = [counts_text(records, unfinished)]
    table.notes = notes.marked() + numbered(
        [f"Published numbers: {layout.source}.", protocol_text(protocol, records, unfinished),
         f"Metric: {METRIC_TEXT[metric]}.", DEFAULT_TEXT, *mark_notes(protocol), *plain, *notes.plain(),
         *layout.notes])
    return table


def _configuration_rows(table: Table, notes: Footnotes, title: str, method: str | None,
                        others: dict[str, dict[int, tuple[Any, Cell, PublishedValue | None]]],
                        columns: list[ColumnKey], column_info: list[tuple[Any, float | None, bool]],
                        datasets: dict[str, str], protocol: str, metric: str) -> list[TableRow]:
    """One labelled row per other configuration of a method: its cells where it has runs, the others empty;
    never bold, its marks not counted in the reproduced note (which counts default configurations)."""
    rows = []
    for conf_label, by_index in others.items():
        row_cells = [[Text("")] * len(SUBCOLUMNS) for _ in columns]
        for index, (conf, cell, paper) in by_index.items():
            model, teacher, bits = columns[index]
            _, paper_fp, papers_teacher = column_info[index]
            label = f"{title} {bits.upper()} ({model}) with {conf.label}"
            row_cells[index] = compared_cell(table, None, notes, cell, label, metric, paper, paper_fp, papers_teacher,
                                             (table.key, protocol, model, datasets.get(model, ""), teacher, bits,
                                              str(method)), True, conf.full_label)
        rows.append(TableRow([title, conf_label], row_cells))
    return rows


def baseline_sources(layout: PublishedTable, published: Published) -> dict[str, list[str]]:
    """The dfqbench methods outside the layout's columns that another published table prints in at least one of
    its cells (in report order), each with the titles of the tables its numbers come from."""
    own = set(layout.method_of.values())
    methods = {m for table in published.tables.values() for m in table.method_of.values()} - own
    sources: dict[str, list[str]] = {}
    for method in sorted(methods, key=method_sort_key):
        for row in layout.rows:
            found = published.printed_elsewhere(row.model, row.bits, method, skip=layout.name)
            if found is not None and found[1].title not in sources.setdefault(method, []):
                sources[method].append(found[1].title)
        if not sources[method]:
            del sources[method]
    return sources


def printed_value(layout: PublishedTable, published: Published, paper_row: Any, title: str,
                  method: str | None) -> PublishedValue | None:
    """The published sub-cell of a row: the layout's own number for its columns, another table's for a baseline
    (:func:`baseline_sources`), none for a cell the layout does not print."""
    if paper_row is None:
        return None
    if title in paper_row.values:
        return paper_row.values[title]
    found = None if method is None else published.printed_elsewhere(paper_row.model, paper_row.bits, method,
                                                                     skip=layout.name)
    return None if found is None else found[0]


def baseline_note(baselines: dict[str, list[str]]) -> str:
    """Which table each baseline row's published numbers come from (grouped by table)."""
    by_tables: dict[tuple[str, ...], list[str]] = {}
    for method, titles in baselines.items():
        by_tables.setdefault(tuple(titles), []).append(method_label(method))
    parts = [f"{', '.join(methods)} from {' and '.join(titles)}" for titles, methods in by_tables.items()]
    return BASELINE_NOTE.format(sources="; ".join(parts))
