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
    GENERATOR_NAMES, digest, load_fixture, net_state_from_fixture, seeded_state, to_official_generator,
)
from dfqbench.core.plugin import Method, Sample  # noqa: E402
from dfqbench.core.step import TrainStep  # noqa: E402
from dfqbench.quant import QuantConfig, quantize_model, set_range_update  # noqa: E402
from dfqbench.specs import TrainConfig  # noqa: E402

__all__ = ["GENERATOR_NAMES", "digest", "load_fixture", "seeded_state", "to_official_generator", "resnet20",
           "build_step", "run_iteration", "check_digests", "check_close"]


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
    """assert_close with a message naming the fixture entry."""
    torch.testing.assert_close(actual.detach().double().reshape(expected.shape), expected.double(), rtol=rtol,
                               atol=atol, msg=lambda m: f"{name}: {m}")


def check_digests(fixture: dict[str, torch.Tensor], prefix: str, tensors: dict[str, torch.Tensor], rtol: float,
                  atol: float) -> int:
    """Compare every fixture digest under ``prefix`` with the digest of the same-named tensor; returns the count.

    Every digest in the fixture must have a tensor here (a missing name fails)."""
    names = [k[len(prefix):] for k in fixture if k.startswith(prefix)]
    assert names, f"no digests under {prefix}"
    for name in names:
        assert name in tensors, f"{prefix}{name}: no such tensor on dfqbench's side"
        ours, theirs = digest(tensors[name]), fixture[prefix + name].double()
        # the sum cancels: it is held to rtol of the abs-sum (the scale of its rounding), the rest to rtol itself
        sum_tol = atol + rtol * float(theirs[1])
        assert abs(float(ours[0] - theirs[0])) <= sum_tol, (
            f"{prefix}{name}: sum {float(ours[0])!r} != official {float(theirs[0])!r} (tolerance {sum_tol:.3g})")
        check_close(prefix + name + " (abs-sum, samples)", ours[1:], theirs[1:], rtol, atol)
    return len(names)


# Biases that feed straight into a train-mode BatchNorm (the generator's FC and first two convs, official names):
# their exact gradient is 0 (the BN subtracts the batch mean), so what reaches Adam is rounding noise, and Adam's
# first step turns any nonzero noise into about ±lr. Their values after the step are noise, in the official run as
# in ours, so they are held to that bound (|change| <= lr_g) instead of to the fixture.
NOISE_ONLY = ("l1.0.bias", "conv_blocks1.0.bias", "conv_blocks2.0.bias")


def check_generator_step(fx: dict[str, torch.Tensor], gen_init: dict[str, torch.Tensor],
                         gen_after: dict[str, torch.Tensor], lr_g: float, tolerances: tuple[float, float, float, float]
                         ) -> None:
    """The generator after an iteration (official names) against ``after/gen/`` and ``delta/gen/`` digests."""
    rtol, atol, delta_rtol, delta_atol = tolerances
    for key in NOISE_ONLY:
        assert (gen_after[key] - gen_init[key]).abs().max() <= lr_g * (1 + 1e-4), key
    kept = {k: v for k, v in gen_after.items() if k not in NOISE_ONLY}
    noise = tuple(f"{p}{k}" for p in ("after/gen/", "delta/gen/") for k in NOISE_ONLY)
    fx = {k: v for k, v in fx.items() if k not in noise}
    n = check_digests(fx, "after/gen/", kept, rtol, atol)
    assert n == len([v for v in kept.values() if v.is_floating_point()])
    check_digests(fx, "delta/gen/", {k: v - gen_init[k] for k, v in kept.items()}, delta_rtol, delta_atol)
