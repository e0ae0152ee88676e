"""Table layouts: the papers' main tables (AdaSG Table 1, Qimera Table 2) and the generator-loss ablation.

Main tables: rows dataset / model (FP ours / FP paper) / teacher / bits, one column group per method with
ours (mean ± std over seeds, n) / the published number / Δ. One table per protocol: ``quick`` records are
never mixed with ``paper`` ones. Δ = ours − paper when the run's teacher is the papers' (pytorchcv); on rows
with another teacher Δ compares drops from FP, (ours − FP ours) − (paper − FP paper), and says so. Best of
ours per row in bold. Ablation tables: rows = which of L_ds, L_as, L_b, L_BNS are on, columns = bit-widths,
best of ours per column in bold.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from dfqbench.report.ablation import ablation_terms, is_full, terms_label
from dfqbench.report.cells import (DATASET_LABELS, Cell, bits_sort_key, group_by, is_papers_teacher, make_cell,
                                   method_label, method_sort_key, protocol_sort_key, record_key, unfinished_key)
from dfqbench.report.load import RunRecord, Scan, Unfinished
from dfqbench.report.model import Footnotes, Group, Table, TableRow, Text
from dfqbench.report.published import ABLATION_TERMS, Published, PublishedTable, PublishedValue
from dfqbench.report.stats import summarize

SUBCOLUMNS = ("ours", "paper", "Δ")
METRIC_TEXT = {"best": "best test top-1 over epochs (as the papers report)",
               "final": "final-epoch test top-1 (the papers report the best epoch; Δ compares our final with their best)"}
MISSING_NOTE = ("– no finished run of this method in this cell; runs without a record are counted in the cell: running "
                "(a live launcher lease), started (has logs but no live lease: run outside the launcher, or "
                "interrupted), pending, failed, lost.")
DAGGER_NOTE = "† re-run by a later paper's authors with the original code, not by the method's authors."
DROP_NOTE = ("{teacher}: not the papers' pytorchcv teacher (FP ours / FP paper in the model column); "
             "on its rows Δ compares drops from FP: (ours − FP ours) − (paper − FP paper).")


# -- formatting ----------------------------------------------------------------------------------------
def fmt_number(x: float) -> str:
    return f"{x:.2f}"


def fmt_delta(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2f}".replace("-", "−")


def fmt_ours(cell: Cell, notes: Footnotes, label: str, metric: str | None = None) -> str:
    """Our cell text with its footnote marks: other configurations, (with ``metric``) finished runs without
    that metric, diverged runs; ``label`` names the cell in the footnotes."""
    s = cell.summary
    if s is None:
        states = cell.state_text()
        text = f"–{notes.mark(MISSING_NOTE)}" + (f" ({states})" if states else "")
    else:
        text = fmt_number(s.mean) + (f" ± {fmt_number(s.std)}" if s.std is not None else "") + f" (n={s.n})"
        text += f"; +{cell.state_text()}" if cell.states else ""
    if cell.others:
        text += notes.mark(f"{label}: shown the configuration with the most finished seeds; not shown: "
                           f"{'; '.join(cell.others)}.")
    if metric is not None and cell.no_metric:
        text += notes.mark(f"{cell.no_metric} finished run(s) without a {metric} top-1 (never evaluated, or "
                           "training diverged before the last epoch).")
    if cell.diverged:
        text += notes.mark(cell.diverged_note(label))
    return text


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


def protocol_text(protocol: str, records: list[RunRecord]) -> str:
    warning = "" if protocol == "paper" else " — a shortened schedule, not comparable with the published numbers"
    return f"Protocol: {protocol} ({schedule_text(records)}){warning}."


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
                all_columns: bool = False, extra_methods: bool = True) -> list[Table]:
    """One table per protocol in the scan (only full configurations; ablated AdaSG-family runs are left out)."""
    records = [r for r in scan.records if is_full(r.spec.get("method_config", {}))]
    unfinished = [u for u in scan.unfinished
                  if unfinished_key(u) is not None and is_full((u.spec or {}).get("method_config", {}))]
    protocols = {r.protocol for r in records} | {unfinished_key(u)[0] for u in unfinished}
    if all_rows and not protocols:
        protocols = {"paper"}
    return [_main_table(layout, published, protocol, [r for r in records if r.protocol == protocol],
                        [u for u in unfinished if unfinished_key(u)[0] == protocol], metric, all_rows, all_columns,
                        extra_methods)
            for protocol in sorted(protocols, key=protocol_sort_key)]


def _main_table(layout: PublishedTable, published: Published, protocol: str, records: list[RunRecord],
                unfinished: list[Unfinished], metric: str, all_rows: bool, all_columns: bool,
                extra_methods: bool) -> Table:
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
    for model, teacher, bits in sorted(row_keys, key=row_order):
        paper_row = layout.row(model, bits)
        teacher_spec = teachers.get(teacher) if teacher else None
        papers_teacher = teacher_spec is not None and is_papers_teacher(teacher_spec)
        fp_ours = summarize(r.fp for r in by_row.get((model, teacher, bits), []))
        teacher_text = teacher_label(teacher_spec, teacher)
        if teacher_spec is not None and not papers_teacher:
            teacher_text += notes.mark(DROP_NOTE.format(teacher=teacher_text))
        cells, means = [], []
        for title, method in columns:
            paper = paper_row.values.get(title) if paper_row is not None and title in paper_row.values else None
            if paper is not None and paper.mark == "†":
                notes.note(DAGGER_NOTE)
            if method is None:
                cells.append(["n/a (not in dfqbench)", fmt_published(paper), "–"])
                means.append(None)
                continue
            cell = make_cell(by_cell.get((protocol, model, teacher, bits, method), []),
                             unfinished_by_cell.get((protocol, model, teacher, bits, method), []), metric)
            ours = fmt_ours(cell, notes, f"{method_label(method)} {bits.upper()} ({model})", metric)
            diff, kind = delta(cell, paper, paper_row.fp if paper_row else None, papers_teacher)
            cells.append([ours, fmt_published(paper), fmt_delta(diff)])
            means.append(cell.summary.mean if cell.summary else None)
            table.records.append(_record(layout.name, protocol, model, datasets.get(model, ""), teacher, bits, method,
                                         metric, cell, paper, paper_row.fp if paper_row else None, diff, kind))
        bold = bold_best(means)
        same_model = paper_row or next((r for r in layout.rows if r.model == model), None)
        dataset = same_model.dataset if same_model else DATASET_LABELS.get(datasets.get(model, ""), datasets.get(model, ""))
        name = same_model.model_label if same_model else model
        fp_text = " / ".join(["–" if fp_ours is None else fmt_number(fp_ours.mean),
                              "–" if same_model is None else fmt_number(same_model.fp)])
        table.rows.append(TableRow([dataset, f"{name} ({fp_text})", teacher_text, bits.upper()],
                                   [[Text(c[0], b), Text(c[1]), Text(c[2])] for c, b in zip(cells, bold)]))
    if omitted:
        notes.note(f"Published-only columns not shown (no dfqbench method): {', '.join(omitted)}; --all-columns shows them.")
    table.caption = (f"{layout.title} regenerated by dfqbench (published numbers: {layout.source}). "
                     f"{protocol_text(protocol, records)} Metric: {METRIC_TEXT[metric]}. Each cell: ours as mean ± "
                     f"std over seeds (n) / published / Δ = ours − published. Best of ours per row in bold. "
                     f"{counts_text(records, unfinished)}")
    table.notes = notes.lines() + list(layout.notes)
    return table


def _record(table: str, protocol: str, model: str, dataset: str, teacher: str | None, bits: str, column: str,
            metric: str, cell: Cell, paper: PublishedValue | None, paper_fp: float | None, diff: float | None,
            kind: str, **extra: Any) -> dict[str, Any]:
    s = cell.summary
    return {
        "table": table, "protocol": protocol, "dataset": dataset, "model": model, "teacher": teacher or "",
        "bits": bits, "column": column, **extra, "metric": metric,
        "n": s.n if s else 0, "mean": s.mean if s else None, "std": s.std if s else None,
        "fp": cell.fp.mean if cell.fp else None, "paper": paper.mean if paper else None,
        "paper_std": paper.std if paper else None, "paper_mark": paper.mark if paper else "",
        "paper_fp": paper_fp, "delta": diff, "delta_kind": kind,
        "running": cell.states.get("running", 0), "pending": cell.states.get("pending", 0),
        "failed": cell.states.get("failed", 0),
        "run_ids": " ".join(r.record.get("run_id", "") for r in cell.records),
    }


# -- ablation tables -----------------------------------------------------------------------------------
def ablation_tables(scan: Scan, published: Published, metric: str, all_rows: bool = False,
                    only_ablated: bool = False) -> list[Table]:
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
        tables.append(_ablation_table(key, groups.get(key, []), unf, published, metric))
    return tables


def _ablation_table(key: tuple[str, str, str, str | None], records: list[tuple[RunRecord, tuple[bool, ...]]],
                    unfinished: list[tuple[Unfinished, tuple[bool, ...]]], published: Published, metric: str) -> Table:
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
    grid: list[list[list[str]]] = []
    means: list[list[float | None]] = []
    for i, terms in enumerate(row_terms):
        pub_values = pub.rows[i][1] if pub and i < len(pub.rows) else {}
        row_cells, row_means = [], []
        for bits in bits_list:
            cell = make_cell([r for r, _ in by_cell.get((terms, bits), [])],
                             [u for u, _ in unf_by_cell.get((terms, bits), [])], metric)
            ours = fmt_ours(cell, notes, f"{terms_label(terms)} {bits.upper()}")
            paper = pub_values.get(bits)
            diff, kind = delta(cell, paper, paper_fp, papers_teacher)
            row_cells.append([ours, fmt_published(paper), fmt_delta(diff)])
            row_means.append(cell.summary.mean if cell.summary else None)
            table.records.append(_record("ablation", protocol, model, dataset, teacher, bits, method, metric, cell,
                                         paper, paper_fp, diff, kind, terms=terms_label(terms)))
        grid.append(row_cells)
        means.append(row_means)
    bold_columns = [bold_best([m[j] for m in means]) for j in range(len(bits_list))]
    for i, terms in enumerate(row_terms):
        labels = ["yes" if on else "–" for on in terms]
        table.rows.append(TableRow(labels, [[Text(c[0], bold_columns[j][i]), Text(c[1]), Text(c[2])]
                                            for j, c in enumerate(grid[i])]))
    fp_text = f"FP ours {fmt_number(fp_ours.mean) if fp_ours else '–'} / paper {fmt_number(paper_fp) if paper_fp else '–'}"
    source = f"published numbers: {pub.source}" if pub else "no published ablation for this model"
    table.caption = (f"Which generator-loss terms are on (yes) or off (–), {method_label(method)} on {published.model_text(model)} "
                     f"({fp_text}; teacher {teacher_text}); {source}. {protocol_text(protocol, [r for r, _ in records])} "
                     f"Metric: {METRIC_TEXT[metric]}. Each cell: ours mean ± std (n) / published / Δ. Best of ours per "
                     f"column in bold. {counts_text([r for r, _ in records], [u for u, _ in unfinished])}")
    table.notes = notes.lines() + (list(pub.notes) if pub else [])
    return table


def build_tables(scan: Scan, published: Published, which: str = "all", metric: str = "best", all_rows: bool = False,
                 all_columns: bool = False) -> list[Table]:
    """The requested layouts (``table1``, ``qimera_t2``, ``ablation`` or ``all``) over a scan."""
    tables: list[Table] = []
    if which in ("all", "table1"):
        tables += main_tables(scan, published.tables["table1"], published, metric, all_rows, all_columns, True)
    if which in ("all", "qimera_t2"):
        tables += main_tables(scan, published.tables["qimera_t2"], published, metric, all_rows, all_columns, False)
    if which in ("all", "ablation"):  # "all" shows ablation tables only where some run has a term off
        tables += ablation_tables(scan, published, metric, all_rows, only_ablated=which == "all")
    return tables
