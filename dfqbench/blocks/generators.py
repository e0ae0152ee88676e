"""The GDFQ-lineage generators, shared by GDFQ, Qimera, AdaSG and AdaDFQ (GDFQ ``main.py`` L26-101).

Both keep the inherited quirk that the second positional argument of ``nn.BatchNorm2d`` is ``eps``: the
"0.8" meant as a momentum in the PyTorch-GAN ancestor is an **eps of 0.8** in every descendant.
Both end in Tanh followed by an affine-free BN(3), so generated images are standardised per channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GAN_EPS_QUIRK = 0.8  # nn.BatchNorm2d(ch, 0.8): eps, not momentum (inherited bug, reproduced)


class CifarGenerator(nn.Module):
    """GDFQ ``Generator``: g = Emb(y) ⊙ z → FC → BN → ×2 → conv128-BN(eps .8)-LReLU → ×2 → conv64-BN(eps .8)-LReLU → conv3-tanh-BN(3, no affine)."""

    def __init__(self, num_classes: int, img_size: int, latent_dim: int = 100, channels: int = 3,
                 label_embedding: bool = True) -> None:
        """``label_embedding=False`` builds the trunk only (no ``label_emb``), for methods with their own input path."""
        super().__init__()
        self.init_size = img_size // 4
        self.label_emb = nn.Embedding(num_classes, latent_dim) if label_embedding else None
        self.l1 = nn.Linear(latent_dim, 128 * self.init_size**2)
        self.bn0 = nn.BatchNorm2d(128)
        self.conv1 = nn.Conv2d(128, 128, 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(128, GAN_EPS_QUIRK)
        self.conv2 = nn.Conv2d(128, 64, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(64, GAN_EPS_QUIRK)
        self.conv3 = nn.Conv2d(64, channels, 3, stride=1, padding=1)
        self.out_bn = nn.BatchNorm2d(channels, affine=False)

    def embed(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The conditioning: label embedding multiplied elementwise with the noise (label used only here).

        Works slot-wise too: labels (B, K) and z (B, K, D) give (B, K, D) (superposed sampling).
        """
        if self.label_emb is None:
            raise RuntimeError("this CifarGenerator was built with label_embedding=False: use trunk(latent)")
        return self.label_emb(labels) * z

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.embed(z, labels))

    def trunk(self, latent: torch.Tensor) -> torch.Tensor:
        """Everything after the input conditioning (Qimera reuses it with its own embedding path)."""
        out = self.l1(latent).view(latent.shape[0], 128, self.init_size, self.init_size)
        img = F.interpolate(self.bn0(out), scale_factor=2)
        img = F.leaky_relu(self.bn1(self.conv1(img)), 0.2)
        img = F.interpolate(img, scale_factor=2)
        img = F.leaky_relu(self.bn2(self.conv2(img)), 0.2)
        return self.out_bn(torch.tanh(self.conv3(img)))


class ConditionalBatchNorm2d(nn.Module):
    """Categorical conditional BN: affine-free BN, then per-class γ_y, β_y from tables initialised to 1 and 0."""

    def __init__(self, num_classes: int, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                divide_by_k: bool = False) -> torch.Tensor:
        """One label per sample (labels (B,)), or a superposed mix: labels (B, K) with weights (B, K).

        A mix uses γ = Σ_k λ_k·γ_{y_k} (and β alike), divided by K when ``divide_by_k`` — Qimera's
        conditional_batchnorm.py L62-69 takes a mean over K.
        """
        if weights is None:
            gamma = self.gamma(labels)[:, :, None, None]
            beta = self.beta(labels)[:, :, None, None]
        else:
            gamma = mix_class_params(self.gamma(labels), weights, divide_by_k)[:, :, None, None]
            beta = mix_class_params(self.beta(labels), weights, divide_by_k)[:, :, None, None]
        return gamma * self.bn(x) + beta


def mix_class_params(params: torch.Tensor, weights: torch.Tensor, divide_by_k: bool) -> torch.Tensor:
    """Σ_k λ_k·params[:, k] for params (B, K, F) and weights (B, K); ÷K when ``divide_by_k`` (Qimera's mean)."""
    mixed = (params * weights.unsqueeze(2)).sum(dim=1)
    return mixed / params.shape[1] if divide_by_k else mixed


class ImageNetGenerator(nn.Module):
    """GDFQ ``Generator_imagenet``: z → FC(100 → 128·(s/4)²) → CBN → ×2 → conv-CBN(eps .8)-LReLU → ×2 → conv-CBN(eps .8)-LReLU → conv3-tanh-BN(3, no affine).

    There is no input embedding; the label enters only through the three conditional BNs.
    """

    def __init__(self, num_classes: int, img_size: int, latent_dim: int = 100, channels: int = 3) -> None:
        super().__init__()
        self.init_size = img_size // 4
        self.l1 = nn.Linear(latent_dim, 128 * self.init_size**2)
        self.cbn0 = ConditionalBatchNorm2d(num_classes, 128)
        self.conv1 = nn.Conv2d(128, 128, 3, stride=1, padding=1)
        self.cbn1 = ConditionalBatchNorm2d(num_classes, 128, GAN_EPS_QUIRK)
        self.conv2 = nn.Conv2d(128, 64, 3, stride=1, padding=1)
        self.cbn2 = ConditionalBatchNorm2d(num_classes, 64, GAN_EPS_QUIRK)
        self.conv3 = nn.Conv2d(64, channels, 3, stride=1, padding=1)
        self.out_bn = nn.BatchNorm2d(channels, affine=False)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.trunk(z, labels)

    def trunk(self, latent: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
              divide_by_k: bool = False) -> torch.Tensor:
        """FC → CBN stack on a latent; labels (B,), or (B, K) with mixing weights (B, K) for superposed batches."""
        out = self.l1(latent).view(latent.shape[0], 128, self.init_size, self.init_size)
        img = F.interpolate(self.cbn0(out, labels, weights, divide_by_k), scale_factor=2)
        img = F.leaky_relu(self.cbn1(self.conv1(img), labels, weights, divide_by_k), 0.2)
        img = F.interpolate(img, scale_factor=2)
        img = F.leaky_relu(self.cbn2(self.conv2(img), labels, weights, divide_by_k), 0.2)
        return self.out_bn(torch.tanh(self.conv3(img)))


def build_gdfq_generator(dataset: str, num_classes: int, img_size: int, latent_dim: int = 100) -> nn.Module:
    """The CIFAR generator for 32×32 (and smaller test) inputs, the conditional-BN one for ImageNet."""
    if dataset == "imagenet":
        return ImageNetGenerator(num_classes, img_size, latent_dim)
    return CifarGenerator(num_classes, img_size, latent_dim)
