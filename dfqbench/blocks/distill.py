"""ZeroQ data distillation: images optimised so the teacher's per-sample conv statistics match its BN statistics.

Behaviour of ZeroQ ``classification/distill_data.py`` L30-157 and ``utils/data_utils.py`` L26-68, re-implemented:

- init: integer pixels uniform in [0, 254], minus 127.5, divided by 5418.75 (the *variance* of U(-128, 127),
  so the std is ≈ 0.0136, not 1: the official bug, kept by default as ``init="official"``; ``"unit_std"``
  divides by √5418.75 instead). Drawn from torch's global CPU generator, so a seeded run is reproducible
  (the official DataLoader is unseeded);
- loss: the i-th Conv2d output (module order) is paired with the i-th BatchNorm2d's (running_mean,
  √(running_var + ε)); per sample, the spatial mean μ_n and std σ_n = √(unbiased spatial var + ε) give
  (1/N)·Σ_n ‖μ_BN − μ_n‖² + (1/N)·Σ_n ‖σ_BN − σ_n‖²; layers are summed, plus the same term on the input
  image against mean 0 and std 1 per channel;
- optimisation: Adam(lr 0.5) on the pixels for 500 steps, ReduceLROnPlateau on the total loss
  (patience 100, min_lr 1e-4, factor 0.1); one independent batch per ``num_batches``.

:class:`DistilledSet` holds the result as buffers and serves index batches from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dfqbench.blocks.features import FeatureTap
from dfqbench.blocks.synthesis import optimise_pixels
from dfqbench.errors import DfqbenchError
from dfqbench.registry import unknown_choice

INITS = ("official", "unit_std")
UNIFORM_VARIANCE = 5418.75  # (127 − (−128))² / 12, ZeroQ data_utils.py UniformDataset


def init_images(n: int, size: int, init: str = "official", generator: torch.Generator | None = None) -> Tensor:
    """ZeroQ's random initial images (n, 3, size, size) on the CPU (data_utils.py UniformDataset.__getitem__)."""
    if init not in INITS:
        raise DfqbenchError(unknown_choice("method.init", init, list(INITS)))
    pixels = torch.randint(0, 255, (n, 3, size, size), generator=generator).float() - 127.5
    divisor = UNIFORM_VARIANCE if init == "official" else math.sqrt(UNIFORM_VARIANCE)
    return pixels / divisor


def per_sample_stat_loss(features: Tensor, target_mean: Tensor, target_std: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """ZeroQ's ``own_loss`` on per-sample channel statistics: (Σ_n ‖μ_t − μ_n‖² / N, Σ_n ‖σ_t − σ_n‖² / N).

    μ_n,c is the spatial mean of sample n, channel c; σ_n,c = √(unbiased spatial variance + eps).
    """
    flat = features.flatten(2)
    mean = flat.mean(dim=2)
    std = torch.sqrt(flat.var(dim=2, correction=1) + eps)
    n = features.shape[0]
    return (target_mean - mean).pow(2).sum() / n, (target_std - std).pow(2).sum() / n


class ZeroQLoss:
    """The ZeroQ distillation objective of a teacher, via forward hooks on its first L convolutions.

    L = number of BatchNorm2d layers; conv i (module order) is paired with BN i, which assumes conv and BN
    alternate (true for pytorchcv ConvBlocks and the tiny network). Call :meth:`remove` when done.
    """

    def __init__(self, teacher: nn.Module, eps: float = 1e-6) -> None:
        bns = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
        convs = [name for name, m in teacher.named_modules() if isinstance(m, nn.Conv2d)][: len(bns)]
        if not bns:
            raise DfqbenchError("ZeroQ distillation needs a teacher with BatchNorm2d layers; this one has none")
        if len(convs) < len(bns):
            raise DfqbenchError(f"ZeroQ distillation pairs convs with BNs, but the teacher has {len(convs)} Conv2d "
                                f"for {len(bns)} BatchNorm2d layers")
        self.teacher = teacher
        self.eps = eps
        self.targets = [(bn.running_mean.detach().clone(), torch.sqrt(bn.running_var.detach() + eps)) for bn in bns]
        self.tap = FeatureTap(teacher, convs)

    def __call__(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss on images ``x`` and its four parts (BN mean/std terms summed over layers; input terms)."""
        _, outputs = self.tap(x)
        bn_mean = x.new_zeros(())
        bn_std = x.new_zeros(())
        for output, (mean, std) in zip(outputs, self.targets):
            m, s = per_sample_stat_loss(output, mean, std, self.eps)
            bn_mean, bn_std = bn_mean + m, bn_std + s
        channels = x.shape[1]
        in_mean, in_std = per_sample_stat_loss(x, x.new_zeros(channels), x.new_ones(channels), self.eps)
        terms = {"bn_mean": bn_mean, "bn_std": bn_std, "input_mean": in_mean, "input_std": in_std}
        return bn_mean + bn_std + in_mean + in_std, terms

    def remove(self) -> None:
        self.tap.remove()


@dataclass(frozen=True)
class DistillSettings:
    """ZeroQ's optimiser settings (distill_data.py L96-103, L108)."""

    steps: int = 500
    lr: float = 0.5
    plateau_patience: int = 100
    plateau_factor: float = 0.1
    min_lr: float = 1e-4
    eps: float = 1e-6
    init: str = "official"


@dataclass
class DistillResult:
    """Distilled images (on the teacher's device) and the loss trace of every batch (one value per step)."""

    images: Tensor
    losses: list[list[float]] = field(default_factory=list)


def distill_batch(loss_fn: ZeroQLoss, x0: Tensor, settings: DistillSettings) -> tuple[Tensor, list[float]]:
    """Optimise one batch of images from ``x0``; returns the images and the loss before each step.

    Gradients are taken with respect to the pixels only (``torch.autograd.grad``), so the teacher's
    parameters collect no gradient (the official code accumulates unused teacher gradients).
    The loop is the direct family's (:func:`dfqbench.blocks.synthesis.optimise_pixels`) with ZeroQ's settings.
    """
    return optimise_pixels(x0, lambda x, step: loss_fn(x)[0], settings.steps, settings.lr,
                           settings.plateau_patience, settings.plateau_factor, settings.min_lr)


def distill(teacher: nn.Module, num_batches: int, batch_size: int, size: int, settings: DistillSettings,
            device: torch.device) -> DistillResult:
    """ZeroQ ``getDistilData``: ``num_batches`` independently initialised and optimised batches, concatenated.

    The teacher must be in eval mode (BN uses its running statistics, as in the official code).
    """
    if teacher.training:
        raise RuntimeError("ZeroQ distillation expects the teacher in eval mode")
    loss_fn = ZeroQLoss(teacher, settings.eps)
    try:
        batches, traces = [], []
        for _ in range(num_batches):
            x0 = init_images(batch_size, size, settings.init).to(device)
            images, trace = distill_batch(loss_fn, x0, settings)
            batches.append(images)
            traces.append(trace)
    finally:
        loss_fn.remove()
    return DistillResult(torch.cat(batches), traces)


class DistilledSet(nn.Module):
    """A fixed bank of distilled images with the teacher's labels, served as index batches.

    ``shuffle=False`` serves the images in order (ZeroQ's calibration pass); ``shuffle=True`` serves a fresh
    random permutation per pass with the last incomplete batch dropped (a shuffled ``DataLoader`` with
    ``drop_last=True``, as IntraQ's fine-tuning loader). The permutation and cursor are buffers, so a
    checkpoint of this module resumes the same stream; permutations come from torch's global CPU generator.
    """

    def __init__(self, images: Tensor, labels: Tensor, shuffle: bool) -> None:
        super().__init__()
        self.register_buffer("images", images)
        self.register_buffer("labels", labels)
        self.register_buffer("order", torch.arange(images.shape[0], device=images.device))
        self.shuffle = shuffle
        self._cursor = images.shape[0] if shuffle else 0  # a shuffled stream draws its first permutation on use
        self.register_buffer("cursor", torch.tensor(self._cursor, device=images.device))

    def __len__(self) -> int:
        return self.images.shape[0]

    def next_indices(self, batch_size: int) -> Tensor:
        """The next ``batch_size`` indices (on the images' device)."""
        n = len(self)
        if batch_size > n:
            raise DfqbenchError(f"train.batch_size={batch_size} exceeds the {n} distilled images; lower it or "
                                f"raise method.batch_size/method.num_batches")
        if self._cursor + batch_size > n:
            if self.shuffle:
                self.order.copy_(torch.randperm(n))
            self._cursor = 0
        indices = self.order[self._cursor: self._cursor + batch_size]
        self._cursor += batch_size
        self.cursor.fill_(self._cursor)
        return indices

    def forward(self, indices: Tensor) -> Tensor:
        return self.images[indices]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "cursor" in state_dict:  # keep the host-side cursor in step (no device sync per batch)
            self._cursor = int(state_dict[prefix + "cursor"])
