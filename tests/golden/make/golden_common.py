"""Deterministic weights, inputs and tensor digests shared by the golden-fixture scripts and the golden tests.

Our code (no official code): the scripts in this folder fill the *official* networks with these values and
record the official outputs; tests/test_golden_*.py fill dfqbench's networks with the same values (same draw
order, keyed by the official parameter names) and compare. Only torch is imported here, so the scripts can
put an official repository (with its own ``pytorchcv`` copy) first on ``sys.path``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

FORMAT = 1  # bumped if the fill rules or the digest layout change (every fixture records it)


def draw(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """The deterministic value of the tensor called ``name`` (an official state-dict key) of ``shape``.

    Rules by name: BN running statistics (mean ~ 0.2·N(0,1), var ~ U(0.5, 1.5)); BN/CBN scales 1 + 0.2·N(0,1)
    (1-D ``weight`` and the CBN table ``weights.weight``); biases and the CBN table ``biases.weight``
    0.1·N(0,1); the label embedding N(0,1); any other weight N(0, 2/fan_in).
    """
    if name.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=gen)
    if name.endswith("running_mean"):
        return 0.2 * torch.randn(shape, generator=gen)
    if name.endswith("weights.weight") or (name.endswith("weight") and len(shape) == 1):
        return 1.0 + 0.2 * torch.randn(shape, generator=gen)
    if name.endswith("bias") or name.endswith("biases.weight"):
        return 0.1 * torch.randn(shape, generator=gen)
    if name.endswith("label_emb.weight"):
        return torch.randn(shape, generator=gen)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)


@torch.no_grad()
def fill_(pairs: Iterable[tuple[str, torch.Tensor]], seed: int) -> None:
    """Overwrite each tensor in place with :func:`draw` of its (official) name, in the given order."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in pairs:
        tensor.copy_(draw(name, tuple(tensor.shape), gen))


def state_pairs(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``module``'s state-dict entries except BN's ``num_batches_tracked`` (what :func:`fill_` fills)."""
    return [(k, v) for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")]


def random_batches(seed: int, count: int, shape: tuple[int, ...], scale: float = 1.0) -> list[torch.Tensor]:
    """``count`` N(0, scale²) tensors of ``shape`` from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(shape, generator=gen) for _ in range(count)]


FULL_MAX = 4096  # tensors up to this many elements are stored whole
SAMPLE = 256  # else: float64 sum and abs-sum plus this many values at fixed (seeded) positions


def digest(tensor: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tensor, whole if small; else its float64 sum and abs-sum and a fixed seeded sample of its values."""
    t = tensor.detach().reshape(-1).clone()
    if t.numel() <= FULL_MAX:
        return {"full": t}
    idx = torch.randperm(t.numel(), generator=torch.Generator().manual_seed(seed))[:SAMPLE].sort().values
    t64 = t.double()
    return {"sum": t64.sum(), "abs": t64.abs().sum(), "idx": idx, "vals": t[idx]}
