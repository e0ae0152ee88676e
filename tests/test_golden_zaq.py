"""Golden tests: dfqbench's ZAQ against numbers from the official code (FLHonker/ZAQ-code; issue 14).

Fixtures: tests/golden/zaq (README there: commit, functions, patches, inputs).
- terms.pt: the official DAFL ``Generator`` forward (train mode, float64) and ``SCRM`` (spatial_wise,
  channel_wise, cal_loss, forward and its gradient; float32) on seeded inputs, one with an all-zero channel
  vector.
- iteration.pt: one whole official ``main.train`` iteration (5 Q steps on fresh batches, then 1 G step) at
  W6A8 from seeded weights, in float64 (both sides under torch.set_default_dtype(float64)): per step the L1
  and SCRM terms and the logits; for the G step also the activation term; digests of every generator and
  student tensor (parameters, BN running statistics, activation ranges) after the iteration and of their
  change.
Every comparison goes through tests/golden_compare.py; tolerances from the cross-kernel spread measured by
tests/golden/spread.py (README).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from golden_b_helpers import (build_step, check_close, check_digests, check_generator_step, check_initial_digests,
                              check_ties, default_dtype, load_fixture, resnet20, run_iteration, seeded_state,
                              to_official_generator)
from dfqbench.blocks.interface import Sample
from dfqbench.methods import zaq as zaq_module
from dfqbench.plugins import load_methods

NET_SEED, GEN_SEED = 30, 31  # as in tests/golden/make/make_zaq.py
# Tolerances, from the spread measured under every CPU kernel setting (tests/golden/spread.py; the tables and
# the margins are in tests/golden/zaq/README.md).
# SCRM terms (float32 fixtures)
LOSS_RTOL, LOSS_ATOL = 1e-6, 1e-6
BRANCH_RTOL, BRANCH_ATOL = 1e-5, 1e-6
GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-8
# the generator forward and the whole iteration (float64)
LOSS64_RTOL, LOSS64_ATOL = 1e-11, 1e-14  # loss terms
OUT64_RTOL, OUT64_ATOL = 1e-10, 1e-13  # generated images, logits
PARAM_RTOL, PARAM_ATOL = 1e-12, 1e-14  # every tensor after the forward / the iteration
DELTA_RTOL, DELTA_ATOL = 1e-10, 1e-14  # its change (after − before)


def _method():
    cls = load_methods().get("zaq")
    presets = cls.paper_protocol("cifar10", "resnet20_cifar10", 6, 8)
    config = cls.config_class(**{**cls.default_config(), **presets["method"]})
    return cls(config, 10, 32, "cifar10"), presets["train"]


def test_dafl_generator_forward_matches_official():
    fx = load_fixture("zaq", "terms")
    with default_dtype(torch.float64):
        method, _ = _method()
        generator = method.build_generator()
        generator.load_state_dict(seeded_state(generator, GEN_SEED))
        generator.train()
        z = fx["gen_z"]
        x = method.generate(generator, Sample(z=z.flatten(1), labels=torch.zeros(z.shape[0], dtype=torch.long)))
    assert x.dtype == torch.float64
    check_close("gen_x", x, fx["gen_x"], OUT64_RTOL, OUT64_ATOL)
    check_digests(fx, "gen_after_forward/", to_official_generator(generator.state_dict()), PARAM_RTOL, PARAM_ATOL)


def test_scrm_matches_official():
    fx = load_fixture("zaq", "terms")
    for i in range(3):
        fs, ft = fx[f"fs{i}"], fx[f"ft{i}"]
        check_close(f"spatial{i}", zaq_module.spatial_relation(F.normalize(fs, dim=1)), fx[f"spatial{i}"], BRANCH_RTOL,
                    BRANCH_ATOL)
        check_close(f"channel{i}", zaq_module.channel_relation(F.normalize(fs, dim=1)), fx[f"channel{i}"], BRANCH_RTOL,
                    BRANCH_ATOL)
        check_close(f"cal_loss{i}", zaq_module.scrm_loss([fs], [ft]), fx[f"cal_loss{i}"], LOSS_RTOL, LOSS_ATOL)
    grads = [fx["fs1"].clone().requires_grad_(True), fx["fs2"].clone().requires_grad_(True)]
    total = zaq_module.scrm_loss(grads, [fx["ft1"], fx["ft2"]])
    total.backward()
    check_close("scrm_12", total, fx["scrm_12"], LOSS_RTOL, LOSS_ATOL)
    check_close("scrm_12_grad1", grads[0].grad, fx["scrm_12_grad1"], GRAD_RTOL, GRAD_ATOL)
    check_close("scrm_12_grad2", grads[1].grad, fx["scrm_12_grad2"], GRAD_RTOL, GRAD_ATOL)


def test_zaq_whole_iteration_matches_official():
    """5 Q+ steps then the G step, as ``ZAQ.steps`` says, on the official run's latents, in float64."""
    fx = load_fixture("zaq", "iteration")
    with default_dtype(torch.float64):
        _check_iteration64(fx)


def _check_iteration64(fx: dict[str, torch.Tensor]) -> None:
    method, train = _method()
    assert method.steps == ("Q+",) * 5 + ("G",)
    teacher = resnet20(NET_SEED, fx)
    generator = method.build_generator()
    generator.load_state_dict(seeded_state(generator, GEN_SEED))
    net_init = {k: v.clone() for k, v in teacher.state_dict().items()}
    gen_init = {k: v.clone() for k, v in to_official_generator(generator.state_dict()).items()}
    assert all(v.dtype == torch.float64 for v in net_init.values() if v.is_floating_point())
    check_initial_digests(fx, "init/net/", net_init)
    check_initial_digests(fx, "init/gen/", dict(generator.state_dict()))

    batch = fx["z"].shape[1]
    step, student = build_step(method, teacher, generator, (6, 8), method.default_tracker, train, batch)
    assert student.training and not teacher.training  # Q in train mode (BN batch statistics), P in eval
    samples = [Sample(z=z.clone(), labels=torch.zeros(batch, dtype=torch.long)) for z in fx["z"]]
    seen = []
    handle = student.register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
    logged = run_iteration(step, samples)
    handle.remove()
    assert [prefix for prefix, _ in logged] == ["q/"] * 5 + ["g/"]
    for k, (prefix, terms) in enumerate(logged):
        kind = f"q{k}" if k < 5 else "g"
        check_close(f"{kind}/student_logits", seen[k], fx[f"{kind}/student_logits"], OUT64_RTOL,
                    OUT64_ATOL)
        check_close(f"{kind}/l1", terms["l1"], fx[f"{kind}/l1"], LOSS64_RTOL, LOSS64_ATOL)
        check_close(f"{kind}/scrm", terms["scrm"], fx[f"{kind}/scrm"], LOSS64_RTOL, LOSS64_ATOL)
        # L_Q = l1 + α·scrm, L_G = −l1 − α·scrm − β·act with main.py's --alpha 1, --beta 0.1 (make_zaq.py's args)
        sign = 1.0 if prefix == "q/" else -1.0
        expected = sign * (fx[f"{kind}/l1"] + fx[f"{kind}/scrm"])
        if prefix == "g/":
            check_close("g/act", terms["act"], fx["g/act"], LOSS64_RTOL, LOSS64_ATOL)
            expected = expected - 0.1 * fx["g/act"]
        check_close(f"{kind}/loss", terms["loss"], expected, LOSS64_RTOL, LOSS64_ATOL)

    student_after = dict(student.state_dict())
    n = check_digests(fx, "after/student/", student_after, PARAM_RTOL, PARAM_ATOL)
    assert n == len([v for v in student_after.values() if v.is_floating_point()])  # every parameter and buffer
    check_digests(fx, "delta/student/", {k: v - net_init[k] for k, v in student_after.items() if k in net_init},
                  DELTA_RTOL, DELTA_ATOL)
    gen_after = to_official_generator(generator.state_dict())
    check_generator_step(fx, gen_init, gen_after, train["lr_g"], (PARAM_RTOL, PARAM_ATOL, DELTA_RTOL,
                                                                       DELTA_ATOL))


def test_activation_quantizer_rounds_ties_as_official():
    """The official ZAQ ``QuantAct`` (``quantization/quant_utils/quant_modules.py``, range frozen) on inputs with exact
    rounding ties, float32 and float64, against dfqbench's quantizer on both paths, bit for bit. The float64
    whole iterations meet no exact tie, so this is the check that rounding is half-to-even as in the official
    code (not half-up)."""
    check_ties(load_fixture("zaq", "terms"))
