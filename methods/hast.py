"""HAST (Li et al., CVPR 2023), faithful to lihuantong/HAST @ 83dfc16 (spec newer-methods.md §3; HA = that repo).

Bank (HA:data_generate/distill_data.py:L68-207): IntraQ's engine (20 × 256 images, Adam 0.5, plateau, 1,000 steps)
with L = BNS + β·(1/B)·Σ_i (1 − p_{i,y_i})^γ·CE(T(x_i), y_i), p not detached (L158-177): β = 10, γ = 2 and no
augmentation on CIFAR (``run_generate_cifar10.sh:L8-9``, ``_cifar100.sh``, L136-140); β = 0.1, γ = 0.5 with the
augmentation coin p = 0.5, RRC scale 0.4-1 on ImageNet (``run_generate_imagenet.sh``, L74, L141-151).
Fine-tuning (HA:trainer_direct.py:L203-357): calibration epochs 0-3 on a GDFQ generator (:mod:`methods._direct`);
then per step, with x the cropped bank batch:
L(x) = 8000·KL_bm + L_FA(x), L_FA = λ·Σ_l mean(a_l^S − a_l^T)², a = channel attention of every ``ResUnit.body`` output
(L129-134, L183-190, L235-248); no CE (computed and discarded, L306-307); x' = x + ε·sgn(∇_x L(x)) with the teacher
**not** detached (L304-309); loss = L(x) + L(x') with the teacher under no_grad on x' (L310-317); one SGD step.
Released schedule (``config/*.hocon``, ``run.sh``): 151 × 200 iterations; per-GPU batch 64 (CIFAR) / 4 (ImageNet) on
4 GPUs (DDP, every rank seed 1), i.e. an effective 256 / 16, which the presets use (``train.batch_size=64`` or ``4``
gives the per-GPU value); lr 1e-5 ×0.1 at [20, 40, 60] (CIFAR) / 1e-6 at [100, 200, 350] (ImageNet).

Switches (spec §3.4, §8.5): λ and ε are hard-coded 1000 / 0.01 in ``options.py`` (HA:options.py:L59-61), whatever the
hocon says (CIFAR-100 2000 / 0.02, ImageNet 4000 / 0.01 are dead): ``lambda_eps="hocon"`` uses the hocon's values
instead; ``detach_teacher_in_perturbation=true`` takes the teacher out of the FGSM gradient. The student loss runs
its own forwards (``student_runs_networks``): two student and two teacher forwards and an input-gradient backward
per step, ≈ 2-3× an IntraQ step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dfqbench.blocks.direct_finetune import HastStudentLoss, hast_student_loss
from dfqbench.blocks.direct_synthesis import HastSynthesis, hast_synthesis_objective
from dfqbench.blocks.hooks import BNStatisticsLoss
from dfqbench.blocks.interface import LossTerms, StepContext, register_method
from dfqbench.errors import DfqbenchError
from dfqbench.registry import unknown_choice
from dfqbench.specs.validate import check_real
from dfqbench.methods._direct import (TINY_BANK, DirectConfig, DirectMethod, attention_layer_names, direct_train,
                                      kd_term)

LAMBDA_EPS = ("options", "hocon")
# (λ, ε) each hocon states (HA:config/cifar10_resnet20.hocon:L47-48, cifar100_resnet20.hocon, imagenet.hocon): read by
# nothing in the official code; used only with lambda_eps="hocon"
HOCON_LAMBDA_EPS = {"cifar10": (1000.0, 0.01), "cifar100": (2000.0, 0.02), "imagenet": (4000.0, 0.01)}


@dataclass(frozen=True)
class HastConfig(DirectConfig):
    """HAST's settings (CIFAR-10 release by default; the presets set the dataset's)."""

    aug_prob: float = 0.0  # CIFAR: no augmentation during synthesis (HA:distill_data.py:L136-140)
    aug_scale_min: float = 0.4  # ImageNet's RRC scale (``augMargin`` default, L74)
    beta: float = 10.0  # β of the hard-sample-enhanced inception loss
    gamma: float = 2.0  # γ
    fa_weight: float = 1000.0  # λ of L_FA (HA:options.py:L59-61, hard-coded)
    eps: float = 0.01  # ε of the perturbation (HA:options.py:L59-61, hard-coded)
    lambda_eps: str = "options"  # "options" (faithful: fa_weight/eps) | "hocon" (the dataset's hocon values)
    detach_teacher_in_perturbation: bool = False  # faithful: the FGSM gradient runs through the teacher too

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_eps not in LAMBDA_EPS:
            raise DfqbenchError(unknown_choice("method.lambda_eps", self.lambda_eps, list(LAMBDA_EPS)))
        check_real("method.eps", self.eps, 0.0)
        check_real("method.fa_weight", self.fa_weight, 0.0)

    def synthesis_loss(self) -> dict[str, Any]:
        return {"objective": "hast", "beta": self.beta, "gamma": self.gamma}


class HastObjective:
    """HAST's synthesis loss BNS + β·mean((1 − p_y)^γ·CE) on the (maybe augmented) batch (HA:L158-177)."""

    def __init__(self, teacher: nn.Module, cfg: HastConfig) -> None:
        self.cfg = HastSynthesis(cfg.beta, cfg.gamma)
        self.bns = BNStatisticsLoss(teacher)
        self.terms: dict[str, Tensor] = {}

    def __call__(self, teacher: nn.Module, x: Tensor, labels: Tensor, step: int) -> Tensor:
        self.bns.start()
        logits = teacher(x)
        bns = self.bns.stop()
        loss, self.terms = hast_synthesis_objective(logits, labels, bns, self.cfg)
        return loss

    def remove(self) -> None:
        self.bns.remove()


def lambda_eps_for(cfg: HastConfig, dataset: str, hocon: dict[str, tuple[float, float]], method: str
                   ) -> tuple[float, float]:
    """(λ, ε) the run uses: the config's (``options``, the hard-coded values) or the dataset's hocon values."""
    if cfg.lambda_eps == "options":
        return cfg.fa_weight, cfg.eps
    if dataset not in hocon:
        raise DfqbenchError(f"method.lambda_eps='hocon': no {method} hocon is released for {dataset} (released: "
                            f"{', '.join(hocon)}); use lambda_eps=options with method.fa_weight/method.eps")
    return hocon[dataset]


def hast_synthesis_preset(dataset: str) -> dict[str, Any]:
    """The released synthesis scripts' β, γ and augmentation (module docstring)."""
    if dataset == "imagenet":
        return {"beta": 0.1, "gamma": 0.5, "aug_prob": 0.5, "aug_scale_min": 0.4, "bank_storage": "fp16"}
    return {"beta": 10.0, "gamma": 2.0, "aug_prob": 0.0}


@register_method
class HAST(DirectMethod):
    name = "hast"
    paper = ("Li et al., Hard Sample Matters a Lot in Zero-Shot Quantization, CVPR 2023 (lihuantong/HAST @ 83dfc16; "
             "presets: its hocons × 4 GPUs and synthesis scripts)")
    version = "1"
    config_class = HastConfig
    uses_features = True
    student_runs_networks = True
    HOCON = HOCON_LAMBDA_EPS

    def __init__(self, config: Any, num_classes: int, input_size: int, dataset: str) -> None:
        super().__init__(config, num_classes, input_size, dataset)
        self.fa_weight, self.eps = lambda_eps_for(config, dataset, self.HOCON, self.name)
        self.loss_settings = self.student_loss_settings()  # fixed for the run: built once, not per step

    def student_loss_settings(self) -> HastStudentLoss:
        """The fine-tuning loss's settings from the config and the resolved λ_FA, ε."""
        cfg = self.config
        return HastStudentLoss(cfg.temperature, cfg.kd_weight, self.fa_weight, self.eps,
                               cfg.detach_teacher_in_perturbation)

    @classmethod
    def paper_protocol(cls, dataset: str, model: str, wbits: int, abits: int) -> dict[str, dict[str, Any]]:
        """151 × 200 iterations at the effective batch (module docstring); the tiny test network has no paper:
        CIFAR-10's settings with a bank of 2 × 16 images, 20 steps."""
        method = hast_synthesis_preset(dataset)
        if dataset == "tiny":
            method.update(TINY_BANK)
        return {"train": direct_train(dataset, epochs=151, cifar_lr=1e-5), "method": method, "quant": {}}

    def feature_layers(self, model: nn.Module) -> list[str]:
        return attention_layer_names(model)

    def synthesis_objective(self, teacher: nn.Module, device: torch.device) -> HastObjective:
        return HastObjective(teacher, self.config)

    def student_loss(self, ctx: StepContext) -> tuple[Tensor, LossTerms]:
        """Fine-tuning: L(x) + L(x') (HA:trainer_direct.py:L291-319); a warm-up forward logs 8000·KL_bm + CE."""
        nets = ctx.networks
        assert nets is not None, "HAST's student loss runs the networks itself (student_runs_networks)"
        if not nets.steps_student:
            return kd_term(self.config, ctx.teacher_logits, nets.student(ctx.x)[0], ctx.sample.labels)
        return hast_student_loss(ctx.x, ctx.sample.labels, nets.teacher, nets.student, self.loss_settings)
