"""The finished run to export: its spec, record and saved student, loaded as ``dfqbench.load_student`` does.

The student comes from :func:`dfqbench.core.snapshots.student_state` (``best_student.pt`` or ``checkpoint.pt``,
read with ``weights_only=True``) and :func:`~dfqbench.core.snapshots.load_student_module` (eval mode, ranges
frozen); the top-1 to match is the record's ``best_top1`` or ``final_top1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dfqbench.core.snapshots import WHICH, load_student_module, student_state
from dfqbench.errors import DfqbenchError
from dfqbench.registry import unknown_choice
from dfqbench.store import RunFolder


@dataclass
class ExportSource:
    """A finished run's student ``which`` ("best" or "final"), its epoch and the top-1 recorded for it."""

    run_dir: Path
    spec: dict[str, Any]
    record: dict[str, Any]
    which: str
    epoch: int
    recorded_top1: float
    student: nn.Module

    @property
    def eval_max_images(self) -> int | None:
        return self.spec["train"].get("eval_max_images")

    def metadata(self) -> dict[str, Any]:
        """What both formats record about where the student came from."""
        norm = self.spec["normalization"]
        return {"run_id": self.record.get("run_id", self.spec.get("run_id")), "run_name": self.run_dir.name,
                "method": self.spec["method"], "model": self.spec["model"], "bits": self.spec["bits"],
                "seed": self.spec["seed"], "protocol": self.spec.get("protocol"), "which": self.which,
                "epoch": self.epoch, "recorded_top1": self.recorded_top1, "eval_max_images": self.eval_max_images,
                "normalization": {"mean": list(norm["mean"]), "std": list(norm["std"]), "name": norm.get("name")}}


def load_source(run_dir: Path, which: str = "best") -> ExportSource:
    """The finished run in ``run_dir`` and its student ``which``; an unfinished run or a run without that
    student is a :class:`DfqbenchError`."""
    if which not in WHICH:
        raise DfqbenchError(unknown_choice("student", which, list(WHICH)))
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    spec = folder.spec()  # a missing or unreadable spec.json is a StoreError (a DfqbenchError)
    stored = folder.read_record()  # an unreadable record is a StoreError (a DfqbenchError)
    if stored is None:
        raise DfqbenchError(f"run '{run_dir}' is not finished (no record.json): only a finished run can be exported "
                            "(its recorded top-1 is what the export is checked against)")
    record = stored.to_dict()
    top1 = record.get(f"{which}_top1")
    if top1 is None:
        raise DfqbenchError(f"run '{run_dir}' has no recorded {which}_top1; choices: best, final")
    state, epoch = student_state(run_dir, which, record)
    return ExportSource(run_dir, spec, record, which, epoch, float(top1), load_student_module(spec, state))
