"""Golden tests: dfqbench's AdaSG and AdaDFQ against numbers from the official code (issue 14).

Fixtures: tests/golden/adasg and tests/golden/adadfq (README there: repository, commit, functions, patches).
- terms.pt: the official ``compute_entropy`` (T = 1 and 20), ``marginal_loss`` (AdaSG's hard-coded
  λ_l = 0.3, λ_u = 0.8; AdaDFQ's with two (λ_l, λ_u) pairs) and ``Trainer.loss_fn_kd`` with its gradient,
  on seeded logits at three scales.
- iteration*.pt: one whole official iteration (``Trainer.train`` with 1 iteration: G step, then Q step)
  from seeded weights: the sample, the generated images, the logits, every loss term, and digests of
  every generator and student tensor (parameters, BN and range buffers) after the step and of their change.
A failure here means dfqbench's numbers moved away from the official code's: find out why before
touching a tolerance.
"""

from __future__ import annotations

import pytest
import torch

from golden_b_helpers import (build_step, check_close, check_digests, check_generator_step, digest, load_fixture,
                              resnet20, run_iteration, seeded_state, to_official_generator)
from dfqbench.core import game_losses as gl
from dfqbench.core.plugin import Sample, StepContext, load_methods

NET_SEED, GEN_SEED = 20, 21  # as in tests/golden/make/make_adasg.py
LOSS_RTOL, LOSS_ATOL = 1e-6, 1e-6
PARAM_RTOL, PARAM_ATOL = 1e-5, 1e-7
DELTA_RTOL, DELTA_ATOL = 1e-4, 1e-7  # a change (after − before) is good to about one ulp of the parameter
ADADFQ = {
    "hocon": dict(alpha_ds=0.2, alpha_as=0.1, lambda_l=0.1, lambda_u=0.8, beta=1.0, gamma=1.0),
    "perturbed": dict(alpha_ds=0.35, alpha_as=0.05, lambda_l=0.2, lambda_u=0.6, beta=1.5, gamma=0.7),
}


def _method(name: str, **overrides):
    cls = load_methods().get(name)
    presets = cls.paper_protocol("cifar10", "resnet20_cifar10", 4, 4)
    config = cls.config_class(**{**cls.default_config(), **presets["method"], **overrides})
    return cls(config, 10, 32, "cifar10"), presets["train"]


@pytest.mark.parametrize("scale", [0, 1, 2])
def test_adasg_loss_terms_match_official(scale):
    fx = load_fixture("adasg", "terms")
    t, s, y = fx[f"t{scale}"], fx[f"s{scale}"], fx[f"y{scale}"]
    check_close("entropy_T1", gl.disagreement_entropy_at(t, s, 1.0), fx[f"entropy_T1_{scale}"], LOSS_RTOL, LOSS_ATOL)
    check_close("entropy_T20", gl.disagreement_entropy_at(t, s, 20.0), fx[f"entropy_T20_{scale}"], LOSS_RTOL, LOSS_ATOL)
    method, _ = _method("adasg")
    bns = torch.tensor(0.0)
    _, terms = method.generator_loss(StepContext(torch.zeros(16, 3, 32, 32), Sample(torch.zeros(16, 100), y), t, s,
                                                 bns, 10))
    check_close("bound", terms["bound"], fx[f"bound_{scale}"], LOSS_RTOL, LOSS_ATOL)
    s_grad = s.clone().requires_grad_(True)
    q, _ = method.student_loss(StepContext(torch.zeros(16, 3, 32, 32), Sample(torch.zeros(16, 100), y), t, s_grad,
                                           None, 10))
    q.backward()
    check_close("q_loss", q, fx[f"q_loss_{scale}"], LOSS_RTOL, LOSS_ATOL)
    check_close("q_grad", s_grad.grad, fx[f"q_grad_{scale}"], 1e-5, 1e-7)


@pytest.mark.parametrize("scale", [0, 1, 2])
@pytest.mark.parametrize("setting", sorted(ADADFQ))
def test_adadfq_bound_loss_matches_official(scale, setting):
    fx = load_fixture("adadfq", "terms")
    t, s, y = fx[f"t{scale}"], fx[f"s{scale}"], fx[f"y{scale}"]
    method, _ = _method("adadfq", **ADADFQ[setting])
    _, terms = method.generator_loss(StepContext(torch.zeros(16, 3, 32, 32), Sample(torch.zeros(16, 100), y), t, s,
                                                 torch.tensor(0.0), 10))
    check_close("bound", terms["bound"], fx[f"bound_{setting}_{scale}"], LOSS_RTOL, LOSS_ATOL)
    check_close("q_loss", method.student_loss(StepContext(None, None, t, s, None, 10))[0], fx[f"q_loss_{scale}"],
                LOSS_RTOL, LOSS_ATOL)


def _check_iteration(fx: dict[str, torch.Tensor], name: str, **overrides) -> None:
    method, train = _method(name, **overrides)
    teacher = resnet20(NET_SEED, fx)
    generator = method.build_generator()
    generator.load_state_dict(seeded_state(generator, GEN_SEED))
    gen_init = {k: v.clone() for k, v in to_official_generator(generator.state_dict()).items()}
    net_init = {k: v.clone() for k, v in teacher.state_dict().items()}
    # the weights the official run started from (seeded draws, calibrated BN statistics)
    check_digests(fx, "init/net/", net_init, 0.0, 0.0)
    check_digests(fx, "init/gen/", dict(generator.state_dict()), 0.0, 0.0)

    step, student = build_step(method, teacher, generator, (4, 4), method.default_tracker,
                               {**train, "warmup_epochs": 0}, batch_size=16)
    sample = Sample(z=fx["z"].clone(), labels=fx["labels"].clone())
    with torch.no_grad():  # G's forward on the sample (its BN statistics restored right after)
        bn_state = {k: v.clone() for k, v in generator.state_dict().items()}
        x = method.generate(generator, sample)
        if "x" in fx:
            check_close("x", x, fx["x"], 1e-6, 1e-6)
        else:
            check_close("x (digest)", digest(x), fx["x_digest"], 1e-6, 1e-6)
        generator.load_state_dict(bn_state)
    seen = []
    handle = student.register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
    logged = dict(run_iteration(step, [sample]))
    handle.remove()
    g, q = logged["g/"], logged["q/"]
    check_close("student_logits_g", seen[0], fx["student_logits_g"], 1e-5, 1e-6)
    check_close("student_logits_q", seen[1], fx["student_logits_q"], 1e-5, 1e-6)
    for ours, theirs in (("bound", "loss_bound"), ("ds", "loss_ds"), ("as", "loss_as"), ("bns", "loss_bns"),
                         ("loss", "loss_g")):
        check_close(f"g/{ours}", g[ours], fx[theirs], LOSS_RTOL, LOSS_ATOL)
    check_close("q/loss", q["loss"], fx["loss_q"], LOSS_RTOL, LOSS_ATOL)

    gen_after = to_official_generator(generator.state_dict())
    check_generator_step(fx, gen_init, gen_after, train["lr_g"], (PARAM_RTOL, PARAM_ATOL, DELTA_RTOL, DELTA_ATOL))
    student_after = dict(student.state_dict())
    assert check_digests(fx, "after/student/", student_after, PARAM_RTOL, PARAM_ATOL) == len(
        [k for k, v in student_after.items() if v.is_floating_point()])  # every parameter and buffer
    check_digests(fx, "delta/student/", {k: v - net_init[k] for k, v in student_after.items() if k in net_init},
                  DELTA_RTOL, DELTA_ATOL)


def test_adasg_whole_iteration_matches_official():
    _check_iteration(load_fixture("adasg", "iteration"), "adasg")


@pytest.mark.parametrize("setting", sorted(ADADFQ))
def test_adadfq_whole_iteration_matches_official(setting):
    _check_iteration(load_fixture("adadfq", f"iteration_{setting}"), "adadfq", **ADADFQ[setting])
