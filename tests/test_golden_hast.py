"""Golden tests: dfqbench's HAST terms (dfqbench/blocks/direct_*.py) against the official HAST code.

Fixtures: tests/golden/hast/ (maker: tests/golden/make/make_hast.py; README there): the synthesis step (BNS +
hard-sample focal CE, float64 and float32), channel attention and FA (float32, float64), and one whole
fine-tuning iteration (KD + FA on x and on the FGSM-perturbed x', float64). A failure means our numbers moved
away from the official code's: find out why before touching a tolerance.
"""

from __future__ import annotations

import pytest
import torch

from test_golden_intraq import (DELTA_ATOL, DELTA_RTOL, GRAD_ATOL, GRAD_RTOL, LOSS_ATOL, LOSS_RTOL, NET_SEED,
                                check_digest, check_packed, fixture_batch, plugin_trainer, sgd_step_delta,
                                student_inputs, teacher_and_student)
from golden_b_helpers import check_close, default_dtype, load_fixture, resnet20
from golden_b_common import digest
from golden_common import portable_randn
from dfqbench.blocks import direct_finetune as dft
from dfqbench.blocks import direct_synthesis as ds
from dfqbench.blocks.features import FeatureTap
from dfqbench.blocks.hooks import BNStatisticsLoss

F32_LOSS_RTOL, F32_LOSS_ATOL = 1e-5, 1e-5  # float32: convolution and reduction kernels differ per CPU
# float32 pixel gradient: its sum and abs-sum only. On some kernels (oneDNN AVX2) a ReLU input within float32
# rounding of 0 changes sign and moves a patch of one image's gradient by up to 0.4 % of the largest entry
# (tests/golden/hast/README.md); per-element values are compared in the float64 cases.
F32_GRAD_RTOL = 1e-4
BODIES = [f"features.stage{s}.unit{u}.body" for s in (1, 2, 3) for u in (1, 2, 3)]  # ResUnit.body, in order


def hast_synthesis_gradient(fx: dict, dtype: torch.dtype, loss_tol: tuple[float, float]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One recorded synthesis step of HAST's objective (HAST's fixtures and SynQ's, whose synthesis forks it): the
    fixture's initial pixels, the teacher's logits, BNS and the focal CE checked; returns (x0, the pixel gradient)
    for the caller to compare."""
    beta, gamma = fx["settings"].tolist()
    teacher = resnet20(NET_SEED, fx)
    bns = BNStatisticsLoss(teacher)
    if "x0_portable_seed" in fx:  # float32 torch.randn differs between CPUs: the maker served portable draws
        x0 = portable_randn((8, 3, 32, 32), torch.Generator().manual_seed(int(fx["x0_portable_seed"])), dtype)
    else:  # float64 torch.randn is the same on every CPU
        rng = torch.Generator()
        rng.set_state(fx["rng_state"])
        x0 = torch.randn(8, 3, 32, 32, generator=rng, dtype=dtype)
    check_close("x0", digest(x0), fx["x0"], 0.0, 0.0)
    x0.requires_grad_(True)
    bns.start()
    logits = teacher(x0)
    value = bns.stop()
    bns.remove()
    check_close("teacher_logits", logits, fx["teacher_logits"], *loss_tol)
    total, terms = ds.hast_synthesis_objective(logits, fx["labels"], value, ds.HastSynthesis(beta, gamma))
    check_close("bns", terms["bns"], fx["mean_loss"] + fx["var_loss"], *loss_tol)
    check_close("focal_ce", terms["focal_ce"], fx["loss_target"], *loss_tol)
    (grad,) = torch.autograd.grad(total, x0)
    return x0, grad


@pytest.mark.parametrize("name", ["cifar", "imagenet_values", "cifar_float32"])
def test_hast_synthesis_step_matches_official(name):
    fx = load_fixture("hast", f"synthesis_{name}")
    dtype = fx["teacher_logits"].dtype
    loss_tol = (LOSS_RTOL, LOSS_ATOL) if dtype == torch.float64 else (F32_LOSS_RTOL, F32_LOSS_ATOL)
    with default_dtype(dtype):
        _, grad = hast_synthesis_gradient(fx, dtype, loss_tol)
        if dtype == torch.float64:
            check_digest("grad", grad, fx["grad"], GRAD_RTOL, GRAD_ATOL)
        else:
            mine, theirs = digest(grad), fx["grad"]
            check_close("grad (sum)", mine[0], theirs[0], 0.0, F32_GRAD_RTOL * float(theirs[1]))
            check_close("grad (abs-sum)", mine[1], theirs[1], F32_GRAD_RTOL, 0.0)


def test_channel_attention_and_fa_match_official():
    fx = load_fixture("hast", "terms")
    gen = torch.Generator().manual_seed(62)
    shapes = [(4, 16, 8, 8), (4, 32, 4, 4), (4, 64, 2, 2)]
    student = [portable_randn(s, gen, torch.float64) for s in shapes]
    teacher = [portable_randn(s, gen, torch.float64) for s in shapes]
    for tag, dtype, tol in (("32", torch.float32, (1e-6, 1e-7)), ("64", torch.float64, (LOSS_RTOL, LOSS_ATOL))):
        s = [f.to(dtype) for f in student]
        t = [f.to(dtype) for f in teacher]
        for i in range(len(shapes)):
            check_close(f"attention_s{i}_{tag}", dft.channel_attention(s[i]), fx[f"attention_s{i}_{tag}"], *tol)
        check_close(f"fa_{tag}", dft.attention_transfer_loss(s, t, 1000.0), fx[f"fa_{tag}"], *tol)


def hast_loss_on_fixture(fx: dict, settings: dft.HastStudentLoss
                         ) -> tuple[torch.Tensor, dict, torch.Tensor, torch.nn.Module]:
    """hast_student_loss on iteration.pt's batch with dfqbench's student (official ranges, frozen) and FeatureTaps on
    every ResUnit.body: (total, terms, the FGSM perturbation's signs in units of ε = 0.01, the student)."""
    teacher, student = teacher_and_student(fx)
    x = fixture_batch(fx, 4)
    t_tap, s_tap = FeatureTap(teacher, BODIES), FeatureTap(student, BODIES)
    seen = []

    def student_forward(v):
        seen.append(v.detach())
        return s_tap(v)

    total, terms = dft.hast_student_loss(x, fx["y"], t_tap, student_forward, settings)
    sign = torch.round((seen[1] - seen[0]) / 0.01).to(torch.int8)
    return total, terms, sign, student


def test_hast_whole_student_loss_matches_official():
    """One official fine-tuning iteration (epoch 4): our hast_student_loss gives KD, FA, the perturbation's signs,
    KD and FA on x', and the student's gradients of the total."""
    fx = load_fixture("hast", "iteration")
    with default_dtype(torch.float64):
        total, terms, sign, student = hast_loss_on_fixture(fx, dft.HastStudentLoss())
        for ours, theirs in (("kd", "kd"), ("fa", "fa"), ("kd_perturbed", "kd_perturbed"),
                             ("fa_perturbed", "fa_perturbed")):
            check_close(ours, terms[ours], fx[theirs], LOSS_RTOL, LOSS_ATOL)
        check_close("sign", sign, fx["sign"], 0.0, 0.0)
        total.backward()
        grads = {n: p.grad for n, p in student.named_parameters()}
        assert check_packed(fx, "grad/", grads, GRAD_RTOL, GRAD_ATOL) == len(grads)


def test_hast_detached_teacher_switch_changes_the_perturbation():
    """The fix behind ``detach_teacher_in_perturbation`` is not a no-op on the official batch."""
    fx = load_fixture("hast", "iteration")
    with default_dtype(torch.float64):
        _, _, sign, _ = hast_loss_on_fixture(fx, dft.HastStudentLoss(detach_teacher_in_perturbation=True))
        assert (sign != fx["sign"]).float().mean() > 0.01


def test_hast_plugin_iteration_matches_official():
    """The ``hast`` plugin's student step (its Trainer, paper presets: lr 1e-5, SGD-Nesterov, wd 1e-4, λ = 1000,
    ε = 0.01) on iteration.pt's batch, ranges loaded and frozen: the student's logits on x, KD and FA on x and on
    the FGSM-perturbed x' (its signs), every gradient and the SGD step's parameter changes ``delta/``."""
    from dfqbench.blocks.interface import Sample
    from dfqbench.core.step import Batch

    fx = load_fixture("hast", "iteration")
    with default_dtype(torch.float64):
        teacher, student = teacher_and_student(fx)
        x = fixture_batch(fx, 4)
        trainer = plugin_trainer("hast", teacher, student, 4, 1e-5)
        assert trainer.step.student_tap is not None and trainer.step.student_tap.names == BODIES
        inputs, logits = student_inputs(trainer.student, 4)
        terms, grads, delta = sgd_step_delta(trainer, Batch(Sample(x, fx["y"]), x, None, None))
        for name in ("kd", "fa", "kd_perturbed", "fa_perturbed"):
            check_close(name, terms[name], fx[name], LOSS_RTOL, LOSS_ATOL)
        assert len(inputs) == 2  # x, then x'
        check_close("student_logits", logits[0], fx["student_logits"], 1e-10, 1e-13)
        sign = torch.round((inputs[1] - inputs[0]) / 0.01).to(torch.int8)
        check_close("sign", sign, fx["sign"], 0.0, 0.0)
        assert check_packed(fx, "grad/", grads, GRAD_RTOL, GRAD_ATOL) == len(grads)
        assert check_packed(fx, "delta/", delta, DELTA_RTOL, DELTA_ATOL) == len(delta)
