"""Per-run CSV (``report --format csv-runs``): one row per run folder, finished or not.

Where the table CSV has one row per cell (seeds averaged), this lists every run with its own numbers, its
state and how its configuration differs from its cell's default (:mod:`dfqbench.report.defaults`), so
the seeds behind a mean can be checked or re-analysed.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from dfqbench.report.defaults import configuration_diff, diff_text
from dfqbench.report.load import RunRecord, Scan, Unfinished, teacher_key
from dfqbench.report.render import csv_value

FIELDS = ("run_name", "run_id", "state", "protocol", "dataset", "model", "teacher", "bits", "method", "method_version",
          "seed", "configuration", "fp_top1", "best_top1", "final_top1", "best_epoch", "diverged", "epochs",
          "wall_time_s", "finished_at", "path")


def _configuration(spec: dict[str, Any]) -> str:
    diff = configuration_diff(spec)
    if diff is None:
        return "unknown default"
    return "default" if not diff else diff_text(diff, limit=None)  # whole: never cut with "…"


def _spec_fields(spec: dict[str, Any]) -> dict[str, Any]:
    teacher = spec.get("teacher")
    return {"protocol": spec.get("protocol", "custom"), "dataset": spec.get("dataset"), "model": spec.get("model"),
            "teacher": teacher_key(teacher) if isinstance(teacher, dict) else "", "bits": spec.get("bits"),
            "method": spec.get("method"), "method_version": spec.get("method_version"), "seed": spec.get("seed"),
            "configuration": _configuration(spec)}


def run_row(item: RunRecord | Unfinished) -> dict[str, Any]:
    """The CSV row of one run folder."""
    row: dict[str, Any] = {"run_name": item.path.name, "path": str(item.path)}
    if isinstance(item, RunRecord):
        record = item.record
        row.update(run_id=record.get("run_id", item.spec.get("run_id")), state="finished", **_spec_fields(item.spec))
        row.update({k: record.get(k) for k in ("fp_top1", "best_top1", "final_top1", "best_epoch", "epochs",
                                               "wall_time_s", "finished_at")})
        row["diverged"] = "yes" if record.get("diverged") else "no"
    else:
        row.update(state=item.state, **(_spec_fields(item.spec) if item.spec else {}))
        row["run_id"] = (item.spec or {}).get("run_id")
    return row


def runs_csv(scan: Scan) -> str:
    """Every run of the scan (finished first, then unfinished), sorted by folder name within each."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(FIELDS), lineterminator="\n")
    writer.writeheader()
    items: list[RunRecord | Unfinished] = sorted(scan.records, key=lambda r: r.path.name)
    items += sorted(scan.unfinished, key=lambda u: u.path.name)
    for item in items:
        writer.writerow({k: csv_value(v) for k, v in run_row(item).items()})
    return buffer.getvalue()
