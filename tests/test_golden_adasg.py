"""Golden tests: dfqbench's AdaSG and AdaDFQ against numbers from the official code (issue 14).

Fixtures: tests/golden/adasg and tests/golden/adadfq (README there: repository, commit, functions, patches).
- terms.pt: the official ``compute_entropy`` (T = 1 and 20), ``marginal_loss`` (AdaSG's hard-coded
  λ_l = 0.3, λ_u = 0.8; AdaDFQ's with two (λ_l, λ_u) pairs) and ``Trainer.loss_fn_kd`` with its gradient,
  on seeded logits at three scales.
- iteration*.pt: one whole official iteration (``Trainer.train`` with 1 iteration: G step, then Q step)
  from seeded weights, in float64 (official code and dfqbench both run under torch.set_default_dtype(float64),
  where CPU kernel differences stay ~1e-16 relative instead of flipping 4-bit roundings): the sample, the
  generated images, the logits, every loss term, and digests of every generator and student tensor
  (parameters, BN and range buffers) after the step and of their change.
Every comparison goes through tests/golden_compare.py; the tolerances come from the spread measured under
every ATEN_CPU_CAPABILITY × ONEDNN_MAX_CPU_ISA setting (tests/golden/spread.py; tables in the READMEs).
A failure here means dfqbench's numbers moved away from the official code's: find out why before
touching a tolerance.
"""

from __future__ import annotations

import pytest
import torch

from golden_b_helpers import (build_step, check_close, check_digests, check_generator_step, check_initial_digests,
                              check_ties, default_dtype, load_fixture, resnet20, run_iteration, seeded_state,
                              to_official_generator)
from dfqbench.blocks import game_losses as gl
from dfqbench.blocks.interface import Sample, StepContext
from dfqbench.plugins import load_methods

NET_SEED, GEN_SEED = 20, 21  # as in tests/golden/make/make_adasg.py
# Tolerances, from the spread measured under every CPU kernel setting (tests/golden/spread.py; the tables and
# the margins are in tests/golden/adasg/README.md).
# loss terms (terms.pt), float32: entropies, bound and KD loss; the KD gradient (T = 20: a few ulps)
LOSS_RTOL, LOSS_ATOL = 1e-6, 1e-6
GRAD_RTOL, GRAD_ATOL = 1e-5, 5e-7
# the same terms in float64, and the whole iteration's loss terms (float64)
LOSS64_RTOL, LOSS64_ATOL = 1e-11, 1e-14
GRAD64_RTOL, GRAD64_ATOL = 1e-10, 1e-14
# the whole iteration (float64)
OUT64_RTOL, OUT64_ATOL = 1e-10, 1e-13  # generated images, logits
PARAM_RTOL, PARAM_ATOL = 1e-12, 1e-14  # every tensor after the iteration
DELTA_RTOL, DELTA_ATOL = 1e-10, 1e-14  # its change (after − before)
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
    method, _ = _method("adasg")
    for tag, dtype, tol, grad_tol in (("", torch.float32, (LOSS_RTOL, LOSS_ATOL), (GRAD_RTOL, GRAD_ATOL)),
                                      ("64", torch.float64, (LOSS64_RTOL, LOSS64_ATOL), (GRAD64_RTOL, GRAD64_ATOL))):
        t, s, y = fx[f"t{scale}"].to(dtype), fx[f"s{scale}"].to(dtype), fx[f"y{scale}"]
        check_close(f"entropy{tag}_T1", gl.disagreement_entropy_at(t, s, 1.0), fx[f"entropy{tag}_T1_{scale}"], *tol)
        check_close(f"entropy{tag}_T20", gl.disagreement_entropy_at(t, s, 20.0), fx[f"entropy{tag}_T20_{scale}"],
                    *tol)
        bns = torch.tensor(0.0, dtype=dtype)
        _, terms = method.generator_loss(StepContext(torch.zeros(16, 3, 32, 32, dtype=dtype),
                                                     Sample(torch.zeros(16, 100, dtype=dtype), y), t, s, bns, 10))
        check_close(f"bound{tag}", terms["bound"], fx[f"bound{tag}_{scale}"], *tol)
        s_grad = s.clone().requires_grad_(True)
        q, _ = method.student_loss(StepContext(torch.zeros(16, 3, 32, 32, dtype=dtype),
                                               Sample(torch.zeros(16, 100, dtype=dtype), y), t, s_grad, None, 10))
        q.backward()
        check_close(f"q_loss{tag}", q, fx[f"q_loss{tag}_{scale}"], *tol)
        check_close(f"q_grad{tag}", s_grad.grad, fx[f"q_grad{tag}_{scale}"], *grad_tol)


@pytest.mark.parametrize("scale", [0, 1, 2])
@pytest.mark.parametrize("setting", sorted(ADADFQ))
def test_adadfq_bound_loss_matches_official(scale, setting):
    fx = load_fixture("adadfq", "terms")
    method, _ = _method("adadfq", **ADADFQ[setting])
    for tag, dtype, tol in (("", torch.float32, (LOSS_RTOL, LOSS_ATOL)),
                            ("64", torch.float64, (LOSS64_RTOL, LOSS64_ATOL))):
        t, s, y = fx[f"t{scale}"].to(dtype), fx[f"s{scale}"].to(dtype), fx[f"y{scale}"]
        _, terms = method.generator_loss(StepContext(torch.zeros(16, 3, 32, 32, dtype=dtype),
                                                     Sample(torch.zeros(16, 100, dtype=dtype), y), t, s,
                                                     torch.tensor(0.0, dtype=dtype), 10))
        check_close(f"bound{tag}", terms["bound"], fx[f"bound{tag}_{setting}_{scale}"], *tol)
        check_close(f"q_loss{tag}", method.student_loss(StepContext(None, None, t, s, None, 10))[0],
                    fx[f"q_loss{tag}_{scale}"], *tol)


def _check_iteration(fx: dict[str, torch.Tensor], name: str, **overrides) -> None:
    with default_dtype(torch.float64):  # as the fixture was made: float64 networks, inputs and optimizer states
        _check_iteration64(fx, name, **overrides)


def _check_iteration64(fx: dict[str, torch.Tensor], name: str, **overrides) -> None:
    method, train = _method(name, **overrides)
    teacher = resnet20(NET_SEED, fx)
    generator = method.build_generator()
    generator.load_state_dict(seeded_state(generator, GEN_SEED))
    gen_init = {k: v.clone() for k, v in to_official_generator(generator.state_dict()).items()}
    net_init = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert all(v.dtype == torch.float64 for v in net_init.values() if v.is_floating_point())
    # the weights the official run started from (seeded draws, calibrated BN statistics)
    check_initial_digests(fx, "init/net/", net_init)
    check_initial_digests(fx, "init/gen/", dict(generator.state_dict()))

    step, student = build_step(method, teacher, generator, (4, 4), method.default_tracker,
                               {**train, "warmup_epochs": 0}, batch_size=16)
    sample = Sample(z=fx["z"].clone(), labels=fx["labels"].clone())
    with torch.no_grad():  # G's forward on the sample (its BN statistics restored right after)
        bn_state = {k: v.clone() for k, v in generator.state_dict().items()}
        x = method.generate(generator, sample)
        if "x" in fx:
            check_close("x", x, fx["x"], OUT64_RTOL, OUT64_ATOL)
        else:
            check_digests(fx, "x_", {"digest": x}, OUT64_RTOL, OUT64_ATOL)  # the fixture's x_digest
        generator.load_state_dict(bn_state)
    seen = []
    handle = student.register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
    logged = dict(run_iteration(step, [sample]))
    handle.remove()
    g, q = logged["g/"], logged["q/"]
    check_close("student_logits_g", seen[0], fx["student_logits_g"], OUT64_RTOL, OUT64_ATOL)
    check_close("student_logits_q", seen[1], fx["student_logits_q"], OUT64_RTOL, OUT64_ATOL)
    for ours, theirs in (("bound", "loss_bound"), ("ds", "loss_ds"), ("as", "loss_as"), ("bns", "loss_bns"),
                         ("loss", "loss_g")):
        check_close(f"g/{ours}", g[ours], fx[theirs], LOSS64_RTOL, LOSS64_ATOL)
    check_close("q/loss", q["loss"], fx["loss_q"], LOSS64_RTOL, LOSS64_ATOL)

    gen_after = to_official_generator(generator.state_dict())
    check_generator_step(fx, gen_init, gen_after, train["lr_g"], (PARAM_RTOL, PARAM_ATOL, DELTA_RTOL,
                                                                       DELTA_ATOL))
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


def test_activation_quantizer_rounds_ties_as_official():
    """The official AdaSG ``QuantAct`` (``quantization_utils/quant_modules.py``, range frozen) on inputs with exact
    rounding ties, float32 and float64, against dfqbench's quantizer on both paths, bit for bit. The float64
    whole iterations meet no exact tie, so this is the check that rounding is half-to-even as in the official
    code (not half-up)."""
    check_ties(load_fixture("adasg", "terms"))
