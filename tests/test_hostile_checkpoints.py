"""Damaged or tampered checkpoints (issue 23): resuming from one is one line naming the file and how to start
the run again, never a traceback halfway through loading and never a run that "finishes" from a bad state."""

from __future__ import annotations

import pytest
import torch

from dfqbench.core.snapshots import best_student_path
from dfqbench.runner import prepare, run
from dfqbench.store import StoreError

from conftest import CrashAfterEpoch, RecordingProgress


def _crashed_after_epoch_one(tiny_request):
    """A tiny run stopped after epoch 1 (of 3) with its checkpoint written; its folder."""
    request = tiny_request()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(request, CrashAfterEpoch(1))
    return request, prepare(request).folder


def _tamper(folder, change) -> None:
    ckpt = torch.load(folder.checkpoint_path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, folder.checkpoint_path)


@pytest.mark.parametrize("change, reason", [
    (lambda c: c.pop("generator"), "no generator in it"),
    (lambda c: c.update(epoch=-5), r"its epoch -5 is not one of this run's epochs 0\.\.2"),
    (lambda c: c.update(epoch=7), r"its epoch 7 is not one of this run's epochs 0\.\.2"),
    (lambda c: c.update(epoch=True), "its epoch True"),
    (lambda c: c["student"].pop(next(iter(c["student"]))), "Missing key"),
    (lambda c: c["student"].update({k: torch.zeros(3) for k in list(c["student"])[:1]}), "size mismatch"),
    (lambda c: c.update(state={"top1": [1, 2]}), "no per-epoch top-1"),
])
def test_a_tampered_checkpoint_is_one_line_naming_it(tiny_request, change, reason):
    request, folder = _crashed_after_epoch_one(tiny_request)
    _tamper(folder, change)
    with pytest.raises(StoreError, match=reason) as caught:
        run(request, RecordingProgress())
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and "unreadable checkpoint" in message and "--restart" in message, message
    assert not folder.is_done()


def test_a_garbage_best_student_is_refused_on_resume_not_after_success(tiny_request):
    """The best epoch so far is not the checkpoint's, so best_student.pt cannot be rewritten from it: resuming
    says so at once instead of finishing a run whose "best" student cannot be loaded."""
    request, folder = _crashed_after_epoch_one(tiny_request)
    ckpt = torch.load(folder.checkpoint_path, weights_only=True)
    top1 = ckpt["state"]["top1"]
    best_epoch = max(top1, key=lambda e: (top1[e], -e))
    if best_epoch == ckpt["epoch"]:  # make an earlier epoch the best, as a real run often has
        ckpt["state"]["top1"] = {**top1, 0: max(top1.values()) + 1.0}
        torch.save(ckpt, folder.checkpoint_path)
    best_student_path(folder.path).write_bytes(b"not a checkpoint")
    with pytest.raises(StoreError, match="unreadable best student .*best_student.pt"):
        run(request, RecordingProgress())
    assert not folder.is_done()


def test_an_untampered_checkpoint_still_resumes(tiny_request):
    request, folder = _crashed_after_epoch_one(tiny_request)
    capture = RecordingProgress()
    record = run(request, capture)
    assert record.sessions == 2 and any("resuming" in m for m in capture.messages)
