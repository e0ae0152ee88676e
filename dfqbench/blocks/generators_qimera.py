"""Qimera's generator: its own input path in front of GDFQ's CIFAR or ImageNet trunk.

Input path (qimera main.py L28-156, ``Generator`` / ``Generator_imagenet``):
    e_k = E[y_k] + σ_n·z_k                       (noise added, not multiplied; σ_n = ``noise_scale``)
    n_k = embed_normalize(e)                     (affine-free, statistics-free BatchNorm1d on the transposed tensor)
    h_k = DM(n_k) = Linear(D → 100)(n_k)         (only with ``dm``; the released scripts run without it)
    latent = Σ_k λ_k·h_k                         (superposed batch), or h (one-label batch)
then GDFQ's CIFAR trunk (BNs with eps 0.8) or GDFQ's ImageNet CBN trunk, whose per-class γ, β are mixed
as (1/K)·Σ_k λ_k·γ_{y_k} in superposed batches (``cbn_divide_by_k``, the official mean over K).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfqbench.blocks.generators import CifarGenerator, ImageNetGenerator
from dfqbench.blocks.superposed import mix_slots

EMBED_NORM_EPS = 1e-5  # nn.BatchNorm1d's default eps, as in the official embed_normalizer


def embed_normalize(e: torch.Tensor, eps: float = EMBED_NORM_EPS) -> torch.Tensor:
    """Qimera's ``embed_normalizer(e.T).T``: a BatchNorm1d without affine parameters or running statistics.

    - (B, D), one-label batch: ``.T`` gives (D, B), so BatchNorm treats the B samples as channels and each
      sample's D-vector is standardised over its own features (a LayerNorm without affine parameters).
    - (B, K, D), superposed batch: ``.T`` reverses all dims to (D, K, B), so the K slots are the channels and
      each slot k is standardised jointly over all D features and all B samples.
    Biased variance, eps 1e-5. Explicit permutes replace the deprecated 3-D ``.T`` (same result).
    """
    if e.dim() == 2:
        return F.batch_norm(e.permute(1, 0), None, None, training=True, eps=eps).permute(1, 0)
    if e.dim() == 3:
        return F.batch_norm(e.permute(2, 1, 0), None, None, training=True, eps=eps).permute(2, 1, 0)
    raise ValueError(f"embed_normalize expects (B, D) or (B, K, D), got shape {tuple(e.shape)}")


class QimeraGenerator(nn.Module):
    """Label embedding E (C×D) + noise → embed normaliser → optional DM → (mix) → GDFQ trunk.

    ``embedding``: the initial E (the teacher's last-layer weight, "extracted embedding"), or None for the
    nn.Embedding default N(0, 1) (``--randemb``). ``freeze_embedding`` mirrors ``--freeze`` (no script sets it),
    which freezes only the extracted embedding.
    """

    def __init__(self, dataset: str, num_classes: int, img_size: int, latent_dim: int, *,
                 embedding: torch.Tensor | None = None, freeze_embedding: bool = False, dm: bool = False,
                 dm_dim: int = 100, noise_scale: float = 1.0, cbn_divide_by_k: bool = True) -> None:
        super().__init__()
        self.label_emb = nn.Embedding(num_classes, latent_dim)
        if embedding is not None:
            if tuple(embedding.shape) != (num_classes, latent_dim):
                raise ValueError(f"embedding of shape {tuple(embedding.shape)} != ({num_classes}, {latent_dim})")
            with torch.no_grad():
                self.label_emb.weight.copy_(embedding)
        # ``--freeze`` applies to the extracted (teacher) embedding only; with --randemb the table always trains
        self.label_emb.weight.requires_grad_(not (freeze_embedding and embedding is not None))
        self.fc_reducer = nn.Linear(latent_dim, dm_dim) if dm else None
        trunk_dim = dm_dim if dm else latent_dim
        self.imagenet = dataset == "imagenet"
        self.body: nn.Module = (ImageNetGenerator(num_classes, img_size, trunk_dim) if self.imagenet
                                else CifarGenerator(num_classes, img_size, trunk_dim, label_embedding=False))
        self.noise_scale = noise_scale
        self.cbn_divide_by_k = cbn_divide_by_k

    def input_path(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-slot generator inputs: DM(norm(E[y] + σ_n·z)), shape (B, F) or (B, K, F)."""
        h = embed_normalize(self.label_emb(labels) + self.noise_scale * z)
        return self.fc_reducer(h) if self.fc_reducer is not None else h

    def forward(self, z: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """One-label batch: z (B, D), labels (B,). Superposed: z (B, K, D), labels (B, K), weights λ (B, K)."""
        h = self.input_path(z, labels)
        latent = h if weights is None else mix_slots(h, weights)
        if self.imagenet:
            return self.body.trunk(latent, labels, weights, self.cbn_divide_by_k)
        return self.body.trunk(latent)


def teacher_class_embedding(teacher: nn.Module) -> torch.Tensor:
    """The teacher's last-layer weight as a (C, F) table: the "extracted embedding" (main.py, ``output.weight``).

    pytorchcv classifiers end in ``output``: an nn.Linear (ResNets) or a 1×1 nn.Conv2d (MobileNetV2, whose
    (C, F, 1, 1) weight is squeezed to (C, F)). A model without ``output`` uses its last nn.Linear.
    """
    head = getattr(teacher, "output", None)
    if not isinstance(head, (nn.Linear, nn.Conv2d)):
        linears = [m for m in teacher.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    if head is None:
        raise ValueError(f"{type(teacher).__name__} has no `output` layer and no nn.Linear to take the embedding from")
    weight = head.weight.detach()
    if weight.dim() == 4:
        if weight.shape[2:] != (1, 1):
            raise ValueError(f"classifier conv of kernel {tuple(weight.shape[2:])} is not 1×1: no class embedding")
        weight = weight.squeeze(-1).squeeze(-1)
    return weight.clone()
