"""Helpers of golden-b's golden tests (test_golden_adasg/zaq/zeroq.py): build dfqbench's side of a fixture.

The fixtures and their makers are in tests/golden/{adasg,adadfq,zaq,zeroq,intraq} and tests/golden/make.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden" / "make"))

from golden_b_common import (  # noqa: E402
    GENERATOR_NAMES, default_dtype, digest, load_fixture, net_state_from_fixture, seeded_state, to_official_generator,
)
from golden_compare import assert_golden_close, assert_golden_equal  # noqa: E402
from dfqbench.blocks.interface import Method, Sample  # noqa: E402
from dfqbench.core.step import TrainStep  # noqa: E402
from dfqbench.quant import QuantConfig, quantize_model, set_range_update  # noqa: E402
from dfqbench.specs import TrainConfig  # noqa: E402

__all__ = ["GENERATOR_NAMES", "default_dtype", "digest", "load_fixture", "seeded_state", "to_official_generator",
           "resnet20", "build_step", "run_iteration", "check_digests", "check_initial_digests", "check_close",
           "check_generator_step", "check_ties"]


def resnet20(seed: int, fixture: dict[str, torch.Tensor]) -> nn.Module:
    """pytorchcv resnet20_cifar10 with the fixture's seeded weights and BN statistics, frozen, in eval mode."""
    from pytorchcv.model_provider import get_model

    net = get_model("resnet20_cifar10", pretrained=False)
    net.load_state_dict(net_state_from_fixture(net, seed, fixture))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def build_step(method: Method, teacher: nn.Module, generator: nn.Module, bits: tuple[int, int], tracker: str,
               train: dict, batch_size: int) -> tuple[TrainStep, nn.Module]:
    """The quantized student and a TrainStep with the optimizers the Trainer builds from ``train`` (TrainConfig)."""
    cfg = TrainConfig(**train)
    student = quantize_model(teacher, QuantConfig(bits[0], bits[1], tracker))
    for p in student.parameters():
        p.requires_grad_(True)
    opt_g = method.generator_optimizer(generator, cfg.lr_g, tuple(cfg.g_betas))
    opt_q = torch.optim.SGD(student.parameters(), lr=cfg.lr_q, momentum=cfg.q_momentum, nesterov=cfg.q_nesterov,
                            weight_decay=cfg.q_weight_decay)
    step = TrainStep(method, generator, teacher, student, opt_g, opt_q, batch_size, torch.device("cpu"))
    generator.train()
    student.train(method.student_bn_train)
    set_range_update(student, True)
    return step, student


def run_iteration(step: TrainStep, samples: list[Sample]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """One ``TrainStep.iteration`` (training Q) on the given samples instead of freshly drawn ones."""
    step.draw_samples = lambda: list(samples)  # type: ignore[method-assign]
    return step.iteration(train_q=True)


def check_close(name: str, actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> None:
    """tests/golden_compare.assert_golden_close (``actual`` cast to the fixture entry's dtype and shape)."""
    assert_golden_close(name, actual, expected, rtol, atol)


def check_digests(fixture: dict[str, torch.Tensor], prefix: str, tensors: dict[str, torch.Tensor], rtol: float,
                  atol: float) -> int:
    """Compare every fixture digest under ``prefix`` with the digest of the same-named tensor; returns the count.

    Every digest in the fixture must have a tensor here (a missing name fails). The sum cancels (signed
    values): it is held to atol + rtol × the abs-sum (the scale of its rounding); the abs-sum and the sampled
    values to rtol and atol themselves."""
    names = [k[len(prefix):] for k in fixture if k.startswith(prefix)]
    assert names, f"no digests under {prefix}"
    for name in names:
        assert name in tensors, f"{prefix}{name}: no such tensor on dfqbench's side"
        ours, theirs = digest(tensors[name]), fixture[prefix + name].double()
        sum_tol = atol + rtol * float(theirs[1])
        assert_golden_close(f"{prefix}{name} (sum)", ours[0], theirs[0], 0.0, sum_tol)
        assert_golden_close(f"{prefix}{name} (abs-sum, samples)", ours[1:], theirs[1:], rtol, atol)
    return len(names)


INIT_SUM_RTOL = 1e-12  # a float64 sum / abs-sum of identical values, summed by another kernel: ~1e-16 × abs-sum


def check_initial_digests(fixture: dict[str, torch.Tensor], prefix: str, tensors: dict[str, torch.Tensor]) -> int:
    """The starting weights (seeded portable draws, stored BN statistics) against the fixture's ``init/`` digests:
    the sampled values bit for bit, the float64 sum and abs-sum (reductions, whose order depends on the kernel)
    to :data:`INIT_SUM_RTOL` × the abs-sum. Returns the count; every digest needs a tensor."""
    names = [k[len(prefix):] for k in fixture if k.startswith(prefix)]
    assert names, f"no digests under {prefix}"
    for name in names:
        assert name in tensors, f"{prefix}{name}: no such tensor on dfqbench's side"
        ours, theirs = digest(tensors[name]), fixture[prefix + name].double()
        assert_golden_equal(f"{prefix}{name} (samples)", ours[2:], theirs[2:])
        assert_golden_close(f"{prefix}{name} (sum, abs-sum)", ours[:2], theirs[:2], 0.0,
                            INIT_SUM_RTOL * float(theirs[1]))
    return len(names)


def check_ties(fx: dict[str, torch.Tensor]) -> None:
    """dfqbench's fake quantizer, on both of its paths (autograd: ``fake_quantize`` of an input that requires grad;
    in place: ``FakeQuantSTE``), against the official activation quantizer on the fixture's ``ties/`` inputs
    (exact rounding ties; golden_b_common.tie_cases), bit for bit in float32 and float64 (elementwise arithmetic,
    the same on every CPU)."""
    from dfqbench.quant.primitives import FakeQuantSTE, fake_quantize

    bits_list, ranges = fx["ties/bits"].tolist(), fx["ties/range"]
    ties_seen = 0
    for i, bits in enumerate(bits_list):
        for tag in ("32", "64"):
            x, expected = fx[f"ties/{i}/x{tag}"], fx[f"ties/{i}/y{tag}"]
            lo, hi = (ranges[i, j].to(x.dtype).view(1) for j in (0, 1))
            autograd = fake_quantize(x.clone().requires_grad_(True), bits, lo, hi)
            in_place = FakeQuantSTE.apply(x.clone(), bits, lo, hi)
            assert_golden_equal(f"ties/{i}/y{tag} (autograd path)", autograd.detach(), expected)
            assert_golden_equal(f"ties/{i}/y{tag} (in-place path)", in_place, expected)
            scale = ((1 << bits) - 1) / (hi - lo)
            t = x * scale - (torch.round(scale * lo) + (1 << (bits - 1)))
            ties_seen += int((t - t.floor() == 0.5).sum())
    assert ties_seen > 100, f"the ties fixture holds only {ties_seen} exact ties"


# The generator's conv biases that feed straight into a train-mode BatchNorm (official names): their exact
# gradient is 0 (the BN subtracts the per-channel batch mean), so what reaches Adam is rounding noise, and
# Adam's first step makes that lr·g/(|g| + 1e-8). In float64 the noise is ~1e-17, so they move by ~1e-11
# (measured: at most 6.5e-11 in the fixtures, and 1.2e-10 apart between CPU kernel settings): noise, in the
# official run as in ours. They are held to |change| <= NOISE_BOUND·lr_G on both sides instead of to the
# fixture. (The generator's FC bias l1.0.bias is not among them: FC outputs are reshaped to (C, H, W), and the
# BN cancels only a shift shared by a whole channel, so its gradient is real and it is checked like the rest.)
NOISE_ONLY = ("conv_blocks1.0.bias", "conv_blocks2.0.bias")
NOISE_BOUND = 1e-6


def check_generator_step(fx: dict[str, torch.Tensor], gen_init: dict[str, torch.Tensor],
                         gen_after: dict[str, torch.Tensor], lr_g: float, tolerances: tuple[float, float, float, float]
                         ) -> None:
    """The generator after an iteration (official names) against ``after/gen/`` and ``delta/gen/`` digests."""
    rtol, atol, delta_rtol, delta_atol = tolerances
    zero = torch.zeros((), dtype=torch.float64)
    for key in NOISE_ONLY:
        ours = (gen_after[key] - gen_init[key]).abs().max()
        theirs = fx[f"delta/gen/{key}"][2:].abs().max()  # the official change's sampled values
        assert_golden_close(f"delta/gen/{key} (max |change|, noise only)", ours, zero, 0.0, NOISE_BOUND * lr_g)
        assert_golden_close(f"official delta/gen/{key} (max |sampled change|, noise only)", theirs, zero, 0.0,
                            NOISE_BOUND * lr_g)
    kept = {k: v for k, v in gen_after.items() if k not in NOISE_ONLY}
    noise = tuple(f"{p}{k}" for p in ("after/gen/", "delta/gen/") for k in NOISE_ONLY)
    fx = {k: v for k, v in fx.items() if k not in noise}
    n = check_digests(fx, "after/gen/", kept, rtol, atol)
    assert n == len([v for v in kept.values() if v.is_floating_point()])
    check_digests(fx, "delta/gen/", {k: v - gen_init[k] for k, v in kept.items() if v.is_floating_point()},
                  delta_rtol, delta_atol)
