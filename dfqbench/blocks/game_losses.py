"""The zero-sum-game loss terms of AdaSG and AdaDFQ (official ``CIFAR/trainer.py`` of both).

Notation: t = T(x) the FP teacher's logits, s = Q(x) the quantized student's logits,
p_ds = softmax(t − s) the disagreement distribution, p_as = softmax(t + s) the agreement distribution.

- L_ds = CE(softmax(t − s), y) and L_as = CE(softmax(t + s), y): AdaSG ``CIFAR/trainer.py`` L239-256
  (``loss_ds``/``loss_as``: batch mean of −Σ_c onehot_c · log_softmax(z)_c). When the sample carries soft
  targets (superposed sampling) the same sum uses the soft target in place of the one-hot.
- L_b, the bound (margin) loss: ``marginal_loss`` L25-35, entropies at T = 1, normalised by the batch
  minimum (not detached), two hinges at λ_l and λ_u. Written for any batch size: the official code
  builds a zero vector of length 16 and fails with a shape error at any other batch size; that
  crash is the one behaviour deliberately not reproduced.
- L_Q = −τ²·mean_i H(softmax((t_i − s_i)/τ)), t detached: ``loss_fn_kd`` L130-138 (τ = 20 CIFAR, 5 ImageNet).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dfqbench.blocks.losses import entropy, soft_cross_entropy


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Batch mean of −log softmax(logits)[y], or of −Σ_c target_c·log softmax(logits)_c for soft targets."""
    if targets is None:
        return F.cross_entropy(logits, labels)
    return soft_cross_entropy(logits, targets)


def disagreement_ce(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
                    targets: torch.Tensor | None = None) -> torch.Tensor:
    """L_ds = CE(softmax(t − s), y): pushes the teacher above the student on the sampled class (AdaSG L239-256)."""
    return _cross_entropy(teacher_logits - student_logits, labels, targets)


def agreement_ce(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
                 targets: torch.Tensor | None = None) -> torch.Tensor:
    """L_as = CE(softmax(t + s), y): pushes both networks toward the sampled class (AdaSG L239-256)."""
    return _cross_entropy(teacher_logits + student_logits, labels, targets)


def batch_min_normalized_entropy(entropies: torch.Tensor, num_classes: int) -> torch.Tensor:
    """h'_i = (h_i − min_j h_j) / (log C − min_j h_j), the min over the batch and *not* detached (L25-35).

    The argmin sample gets h' = 0. The denominator is kept at least the float eps: it is zero only when
    every sample has the maximum entropy log C, where the official code divides 0 by 0 (NaN) and this
    gives h' = 0 for the whole batch instead.
    """
    h_min = entropies.min()
    denominator = (math.log(num_classes) - h_min).clamp_min(torch.finfo(entropies.dtype).eps)
    return (entropies - h_min) / denominator


def bound_loss_from_entropy(entropies: torch.Tensor, num_classes: int, lambda_l: float,
                            lambda_u: float) -> torch.Tensor:
    """L_b = mean_i max(λ_l − h'_i, 0) + mean_i max(h'_i − λ_u, 0) on per-sample entropies h (B,)."""
    h_norm = batch_min_normalized_entropy(entropies, num_classes)
    return torch.relu(lambda_l - h_norm).mean() + torch.relu(h_norm - lambda_u).mean()


def bound_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, lambda_l: float,
               lambda_u: float) -> torch.Tensor:
    """AdaSG's bound loss on h_i = H(softmax(t_i − s_i)) at temperature 1 (``marginal_loss``, L25-35)."""
    entropies = entropy(teacher_logits - student_logits)
    return bound_loss_from_entropy(entropies, teacher_logits.shape[1], lambda_l, lambda_u)


def disagreement_entropy_at(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """Per-sample H(softmax((t − s)/τ)), shape (B,)."""
    return entropy((teacher_logits - student_logits) / temperature)


def entropy_maximization_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                              temperature: float) -> torch.Tensor:
    """L_Q = −τ²·mean_i H(softmax((t_i − s_i)/τ)) with t detached; no CE, no KL (``loss_fn_kd`` L130-138)."""
    return -(temperature**2) * disagreement_entropy_at(teacher_logits.detach(), student_logits, temperature).mean()
