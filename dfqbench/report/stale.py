"""Stale results in a report: runs whose method code changed since they ran, as a footnote of each table that
shows them and one line of the report's preamble.

A run is stale when the digest of its method's code recorded in ``record.json`` differs from the code installed
now (:func:`dfqbench.store.codestamp.code_state`, computed without importing any method: the report stays
torch-free). Records from before the digest existed are "unknown", never stale. The numbers are still shown:
a stale footnote says they may not be what the installed code gives, and how to train them again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from dfqbench.store.codestamp import CodeState, code_state

if TYPE_CHECKING:
    from dfqbench.report.load import RunRecord, Scan
    from dfqbench.report.model import Table

RERUN = "`dfqbench run … --rerun-stale` trains them again"


def stale_runs(records: Iterable["RunRecord"]) -> dict[str, tuple["RunRecord", CodeState]]:
    """run id → (record, code state) of the stale records among ``records``."""
    found = {}
    for r in records:
        state = code_state(r.record.get("code"))
        if state.stale:
            found[str(r.record.get("run_id") or r.spec.get("run_id"))] = (r, state)
    return found


def _describe(runs: list[tuple["RunRecord", CodeState]]) -> str:
    methods = sorted({r.method for r, _ in runs})
    reasons = sorted({s.reason or "" for _, s in runs})
    return (f"{len(runs)} run{'s' if len(runs) != 1 else ''} of {', '.join(methods)} computed by method code that "
            f"changed since ({'; '.join(reasons)[:200]}): the numbers may not be what the installed code gives; {RERUN}")


def mark_stale(tables: list["Table"], scan: "Scan") -> list[str]:
    """Add a footnote to each table that shows stale runs (its long-form ``records`` name their run ids) and return
    the report's preamble line ([] when no shown run is stale)."""
    stale = stale_runs(scan.records)
    if not stale:
        return []
    for table in tables:
        ids = {i for rec in table.records for i in str(rec.get("run_ids") or "").split()}
        here = [stale[i] for i in sorted(ids & stale.keys())]
        if here:
            table.notes.append(f"Stale: {_describe(here)}.")
    return [f"Stale results: {_describe(list(stale.values()))}."]

