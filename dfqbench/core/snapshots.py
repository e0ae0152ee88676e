"""The trained student, saved and rebuilt: ``best_student.pt`` beside the checkpoint, and :func:`build_student`.

``checkpoint.pt`` holds the student of the last finished epoch (the final student once a run is done);
``best_student.pt`` holds the student of the epoch with the best top-1 so far (the record's ``best_epoch``:
ties keep the earliest), written atomically after that epoch's checkpoint whenever an epoch improves on
the best. Both hold tensors, numbers and strings only and load with ``weights_only=True``. The student's
``state_dict`` includes every activation quantizer's range-tracker buffers (``x_min``, ``x_max``, …) and the
BN statistics, so a rebuilt student computes exactly what was evaluated.

Consistency on resume: the best file is written after the checkpoint of the same epoch, so after a crash it
can only lag behind the checkpoint by that one epoch (the checkpoint says the epoch is the best, the file
still holds an earlier one); :meth:`dfqbench.core.trainer.Trainer._resume` then rewrites it from the
checkpoint's student (:func:`repair_best_student`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfqbench.errors import DfqbenchError
from dfqbench.store import atomic_torch_save, unreadable_checkpoint

BEST_STUDENT_FILE = "best_student.pt"
CHECKPOINT_FILE = "checkpoint.pt"
WHICH = ("best", "final")


def best_student_path(run_dir: Path) -> Path:
    return Path(run_dir) / BEST_STUDENT_FILE


def save_best_student(run_dir: Path, run_id: str, epoch: int, top1: float, student: dict[str, torch.Tensor]) -> None:
    """Write the best-so-far student (its ``state_dict``) with its epoch and top-1, atomically."""
    atomic_torch_save(best_student_path(run_dir), {"run_id": run_id, "epoch": int(epoch), "top1": float(top1),
                                                   "student": student})


def best_student_epoch(run_dir: Path) -> int | None:
    """The epoch of the saved best student (read memory-mapped), or None without a readable file."""
    path = best_student_path(run_dir)
    if not path.exists():
        return None
    try:
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001  (unreadable: rewritten or reported by whoever needs it)
        return None


def repair_best_student(run_dir: Path, run_id: str, checkpoint: dict[str, Any], top1: dict[int, float]) -> bool:
    """After a resume from ``checkpoint``: when its epoch is the best so far (by ``top1``, epoch → top-1) but
    the best file does not hold it (a crash between the two writes), write it from the checkpoint's student.
    Returns True when it wrote."""
    if not top1:
        return False
    best_epoch = max(top1, key=lambda e: (top1[e], -e))
    if best_epoch != checkpoint["epoch"] or best_student_epoch(run_dir) == best_epoch:
        return False
    save_best_student(run_dir, run_id, best_epoch, top1[best_epoch], checkpoint["student"])
    return True


def _load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise DfqbenchError(unreadable_checkpoint(path, exc)) from None


def student_state(run_dir: Path, which: str, record: dict[str, Any] | None) -> tuple[dict[str, torch.Tensor], int]:
    """The saved student ``which`` ("best" or "final") of the run in ``run_dir``, with its epoch.

    "final" needs a finished run that trained to its last epoch (a diverged run has no final student);
    "best" needs ``best_student.pt`` (runs started before dfqbench wrote it have none)."""
    from dfqbench.registry import unknown_choice

    if which not in WHICH:
        raise DfqbenchError(unknown_choice("student", which, list(WHICH)))
    run_dir = Path(run_dir)
    if which == "best":
        path = best_student_path(run_dir)
        if not path.exists():
            raise DfqbenchError(f"no {BEST_STUDENT_FILE} in '{run_dir}': no epoch was evaluated yet, or the run "
                                "was trained before dfqbench saved the best student; use which='final'")
        data = _load(path)
        return data["student"], int(data["epoch"])
    if record is None:
        raise DfqbenchError(f"run '{run_dir}' is not finished (no record.json): it has no final student yet; "
                            "use which='best' for the best epoch so far")
    if record.get("final_top1") is None:
        raise DfqbenchError(f"run '{run_dir}' has no final student: "
                            + (f"it diverged ({record['diverged']}); " if record.get("diverged") else "")
                            + "use which='best'")
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        raise DfqbenchError(f"no {CHECKPOINT_FILE} in '{run_dir}'; the final student was not kept")
    data = _load(path)
    return data["student"], int(data["epoch"])


def build_student(spec: dict[str, Any]) -> nn.Module:
    """The run's fake-quantized student, untrained: the teacher's architecture (randomly initialised) through
    :func:`dfqbench.quant.quantize_model` with the spec's bits and quantizer settings."""
    from dfqbench.quant import QuantConfig, parse_bits, quantize_model
    from dfqbench.zoo import build_model

    wbits, abits = parse_bits(spec["bits"])
    return quantize_model(build_model(spec["model"]), QuantConfig(wbits=wbits, abits=abits, **spec["quant"]))


def load_student_module(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """:func:`build_student` with ``state`` loaded (strictly), in eval mode with activation ranges frozen."""
    from dfqbench.quant import set_range_update

    student = build_student(spec)
    student.load_state_dict(state, strict=True)
    set_range_update(student, False)
    return student.eval()
