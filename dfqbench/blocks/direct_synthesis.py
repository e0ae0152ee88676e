"""Synthesis-side terms of the "direct" DFQ family (IntraQ, HAST, SynQ): what the image bank's pixels minimise.

Every function is a pure tensor function: no ``.item()``, no Python branch on a tensor's value, every new tensor
on the input's device, no hooks. BN statistics come from :class:`dfqbench.blocks.hooks.BNStatisticsLoss` (the
same formula in all three repositories: mean over BN layers of MSE(batch mean, running mean) + MSE(biased batch
variance, running variance); IQ:data_generate/distill_data.py:L39-49, L371-378; HA:data_generate/distill_data.py
L57-66, L168-175; SQ:src/data_generate/distill_data.py L457-470).

Citations (``/work/shared/spec/newer-methods.md`` §0): IQ = zysxmu/IntraQ @ 5228f76, HA = lihuantong/HAST @ 83dfc16,
SQ = snudm-starlab/SynQ @ 8681480.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dfqbench.errors import DfqbenchError

# ----------------------------------------------------------------------------------------------------------------
# IntraQ: soft inception loss


def draw_soft_targets(labels: Tensor, target_min: float, generator: torch.Generator | None = None) -> Tensor:
    """IntraQ's per-sample target probability t_i (IQ:data_generate/distill_data.py:L51-91, drawn once per batch).

    With probability 1/2 (a coin per sample) t_i ~ U(target_min, 1), else t_i = 1. The official code draws the
    coin with Python's ``random`` and the value with a float32 ``torch.FloatTensor(1, 1).uniform_``; here both come
    from ``generator`` on the labels' device (same distribution, not the same stream), in the default dtype.
    """
    shape, device = labels.shape, labels.device
    coin = torch.rand(shape, generator=generator, device=device) < 0.5
    value = torch.rand(shape, generator=generator, device=device) * (1.0 - target_min) + target_min
    return torch.where(coin, value, torch.ones_like(value))


def soft_inception_loss(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """L_SIL = (1/B)·Σ_i (softmax(z_i)_{y_i} − t_i)²: MSE on the true-class probability only.

    IQ:data_generate/distill_data.py:L354-359 (``MSE(reduction='none')(softmax, soft one-hot) * one-hot``, summed
    over classes, mean over the batch). ``targets`` (B,) are the t_i of :func:`draw_soft_targets`.
    """
    p_true = F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return (p_true - targets.to(p_true.dtype)).pow(2).mean()


# ----------------------------------------------------------------------------------------------------------------
# IntraQ: marginal distance constraint with class centroids


class ClassCentroids:
    """Per-class mean teacher feature of every image generated so far (IntraQ's ``last_feature_dict``).

    IQ:data_generate/distill_data.py:L93-177 (features of earlier groups and batches), L274-299 (centroid and
    mask per sample), L402-405 (update after each batch with the un-augmented final images). Held as running sums
    and counts on the device (``index_add_``), so an update reads nothing back to the host.

    ``chunk``: the official update forwards the batch in chunks of 64 and drops a last incomplete chunk
    (``range(len(old_data) // 64)``, L158): a batch of fewer than 64 images adds nothing. ``chunk=64`` (faithful)
    counts only the first ⌊B/64⌋·64 images of a batch; ``chunk=None`` counts all of them. At the released batch of
    256 both are the same.
    """

    def __init__(self, num_classes: int, dim: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, chunk: int | None = 64) -> None:
        if chunk is not None and chunk < 1:
            raise DfqbenchError(f"invalid centroid chunk={chunk!r}: must be >= 1 or None")
        self.sums = torch.zeros(num_classes, dim, device=device, dtype=dtype)
        self.counts = torch.zeros(num_classes, device=device, dtype=dtype)
        self.chunk = chunk

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Add the (B, D) features of one finished batch with their sampled labels (no gradient kept)."""
        n = features.shape[0] if self.chunk is None else (features.shape[0] // self.chunk) * self.chunk
        features, labels = features[:n].detach().to(self.sums.dtype), labels[:n]
        self.sums.index_add_(0, labels, features)
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=self.counts.dtype))

    def lookup(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(centroid of each sample's class (B, D), mask (B,): 1 where the class has a centroid, else 0).

        A class without a centroid gets a zero row; the official code puts a random N(0, 1) row there (L280-289),
        which the mask zeroes out of the loss all the same."""
        counts = self.counts[labels]
        centroids = self.sums[labels] / counts.clamp_min(1.0)[:, None]
        return centroids, (counts > 0).to(self.sums.dtype)

    def state_dict(self) -> dict[str, Tensor]:
        return {"sums": self.sums, "counts": self.counts}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.sums.copy_(state["sums"])
        self.counts.copy_(state["counts"])


def marginal_distance_loss(features: Tensor, centroids: Tensor, mask: Tensor, lower: float, upper: float,
                           eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """IntraQ's two hinges on d_i = 1 − cos(f_i, c_{y_i}) (IQ:data_generate/distill_data.py:L361-369):

    (Σ_i m_i·max(m_l − d_i, 0) / (Σ_i m_i + 1e-6),  Σ_i m_i·max(d_i − m_u, 0) / (Σ_i m_i + 1e-6)),

    with ``nn.CosineSimilarity(dim=1, eps=1e-6)`` and the centroids detached. ``features`` are the teacher's
    ``final_pool`` outputs flattened to (B, D); ``centroids`` and ``mask`` from :meth:`ClassCentroids.lookup`.
    """
    distance = 1.0 - F.cosine_similarity(features, centroids.detach().to(features.dtype), dim=1, eps=eps)
    mask = mask.to(features.dtype)
    norm = mask.sum() + 1e-6
    below = (torch.clamp(lower - distance, min=0) * mask).sum() / norm
    above = (torch.clamp(distance - upper, min=0) * mask).sum() / norm
    return below, above


# ----------------------------------------------------------------------------------------------------------------
# HAST (and SynQ): hard-sample-enhanced inception loss


def hard_sample_focal_ce(logits: Tensor, labels: Tensor, beta: float, gamma: float) -> Tensor:
    """β·(1/B)·Σ_i (1 − p_{i,y_i})^γ · CE(z_i, y_i), p = softmax(z) at T = 1, **not** detached.

    HA:data_generate/distill_data.py:L160-166 (the same at SQ:src/data_generate/distill_data.py:L437-451).
    Released: β = 10, γ = 2 (CIFAR, ``run_generate_cifar10.sh:L8-9``); β = 0.1, γ = 0.5 (ImageNet, SynQ).
    """
    p_true = F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    ce = F.cross_entropy(logits, labels, reduction="none")
    return beta * ((1.0 - p_true).pow(gamma) * ce).mean()


# ----------------------------------------------------------------------------------------------------------------
# Local object reinforcement: per-image RandomResizedCrop + horizontal flip with one coin per step


def draw_resized_crop_boxes(batch: int, height: int, width: int, scale: tuple[float, float],
                            ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                            device: torch.device | str | None = None, tries: int = 10) -> tuple[Tensor, Tensor]:
    """Per-image crop boxes (top, left, h, w) (B, 4) long and flip flags (B,) bool, drawn on ``device``.

    torchvision's ``RandomResizedCrop.get_params`` vectorised: ``tries`` candidates per image (area fraction
    ~ U(scale), log aspect ratio ~ U(log ratio)), the first that fits is taken, else the central crop of the ratio
    clamped to ``ratio`` (torchvision's fallback); flips with probability 1/2 (``RandomHorizontalFlip``). The same
    distribution as the official per-image transforms (IQ:data_generate/distill_data.py:L244-251, L329-336;
    HA:data_generate/distill_data.py:L141-151), not the same random stream.
    """
    opts = {"generator": generator, "device": device}
    area = float(height * width)
    target = area * (torch.rand(batch, tries, **opts, dtype=torch.float64) * (scale[1] - scale[0]) + scale[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(batch, tries, **opts, dtype=torch.float64) * (log_hi - log_lo) + log_lo)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.argmax(fits.to(torch.int8), dim=1, keepdim=True)  # first fitting try (0 when none fits)
    any_fit = fits.any(dim=1)
    h = h.gather(1, first).squeeze(1)
    w = w.gather(1, first).squeeze(1)
    u_top = torch.rand(batch, **opts, dtype=torch.float64)
    u_left = torch.rand(batch, **opts, dtype=torch.float64)
    # fallback (torchvision): whole-image crop at the clamped ratio, centred
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fb_w, fb_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fb_h, fb_w = height, int(round(height * ratio[1]))
    else:
        fb_w, fb_h = width, height
    h = torch.where(any_fit, h, torch.full_like(h, fb_h))
    w = torch.where(any_fit, w, torch.full_like(w, fb_w))
    top = torch.where(any_fit, torch.floor(u_top * (height - h + 1)), torch.full_like(h, (height - fb_h) // 2))
    left = torch.where(any_fit, torch.floor(u_left * (width - w + 1)), torch.full_like(w, (width - fb_w) // 2))
    boxes = torch.stack([top, left, h, w], dim=1).long()
    flips = torch.rand(batch, **opts) < 0.5
    return boxes, flips


def _source_index(start: Tensor, length: Tensor, size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear (align_corners=False) source positions for resizing [start, start + length) to ``size``."""
    dst = torch.arange(size, device=start.device, dtype=dtype)
    src = ((dst + 0.5) * (length.to(dtype)[:, None] / size) - 0.5).clamp_min(0.0)
    i0 = src.floor().long()
    weight = src - i0.to(dtype)
    i1 = torch.minimum(i0 + 1, length[:, None] - 1)
    i0 = torch.minimum(i0, length[:, None] - 1)
    return start[:, None] + i0, start[:, None] + i1, weight


def resized_crop(x: Tensor, boxes: Tensor, flips: Tensor) -> Tensor:
    """Each image cropped to its box (top, left, h, w), resized back to (H, W) bilinearly, flipped where flagged.

    Equals torchvision's tensor ``RandomResizedCrop`` then ``RandomHorizontalFlip`` on each image: the crops
    never exceed the image, so the resize only upsamples, where bilinear with and without antialiasing agree.
    Differentiable with respect to ``x`` (the official synthesis back-propagates through it).
    """
    b, c, h, w = x.shape
    boxes, flips = boxes.to(x.device), flips.to(x.device)
    r0, r1, wy = _source_index(boxes[:, 0], boxes[:, 2], h, x.dtype)
    c0, c1, wx = _source_index(boxes[:, 1], boxes[:, 3], w, x.dtype)

    def rows(index: Tensor) -> Tensor:
        return x.gather(2, index[:, None, :, None].expand(b, c, h, w))

    def cols(t: Tensor, index: Tensor) -> Tensor:
        return t.gather(3, index[:, None, None, :].expand(b, c, h, w))

    wy, wx = wy[:, None, :, None], wx[:, None, None, :]
    top, bottom = rows(r0), rows(r1)
    upper = cols(top, c0) * (1 - wx) + cols(top, c1) * wx
    lower = cols(bottom, c0) * (1 - wx) + cols(bottom, c1) * wx
    out = upper * (1 - wy) + lower * wy
    return torch.where(flips[:, None, None, None], out.flip(3), out)


def local_object_reinforcement(x: Tensor, boxes: Tensor, flips: Tensor, apply: Tensor) -> Tensor:
    """IntraQ's per-step augmentation: with one coin per step (``apply``, a 0-d bool tensor) every image becomes
    RHF(RRC(x_i)), else the batch is used as is (IQ:data_generate/distill_data.py:L329-341; HAST's ImageNet
    synthesis the same, HA:data_generate/distill_data.py:L141-151). A ``torch.where``, not a Python branch, so one
    captured graph serves both outcomes."""
    return torch.where(apply.to(x.device), resized_crop(x, boxes, flips), x)


# ----------------------------------------------------------------------------------------------------------------
# One synthesis step's objective per method


@dataclass(frozen=True)
class IntraQSynthesis:
    """IntraQ's synthesis-loss settings (``run_generate_cifar10.sh:L4-11``: ε_t 0.95, m_l 0.05, m_u 0.8;
    CIFAR-100: 0.6, 0.02, 1.0; ImageNet: 1.0, 0.0, 2). The RRC scale (``augMargin``) is the synthesis loop's
    (:class:`dfqbench.blocks.synthesis.SynthesisSettings` ``crop_scale_min``)."""

    target_min: float = 0.95  # targetPro
    margin_lower: float = 0.05  # cosineMargin
    margin_upper: float = 0.8  # cosineMargin_upper


def intraq_synthesis_objective(logits: Tensor, pooled: Tensor, labels: Tensor, targets: Tensor, centroids: Tensor,
                               mask: Tensor, bns: Tensor, cfg: IntraQSynthesis) -> tuple[Tensor, dict[str, Tensor]]:
    """L = BNS + L_SIL + L_MD,lower + L_MD,upper, all weights 1 (IQ:data_generate/distill_data.py:L380-381).

    ``logits`` and ``pooled`` (the teacher's ``final_pool`` output, flattened to (B, D)) come from the teacher's
    forward of the (possibly augmented) batch; ``bns`` from :class:`~dfqbench.blocks.hooks.BNStatisticsLoss` on
    the same forward (its value is the official mean_loss + var_loss)."""
    sil = soft_inception_loss(logits, labels, targets)
    below, above = marginal_distance_loss(pooled.flatten(1), centroids, mask, cfg.margin_lower, cfg.margin_upper)
    total = bns + sil + below + above
    return total, {"bns": bns.detach(), "soft_inception": sil.detach(), "margin_lower": below.detach(),
                   "margin_upper": above.detach()}


@dataclass(frozen=True)
class HastSynthesis:
    """HAST's synthesis-loss settings (``run_generate_cifar10.sh:L8-9``: β 10, γ 2, no augmentation on CIFAR;
    ImageNet β 0.1, γ 0.5 with RRC scale 0.4 at p = 0.5, which the synthesis loop applies). SynQ's synthesis
    without ``--lbns`` is the same."""

    beta: float = 10.0
    gamma: float = 2.0


def hast_synthesis_objective(logits: Tensor, labels: Tensor, bns: Tensor, cfg: HastSynthesis
                             ) -> tuple[Tensor, dict[str, Tensor]]:
    """L = BNS + β·mean((1 − p_y)^γ·CE) (HA:data_generate/distill_data.py:L158-177). SynQ's default synthesis
    (``--lbns`` off, both released scripts) is the same objective (SQ:src/data_generate/distill_data.py:L437-478);
    its TexQ-style ``--lbns`` option is :mod:`dfqbench.blocks.calibration_centers` (``method.lbns`` of ``synq``)."""
    focal = hard_sample_focal_ce(logits, labels, cfg.beta, cfg.gamma)
    return bns + focal, {"bns": bns.detach(), "focal_ce": focal.detach()}
