"""GDFQ plus one generator loss term, DAFL's information entropy: a complete dfqbench method plugin.

L_G = CE(T(x), y) + 0.1·L_BNS + β·L_ie,   L_ie = Σ_c p̄_c·log10 p̄_c,   p̄ = batch mean of softmax(T(x))

L_ie is the negative entropy of the teacher's mean prediction over the generated batch: minimising it
spreads the batch over the classes (Chen et al., Data-Free Learning of Student Networks, ICCV 2019; the
official DAFL_train.py computes it with log10, kept here). β = ``method.ie_weight`` (default 5.0, our
choice; 0 gives GDFQ's loss). Everything else (generator, sampling, L_Q, presets) is GDFQ's, inherited.

No decorator: the entry point ``gdfq_ie`` in pyproject.toml registers the class under that name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dfqbench.blocks.interface import LossTerms, StepContext
from dfqbench.methods.gdfq import GDFQ, GDFQConfig
from dfqbench.specs.validate import check_real


@dataclass(frozen=True)
class GDFQIEConfig(GDFQConfig):
    ie_weight: float = 5.0  # β, the weight of L_ie in L_G

    def __post_init__(self) -> None:
        super().__post_init__()
        check_real("method.ie_weight", self.ie_weight, 0.0)


def information_entropy(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Σ_c p̄_c·log10 p̄_c of the batch-mean softmax (DAFL's loss_information_entropy), −log10 C at best;
    xlogy makes a class whose probability underflows to 0 count 0 (DAFL's p·log10 p gives NaN there)."""
    mean = teacher_logits.softmax(dim=1).mean(dim=0)
    return torch.special.xlogy(mean, mean).sum() / math.log(10.0)


class GDFQIE(GDFQ):
    paper = "GDFQ (Xu et al., ECCV 2020) + the information-entropy loss of DAFL (Chen et al., ICCV 2019)"
    version = "1"
    config_class = GDFQIEConfig

    def generator_loss(self, ctx: StepContext) -> tuple[torch.Tensor, LossTerms]:
        loss, terms = super().generator_loss(ctx)
        ie = information_entropy(ctx.teacher_logits)
        return loss + self.config.ie_weight * ie, {**terms, "ie": ie}
