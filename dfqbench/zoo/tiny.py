"""A tiny BN network fitted to a tiny synthetic task, so tests and the smoke grid run the whole pipeline in seconds.

The network mirrors the module layout of pytorchcv's CIFAR ResNets (``features.init_block``,
``features.stage1``/``stage2`` of units with ``conv``/``bn``/``activ``, ``final_pool``, ``output``), so
hooks, the quantizer and stage features see what they see on ResNet-20.

The task: 10 classes of 8×8 RGB images, each class a smooth colour pattern (a seeded 3×3 grid of colours,
bilinearly upsampled) plus Gaussian pixel noise (std ``NOISE``). The teacher is fitted to it in closed form
at build time, with no gradient training: seeded convolution weights, BN running statistics measured on
``FIT_IMAGES`` task images, and the classifier set by linear discriminant analysis on the pooled features
(class means and a shared, ridge-regularised covariance), its logits temperature-scaled. Its test set is ``TEST_IMAGES`` further task
images with their true classes, so the FP top-1 is below 100 % and the quantized student's depends on the
bit-width and on the method (unlike a network labelling random inputs with its own predictions, whose
logit margins are so thin that any 3- or 4-bit student predicts one class). Everything is a function of the
seed, computed on one thread so that every process (a grid's workers too) builds the same bits; the fit
takes well under a second and is done once per process (cached).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

TINY_INPUT_SIZE = 8
TEACHER_ID = {"source": "builtin", "seed": 0, "fit": "lda-2"}  # in the run hash: a new fit, new run ids
TINY_NUM_CLASSES = 10


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, activate: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activ = nn.ReLU(inplace=True) if activate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.activ(x) if self.activ is not None else x


class _ResUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_ConvBlock(cin, cout, stride), _ConvBlock(cout, cout, activate=False))
        self.identity_conv = None
        if stride != 1 or cin != cout:
            self.identity_conv = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.activ = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.identity_conv is None else self.identity_conv(x)
        return self.activ(self.body(x) + identity)


class TinyNet(nn.Module):
    """conv(3→8) → stage1 (8, stride 1) → stage2 (16, stride 2) → avg-pool → Linear(16→C)."""

    def __init__(self, num_classes: int = TINY_NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("init_block", _ConvBlock(3, 8))
        self.features.add_module("stage1", nn.Sequential(_ResUnit(8, 8, 1)))
        self.features.add_module("stage2", nn.Sequential(_ResUnit(8, 16, 2)))
        self.features.add_module("final_pool", nn.AdaptiveAvgPool2d(1))
        self.output = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(x).flatten(1))


NOISE = 0.15  # pixel noise std on [0, 1] images: FP top-1 ≈ 90 % on the test set
FIT_IMAGES = 1024
TEST_IMAGES = 256
_RIDGE = 1e-2  # covariance regularisation, relative to the mean feature variance


def build_tiny(seed: int = 0, num_classes: int = TINY_NUM_CLASSES) -> TinyNet:
    """A TinyNet fitted to the seed's synthetic task (a fresh copy of the per-process cached fit), in eval mode
    like a loaded pretrained model."""
    net = TinyNet(num_classes)
    net.load_state_dict(_fitted_state(seed, num_classes))
    return net.eval()


@functools.lru_cache(maxsize=8)
def _fitted_state(seed: int, num_classes: int) -> dict[str, torch.Tensor]:
    rng_state, threads = torch.get_rng_state(), torch.get_num_threads()
    try:
        torch.manual_seed(seed)
        torch.set_num_threads(1)  # the same bits whatever OMP_NUM_THREADS a worker process got
        net = TinyNet(num_classes)
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5)
                nn.init.uniform_(module.bias, -0.2, 0.2)
                module.momentum = None  # the cumulative average: exactly the fit set's statistics
        gen = torch.Generator().manual_seed(seed)
        images, labels = _task_images(_prototypes(seed, num_classes), FIT_IMAGES, gen)
        with torch.no_grad():
            net.train()
            net(_normalize(images))  # BN running statistics of the task's images
            net.eval()
            feats = net.features(_normalize(images)).flatten(1)
            _scale_last_stage(net, 1.0 / float(feats.std(0).mean()))  # pooled features of unit spread
            feats = net.features(_normalize(images)).flatten(1)
            weight, bias = _lda(feats, labels, num_classes)
            scale = _temperature(feats @ weight.T + bias, labels)
            net.output.weight.copy_(weight * scale)
            net.output.bias.copy_(bias * scale)
        for module in net.modules():  # back to PyTorch's default, as in pytorchcv's models: a student whose BN
            if isinstance(module, nn.BatchNorm2d):  # trains (ZAQ) then updates its statistics without a host sync
                module.momentum = 0.1
        return {k: v.clone() for k, v in net.state_dict().items()}
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng_state)


def _scale_last_stage(net: TinyNet, factor: float) -> None:
    """Multiply the last unit's output by ``factor`` > 0 through its two BNs' affine parameters (the ReLU after
    their sum commutes with a positive factor), so the classifier's weights need not make up for a small scale."""
    unit = net.features.stage2[-1]
    for bn in (unit.body[-1].bn, unit.identity_conv[1]):
        bn.weight.mul_(factor)
        bn.bias.mul_(factor)


def _lda(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear discriminant analysis with equal priors: w_c = Σ⁻¹ μ_c, b_c = −½ μ_cᵀ Σ⁻¹ μ_c."""
    means = torch.stack([feats[labels == c].mean(0) for c in range(num_classes)])
    centred = feats - means[labels]
    cov = centred.T @ centred / len(feats)
    cov += _RIDGE * cov.diagonal().mean() * torch.eye(len(cov))
    weight = torch.linalg.solve(cov, means.T).T
    return weight, -0.5 * (weight * means).sum(1)


def _temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling: the factor on the logits with the least cross-entropy on the fit set (a fixed grid of
    2^-8 … 2^2). LDA's logits are overconfident (up to ~190); scaled, they are the size of a trained net's,
    so the student's KD gradients are too, and the predictions (hence the FP top-1) stay the same."""
    grid = [2.0 ** (k / 4) for k in range(-32, 9)]
    losses = [float(torch.nn.functional.cross_entropy(logits * s, labels)) for s in grid]
    return grid[losses.index(min(losses))]


def tiny_test_set(n: int = TEST_IMAGES, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded uint8 images (n×3×8×8) of the teacher's task (seed 0) with their true classes."""
    return _task_images(_prototypes(0, TINY_NUM_CLASSES), n, torch.Generator().manual_seed(10_000 + seed))


def _prototypes(seed: int, num_classes: int) -> torch.Tensor:
    """One smooth colour pattern per class in [0, 1]: a seeded 3×3 colour grid, bilinearly upsampled."""
    coarse = torch.rand(num_classes, 3, 3, 3, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(TINY_INPUT_SIZE, TINY_INPUT_SIZE), mode="bilinear", align_corners=True)


def _task_images(prototypes: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images, classes in turn (balanced), pattern + N(0, NOISE²) noise, as uint8."""
    labels = torch.arange(n) % len(prototypes)
    noise = torch.randn(n, 3, TINY_INPUT_SIZE, TINY_INPUT_SIZE, generator=gen)
    images = (prototypes[labels] + NOISE * noise).clamp(0, 1).mul(255).round().to(torch.uint8)
    return images, labels


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std
