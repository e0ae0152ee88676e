"""Which runs a report or :func:`dfqbench.load_results` shows: a grid's runs, as its launches planned them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfqbench.errors import DfqbenchError


def grid_selection(grid: str, root: Path) -> tuple[set[str], list[Any], list[str]]:
    """(run ids of the grid's runs, Unfinished entries for runs without a folder yet, summary lines), from the
    grid's index written when it was launched (:mod:`dfqbench.store.grid_index`): no re-planning, no torch."""
    from collections import Counter

    from dfqbench.store.grid_index import grid_name, read_grid_index
    from dfqbench.report.load import Unfinished
    from dfqbench.store import CELL_ONLY_STATES, ResultsStore

    store = ResultsStore(root)
    name = grid_name(grid)
    cells = read_grid_index(root, name)
    if cells is None:
        raise DfqbenchError(f"grid {name!r} was never launched into '{root}' (report --grid shows the runs its launches "
                            f"planned); run `dfqbench run --grid {grid} --results {root}`, or report without --grid")
    run_ids, missing, unknown = set(), [], 0
    statuses: Counter = Counter()
    for cell in cells.values():
        if cell.get("duplicate_of"):
            statuses["duplicate"] += 1
            continue
        if cell.get("run_id") is None:
            statuses[cell.get("status", "?")] += 1
            unknown += cell.get("status") not in CELL_ONLY_STATES
            continue
        run_ids.add(cell["run_id"])
        folder = store.run(cell["run_name"])
        statuses["done" if folder.has_record() else "not finished"] += 1
        if not folder.path.exists() and isinstance(cell.get("spec"), dict):
            missing.append(Unfinished(folder.path, "pending", cell["spec"]))
    lines = [f"Grid {name}: {len(cells)} cells as launched (" + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
             + ")" + (f"; {unknown} runs without a known run id (teacher not downloaded yet) are not shown" if unknown else "")]
    return run_ids, missing, lines
