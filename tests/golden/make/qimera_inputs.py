"""Seeded starting points shared by make_qimera.py (which runs the official code) and tests/test_golden_qimera.py.

Everything here is deterministic from fixed seeds and the same bits on every CPU (golden_common's portable
draws: float32 ``randn`` and ``uniform_(a, b)`` are not), so the test rebuilds the exact networks and inputs
the fixtures were generated from without any download: a pytorchcv resnet20_cifar10 teacher with seeded
weights, dfqbench's Qimera generator (random embedding, as run_cifar10_4bit.sh's ``--randemb``, or the
teacher's last layer) and the golden's settings. The teacher's BN running statistics come from a forward pass
(reductions, whose last bits depend on the CPU's kernels), so the maker computes them once and stores them in
every fixture (``teacher_bn/<key>``); the test loads them.
Every network and input is built in the default dtype: the fixtures are float64 (tests/golden/qimera/README.md).
"""

from __future__ import annotations

import math

import torch
from golden_common import portable_randn, portable_uniform
from pytorchcv.model_provider import get_model
from torch import nn

from dfqbench.blocks.generators_qimera import QimeraGenerator

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
TRAJECTORY_SEED, TRAJECTORY_ITERS = 11, 5  # two official epochs of 5 iterations each
SKETCH = 1024  # tensors larger than this are stored at SKETCH evenly spaced flat indices


def _seeded_value(key: str, shape: torch.Size, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """A deterministic value for state entry ``key``: BN γ ~ U(0.5, 1.5), biases (BN β included) ~ N(0, 0.1²),
    embeddings N(0, 1), other weights N(0, 2/fan_in) (He); BN running statistics 0 and 1 (set apart)."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        return torch.zeros(shape, dtype=dtype)
    if leaf == "running_var":
        return torch.ones(shape, dtype=dtype)
    if "emb" in key:
        return portable_randn(tuple(shape), gen, dtype)
    if leaf == "weight" and len(shape) == 1:
        return portable_uniform(tuple(shape), gen, 0.5, 1.5, dtype)
    if leaf == "bias":
        return portable_randn(tuple(shape), gen, dtype, scale=0.1)
    if leaf == "weight":
        return portable_randn(tuple(shape), gen, dtype, scale=math.sqrt(2.0 / math.prod(shape[1:])))
    raise KeyError(f"no seeded value for {key} {tuple(shape)}")


@torch.no_grad()
def fill_seeded_(module: nn.Module, seed: int, skip: tuple[str, ...] = ()) -> None:
    """Overwrite every float state entry of ``module`` (but those named in ``skip``) with :func:`_seeded_value`,
    in state-dict order, from one generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    for key, value in module.state_dict().items():
        if value.is_floating_point() and key not in skip:
            value.copy_(_seeded_value(key, value.shape, gen, value.dtype))


def seeded_teacher(bn: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """resnet20_cifar10 (pytorchcv structure) with seeded weights, in eval mode.

    ``bn`` holds its BN running statistics as a fixture stores them (``teacher_bn/<key>``). Without it (the
    maker), they are computed: the cumulative statistics of two seeded N(0, 1) image batches, then perturbed
    (mean + N(0, 0.1²), var × U(0.8, 1.25)) so that L_BNS is of the usual size, not zero."""
    model = get_model("resnet20_cifar10", pretrained=False)
    fill_seeded_(model, TEACHER_SEED)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    dtype = torch.get_default_dtype()
    with torch.no_grad():
        if bn is not None:
            state = model.state_dict()
            for key, value in bn.items():
                state[key.removeprefix("teacher_bn/")].copy_(value)
            return model.eval()
        gen = torch.Generator().manual_seed(TEACHER_SEED + 1)
        for m in bns:
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(portable_randn((64, 3, 32, 32), gen, dtype))
        for m in bns:
            m.momentum = 0.1
            m.running_mean.add_(portable_randn(tuple(m.running_mean.shape), gen, dtype, scale=0.1))
            m.running_var.mul_(portable_uniform(tuple(m.running_var.shape), gen, 0.8, 1.25, dtype))
    return model.eval()


def teacher_bn(model: nn.Module) -> dict[str, torch.Tensor]:
    """The teacher's BN running statistics, as every fixture stores them."""
    return {f"teacher_bn/{k}": v.detach().clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var"))}


def seeded_generator(embedding: torch.Tensor | None) -> QimeraGenerator:
    """dfqbench's CIFAR Qimera generator with seeded weights; ``embedding`` (the teacher's) or, if None, a
    seeded N(0, 1) table (``--randemb``)."""
    gen = QimeraGenerator("cifar10", NUM_CLASSES, 32, LATENT_DIM, embedding=embedding)
    fill_seeded_(gen, GENERATOR_SEED, skip=("label_emb.weight",) if embedding is not None else ())
    return gen


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
    """Seeded inputs of the generator-forward and loss goldens (default dtype)."""
    g = torch.Generator().manual_seed(INPUT_SEED)
    b, c, dtype = FORWARD_BATCH, NUM_CLASSES, torch.get_default_dtype()
    eps = portable_randn((b, K), g, dtype)
    return {
        "z_single": portable_randn((b, LATENT_DIM), g, dtype),
        "labels_single": torch.randint(0, c, (b,), generator=g),
        "z_mixed": portable_randn((b, K, LATENT_DIM), g, dtype),
        "labels_mixed": torch.randint(0, c, (b, K), generator=g),
        "mix_weights": torch.softmax(eps, dim=1),
        "student_logits": portable_randn((b, c), g, dtype, scale=3.0),
        "teacher_logits": portable_randn((b, c), g, dtype, scale=5.0),
    }
