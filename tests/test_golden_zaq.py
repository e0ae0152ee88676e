"""Golden tests: dfqbench's ZAQ against numbers from the official code (FLHonker/ZAQ-code; issue 14).

Fixtures: tests/golden/zaq (README there: commit, functions, patches, inputs).
- terms.pt: the official DAFL ``Generator`` forward (train mode) and ``SCRM`` (spatial_wise, channel_wise,
  cal_loss, forward and its gradient) on seeded inputs, one with an all-zero channel vector.
- iteration.pt: one whole official ``main.train`` iteration (5 Q steps on fresh batches, then 1 G step) at
  W6A8 from seeded weights: per step the L1 and SCRM terms and the logits; for the G step also the
  activation term; digests of every generator and student tensor (parameters, BN running statistics,
  activation ranges) after the iteration and of their change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from golden_b_helpers import (build_step, check_close, check_digests, check_generator_step, load_fixture, resnet20,
                              run_iteration, seeded_state, to_official_generator)
from dfqbench.core.plugin import Sample, load_methods
from dfqbench.methods import zaq as zaq_module

NET_SEED, GEN_SEED = 30, 31  # as in tests/golden/make/make_zaq.py
LOSS_RTOL, LOSS_ATOL = 1e-6, 1e-6
PARAM_RTOL, PARAM_ATOL = 1e-5, 1e-7
DELTA_RTOL, DELTA_ATOL = 1e-4, 1e-7  # a change (after − before) is good to about one ulp of the parameter


def _method():
    cls = load_methods().get("zaq")
    presets = cls.paper_protocol("cifar10", "resnet20_cifar10", 6, 8)
    config = cls.config_class(**{**cls.default_config(), **presets["method"]})
    return cls(config, 10, 32, "cifar10"), presets["train"]


def test_dafl_generator_forward_matches_official():
    fx = load_fixture("zaq", "terms")
    method, _ = _method()
    generator = method.build_generator()
    generator.load_state_dict(seeded_state(generator, GEN_SEED))
    generator.train()
    z = fx["gen_z"]
    x = method.generate(generator, Sample(z=z.flatten(1), labels=torch.zeros(z.shape[0], dtype=torch.long)))
    check_close("gen_x", x, fx["gen_x"], 1e-6, 1e-6)
    check_digests(fx, "gen_after_forward/", to_official_generator(generator.state_dict()), 1e-6, 1e-7)


def test_scrm_matches_official():
    fx = load_fixture("zaq", "terms")
    for i in range(3):
        fs, ft = fx[f"fs{i}"], fx[f"ft{i}"]
        check_close(f"spatial{i}", zaq_module.spatial_relation(F.normalize(fs, dim=1)), fx[f"spatial{i}"], 1e-5, 1e-6)
        check_close(f"channel{i}", zaq_module.channel_relation(F.normalize(fs, dim=1)), fx[f"channel{i}"], 1e-5, 1e-6)
        check_close(f"cal_loss{i}", zaq_module.scrm_loss([fs], [ft]), fx[f"cal_loss{i}"], LOSS_RTOL, LOSS_ATOL)
    grads = [fx["fs1"].clone().requires_grad_(True), fx["fs2"].clone().requires_grad_(True)]
    total = zaq_module.scrm_loss(grads, [fx["ft1"], fx["ft2"]])
    total.backward()
    check_close("scrm_12", total, fx["scrm_12"], LOSS_RTOL, LOSS_ATOL)
    check_close("scrm_12_grad1", grads[0].grad, fx["scrm_12_grad1"], 1e-5, 1e-8)
    check_close("scrm_12_grad2", grads[1].grad, fx["scrm_12_grad2"], 1e-5, 1e-8)


def test_zaq_whole_iteration_matches_official():
    """5 Q+ steps then the G step, as ``ZAQ.steps`` says, on the official run's latents."""
    fx = load_fixture("zaq", "iteration")
    method, train = _method()
    assert method.steps == ("Q+",) * 5 + ("G",)
    teacher = resnet20(NET_SEED, fx)
    generator = method.build_generator()
    generator.load_state_dict(seeded_state(generator, GEN_SEED))
    net_init = {k: v.clone() for k, v in teacher.state_dict().items()}
    gen_init = {k: v.clone() for k, v in to_official_generator(generator.state_dict()).items()}
    check_digests(fx, "init/net/", net_init, 0.0, 0.0)
    check_digests(fx, "init/gen/", dict(generator.state_dict()), 0.0, 0.0)

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
        check_close(f"{kind}/student_logits", seen[k], fx[f"{kind}/student_logits"], 1e-5, 1e-6)
        check_close(f"{kind}/l1", terms["l1"], fx[f"{kind}/l1"], LOSS_RTOL, LOSS_ATOL)
        check_close(f"{kind}/scrm", terms["scrm"], fx[f"{kind}/scrm"], LOSS_RTOL, LOSS_ATOL)
        # L_Q = l1 + α·scrm, L_G = −l1 − α·scrm − β·act with main.py's --alpha 1, --beta 0.1 (make_zaq.py's args)
        sign = 1.0 if prefix == "q/" else -1.0
        expected = sign * (fx[f"{kind}/l1"] + fx[f"{kind}/scrm"])
        if prefix == "g/":
            check_close("g/act", terms["act"], fx["g/act"], LOSS_RTOL, LOSS_ATOL)
            expected = expected - 0.1 * fx["g/act"]
        check_close(f"{kind}/loss", terms["loss"], expected, LOSS_RTOL, LOSS_ATOL)

    student_after = dict(student.state_dict())
    n = check_digests(fx, "after/student/", student_after, PARAM_RTOL, PARAM_ATOL)
    assert n == len([v for v in student_after.values() if v.is_floating_point()])  # every parameter and buffer
    check_digests(fx, "delta/student/", {k: v - net_init[k] for k, v in student_after.items() if k in net_init},
                  DELTA_RTOL, DELTA_ATOL)
    gen_after = to_official_generator(generator.state_dict())
    check_generator_step(fx, gen_init, gen_after, train["lr_g"], (PARAM_RTOL, PARAM_ATOL, DELTA_RTOL, DELTA_ATOL))
