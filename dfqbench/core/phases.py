"""The per-epoch phase set-up of the training loop, as functions anyone driving the steps can call.

Phases change between steps, never inside one (a captured step depends on them: ``TrainStep._phase``). Per
epoch (GDFQ ``trainer.py`` L181-241 and its ``main.py`` loop): the generator trains; the student is in train
mode only if the method says so (``student_bn_train``; frozen BN statistics otherwise); activation ranges
update during epochs [0, ``range_update_epochs``) (GDFQ's hard-coded 4) and are frozen after each epoch's
training, so evaluation never moves them.
"""

from __future__ import annotations

from torch import nn

from dfqbench.blocks.interface import Method
from dfqbench.quant import set_range_update
from dfqbench.specs import TrainConfig


def ranges_update_in(epoch: int, cfg: TrainConfig) -> bool:
    """Whether activation ranges update during epoch ``epoch`` (0-based)."""
    return epoch < cfg.range_update_epochs


def start_training_epoch(method: Method, generator: nn.Module, student: nn.Module, epoch: int,
                         cfg: TrainConfig) -> None:
    """Modes and range updates for the training iterations of epoch ``epoch``."""
    generator.train()
    student.train(method.student_bn_train)
    set_range_update(student, ranges_update_in(epoch, cfg))


def start_evaluation(student: nn.Module) -> None:
    """After an epoch's training: ranges frozen and the student in eval mode, for evaluation or a checkpoint."""
    set_range_update(student, False)
    student.eval()
