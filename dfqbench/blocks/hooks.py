"""Forward hooks on the teacher's BatchNorm layers: the BNS loss of the GDFQ lineage (GDFQ trainer.py L166-241)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BNStatisticsLoss:
    """Records, per teacher BN layer, the batch statistics of its input and compares them to the running ones.

    L_BNS = (1/L) · Σ_l [MSE(μ_l, running_mean_l) + MSE(σ²_l, running_var_l)], where μ_l and σ²_l are the
    per-channel mean and **biased** variance over (N, H, W) of the l-th BN's input (GDFQ trainer.py
    L200-234). Hooks record only while ``enabled`` is True, so diagnostic forwards leave no trace.
    """

    def __init__(self, teacher: nn.Module) -> None:
        self.layers = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
        self.enabled = False
        self._terms: list[torch.Tensor] = []
        self._handles = [layer.register_forward_pre_hook(self._record) for layer in self.layers]

    def _record(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        if not self.enabled:
            return
        x = inputs[0]
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        self._terms.append(F.mse_loss(mean, module.running_mean) + F.mse_loss(var, module.running_var))

    def start(self) -> None:
        """Begin recording a forward pass (clears what an earlier pass left)."""
        self._terms = []
        self.enabled = True

    def stop(self) -> torch.Tensor:
        """Stop recording and return the mean over BN layers of the recorded terms."""
        self.enabled = False
        if not self._terms:
            raise RuntimeError("BNStatisticsLoss recorded nothing: the teacher has no BatchNorm2d layer")
        loss = torch.stack(self._terms).mean()
        self._terms = []
        return loss

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
