"""The real-data reference (``report --table real_data``): runs that are NOT data-free, kept apart from the rest.

A run is not data-free when its spec says ``method_config.data_free: false`` (``real_kd``: fine-tuning on real
training images, ``methods/real_kd.py``). :func:`split_scan` takes such runs out of the scan every data-free
layout is built from (Table 1, Qimera Table 2, SynQ Table 1, the ablations), so they never sit in a data-free
column nor compete for its bold; ``--table methods`` shows them, in a column labelled "not data-free", only when
``--where method=…`` names them explicitly. :func:`reference_tables` shows them on their own: per protocol, one
row per (dataset, model, teacher, bits) with each not-data-free method's default configuration (mean ± std over
seeds, n), its drop from FP, and the gap to the best data-free method's default configuration in the same results.
Torch-free, like the rest of the report.
"""

from __future__ import annotations

from typing import Any

from dfqbench.report.cells import (DATASET_LABELS, Cell, Configuration, bits_sort_key, group_by, make_cell,
                                   method_label, protocol_sort_key, record_key, summarize_cell, unfinished_key)
from dfqbench.report.load import Scan, Where
from dfqbench.report.model import Footnotes, Group, Table, TableRow, Text
from dfqbench.report.stats import summarize
from dfqbench.report.tables import (METRIC_TEXT, _configuration_column, counts_text, fmt_delta, fmt_number,
                                    fmt_ours, numbered, protocol_text, teacher_label)

TABLE = "real_data"
NOT_DATA_FREE = "not data-free"
REFERENCE_NOTE = ("Not data-free: fine-tuned on real training images (the upper bound DFQ papers print beside their "
                  "rows); never part of the data-free tables. real_kd: class-balanced real images in a bank of the "
                  "synthetic banks' size, the direct family's KD recipe (methods/real_kd.py).")
GAP_NOTE = ("Gap: the reference's mean − the best mean among the data-free methods in the same row (same protocol, "
            "model, teacher and bits) of these results, each in its default configuration (else the one the data-free "
            "tables show in its place, named beside it); – where none has a finished run.")


def is_data_free(spec: dict[str, Any] | None) -> bool:
    """False only for a spec that says ``method_config.data_free: false`` (a spec without it is data-free)."""
    config = (spec or {}).get("method_config")
    return not (isinstance(config, dict) and config.get("data_free") is False)


def split_scan(scan: Scan) -> tuple[Scan, Scan]:
    """(the data-free runs, the not-data-free ones): records and unfinished folders; unreadable ones stay with
    the first (they are reported once)."""
    return (Scan(scan.root, [r for r in scan.records if is_data_free(r.spec)],
                 [u for u in scan.unfinished if is_data_free(u.spec)], list(scan.unreadable)),
            Scan(scan.root, [r for r in scan.records if not is_data_free(r.spec)],
                 [u for u in scan.unfinished if not is_data_free(u.spec)], []))


def asked_for(wheres: list[Where], reference: Scan) -> bool:
    """Whether a ``--where method=…`` filter names a not-data-free method of ``reference`` explicitly."""
    methods = {r.method for r in reference.records} | {u.spec.get("method") for u in reference.unfinished if u.spec}
    return any(w.key == "method" and methods & {str(v) for v in w.values} for w in wheres)


def reference_label(method: str) -> str:
    """The method's label, saying "not data-free" (once)."""
    label = method_label(method)
    return label if NOT_DATA_FREE in label else f"{label} ({NOT_DATA_FREE})"


def reference_tables(reference: Scan, data_free: Scan, metric: str, all_configurations: bool = False) -> list[Table]:
    """One table per protocol of the not-data-free runs (see the module docstring); with ``all_configurations``,
    their other configurations than a cell's default get labelled rows too."""
    unfinished = [u for u in reference.unfinished if unfinished_key(u) is not None]
    protocols = {r.protocol for r in reference.records} | {unfinished_key(u)[0] for u in unfinished}
    return [_table(protocol, reference, data_free, metric, all_configurations)
            for protocol in sorted(protocols, key=protocol_sort_key)]


def _best_data_free(data_free: Scan, row: tuple[str, str, str, str], metric: str) -> tuple[str, Cell] | None:
    """The data-free method whose shown configuration (the default, else the one the tables show in its place:
    :attr:`Cell.fallback`) has the best mean in ``row`` (protocol, model, teacher, bits), with its cell."""
    by_method = group_by([r for r in data_free.records if record_key(r)[:4] == row], lambda r: r.method)
    best = None
    for method, records in by_method.items():
        cell = make_cell(records, [], metric)
        if cell.summary is None:
            continue
        if best is None or cell.summary.mean > best[1].summary.mean:
            best = (method, cell)
    return best


def _table(protocol: str, reference: Scan, data_free: Scan, metric: str, all_configurations: bool) -> Table:
    records = [r for r in reference.records if r.protocol == protocol]
    unfinished = [u for u in reference.unfinished if unfinished_key(u) is not None and unfinished_key(u)[0] == protocol]
    by_cell = group_by(records, record_key)
    unfinished_by_cell = group_by(unfinished, unfinished_key)
    methods = sorted({k[4] for k in by_cell} | {k[4] for k in unfinished_by_cell})
    rows = sorted({k[1:4] for k in by_cell} | {k[1:4] for k in unfinished_by_cell},
                  key=lambda k: (k[0], bits_sort_key(k[2]), k[1]))
    specs = {record_key(r)[1:4]: r.spec for r in records}
    specs.update({unfinished_key(u)[1:4]: u.spec for u in unfinished if unfinished_key(u)[1:4] not in specs})
    notes = Footnotes()
    table = Table(TABLE, f"Real-data reference ({NOT_DATA_FREE}) — protocol {protocol}", "",
                  ["dataset", "model (FP ours)", "teacher", "bits"],
                  [Group(reference_label(m), ("ours", "FP − ours", "gap")) for m in methods]
                  + [Group("best data-free method here", ("method", "ours"))])
    configured = False
    for model, teacher, bits in rows:
        spec = specs[(model, teacher, bits)]
        best = _best_data_free(data_free, (protocol, model, teacher, bits), metric)
        best_cells = [Text("–"), Text("–")] if best is None else [
            Text(method_label(best[0]) + (f" ({best[1].fallback.label})" if best[1].fallback is not None else "")),
            Text(f"{fmt_number(best[1].summary.mean)} (n={best[1].summary.n})")]
        row_cells: list[list[Text]] = []
        extra: list[tuple[int, Configuration, Cell]] = []
        fps: list[float] = []
        for index, method in enumerate(methods):
            key = (protocol, model, teacher, bits, method)
            label = f"{reference_label(method)} {bits.upper()} ({model})"
            cell = make_cell(by_cell.get(key, []), unfinished_by_cell.get(key, []), metric)
            shows_all = all_configurations or cell.fallback is not None
            row_cells.append(_cells(table, notes, label, cell, best, metric, shows_all))
            table.records.append(_record(protocol, spec, (model, teacher, bits), method, metric, cell, best,
                                         "default" if cell.fallback is None else cell.fallback.full_label))
            fps += [r.fp for r in cell.records if r.fp is not None]
            if shows_all:
                extra += [(index, conf, summarize_cell(conf.records, conf.unfinished, metric)) for conf in cell.others]
        fp = summarize(fps)
        dataset = DATASET_LABELS.get(spec.get("dataset", ""), spec.get("dataset", ""))
        labels = [dataset, f"{model} ({'–' if fp is None else fmt_number(fp.mean)})",
                  teacher_label(spec.get("teacher"), teacher), bits.upper()]
        table.rows.append(TableRow(labels + ["default"], row_cells + [best_cells]))
        for index, conf, cell in extra:  # other configurations: one labelled row each
            configured = True
            label = f"{reference_label(methods[index])} {bits.upper()} ({model}) with {conf.label}"
            cells = [[Text("")] * 3 for _ in methods]
            cells[index] = _cells(table, notes, label, cell, best, metric, True)
            table.rows.append(TableRow(labels + [f"{reference_label(methods[index])} ({conf.label})"],
                                       cells + [best_cells]))
            table.records.append(_record(protocol, spec, (model, teacher, bits), methods[index], metric, cell, best,
                                         conf.full_label))
    _configuration_column(table, configured)
    what = ("per method ours as mean ± std over seeds (n), its drop from FP and the gap to the best data-free method "
            "here")
    table.caption = (f"Real-data reference ({NOT_DATA_FREE}) regenerated by dfqbench under protocol {protocol}"
                     + ("" if protocol == "paper" else ", a shortened schedule") + f": {what}.")
    table.status = [counts_text(records, unfinished)]
    table.notes = notes.marked() + numbered([REFERENCE_NOTE, protocol_text(protocol, records, unfinished),
                                             f"Metric: {METRIC_TEXT[metric]}.", GAP_NOTE, *notes.plain()])
    return table


def _gap(cell: Cell, best: tuple[str, Cell] | None) -> float | None:
    return None if cell.summary is None or best is None else cell.summary.mean - best[1].summary.mean


def _cells(table: Table, notes: Footnotes, label: str, cell: Cell, best: tuple[str, Cell] | None, metric: str,
           others_shown: bool) -> list[Text]:
    """ours (with its footnote marks) / drop from FP / gap to the best data-free method."""
    ours, status = fmt_ours(cell, notes, label, metric, others_shown=others_shown)
    if cell.states:
        table.cell_status.append(f"{label}: {cell.state_text()}")
    drop = "–" if cell.drop is None else fmt_number(cell.drop.mean)
    return [Text(ours, status=status), Text(drop), Text(fmt_delta(_gap(cell, best)))]


def _record(protocol: str, spec: dict[str, Any], row: tuple[str, str, str], method: str, metric: str, cell: Cell,
            best: tuple[str, Cell] | None, configuration: str) -> dict[str, Any]:
    """One CSV row (``--format csv``)."""
    s = cell.summary
    return {"table": TABLE, "protocol": protocol, "dataset": spec.get("dataset", ""), "model": row[0],
            "teacher": row[1], "bits": row[2], "column": method, "data_free": False, "configuration": configuration,
            "metric": metric, "n": s.n if s else 0, "mean": s.mean if s else None, "std": s.std if s else None,
            "fp": cell.fp.mean if cell.fp else None, "drop": cell.drop.mean if cell.drop else None,
            "best_data_free": best[0] if best else None,
            "best_data_free_mean": best[1].summary.mean if best else None, "gap": _gap(cell, best),
            "run_ids": " ".join(r.record.get("run_id", "") for r in cell.records)}
