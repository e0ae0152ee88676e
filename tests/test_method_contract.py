"""The contract every registered method plugin keeps, checked on the tiny BN network (issue 3, item 6).

For each method: it builds from its own presets; two iterations of its public step (its G steps and Q steps) give
finite losses; gradients reach the generator (when the method trains one) and the quantized student (when
its schedule fine-tunes); the teacher is unchanged; the same seed repeats bit for bit.
"""

from __future__ import annotations

import math

import pytest
import torch

from dfqbench.core.diagnostics import WindowMeans
from dfqbench.core.plugin import load_methods
from dfqbench.core.trainer import Trainer
from dfqbench.quant import set_range_update
from dfqbench.runner import RunRequest, prepare

from conftest import RecordingProgress

METHODS = sorted(load_methods().names())
CONTRACT_OVERRIDES = ["train.batch_size=8", "train.iters_per_epoch=2", "train.eval_max_images=64"]


def _trainer(method: str, tmp_path, seed: int = 0) -> Trainer:
    request = RunRequest(method=method, model="tiny_cifar10", bits="w4a4", seed=seed, protocol="quick",
                         overrides=list(CONTRACT_OVERRIDES), results=str(tmp_path / f"results_{seed}"),
                         device="cpu", log_every=1)
    return Trainer(prepare(request), RecordingProgress())


def _fine_tunes(trainer: Trainer) -> bool:
    return trainer.cfg.epochs > trainer.cfg.warmup_epochs


def _two_iterations(trainer: Trainer) -> dict[str, float]:
    """Two iterations of the method's public step (:meth:`TrainStep.iteration`) in its first fine-tuning epoch
    (or its only epoch), with the diagnostics probe between the steps; the logged terms and point values."""
    epoch = min(trainer.cfg.warmup_epochs, trainer.cfg.epochs - 1)
    trainer.generator.train()
    trainer.student.train(trainer.method.student_bn_train)
    set_range_update(trainer.student, epoch < trainer.cfg.range_update_epochs)
    window = WindowMeans()
    for _ in range(2):
        for prefix, terms in trainer.step.iteration(epoch >= trainer.cfg.warmup_epochs, trainer.probe):
            window.add(prefix, terms)
        window.point(trainer.probe.values())
    set_range_update(trainer.student, False)
    return window.flush()


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]


@pytest.mark.parametrize("method", METHODS)
def test_method_contract(method, tmp_path):
    trainer = _trainer(method, tmp_path)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in trainer.student.named_parameters()}

    values = _two_iterations(trainer)

    assert any(k.startswith("q/") for k in values), f"{method}: no student loss logged"
    if trainer.method.trains_generator:
        assert any(k.startswith("g/") for k in values), f"{method}: no generator loss logged"
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    assert not bad, f"{method}: non-finite losses or diagnostics {bad}"

    if trainer.method.trains_generator:
        grads = _grads(trainer.generator)
        assert grads and any(g.abs().sum() > 0 for g in grads), f"{method}: no gradient reached the generator"
    if _fine_tunes(trainer):
        grads = _grads(trainer.student)
        assert grads and any(g.abs().sum() > 0 for g in grads), f"{method}: no gradient reached the student"
        assert any(not torch.equal(p, student_before[k]) for k, p in trainer.student.named_parameters()), \
            f"{method}: the student was not updated"

    teacher_after = trainer.teacher.state_dict()
    assert all(torch.equal(teacher_after[k], v) for k, v in teacher_before.items()), f"{method}: teacher changed"
    assert all(not p.requires_grad for p in trainer.teacher.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_method_repeats_bit_for_bit(method, tmp_path):
    runs = []
    for _ in range(2):
        trainer = _trainer(method, tmp_path)
        values = _two_iterations(trainer)
        runs.append((values, {k: v.clone() for k, v in trainer.student.state_dict().items()},
                     {k: v.clone() for k, v in trainer.generator.state_dict().items()}))
    (values_a, student_a, gen_a), (values_b, student_b, gen_b) = runs
    assert values_a == values_b
    assert all(torch.equal(student_a[k], student_b[k]) for k in student_a)
    assert all(torch.equal(gen_a[k], gen_b[k]) for k in gen_a)


def test_every_method_states_its_paper_and_version():
    registry = load_methods()
    for name in METHODS:
        cls = registry.get(name)
        assert cls.name == name and cls.paper and cls.version
