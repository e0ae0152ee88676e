"""A tiny, seeded BN network and its synthetic test set, so tests of the whole pipeline run in seconds.

The network mirrors the module layout of pytorchcv's CIFAR ResNets (``features.init_block``,
``features.stage1``/``stage2`` of units with ``conv``/``bn``/``activ``, ``final_pool``, ``output``), so
hooks, the quantizer and stage features see what they see on ResNet-20. Its weights and BN running
statistics are a deterministic function of a seed; the labels of its test set are the network's own
predictions, so its FP top-1 is 100 % by construction and any drop comes from quantization.
"""

from __future__ import annotations

import torch
from torch import nn

TINY_INPUT_SIZE = 8
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


def build_tiny(seed: int = 0, num_classes: int = TINY_NUM_CLASSES) -> TinyNet:
    """A TinyNet with seeded weights and BN running statistics taken from seeded random inputs."""
    rng_state = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        net = TinyNet(num_classes)
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5)
                nn.init.uniform_(module.bias, -0.2, 0.2)
                module.momentum = None  # cumulative average over the calibration batches
        net.train()
        with torch.no_grad():
            for _ in range(4):
                net(torch.randn(64, 3, TINY_INPUT_SIZE, TINY_INPUT_SIZE))
            net.eval()
            # Centre and whiten the classifier on the pooled features so the predicted classes are balanced.
            feats = net.features(_normalize(_random_images(512, torch.default_generator))).flatten(1)
            net.output.weight.div_(feats.std(0).clamp_min(1e-3))
            net.output.bias.copy_(-net.output.weight @ feats.mean(0))
        for module in net.modules():  # back to PyTorch's default, as in pytorchcv's models: a student whose BN
            if isinstance(module, nn.BatchNorm2d):  # trains (ZAQ) then updates its statistics without a host sync
                module.momentum = 0.1
    finally:
        torch.set_rng_state(rng_state)
    return net


def tiny_test_set(n: int = 256, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded uint8 images (n×3×8×8) labelled with the tiny teacher's own predictions (ImageNet mean/std)."""
    images = _random_images(n, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        labels = build_tiny().eval()(_normalize(images)).argmax(1)
    return images, labels


def _random_images(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, TINY_INPUT_SIZE, TINY_INPUT_SIZE), generator=gen, dtype=torch.uint8)


def _normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std
