"""Superposed ("boundary supporting") sampling, Qimera's contribution, as a component any generator method can use.

Qimera trainer.py L207-235: once per iteration, for the **whole batch**, a coin decides
with probability p whether the batch is superposed. A superposed batch gives every sample K labels drawn
uniformly with replacement, K noise vectors and mixing weights λ = softmax(ε), ε ~ N(0, I_K) per sample;
its soft target is ỹ = Σ_k λ_k·onehot(y_k), built by scatter-add so repeated classes add up. Otherwise the
batch is an ordinary one-label batch with a one-hot target.

How a method switches it on (its config carries ``superposed_prob`` (0 = off) and ``superposed_k``):

- ``sample()``: ``if superposed_enabled(cfg): return superposed_sample(cfg, batch, C, latent_dim, device)``;
- ``generate()``: ``if is_superposed(sample): return generate_gdfq_superposed(generator, sample, divide_by_k)``
  for the GDFQ generators (Qimera's own generator mixes in its embedding path);
- losses: ``class_cross_entropy(logits, sample)`` — CE on the hard labels when the sample has no soft
  targets (bit-identical to ``F.cross_entropy``), else the soft CE on ỹ.

RNG use is fixed by the seed: the coin is one ``torch.rand(1)`` on the CPU generator (as the official
code), drawn only when p > 0, so a method with the switch off consumes exactly what it did before; then
z, the labels and ε on ``device``, in the official order.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfqbench.blocks.losses import soft_cross_entropy
from dfqbench.blocks.interface import Sample
from dfqbench.errors import DfqbenchError

SUPERPOSED = "superposed"  # Sample.extra key: True for a mixed batch
SLOT_LABELS = "slot_labels"  # (B, K) labels y_1..y_K of a mixed batch
MIX_WEIGHTS = "mix_weights"  # (B, K) λ, rows sum to 1


def check_superposed_settings(prob: float, k: int, prefix: str = "method.") -> None:
    """Raise a one-line DfqbenchError for a probability outside [0, 1] or fewer than one slot."""
    if not 0.0 <= prob <= 1.0:
        raise DfqbenchError(f"invalid {prefix}superposed_prob={prob!r}: must be a probability in [0, 1] (0 = off)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DfqbenchError(f"invalid {prefix}superposed_k={k!r}: must be an integer >= 1 (labels mixed per sample)")


def superposed_enabled(config: Any) -> bool:
    """True when the method config asks for superposed batches (``superposed_prob`` > 0)."""
    return getattr(config, "superposed_prob", 0.0) > 0.0


def mixing_weights(batch_size: int, k: int, device: torch.device) -> torch.Tensor:
    """λ = softmax(ε), ε ~ N(0, I_K) per sample: (B, K), each row on the simplex (trainer.py L216)."""
    return F.softmax(torch.randn(batch_size, k, device=device), dim=1)


def soft_targets(slot_labels: torch.Tensor, weights: torch.Tensor, num_classes: int) -> torch.Tensor:
    """ỹ = Σ_k λ_k·onehot(y_k) by scatter-add: a class drawn twice gets both weights (trainer.py L219-220)."""
    target = torch.zeros(slot_labels.shape[0], num_classes, device=weights.device, dtype=weights.dtype)
    return target.scatter_add_(1, slot_labels, weights)


def one_hot_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The one-label batch's target (trainer.py L230-232), as float (B, C)."""
    return F.one_hot(labels, num_classes).float()


def superposed_sample(config: Any, batch_size: int, num_classes: int, latent_dim: int, device: torch.device) -> Sample:
    """One batch: superposed with probability ``config.superposed_prob``, else one-label; always with soft targets.

    Superposed: ``z`` (B, K, D), ``extra[SLOT_LABELS]`` (B, K), ``extra[MIX_WEIGHTS]`` (B, K), ``targets`` = ỹ,
    and ``labels`` = argmax ỹ, the class with the largest total weight (ties → the lowest class index), a
    hard label for logging and for losses that need one (the official code logs ``labels[:, 0]``).
    One-label: ``z`` (B, D), ``labels`` (B,), one-hot ``targets``.
    """
    prob, k = config.superposed_prob, config.superposed_k
    check_superposed_settings(prob, k)
    mixed = prob > 0.0 and torch.rand(1).item() < prob
    if not mixed:
        z = torch.randn(batch_size, latent_dim, device=device)
        labels = torch.randint(0, num_classes, (batch_size,), device=device)
        return Sample(z=z, labels=labels, targets=one_hot_targets(labels, num_classes), extra={SUPERPOSED: False})
    z = torch.randn(batch_size, k, latent_dim, device=device)
    slot_labels = torch.randint(0, num_classes, (batch_size, k), device=device)
    weights = mixing_weights(batch_size, k, device)
    targets = soft_targets(slot_labels, weights, num_classes)
    return Sample(z=z, labels=targets.argmax(dim=1), targets=targets,
                  extra={SUPERPOSED: True, SLOT_LABELS: slot_labels, MIX_WEIGHTS: weights})


def is_superposed(sample: Sample) -> bool:
    return bool(sample.extra.get(SUPERPOSED, False))


def mix_slots(slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_k λ_k·slots[:, k]: (B, K, F) and (B, K) → (B, F) (main.py Generator.forward, the ``linear`` branch)."""
    return (slots * weights.unsqueeze(2)).sum(dim=1)


def generate_gdfq_superposed(generator: nn.Module, sample: Sample, divide_by_k: bool = True) -> torch.Tensor:
    """Superposed batch through a GDFQ generator; a one-label batch goes through ``generator(z, labels)``.

    CIFAR generator: mix the per-slot conditioned inputs, Σ_k λ_k·(E[y_k] ⊙ z_k), then the trunk (the
    Qimera paper's "GDFQ + superposed samples"). ImageNet generator (no input embedding): mix the noise
    slots, Σ_k λ_k·z_k, and the conditional-BN parameters per class, divided by K when ``divide_by_k``
    as Qimera's CBN does (a dfqbench extension: the official code has no superposed GDFQ ImageNet path).
    """
    if not is_superposed(sample):
        return generator(sample.z, sample.labels)
    slot_labels, weights = sample.extra[SLOT_LABELS], sample.extra[MIX_WEIGHTS]
    if hasattr(generator, "embed"):
        return generator.trunk(mix_slots(generator.embed(sample.z, slot_labels), weights))
    return generator.trunk(mix_slots(sample.z, weights), slot_labels, weights, divide_by_k)


def class_cross_entropy(logits: torch.Tensor, sample: Sample) -> torch.Tensor:
    """CE on the hard labels when the sample has no soft target (GDFQ's own path), else SoftCE on ỹ."""
    if sample.targets is None:
        return F.cross_entropy(logits, sample.labels)
    return soft_cross_entropy(logits, sample.targets)
