"""GDFQ: Generative Low-bitwidth Data Free Quantization (Xu et al., ECCV 2020), faithful to xushoukai/GDFQ.

L_G = CE(T(x), y) + 0.1·L_BNS                       (trainer.py L222-234)
L_Q = α·T²·KL_el(p_T ‖ p_Q) + CE(Q(x), y), T = 20   (trainer.py L106-126; KL averaged over B·C elements)
Schedule: 400 epochs × 200 iterations, batch 200 (CIFAR) / 16 (ImageNet), warm-up 4 / 50 epochs, student
SGD-Nesterov lr 1e-4 / 1e-6, generator Adam 1e-3 (0.5, 0.999), ×0.1 at epochs 100/200/300 (trainer.py L48-78).

Optional, off by default: Qimera's superposed samples on GDFQ's generator (``superposed_prob`` > 0; the
Qimera paper's "GDFQ + superposed samples"; dfqbench.blocks.superposed). Both CE terms then use the soft
target ỹ. With ``superposed_prob = 0`` GDFQ samples, generates and computes its losses exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dfqbench.blocks.generators import build_gdfq_generator
from dfqbench.blocks.losses import kd_kl_element_mean
from dfqbench.blocks.interface import LossTerms, Method, Sample, StepContext, register_method
from dfqbench.blocks.superposed import (
    check_superposed_settings, class_cross_entropy, generate_gdfq_superposed, superposed_enabled, superposed_sample,
)
from dfqbench.errors import DfqbenchError
from dfqbench.specs.validate import check_positive
from dfqbench.registry import unknown_choice

KD_REDUCTIONS = ("element_mean", "batchmean")


@dataclass(frozen=True)
class GDFQConfig:
    latent_dim: int = 100
    bns_weight: float = 0.1  # weight of L_BNS in L_G
    temperature: float = 20.0  # KD temperature T
    kd_weight: float = 1.0  # α
    kd_reduction: str = "element_mean"  # faithful; "batchmean" multiplies the KD term by C (corrected variant)
    superposed_prob: float = 0.0  # Qimera's superposed batches with this probability; 0 = off (GDFQ)
    superposed_k: int = 2  # labels mixed per sample in a superposed batch
    cbn_divide_by_k: bool = True  # ImageNet CBN mix of γ, β: Qimera's mean over K; False = Σ λ_k γ_{y_k}

    def __post_init__(self) -> None:
        if self.kd_reduction not in KD_REDUCTIONS:
            raise DfqbenchError(unknown_choice("method.kd_reduction", self.kd_reduction, list(KD_REDUCTIONS)))
        check_positive("method.temperature", self.temperature)
        check_superposed_settings(self.superposed_prob, self.superposed_k)


@register_method
class GDFQ(Method):
    name = "gdfq"
    paper = "Xu et al., Generative Low-bitwidth Data Free Quantization, ECCV 2020"
    version = "2"  # 2: ema_gdfq tracker bit-exact with the official float32 arithmetic (golden tests)
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
        if superposed_enabled(self.config):
            return superposed_sample(self.config, batch_size, self.num_classes, self.config.latent_dim, device)
        z = torch.randn(batch_size, self.config.latent_dim, device=device)
        labels = torch.randint(0, self.num_classes, (batch_size,), device=device)
        return Sample(z=z, labels=labels)

    def generate(self, generator: nn.Module, sample: Sample) -> torch.Tensor:
        return generate_gdfq_superposed(generator, sample, self.config.cbn_divide_by_k)

    def generator_loss(self, ctx: StepContext) -> tuple[torch.Tensor, LossTerms]:
        ce = class_cross_entropy(ctx.teacher_logits, ctx.sample)
        bns = ctx.bns_loss
        return ce + self.config.bns_weight * bns, {"ce": ce, "bns": bns}

    def student_loss(self, ctx: StepContext) -> tuple[torch.Tensor, LossTerms]:
        cfg = self.config
        kd = kd_kl_element_mean(ctx.teacher_logits, ctx.student_logits, cfg.temperature)
        if cfg.kd_reduction == "batchmean":
            kd = kd * ctx.num_classes
        kd = cfg.kd_weight * cfg.temperature**2 * kd
        ce = class_cross_entropy(ctx.student_logits, ctx.sample)
        return kd + ce, {"kd": kd, "ce": ce}
