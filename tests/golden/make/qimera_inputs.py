"""Seeded starting points shared by make_qimera.py (which runs the official code) and tests/test_golden_qimera.py.

Everything here is deterministic from fixed seeds, so the test rebuilds the exact networks and inputs the
fixtures were generated from without any download: a pytorchcv resnet20_cifar10 teacher with seeded
weights and BN statistics, dfqbench's Qimera generator (random embedding, as run_cifar10_4bit.sh's
``--randemb``, or the teacher's last layer) and the golden's settings.
"""

from __future__ import annotations

import torch
from pytorchcv.model_provider import get_model
from torch import nn

NUM_CLASSES = 10
LATENT_DIM = 64  # cifar10_resnet20.hocon latent_dim
BATCH = 32  # iteration golden (the scripts use 200; the computation does not depend on it)
FORWARD_BATCH = 8  # generator-forward and loss goldens
PROB, K = 0.4, 2  # run_cifar10_4bit.sh: --multi_label_prob 0.4 --multi_label_num 2
BITS = 3  # W3A3, the setting of issue 14
LR_Q, LR_G, MOMENTUM, WEIGHT_DECAY, BETAS = 1e-4, 1e-3, 0.9, 1e-4, (0.5, 0.999)  # the hocon's
TEMPERATURE, ALPHA = 20.0, 1.0
TEACHER_SEED, GENERATOR_SEED, INPUT_SEED = 1234, 4321, 77
# torch.manual_seed before each one-iteration case: its coin torch.rand(1) is < p (superposed) or >= p (one-label)
ITERATION_SEEDS = {"mixed": 3, "single": 0}
TRAJECTORY_SEED, TRAJECTORY_ITERS = 11, 5  # two official epochs of 5 iterations each, in float64
SKETCH = 1024  # tensors larger than this are stored at SKETCH evenly spaced flat indices


def seeded_teacher() -> nn.Module:
    """resnet20_cifar10 (pytorchcv structure): default-init seeded weights, seeded BN affine parameters, and BN
    statistics of two seeded N(0, 1) image batches, perturbed (so L_BNS is of the usual size, not zero)."""
    torch.manual_seed(TEACHER_SEED)
    model = get_model("resnet20_cifar10", pretrained=False)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
            m.momentum = None  # cumulative average over the calibration batches
            m.reset_running_stats()
        model.train()
        for _ in range(2):
            model(torch.randn(64, 3, 32, 32))
        for m in bns:
            m.momentum = 0.1
            m.running_mean.add_(0.1 * torch.randn_like(m.running_mean))
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
    return model.eval()


def sketch_index(numel: int) -> torch.Tensor:
    """The flat indices a tensor of ``numel`` elements is stored at (all of them up to SKETCH)."""
    if numel <= SKETCH:
        return torch.arange(numel)
    return torch.linspace(0, numel - 1, SKETCH).round().long()


def sketch(tensor: torch.Tensor) -> torch.Tensor:
    flat = tensor.detach().reshape(-1)
    return flat[sketch_index(flat.numel())].clone()


# dfqbench QimeraGenerator state-dict names → the official Generator's (main.py L28-90)
GENERATOR_NAMES = {
    "label_emb": "label_emb", "body.l1": "l1.0", "body.bn0": "conv_blocks0.0", "body.conv1": "conv_blocks1.0",
    "body.bn1": "conv_blocks1.1", "body.conv2": "conv_blocks2.0", "body.bn2": "conv_blocks2.1",
    "body.conv3": "conv_blocks2.3", "body.out_bn": "conv_blocks2.5",
}


def official_generator_key(key: str) -> str:
    module, _, leaf = key.rpartition(".")
    return f"{GENERATOR_NAMES[module]}.{leaf}"


def forward_inputs() -> dict[str, torch.Tensor]:
    """Seeded inputs of the generator-forward and loss goldens."""
    g = torch.Generator().manual_seed(INPUT_SEED)
    b, c = FORWARD_BATCH, NUM_CLASSES
    eps = torch.randn(b, K, generator=g)
    return {
        "z_single": torch.randn(b, LATENT_DIM, generator=g),
        "labels_single": torch.randint(0, c, (b,), generator=g),
        "z_mixed": torch.randn(b, K, LATENT_DIM, generator=g),
        "labels_mixed": torch.randint(0, c, (b, K), generator=g),
        "mix_weights": torch.softmax(eps, dim=1),
        "student_logits": 3 * torch.randn(b, c, generator=g),
        "teacher_logits": 5 * torch.randn(b, c, generator=g),
    }
