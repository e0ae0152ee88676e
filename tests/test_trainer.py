"""The trainer core on the tiny network: schedule, freezing, diagnostics, determinism, resume, skip."""

from __future__ import annotations

import json

import pytest
import torch

from dfqbench.core.progress import Progress
from dfqbench.core.trainer import Trainer
from dfqbench.quant import QuantAct
from dfqbench.runner import prepare, run

from conftest import CrashAfterEpoch, RecordingProgress, same_state

DIAGNOSTICS = {"H_g", "H_q", "R_before", "R_after_g", "R_after_q", "delta_g", "delta_q", "balance_gap"}
LOSS_TERMS = {"g/loss", "g/ce", "g/bns", "q/loss", "q/kd", "q/ce"}


class Snapshots(Progress):
    """Keeps copies of the teacher, student and activation ranges at the end of each epoch."""

    def __init__(self, trainer_ref: list) -> None:
        super().__init__()
        self.trainer_ref = trainer_ref
        self.epochs_seen: list[dict] = []

    def message(self, text: str) -> None:
        pass

    def end_epoch(self, epoch, top1, best) -> None:
        trainer = self.trainer_ref[0]
        self.epochs_seen.append({
            "teacher": {k: v.clone() for k, v in trainer.teacher.state_dict().items()},
            "student_weights": {k: v.clone() for k, v in trainer.student.named_parameters()},
            "ranges": [q.state_dict() for q in trainer.student.modules() if isinstance(q, QuantAct)],
        })


def _train(request):
    prepared = prepare(request)
    prepared.folder.create(prepared.spec)
    ref: list = []
    progress = Snapshots(ref)
    trainer = Trainer(prepared, progress)
    ref.append(trainer)
    before = {k: v.clone() for k, v in prepared.teacher.state_dict().items()}
    record = trainer.fit()
    return trainer, progress, before, record


def test_schedule_warmup_ranges_and_frozen_teacher(tiny_request):
    trainer, progress, teacher_before, record = _train(tiny_request())
    first, second, third = progress.epochs_seen
    # the teacher never changes
    for snap in progress.epochs_seen:
        assert same_state(snap["teacher"], teacher_before)
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    # warm-up (epoch 0): the student keeps its pretrained weights; afterwards SGD moves it
    initial = {k: v for k, v in trainer.run.teacher.named_parameters()}
    assert all(torch.equal(first["student_weights"][k], initial[k]) for k in initial)
    assert not same_state(second["student_weights"], first["student_weights"])
    # activation ranges were calibrated in epoch 0 (range window 1) and frozen afterwards
    assert all(float(r["x_max"]) > 0 for r in first["ranges"])
    for later in (second, third):
        assert all(same_state(a, b) for a, b in zip(first["ranges"], later["ranges"]))
    assert record.fp_top1 == 100 * 229 / 256  # the tiny teacher classifies 229 of its 256 test images right
    assert record.calibrated_top1 == record.top1_per_epoch["0"]
    assert record.final_top1 == record.top1_per_epoch["2"]
    assert record.best_top1 == max(record.top1_per_epoch.values())
    assert record.images_generated == 3 * 4 * 8
    assert record.epochs == 3 and record.iterations == 12


def test_metrics_log_every_loss_term_and_diagnostic(tiny_request):
    overrides = ["train.epochs=3", "train.iters_per_epoch=4", "train.batch_size=8", "train.warmup_epochs=2",
                 "train.range_update_epochs=1"]
    request = tiny_request(overrides=overrides)
    record = run(request, Progress())
    folder = prepare(request).folder
    rows = [json.loads(line) for line in folder.metrics_path.read_text().splitlines()]
    iters = [r for r in rows if r["type"] == "iter"]
    epochs = [r for r in rows if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert len(iters) == 3 * 2  # log_every=2 over 4 iterations
    for row in iters:
        assert LOSS_TERMS | DIAGNOSTICS <= set(row)
        assert row["balance_gap"] == pytest.approx(row["delta_g"] - row["delta_q"], abs=1e-6)
        assert 0.0 <= row["H_g"] <= torch.log(torch.tensor(10.0)).item() + 1e-6
    # epoch 1 is warm-up with frozen ranges: Q does not change, so R and H after the Q step equal those after G;
    # in epoch 0 the Q-step forward still moves the ranges, and in epoch 2 SGD moves the weights
    for row in iters:
        if row["epoch"] == 1:
            assert (row["R_after_q"], row["H_q"]) == (row["R_after_g"], row["H_g"])
            assert row["balance_gap"] == pytest.approx(row["delta_g"], abs=1e-6)
    for epoch in (0, 2):
        assert all(r["R_after_q"] != r["R_after_g"] for r in iters if r["epoch"] == epoch)
    for row in iters:  # R = 1 − H/log C on the same batch
        assert row["R_after_g"] == pytest.approx(1 - row["H_g"] / torch.log(torch.tensor(10.0)).item(), abs=1e-5)
    assert json.loads(folder.record_path.read_text())["run_id"] == record.run_id


def test_same_seed_is_bit_for_bit_and_diagnostics_do_not_perturb(tiny_request, tmp_path):
    a = _train(tiny_request(results=str(tmp_path / "a"), log_every=1))[0]
    b = _train(tiny_request(results=str(tmp_path / "b"), log_every=100))[0]
    assert same_state(a.student.state_dict(), b.student.state_dict())
    assert same_state(a.generator.state_dict(), b.generator.state_dict())
    c = _train(tiny_request(results=str(tmp_path / "c"), seed=1))[0]
    assert not same_state(a.student.state_dict(), c.student.state_dict())


def test_resume_continues_from_checkpoint_and_matches_uninterrupted(tiny_request, tmp_path):
    straight = tiny_request(results=str(tmp_path / "straight"))
    full = run(straight, Progress())
    crashed = tiny_request(results=str(tmp_path / "crashed"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(crashed, CrashAfterEpoch(1))
    folder = prepare(crashed).folder
    assert folder.error_path.exists() and not folder.is_done()
    assert torch.load(folder.checkpoint_path, weights_only=True)["epoch"] == 1
    capture = RecordingProgress()
    resumed = run(crashed, capture)
    assert any("resuming" in m and "after epoch 2/" in m for m in capture.messages)
    assert resumed.sessions == 2 and not folder.error_path.exists()
    assert resumed.top1_per_epoch == full.top1_per_epoch
    straight_ckpt = torch.load(prepare(straight).folder.checkpoint_path, weights_only=True)
    resumed_ckpt = torch.load(folder.checkpoint_path, weights_only=True)
    assert same_state(straight_ckpt["student"], resumed_ckpt["student"])
    epochs_logged = [r["epoch"] for r in folder.read_metrics() if r["type"] == "epoch"]
    assert epochs_logged == [0, 1, 2]


def test_finished_run_is_skipped(tiny_request):
    request = tiny_request()
    first = run(request, Progress())
    capture = RecordingProgress()
    again = run(request, capture)
    assert again.to_dict() == json.loads(json.dumps(first.to_dict()))
    assert any(m.startswith("already done") for m in capture.messages)


class _Planted:
    """Unpickling this runs code (it calls pathlib.Path.touch on a marker file)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_planted_checkpoint_pickle_never_runs(tiny_request, tmp_path):
    """A checkpoint.pt that would run code when unpickled: resuming refuses it with one line (no code runs),
    and the grid's attempt log, which reads the epoch first, does not run it either."""
    import pickle

    from dfqbench.cli import main
    from dfqbench.errors import DfqbenchError

    request = tiny_request()
    folder = prepare(request).folder
    folder.create(prepare(request).spec)
    marker = tmp_path / "code-ran"
    folder.checkpoint_path.write_bytes(pickle.dumps({"epoch": 0, "evil": _Planted(str(marker))}, protocol=2))
    assert folder.checkpoint_epoch() is None and not marker.exists()
    with pytest.raises(DfqbenchError, match=r"unreadable checkpoint .*checkpoint.pt.*--restart`, or by deleting"):
        run(request, RecordingProgress())
    assert not marker.exists() and folder.error_path.exists() and not folder.is_done()
    args = ["run", "--method", "gdfq", "--model", "tiny_cifar10", "--bits", "w4a4", "--protocol", "quick",
            "--device", "cpu", "--results", request.results, "--plain", *[f"{o}" for o in request.overrides]]
    assert main(args) == 2 and not marker.exists()
    folder.checkpoint_path.write_bytes(b"\x80\x02truncated")  # a truncated file: the same one line
    with pytest.raises(DfqbenchError, match="unreadable checkpoint"):
        run(request, RecordingProgress())


def test_run_files_follow_the_umask(tiny_request):
    """Files written atomically get the usual 0666 & ~umask (not mkstemp's 0600), so a shared results folder is
    readable by colleagues when the umask allows it."""
    import os
    import stat

    request = tiny_request()
    run(request, RecordingProgress())
    folder = prepare(request).folder
    mask = os.umask(0o022)
    os.umask(mask)
    for path in (folder.spec_path, folder.record_path, folder.metrics_path, folder.checkpoint_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name
