"""The trainer's pieces used without a Trainer (issue: an equivalence check driven from outside the package
had to copy private code): the per-epoch phase set-up, the optimizers, activation ranges through the
quantizer's API whatever the tracker, and the observer seeing the generated batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfqbench.core import trainer as trainer_module
from dfqbench.core.optimizers import build_optimizers
from dfqbench.core.phases import start_evaluation, start_training_epoch
from dfqbench.core.step import Batch, StepObserver
from dfqbench.errors import DfqbenchError
from dfqbench.quant import QuantAct, activation_quantizers, activation_ranges, set_activation_ranges
from dfqbench.quant.primitives import fake_quantize
from dfqbench.testing import contract_trainer


def test_optimizers_built_alone_are_the_trainers(tmp_path):
    trainer = contract_trainer("gdfq", tmp_path)
    alone = build_optimizers(trainer.method, trainer.generator, trainer.student, trainer.cfg)
    for ours, theirs in ((alone.opt_g, trainer.opt_g), (alone.opt_q, trainer.opt_q)):
        assert type(ours) is type(theirs)
        assert [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups] == \
               [{k: v for k, v in g.items() if k != "params"} for g in theirs.param_groups]
    assert alone.sched_q.milestones == trainer.sched_q.milestones and alone.sched_q.gamma == trainer.sched_q.gamma
    assert alone.sched_g.milestones == trainer.sched_g.milestones


def test_the_trainer_sets_each_epoch_up_with_the_public_phase_function(tmp_path, monkeypatch):
    calls: list[int] = []

    def recorded(method, generator, student, epoch, cfg):
        calls.append(epoch)
        start_training_epoch(method, generator, student, epoch, cfg)

    monkeypatch.setattr(trainer_module, "start_training_epoch", recorded)
    trainer = contract_trainer("gdfq", tmp_path)
    trainer.fit()
    assert calls == list(range(trainer.cfg.epochs))


def test_phase_set_up_modes_and_range_updates(tmp_path):
    trainer = contract_trainer("gdfq", tmp_path)
    cfg = trainer.cfg
    start_training_epoch(trainer.method, trainer.generator, trainer.student, cfg.range_update_epochs - 1, cfg)
    assert trainer.generator.training and trainer.student.training == trainer.method.student_bn_train
    assert all(q.update_ranges for q in activation_quantizers(trainer.student))
    start_training_epoch(trainer.method, trainer.generator, trainer.student, cfg.range_update_epochs, cfg)
    assert not any(q.update_ranges for q in activation_quantizers(trainer.student))
    start_evaluation(trainer.student)
    assert not trainer.student.training and not any(q.update_ranges for q in activation_quantizers(trainer.student))


@pytest.mark.parametrize("tracker", ["ema_gdfq", "ema", "minmax"])
def test_a_set_range_is_the_range_the_quantizer_uses(tracker):
    model = nn.Sequential(QuantAct(4, tracker=tracker), QuantAct(4, tracker=tracker))
    torch.manual_seed(0)
    model(torch.randn(64))  # some tracked state first
    set_activation_ranges(model, {"1": (-0.5, 1.5)})
    assert activation_ranges(model)["1"] == (-0.5, 1.5)
    assert activation_ranges(model)["0"] != (-0.5, 1.5)  # the others keep theirs
    x = torch.linspace(-2, 2, 101)
    model[1].update_ranges = False
    assert torch.equal(model[1](x), fake_quantize(x, 4, torch.tensor(-0.5), torch.tensor(1.5)))


def test_a_bias_corrected_ema_continues_from_a_set_range():
    """EMA tracker: after a set range (lo, hi) at t updates, one update with batch extremes m gives
    (β·raw + (1 − β)·m) / (1 − β^(t+1)) with raw = range·(1 − β^t): the set range counts as tracked."""
    beta = 0.9
    act = QuantAct(4, tracker="ema", momentum=beta)
    act(torch.tensor([-1.0, 2.0]))  # t = 1
    set_activation_ranges(nn.Sequential(act), {"0": (-3.0, 5.0)})
    act(torch.tensor([-1.0, 1.0]))  # t = 2
    denom_1, denom_2 = 1 - beta, 1 - beta ** 2
    expected_hi = (beta * 5.0 * denom_1 + (1 - beta) * 1.0) / denom_2
    expected_lo = (beta * -3.0 * denom_1 + (1 - beta) * -1.0) / denom_2
    lo, hi = activation_ranges(nn.Sequential(act))["0"]
    assert lo == pytest.approx(expected_lo, rel=1e-6) and hi == pytest.approx(expected_hi, rel=1e-6)


def test_setting_ranges_refuses_unknown_quantizers_and_bad_ranges_before_changing_any():
    model = nn.Sequential(QuantAct(4), QuantAct(4))
    before = activation_ranges(model)
    with pytest.raises(DfqbenchError, match="no activation quantizer 'conv'"):
        set_activation_ranges(model, {"0": (0.0, 1.0), "conv": (0.0, 1.0)})
    with pytest.raises(DfqbenchError, match="invalid range"):
        set_activation_ranges(model, {"0": (0.0, 1.0), "1": (2.0, 1.0)})
    with pytest.raises(DfqbenchError, match="invalid range"):
        set_activation_ranges(model, {"0": (float("nan"), 1.0)})
    assert activation_ranges(model) == before


def test_the_observer_receives_the_generated_batch(tmp_path):
    trainer = contract_trainer("gdfq", tmp_path)

    class Seen(StepObserver):
        batches: list[Batch] = []

        def after_generator(self, batch: Batch) -> None:
            self.batches.append(batch)

    seen = Seen()
    start_training_epoch(trainer.method, trainer.generator, trainer.student, trainer.cfg.warmup_epochs, trainer.cfg)
    trainer.step.iteration(True, seen)
    (batch,) = seen.batches
    assert batch.x.shape[0] == trainer.cfg.batch_size and not batch.x.requires_grad
    assert batch.teacher_logits.shape == (trainer.cfg.batch_size, trainer.method.num_classes)
    with torch.no_grad():
        assert torch.allclose(trainer.teacher(batch.x), batch.teacher_logits, atol=1e-5)


def test_the_best_epoch_is_chosen_from_eval_start_epoch_on_though_calibration_is_evaluated(tmp_path):
    """SynQ evaluates epochs ≥ 5 only (SQ:src/main_direct.py:L558-564): the calibration epoch before that is still
    evaluated (calibrated_top1) but never the best. Tiny GDFQ whose calibrated epoch 0 scores above the fine-tuned
    ones (tests/test_api.py's OVERRIDES): with eval_start_epoch=2 the best is the last epoch, not epoch 0."""
    import dfqbench

    overrides = {"train.epochs": 3, "train.iters_per_epoch": 4, "train.batch_size": 8, "train.warmup_epochs": 1,
                 "train.range_update_epochs": 1, "train.lr_q": 0.001}
    common = dict(seed=0, protocol="quick", results=tmp_path, device="cpu", progress=False)
    everything = dfqbench.run("gdfq", "tiny_cifar10", "w8a8", overrides=overrides, **common)
    assert everything["best_epoch"] == 0 and everything["best_top1"] > everything["final_top1"]
    later = dfqbench.run("gdfq", "tiny_cifar10", "w8a8", overrides={**overrides, "train.eval_start_epoch": 2},
                         **common)
    assert later["calibrated_top1"] == everything["calibrated_top1"] == later["top1_per_epoch"]["0"]
    assert list(later["top1_per_epoch"]) == ["0", "2"]  # epoch 1: before eval_start_epoch, not evaluated
    assert later["best_epoch"] == 2 and later["best_top1"] == later["final_top1"] == everything["final_top1"]
