"""The method contract as reusable checks, for the bundled methods' tests and for plugin packages' own tests.

Every registered method, bundled or installed through a ``dfqbench.methods`` entry point, must: build from
its own presets; give finite, logged losses over two iterations of its public step (its G and Q steps) on
the tiny BN network; send gradients to its generator (when it trains one) and to the quantized student
(when its schedule fine-tunes) and update the student; leave the teacher unchanged; repeat bit for bit
under the same seed; state its paper and version. A plugin's test suite runs it with::

    from dfqbench.testing import check_method_contract

    def test_contract(tmp_path):
        check_method_contract("my_method", tmp_path)

(dfqbench's own ``tests/test_method_contract.py`` runs the same checks on every registered method, installed
plugins included: ``pytest tests/test_method_contract.py -k my_method``.) CPU only, a few seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dfqbench.core.diagnostics import WindowMeans
from dfqbench.plugins import load_methods
from dfqbench.core.phases import start_training_epoch
from dfqbench.core.progress import SilentProgress
from dfqbench.core.trainer import Trainer
from dfqbench.quant import set_range_update
from dfqbench.runner import RunRequest, prepare

CONTRACT_OVERRIDES = ["train.batch_size=8", "train.iters_per_epoch=2", "train.eval_max_images=64"]


def contract_trainer(method: str, tmp_path: Path, seed: int = 0) -> Trainer:
    """A trainer for ``method`` on the tiny network (``tiny_cifar10``, W4A4, quick protocol, CPU)."""
    request = RunRequest(method=method, model="tiny_cifar10", bits="w4a4", seed=seed, protocol="quick",
                         overrides=list(CONTRACT_OVERRIDES), results=str(Path(tmp_path) / f"results_{seed}"),
                         device="cpu", log_every=1)
    return Trainer(prepare(request), SilentProgress())


def fine_tunes(trainer: Trainer) -> bool:
    return trainer.cfg.epochs > trainer.cfg.warmup_epochs


def two_iterations(trainer: Trainer) -> dict[str, float]:
    """Two iterations of the method's public step (:meth:`TrainStep.iteration`) in its first fine-tuning epoch
    (or its only epoch), with the diagnostics probe between the steps; the logged terms and point values."""
    epoch = min(trainer.cfg.warmup_epochs, trainer.cfg.epochs - 1)
    start_training_epoch(trainer.method, trainer.generator, trainer.student, epoch, trainer.cfg)
    window = WindowMeans()
    for _ in range(2):
        for prefix, terms in trainer.step.iteration(epoch >= trainer.cfg.warmup_epochs, trainer.probe):
            window.add(prefix, terms)
        window.point(trainer.probe.values())
    set_range_update(trainer.student, False)
    return window.flush()


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]


def check_registration(method: str) -> None:
    """``method`` is registered under its own ``name`` and states its paper and version."""
    cls = load_methods().get(method)
    assert cls.name == method, f"{method}: registered as {method!r} but its class says name = {cls.name!r}"
    assert cls.paper and cls.version, f"{method}: paper and version must be non-empty"


def check_step_contract(method: str, tmp_path: Path) -> None:
    """Finite logged losses, gradients where they belong, the student updated, the teacher untouched."""
    trainer = contract_trainer(method, tmp_path)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in trainer.student.named_parameters()}

    values = two_iterations(trainer)

    assert any(k.startswith("q/") for k in values), f"{method}: no student loss logged"
    if trainer.method.trains_generator:
        assert any(k.startswith("g/") for k in values), f"{method}: no generator loss logged"
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    assert not bad, f"{method}: non-finite losses or diagnostics {bad}"

    if trainer.method.trains_generator:
        grads = _grads(trainer.generator)
        assert grads and any(g.abs().sum() > 0 for g in grads), f"{method}: no gradient reached the generator"
    if fine_tunes(trainer):
        grads = _grads(trainer.student)
        assert grads and any(g.abs().sum() > 0 for g in grads), f"{method}: no gradient reached the student"
        assert any(not torch.equal(p, student_before[k]) for k, p in trainer.student.named_parameters()), \
            f"{method}: the student was not updated"

    teacher_after = trainer.teacher.state_dict()
    assert all(torch.equal(teacher_after[k], v) for k, v in teacher_before.items()), f"{method}: teacher changed"
    assert all(not p.requires_grad for p in trainer.teacher.parameters()), f"{method}: the teacher requires grad"


def check_repeats_bit_for_bit(method: str, tmp_path: Path) -> None:
    """Two trainers with the same seed log the same values and end with bit-identical student and generator."""
    runs = []
    for _ in range(2):
        trainer = contract_trainer(method, tmp_path)
        values = two_iterations(trainer)
        runs.append((values, {k: v.clone() for k, v in trainer.student.state_dict().items()},
                     {k: v.clone() for k, v in trainer.generator.state_dict().items()}))
    (values_a, student_a, gen_a), (values_b, student_b, gen_b) = runs
    assert values_a == values_b, f"{method}: logged values differ between two runs with the same seed"
    assert all(torch.equal(student_a[k], student_b[k]) for k in student_a), f"{method}: student differs"
    assert all(torch.equal(gen_a[k], gen_b[k]) for k in gen_a), f"{method}: generator differs"


def check_method_contract(method: str, tmp_path: Path) -> None:
    """Every check above, in order (a plugin package's one-line contract test)."""
    check_registration(method)
    check_step_contract(method, tmp_path)
    check_repeats_bit_for_bit(method, tmp_path)
