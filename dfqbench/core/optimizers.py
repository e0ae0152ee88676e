"""A run's optimizers and learning-rate schedules, built from the method and the schedule alone.

G: the method's ``generator_optimizer`` (GDFQ: Adam(lr_G, betas), ``trainer.py`` L48-78) or a stand-in that
keeps schedulers and checkpoints uniform when the method trains no generator. Q: SGD with momentum,
Nesterov and weight decay from :class:`~dfqbench.specs.TrainConfig` (GDFQ ``trainer.py`` L58-66). Both step
their learning rate by ``lr_gamma`` at their milestones (MultiStepLR, once per epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dfqbench.blocks.interface import G_STEP, Method
from dfqbench.specs import TrainConfig


@dataclass
class Optimizers:
    """G's and Q's optimizers and their schedules."""

    opt_g: torch.optim.Optimizer
    opt_q: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.MultiStepLR
    sched_q: torch.optim.lr_scheduler.MultiStepLR


class NoOptimizer(torch.optim.SGD):
    """Stands in for G's optimizer when a method trains no generator (keeps schedulers and checkpoints uniform)."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(1, requires_grad=True)], lr=0.0)


def build_optimizers(method: Method, generator: nn.Module, student: nn.Module, cfg: TrainConfig) -> Optimizers:
    """The optimizers and schedules the trainer uses for ``method`` on these networks under ``cfg``."""
    trains_g = method.trains_generator or G_STEP in method.phase_steps(True)  # e.g. IntraQ's calibration generator
    opt_g = method.generator_optimizer(generator, cfg.lr_g, tuple(cfg.g_betas)) if trains_g else NoOptimizer()
    opt_q = torch.optim.SGD(student.parameters(), lr=cfg.lr_q, momentum=cfg.q_momentum, nesterov=cfg.q_nesterov,
                            weight_decay=cfg.q_weight_decay)
    return Optimizers(opt_g, opt_q,
                      torch.optim.lr_scheduler.MultiStepLR(opt_g, list(cfg.milestones_g), cfg.lr_gamma),
                      torch.optim.lr_scheduler.MultiStepLR(opt_q, list(cfg.milestones_q), cfg.lr_gamma))
