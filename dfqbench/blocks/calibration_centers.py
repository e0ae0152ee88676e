"""SynQ's TexQ-style calibration centers and L-BNS (``--lbns``), re-implemented from snudm-starlab/SynQ @ 8681480
(SQ:src/data_generate/distill_data.py; spec newer-methods.md §4.1).

- **Centers** (``generate_calib_centers``, L53-198): before the bank, ⌈C/B⌉ batches of B images labelled
  i·B + j, the last one padded with class 0 (L110-128), each optimised from N(0, 1) by Adam(0.5) with
  ReduceLROnPlateau(patience 50, min_lr **0.05**) for 1,500 steps (L111-117, L131) under
  5·mean CE + (1/L)·Σ_l w_l·[MSE(μ_l, μ̂_l) + MSE(σ²_l, σ̂²_l)], w_l = 0.2 for the first (L + 2)//2 − 2 BN layers,
  1.1 for the rest (L143-162). No augmentation (L132-135).
- **Pooled statistics** (L340-381): each center batch forwarded once; per BN layer the sample-weighted mean of the
  batch means and the law of total variance (within + between). As released, the first batch's variance enters
  the within-term **unweighted** (L357: ``var`` where later batches add ``var·n``, L362), i.e. divided by the
  total count: ``variance="official"``; ``variance="pooled"`` weights it like the others.
- **L-BNS** (L457-475): Σ_{l ≥ (L+2)//2−2} [MSE(μ_l, μ^c_l) + MSE(σ²_l, σ^{c2}_l)] / (L·B) on the deep layers, and
  the synthesis loss 0.4·BNS + β·(1 − p)^γ·CE + 0.02·L-BNS.

Deviations (no formula changes): the official loop makes C//B + 1 batches, so when B divides C its last batch is
all class 0 and never used (L110 vs L343); only the ⌈C/B⌉ used batches are made here. Pixels are drawn from a
``torch.Generator`` per (seed, center batch) (:func:`center_generator`), not torch's global one. The official
center hooks stay registered for the rest of the run (they only collect; no number depends on them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfqbench.blocks.direct_synthesis import hard_sample_focal_ce
from dfqbench.blocks.synthesis import optimise_pixels
from dfqbench.errors import DfqbenchError

CENTER_LR = 0.5  # SQ:distill_data.py:L113
CENTER_PATIENCE = 50  # L114-117 (factor: torch's default 0.1)
CENTER_FACTOR = 0.1
CENTER_MIN_LR = 0.05  # L115
SHALLOW_WEIGHT, DEEP_WEIGHT = 0.2, 1.1  # BNS layer weights of the center loss (L148-157)
VARIANCES = ("official", "pooled")


def deep_layer_start(num_layers: int) -> int:
    """The index of the first "deep" BN layer: (L + 2)//2 − 2 (SQ:distill_data.py:L148, L461); 0 when that is
    negative (L = 1: the official ``n >= -1`` takes every layer)."""
    return max(0, (num_layers + 2) // 2 - 2)


def center_labels(num_classes: int, batch_size: int) -> list[Tensor]:
    """Labels of the ⌈C/B⌉ center batches: i·B + j, the last batch padded with class 0 (SQ:distill_data.py
    L119-128, L343)."""
    batches = []
    for start in range(0, num_classes, batch_size):
        labels = torch.arange(start, min(start + batch_size, num_classes))
        batches.append(F.pad(labels, (0, batch_size - len(labels))))
    return batches


def center_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of center batch ``index`` under ``seed`` (63 bits of a sha256; apart from the bank's)."""
    digest = hashlib.sha256(f"dfqbench-calibration-centers:{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass
class LayerStatistics:
    """Per BN layer (forward order): batch mean and biased variance of its input, and its running statistics."""

    means: list[Tensor]
    variances: list[Tensor]
    running_means: list[Tensor]
    running_variances: list[Tensor]


class BNBatchStatistics:
    """Forward pre-hooks on every ``nn.BatchNorm2d``: between :meth:`start` and :meth:`stop`, the input's per-channel
    mean and biased variance over (N, H, W) (SQ:distill_data.py:L94-102, L270-285). Call :meth:`remove` when done."""

    def __init__(self, model: nn.Module) -> None:
        self.enabled = False
        self.stats = LayerStatistics([], [], [], [])
        layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not layers:
            raise DfqbenchError(f"calibration centers need BatchNorm2d layers; {type(model).__name__} has none")
        self._handles = [m.register_forward_pre_hook(self._record) for m in layers]

    def _record(self, module: nn.BatchNorm2d, inputs: tuple[Tensor, ...]) -> None:
        if not self.enabled:
            return
        var, mean = torch.var_mean(inputs[0], dim=(0, 2, 3), correction=0)
        self.stats.means.append(mean)
        self.stats.variances.append(var)
        self.stats.running_means.append(module.running_mean)
        self.stats.running_variances.append(module.running_var)

    def start(self) -> None:
        self.stats = LayerStatistics([], [], [], [])
        self.enabled = True

    def stop(self) -> LayerStatistics:
        self.enabled = False
        return self.stats

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _layer_mse(stats: LayerStatistics, means: list[Tensor], variances: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    return [(F.mse_loss(m, t.detach()), F.mse_loss(v, s.detach()))
            for m, v, t, s in zip(stats.means, stats.variances, means, variances)]


def bns_loss(stats: LayerStatistics) -> Tensor:
    """(1/L)·Σ_l MSE(μ_l, μ̂_l) + (1/L)·Σ_l MSE(σ²_l, σ̂²_l) (SQ:distill_data.py:L449-455, L469-470)."""
    terms = _layer_mse(stats, stats.running_means, stats.running_variances)
    return (torch.stack([m for m, _ in terms]).sum() + torch.stack([v for _, v in terms]).sum()) / len(terms)


def center_bns_loss(stats: LayerStatistics) -> Tensor:
    """The centers' layer-weighted BNS: (1/L)·Σ_l w_l·[MSE(μ_l, μ̂_l) + MSE(σ²_l, σ̂²_l)], w_l = 0.2 below
    :func:`deep_layer_start`, else 1.1 (SQ:distill_data.py:L145-160)."""
    terms = _layer_mse(stats, stats.running_means, stats.running_variances)
    start = deep_layer_start(len(terms))
    weighted = [(SHALLOW_WEIGHT if n < start else DEEP_WEIGHT) * (m + v) for n, (m, v) in enumerate(terms)]
    return torch.stack(weighted).sum() / len(terms)


def center_loss(logits: Tensor, labels: Tensor, stats: LayerStatistics, ce_weight: float
                ) -> tuple[Tensor, dict[str, Tensor]]:
    """ce_weight·mean CE + :func:`center_bns_loss` (SQ:distill_data.py:L142-162, ``beta_ce = 5``)."""
    ce = ce_weight * F.cross_entropy(logits, labels)
    bns = center_bns_loss(stats)
    return bns + ce, {"center_bns": bns.detach(), "center_ce": ce.detach()}


def optimise_center_batch(teacher: nn.Module, recorder: BNBatchStatistics, x0: Tensor, labels: Tensor, steps: int,
                          ce_weight: float) -> tuple[Tensor, list[float]]:
    """One center batch: Adam(0.5) + plateau(50, min_lr 0.05) for ``steps`` steps on :func:`center_loss`
    (SQ:distill_data.py:L110-171), through the shared :func:`dfqbench.blocks.synthesis.optimise_pixels`."""

    def loss_at(x: Tensor, step: int) -> Tensor:
        recorder.start()
        logits = teacher(x)
        return center_loss(logits, labels, recorder.stop(), ce_weight)[0]

    return optimise_pixels(x0, loss_at, steps, CENTER_LR, CENTER_PATIENCE, CENTER_FACTOR, CENTER_MIN_LR)


def synthesise_centers(teacher: nn.Module, seed: int, num_classes: int, batch_size: int, image_size: int,
                       steps: int, ce_weight: float, device: torch.device) -> list[Tensor]:
    """All center batches (:func:`center_labels`), each from N(0, 1) pixels drawn by :func:`center_generator`;
    the teacher in eval mode, pixels in its dtype on ``device``."""
    dtype = next(teacher.parameters()).dtype
    recorder = BNBatchStatistics(teacher)
    try:
        centers = []
        for index, labels in enumerate(center_labels(num_classes, batch_size)):
            x0 = torch.randn(batch_size, 3, image_size, image_size, generator=center_generator(seed, index))
            images, _ = optimise_center_batch(teacher, recorder, x0.to(device, dtype), labels.to(device), steps,
                                              ce_weight)
            centers.append(images)
        return centers
    finally:
        recorder.remove()


def pooled_statistics(teacher: nn.Module, centers: list[Tensor], variance: str = "official"
                      ) -> tuple[list[Tensor], list[Tensor]]:
    """Per BN layer, the centers' pooled mean E_j[μ_j] and variance E_j[σ²_j] + E_j[μ_j²] − E_j[μ_j]², weighted by
    batch size (law of total variance; SQ:distill_data.py:L346-381). ``variance="official"``: the first batch's
    σ² enters unweighted (L357 against L362), as released; ``"pooled"``: weighted like the others."""
    if variance not in VARIANCES:
        raise DfqbenchError(f"invalid variance={variance!r}: choose one of {', '.join(VARIANCES)}")
    recorder = BNBatchStatistics(teacher)
    try:
        sums: list[Tensor] = []
        within: list[Tensor] = []
        squares: list[Tensor] = []
        total = 0
        for j, batch in enumerate(centers):
            recorder.start()
            with torch.no_grad():
                teacher(batch)
            stats = recorder.stop()
            n = batch.shape[0]
            first_weight = 1 if variance == "official" else n
            if j == 0:
                sums = [m * n for m in stats.means]
                within = [v * first_weight for v in stats.variances]
                squares = [m ** 2 * n for m in stats.means]
            else:
                for idx, (m, v) in enumerate(zip(stats.means, stats.variances)):
                    sums[idx] = sums[idx] + m * n
                    within[idx] = within[idx] + v * n
                    squares[idx] = squares[idx] + m ** 2 * n
            total += n
    finally:
        recorder.remove()
    means = [s / total for s in sums]
    variances = [w / total + (q / total - m ** 2) for w, q, m in zip(within, squares, means)]
    return means, variances


def lbns_loss(stats: LayerStatistics, means: list[Tensor], variances: list[Tensor], batch_size: int) -> Tensor:
    """L-BNS = Σ_{l ≥ (L+2)//2−2} [MSE(μ_l, μ^c_l) + MSE(σ²_l, σ^{c2}_l)] / (L·B) against the centers' pooled
    statistics (SQ:distill_data.py:L457-467; B = ``len(labels)``, the batch size)."""
    if len(means) != len(stats.means):
        raise DfqbenchError(f"L-BNS: {len(means)} pooled layers for a forward through {len(stats.means)} BN layers")
    terms = _layer_mse(stats, means, variances)
    deep = torch.stack([m + v for m, v in terms[deep_layer_start(len(terms)):]]).sum()
    return deep / (len(terms) * batch_size)


def lbns_synthesis_objective(logits: Tensor, labels: Tensor, stats: LayerStatistics, means: list[Tensor],
                             variances: list[Tensor], beta: float, gamma: float, bns_weight: float,
                             lbns_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """SynQ's ``--lbns`` synthesis loss: bns_weight·BNS + β·mean((1 − p_y)^γ·CE) + lbns_weight·L-BNS, released
    0.4 and 0.02 (SQ:distill_data.py:L447, L457-475)."""
    bns = bns_loss(stats)
    focal = hard_sample_focal_ce(logits, labels, beta, gamma)
    lbns = lbns_loss(stats, means, variances, labels.shape[0])
    total = bns_weight * bns + focal + lbns_weight * lbns
    return total, {"bns": bns.detach(), "focal_ce": focal.detach(), "lbns": lbns.detach()}
