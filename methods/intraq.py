"""IntraQ (Zhong et al., CVPR 2022), faithful to zysxmu/IntraQ @ 5228f76 (spec newer-methods.md §2; IQ = that repo).

Bank (IQ:data_generate/distill_data.py:L180-419): 20 batches of 256 images (4 groups × 5), each from N(0, 1) by
Adam(0.5) + plateau(50, 1e-4) for 1,000 steps, with probability 0.5 per step every image replaced by RHF(RRC(x),
scale 0.5-1); L = BNS + L_SIL + L_MD (all weights 1, L380-381):
- soft inception loss (1/B)·Σ (p_{y_i} − t_i)², t_i ~ U(ε_t, 1) for a random half of the batch, else 1 (L51-91, L354-359);
- marginal distance: hinges on d_i = 1 − cos(f_i, c_{y_i}) below m_l and above m_u, f = the teacher's ``final_pool``
  output, c_y = the mean feature of all earlier images of class y (L93-177, L274-299, L361-369, L402-405);
- settings per dataset (``run_generate_cifar10.sh:L4-11``, ``_cifar100.sh``, ``run_generate.sh``).
Fine-tuning (IQ:trainer_direct.py:L182-303): calibration epochs 0-3 on a GDFQ generator (:mod:`methods._direct`), then
L_Q = 8000·KL_bm(p_T^20 ‖ p_S^20) + CE(S(x), y) on the bank with per-image crop + flip; 151 × 200 iterations,
batch 256 / 16, lr 1e-4 ×0.1 at [20, 40, 60] (CIFAR hocons) / 1e-6 at [100, 200, 350] (imagenet.hocon).

Switch: ``calibration="bank"`` calibrates the ranges on the bank instead of the calibration generator (spec §8.5).
Known instability (IntraQ #3; DB:methods/zeroq.py:L22-28): the 8000×KL at lr 1e-4 can diverge on CIFAR; the trainer
then stops and the record says ``diverged``, keeping the best epoch before it, as IntraQ's loop would report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dfqbench.blocks.direct_synthesis import (ClassCentroids, IntraQSynthesis, draw_soft_targets,
                                              intraq_synthesis_objective)
from dfqbench.blocks.features import FeatureTap
from dfqbench.blocks.hooks import BNStatisticsLoss
from dfqbench.blocks.interface import LossTerms, StepContext, register_method
from dfqbench.errors import DfqbenchError
from dfqbench.specs.validate import check_real
from dfqbench.methods._direct import TINY_BANK, DirectConfig, DirectMethod, direct_train, kd_term

# (ε_t, m_l, m_u) of the released synthesis scripts (IQ:data_generate/run_generate_cifar10.sh:L4-11,
# run_generate_cifar100.sh, run_generate.sh — the last for resnet18 and, per the README, the MobileNets)
SYNTHESIS_PRESETS = {"cifar10": (0.95, 0.05, 0.8), "cifar100": (0.6, 0.02, 1.0), "imagenet": (1.0, 0.0, 2.0)}


@dataclass(frozen=True)
class IntraQConfig(DirectConfig):
    target_min: float = 0.95  # ε_t (``targetPro``)
    margin_lower: float = 0.05  # m_l (``cosineMargin``)
    margin_upper: float = 0.8  # m_u (``cosineMargin_upper``)
    centroid_chunk: int = 64  # centroids forward batches in chunks of 64, dropping a last incomplete one (L158); 0 = all

    def __post_init__(self) -> None:
        super().__post_init__()
        check_real("method.target_min", self.target_min, 0.0, 1.0, high_open=False)  # ImageNet: 1.0 (one-hot)
        if self.centroid_chunk < 0:
            raise DfqbenchError(f"invalid method.centroid_chunk={self.centroid_chunk!r}: must be >= 0 (0 = all images)")

    def synthesis_loss(self) -> dict[str, Any]:
        return {"objective": "intraq", "target_min": self.target_min, "margin_lower": self.margin_lower,
                "margin_upper": self.margin_upper, "centroid_chunk": self.centroid_chunk}


def final_pool_name(model: nn.Module) -> str:
    """The module whose output is IntraQ's feature f: the one named ``*final_pool*`` (IQ:distill_data.py:L226-233)."""
    names = [name for name, _ in model.named_modules() if "final_pool" in name.rsplit(".", 1)[-1]]
    if len(names) != 1:
        raise DfqbenchError(f"IntraQ's marginal distance needs one module named final_pool in {type(model).__name__}; "
                            f"found {names or 'none'}")
    return names[0]


class IntraQObjective:
    """IntraQ's synthesis loss with its state: the batch's soft targets (drawn once per batch from the batch's
    generator) and the class centroids of every earlier batch, updated with each finished batch as stored."""

    def __init__(self, teacher: nn.Module, cfg: IntraQConfig, num_classes: int, input_size: int,
                 device: torch.device) -> None:
        self.cfg = IntraQSynthesis(cfg.target_min, cfg.margin_lower, cfg.margin_upper)
        self.bns = BNStatisticsLoss(teacher)
        self.tap = FeatureTap(teacher, [final_pool_name(teacher)])
        dtype = next(teacher.parameters()).dtype
        with torch.no_grad():  # the feature width (64 for ResNet-20, 512 for ResNet-18); eval mode: no side effect
            probe = torch.zeros(2, 3, input_size, input_size, device=device, dtype=dtype)
            dim = self.tap(probe)[1][0].flatten(1).shape[1]
        self.centroids = ClassCentroids(num_classes, dim, device, dtype, chunk=cfg.centroid_chunk or None)
        self.targets: Tensor | None = None
        self.lookup: tuple[Tensor, Tensor] | None = None
        self.terms: dict[str, Tensor] = {}

    def begin_batch(self, index: int, labels: Tensor, generator: torch.Generator) -> None:
        self.targets = draw_soft_targets(labels.cpu(), self.cfg.target_min, generator).to(labels.device)
        self.lookup = self.centroids.lookup(labels)  # fixed during the batch (L274-299)

    def __call__(self, teacher: nn.Module, x: Tensor, labels: Tensor, step: int) -> Tensor:
        assert self.targets is not None and self.lookup is not None, "begin_batch() first"
        self.bns.start()
        logits, (pooled,) = self.tap(x)
        bns = self.bns.stop()
        loss, self.terms = intraq_synthesis_objective(logits, pooled.flatten(1), labels, self.targets,
                                                      *self.lookup, bns, self.cfg)
        return loss

    def end_batch(self, index: int, images: Tensor, labels: Tensor) -> None:
        with torch.no_grad():
            _, (pooled,) = self.tap(images)
        self.centroids.update(pooled.flatten(1), labels)

    def remove(self) -> None:
        self.bns.remove()
        self.tap.remove()


@register_method
class IntraQ(DirectMethod):
    name = "intraq"
    paper = ("Zhong et al., IntraQ: Learning Synthetic Images with Intra-Class Heterogeneity for Zero-Shot Network "
             "Quantization, CVPR 2022 (zysxmu/IntraQ @ 5228f76; presets: its hocons and synthesis scripts)")
    version = "1"
    config_class = IntraQConfig

    @classmethod
    def paper_protocol(cls, dataset: str, model: str, wbits: int, abits: int) -> dict[str, dict[str, Any]]:
        """151 × 200 iterations (cifar10_resnet20.hocon:L12-21, imagenet.hocon) and the dataset's synthesis script.
        The tiny test network has no paper: CIFAR-10's settings with a bank of 2 × 16 images, 20 steps."""
        target_min, lower, upper = SYNTHESIS_PRESETS.get(dataset, SYNTHESIS_PRESETS["cifar10"])
        method: dict[str, Any] = {"target_min": target_min, "margin_lower": lower, "margin_upper": upper}
        if dataset == "imagenet":
            method["bank_storage"] = "fp16"
        if dataset == "tiny":
            method.update(TINY_BANK)
        return {"train": direct_train(dataset, epochs=151, cifar_lr=1e-4), "method": method, "quant": {}}

    def synthesis_objective(self, teacher: nn.Module, device: torch.device) -> IntraQObjective:
        return IntraQObjective(teacher, self.config, self.num_classes, self.input_size, device)

    def student_loss(self, ctx: StepContext) -> tuple[Tensor, LossTerms]:
        """L_Q = 8000·KL_bm + CE on the stored sampled labels (IQ:trainer_direct.py:L124-128, L260-263)."""
        return kd_term(self.config, ctx.teacher_logits, ctx.student_logits, ctx.sample.labels)
