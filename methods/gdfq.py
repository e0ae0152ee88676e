"""GDFQ: Generative Low-bitwidth Data Free Quantization (Xu et al., ECCV 2020), faithful to xushoukai/GDFQ.

L_G = CE(T(x), y) + 0.1·L_BNS                       (trainer.py L222-234)
L_Q = α·T²·KL_el(p_T ‖ p_Q) + CE(Q(x), y), T = 20   (trainer.py L106-126; KL averaged over B·C elements)
Schedule: 400 epochs × 200 iterations, batch 200 (CIFAR) / 16 (ImageNet), warm-up 4 / 50 epochs, student
SGD-Nesterov lr 1e-4 / 1e-6, generator Adam 1e-3 (0.5, 0.999), ×0.1 at epochs 100/200/300 (methods.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfqbench.core.generators import build_gdfq_generator
from dfqbench.core.losses import kd_kl_element_mean
from dfqbench.core.plugin import LossTerms, Method, Sample, StepContext, register_method
from dfqbench.errors import DfqbenchError
from dfqbench.registry import unknown_choice

KD_REDUCTIONS = ("element_mean", "batchmean")


@dataclass(frozen=True)
class GDFQConfig:
    latent_dim: int = 100
    bns_weight: float = 0.1  # weight of L_BNS in L_G
    temperature: float = 20.0  # KD temperature T
    kd_weight: float = 1.0  # α
    kd_reduction: str = "element_mean"  # faithful; "batchmean" multiplies the KD term by C (corrected variant)

    def __post_init__(self) -> None:
        if self.kd_reduction not in KD_REDUCTIONS:
            raise DfqbenchError(unknown_choice("method.kd_reduction", self.kd_reduction, list(KD_REDUCTIONS)))


@register_method
class GDFQ(Method):
    name = "gdfq"
    paper = "Xu et al., Generative Low-bitwidth Data Free Quantization, ECCV 2020"
    version = "1"
    config_class = GDFQConfig

    @classmethod
    def paper_protocol(cls, dataset: str, model: str, wbits: int, abits: int) -> dict[str, dict[str, Any]]:
        if dataset == "imagenet":
            train = {"batch_size": 16, "lr_q": 1e-6, "warmup_epochs": 50, "eval_start_epoch": 49}
        else:
            train = {"batch_size": 200, "lr_q": 1e-4, "warmup_epochs": 4}
        return {"train": train, "method": {}, "quant": {}}

    def build_generator(self) -> nn.Module:
        return build_gdfq_generator(self.dataset, self.num_classes, self.input_size, self.config.latent_dim)

    def sample(self, batch_size: int, device: torch.device) -> Sample:
        z = torch.randn(batch_size, self.config.latent_dim, device=device)
        labels = torch.randint(0, self.num_classes, (batch_size,), device=device)
        return Sample(z=z, labels=labels)

    def generator_loss(self, ctx: StepContext) -> tuple[torch.Tensor, LossTerms]:
        ce = F.cross_entropy(ctx.teacher_logits, ctx.sample.labels)
        bns = ctx.bns_loss
        return ce + self.config.bns_weight * bns, {"ce": ce, "bns": bns}

    def student_loss(self, ctx: StepContext) -> tuple[torch.Tensor, LossTerms]:
        cfg = self.config
        kd = kd_kl_element_mean(ctx.teacher_logits, ctx.student_logits, cfg.temperature)
        if cfg.kd_reduction == "batchmean":
            kd = kd * ctx.num_classes
        kd = cfg.kd_weight * cfg.temperature**2 * kd
        ce = F.cross_entropy(ctx.student_logits, ctx.sample.labels)
        return kd + ce, {"kd": kd, "ce": ce}
