"""Deterministic weights, inputs and tensor digests shared by the golden-fixture scripts and the golden tests.

Our code (no official code): the scripts in this folder fill the *official* networks with these values and
record the official outputs; tests/test_golden_*.py fill dfqbench's networks with the same values (same draw
order, keyed by the official parameter names) and compare. Only torch is imported here, so the scripts can
put an official repository (with its own ``pytorchcv`` copy) first on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch

FORMAT = 2  # bumped if the fill rules or the digest layout change (every fixture records it); 2: portable draws


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """``torch.set_default_dtype(dtype)`` inside the block, restored after: the makers run the official code,
    and the tests dfqbench, in float64 (their layers, buffers and draws take the default dtype), where kernel
    differences between CPUs stay ~1e-16 relative (tests/golden/README.md)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def portable_randn(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype = torch.float32,
                   scale: float = 1.0) -> torch.Tensor:
    """``scale``·N(0, 1) draws that are the same bits on every CPU.

    float32 ``torch.randn`` is not: ATen's vectorised (AVX2/AVX-512) normal sampler and its scalar one round
    differently. Drawn in float64 with mean 0 and std 1 (one code path everywhere), scaled by a separate
    multiplication (exactly rounded), then cast (correctly rounded)."""
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def portable_uniform(shape: tuple[int, ...], gen: torch.Generator, low: float = 0.0, high: float = 1.0,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U(low, high) draws that are the same bits on every CPU.

    ``uniform_(low, high)`` is not: its vectorised kernel fuses u·(high − low) + low into one FMA. Here a U(0, 1)
    float64 draw (exact), then a multiplication and an addition as separate, exactly rounded operations."""
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low).to(dtype)


def draw(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """The deterministic value of the tensor called ``name`` (an official state-dict key) of ``shape``, in float64.

    Rules by name: BN running statistics (mean ~ 0.2·N(0,1), var ~ U(0.5, 1.5)); BN/CBN scales 1 + 0.2·N(0,1)
    (1-D ``weight`` and the CBN table ``weights.weight``); biases and the CBN table ``biases.weight``
    0.1·N(0,1); the label embedding N(0,1); any other weight N(0, 2/fan_in). Drawn with :func:`portable_randn`
    / :func:`portable_uniform` in float64 (the same bits on every CPU); :func:`fill_` rounds them to the
    tensor's dtype (correctly rounded), so a float32 network holds the float32 roundings of a float64 one's.
    """
    f64 = torch.float64
    if name.endswith("running_var"):
        return portable_uniform(shape, gen, 0.5, 1.5, f64)
    if name.endswith("running_mean"):
        return portable_randn(shape, gen, f64, 0.2)
    if name.endswith("weights.weight") or (name.endswith("weight") and len(shape) == 1):
        return portable_randn(shape, gen, f64, 0.2) + 1.0
    if name.endswith("bias") or name.endswith("biases.weight"):
        return portable_randn(shape, gen, f64, 0.1)
    if name.endswith("label_emb.weight"):
        return portable_randn(shape, gen, f64)
    fan_in = math.prod(shape[1:])
    return portable_randn(shape, gen, f64, math.sqrt(2.0 / fan_in))


@torch.no_grad()
def fill_(pairs: Iterable[tuple[str, torch.Tensor]], seed: int) -> None:
    """Overwrite each tensor in place with :func:`draw` of its (official) name, in the given order (rounded to the
    tensor's dtype by ``copy_``)."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in pairs:
        tensor.copy_(draw(name, tuple(tensor.shape), gen))


def state_pairs(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``module``'s state-dict entries except BN's ``num_batches_tracked`` (what :func:`fill_` fills)."""
    return [(k, v) for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")]


def random_batches(seed: int, count: int, shape: tuple[int, ...], scale: float = 1.0,
                   dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """``count`` N(0, scale²) tensors of ``shape`` and ``dtype`` from a generator seeded with ``seed``
    (:func:`portable_randn`: the same bits on every CPU)."""
    gen = torch.Generator().manual_seed(seed)
    return [portable_randn(shape, gen, dtype, scale) for _ in range(count)]


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
