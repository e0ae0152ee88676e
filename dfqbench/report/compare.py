"""Comparing two results folders (e.g. two versions of dfqbench) cell by cell.

A cell is (protocol, model, teacher, bits, method, ablation row); each side shows its configuration with the
most finished seeds (not the default of the installed version: the two folders may come from two versions). Per cell: A and B as mean ± std (n), Δ = B − A and the verdict of
Welch's t-test (:mod:`dfqbench.report.stats`: outside seed noise when p < 0.05, both sides n ≥ 2; with n = 1
"no noise estimate"). Spec fields that differ between the two sides' configurations (besides the seed)
are listed, so a changed method version or hyperparameter is visible next to the number it moved.
"""

from __future__ import annotations

from typing import Any

from dfqbench.report.ablation import ablation_terms, terms_label
from dfqbench.report.cells import (Cell, bits_sort_key, group_by, make_choice_cell, method_label, method_sort_key,
                                   protocol_sort_key, spec_diff)
from dfqbench.report.load import RunRecord, Scan
from dfqbench.report.model import Group, Table, TableRow, Text
from dfqbench.report.stats import Summary, welch_test
from dfqbench.report.tables import METRIC_TEXT, fmt_delta, fmt_number, numbered

CellKey = tuple[str, str, str, str, str, str]


def compare_key(record: RunRecord) -> CellKey:
    terms = ablation_terms(record.spec.get("method_config", {}))
    return (record.protocol, record.model, record.teacher, record.bits, record.method,
            terms_label(terms) if terms is not None else "")


def _fmt(summary: Summary | None) -> str:
    if summary is None:
        return "–"
    return fmt_number(summary.mean) + (f" ± {fmt_number(summary.std)}" if summary.std is not None else "") + f" (n={summary.n})"


def compare_scans(a: Scan, b: Scan, metric: str = "best") -> Table:
    """One table: every cell present in A or B, sorted by protocol, model, bits, method."""
    cells_a = group_by(a.records, compare_key)
    cells_b = group_by(b.records, compare_key)
    keys = sorted(set(cells_a) | set(cells_b),
                  key=lambda k: (protocol_sort_key(k[0]), k[1], k[2], bits_sort_key(k[3]), method_sort_key(k[4]), k[5]))
    table = Table("compare", f"Comparison: B = {b.root} against A = {a.root}", "",
                  ["protocol", "model", "teacher", "bits", "method"],
                  [Group("A", ("A",)), Group("B", ("B",)), Group("Δ", ("Δ = B − A",)), Group("test", ("test",)),
                   Group("config", ("B's spec vs A's",))])
    outside = 0
    for key in keys:
        cell_a: Cell = make_choice_cell(cells_a.get(key, []), metric)
        cell_b: Cell = make_choice_cell(cells_b.get(key, []), metric)
        diff, verdict, test = None, "only in A" if cell_b.summary is None else "only in B", None
        if cell_a.summary is not None and cell_b.summary is not None:
            test = welch_test(cell_a.summary, cell_b.summary)
            diff, verdict = test.delta, test.text
            outside += bool(test.outside_noise)
        if cell_a.summary is None and cell_b.summary is None:
            verdict = "no value in either"
        changed = (spec_diff(cell_a.records[0].spec, cell_b.records[0].spec)
                   if cell_a.records and cell_b.records else [])
        changed_text = ", ".join(changed[:4]) + (" …" if len(changed) > 4 else "") if changed else "same"
        method = method_label(key[4]) + (f" ({key[5]})" if key[5] and key[5] != "full" else "")
        table.rows.append(TableRow([key[0], key[1], key[2], key[3].upper(), method],
                                   [[Text(_fmt(cell_a.summary))], [Text(_fmt(cell_b.summary))],
                                    [Text(fmt_delta(diff), bold=bool(test and test.outside_noise))], [Text(verdict)],
                                    [Text(changed_text)]]))
        table.records.append(_record(key, metric, cell_a, cell_b, test, changed_text))
    table.caption = ("Two results folders cell by cell: A and B as mean ± std over seeds (n), Δ = B − A in bold where "
                     f"Welch's test puts it outside the seed noise ({outside} of {len(keys)} cells).")
    table.notes = numbered([f"Metric: {METRIC_TEXT[metric]}.",
                            "Welch's two-sided t-test: outside seed noise when p < 0.05; it needs n ≥ 2 seeds on both "
                            "sides, else there is no noise estimate.",
                            f"A: {a.status_line()}.", f"B: {b.status_line()}."])
    return table


def _record(key: CellKey, metric: str, a: Cell, b: Cell, test: Any, changed: str) -> dict[str, Any]:
    def part(prefix: str, cell: Cell) -> dict[str, Any]:
        s = cell.summary
        return {f"{prefix}_n": s.n if s else 0, f"{prefix}_mean": s.mean if s else None, f"{prefix}_std": s.std if s else None}

    return {"table": "compare", "protocol": key[0], "model": key[1], "teacher": key[2], "bits": key[3],
            "method": key[4], "terms": key[5], "metric": metric, **part("a", a), **part("b", b),
            "delta": test.delta if test else None, "t": test.t if test else None, "df": test.df if test else None,
            "p": test.p if test else None,
            "outside_noise": "" if test is None or test.outside_noise is None else test.outside_noise,
            "config_changes": changed}
