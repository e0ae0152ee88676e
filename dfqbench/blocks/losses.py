"""Loss terms shared by the GDFQ lineage and the diagnostics (GDFQ, Qimera and AdaSG ``trainer.py``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kd_kl_terms(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The (B, C) elements p_T,c · (log p_T,c − log p_Q,c) of KL(p_T ‖ p_Q) at temperature T."""
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    return log_p_t.exp() * (log_p_t - log_p_s)


def kd_kl_element_mean(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_T ‖ p_Q) at temperature T averaged over all B·C elements, *not* over the batch.

    This is what ``nn.KLDivLoss()`` (default reduction='mean') computes in GDFQ's trainer.py L106-126: the
    batch-mean KL divided by the number of classes C. It is written out explicitly because PyTorch is
    changing the meaning of reduction='mean'.
    """
    return kd_kl_terms(teacher_logits, student_logits, temperature).mean()


def kd_kl_batchmean(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_T ‖ p_Q) at temperature T summed over classes, averaged over the batch (``KLDivLoss('batchmean')``)."""
    return kd_kl_terms(teacher_logits, student_logits, temperature).sum(dim=1).mean()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Batch mean of −Σ_c target_c · log softmax(logits)_c (Qimera's SoftCE; equals CE for one-hot targets)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy H(softmax(logits)) in nats, shape (B,)."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def disagreement_entropy(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample H(softmax(t − s)), AdaSG's information entropy of the disagreement distribution.

    The entropy of AdaSG's ``marginal_loss`` (``CIFAR/trainer.py`` L25-35), at temperature 1.
    """
    return entropy(teacher_logits - student_logits)


def game_value(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """R = E[1 − H'(p_ds)] with H' = H / log C, the AdaSG game value (AdaSG paper, Definition 3).

    The paper normalises the entropy to [0, 1]; dfqbench uses the maximum entropy log C for that (a
    documented re-implementation choice: the batch-min normalisation of L_b would make R depend on the
    batch's own extremes).
    """
    num_classes = teacher_logits.shape[1]
    return 1.0 - disagreement_entropy(teacher_logits, student_logits).mean() / math.log(num_classes)
