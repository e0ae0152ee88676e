"""The game diagnostics of AdaSG (Definition 3, Figure 6), measured between the steps of logging iterations.

A :class:`GameProbe` is a :class:`~dfqbench.core.step.StepObserver`: the step calls it before the first step
(with the iteration's first sample), after the G step and after the run of Q steps. Each call measures, on
x = G(z, y) for that first sample with the networks as they are at that moment, R = E[1 − H(p_ds)/log C]
and the disagreement entropy H(softmax(t − s)). The forwards are side-effect free
(:func:`~dfqbench.core.diagnostics.probing`): no range update, no BN statistics, no random numbers, so
logging never changes a trained number.

GDFQ's order (G then Q): Δ_g = R_after_g − R_before, Δ_q = R_after_g − R_after_q, BG = R_after_q − R_before.
ZAQ's order (Q steps then G): Δ_q = R_before − R_after_q, Δ_g = R_after_g − R_after_q, BG = R_after_g −
R_before. A method without a G step (ZeroQ) has R_after_g = R_before. H_g and H_q are measured right after
the G step and after the Q steps.
"""

from __future__ import annotations

import torch
from torch import nn

from dfqbench.core.diagnostics import probing
from dfqbench.blocks.losses import disagreement_entropy, game_value
from dfqbench.blocks.interface import Method, Sample
from dfqbench.core.step import Batch, StepObserver
from dfqbench.quant import QuantAct


class GameProbe(StepObserver):
    """R and H before and after the steps of one iteration; :meth:`values` gives the logged point values."""

    def __init__(self, method: Method, generator: nn.Module, teacher: nn.Module, student: nn.Module,
                 quantizers: list[QuantAct]) -> None:
        self.method, self.generator, self.teacher, self.student = method, generator, teacher, student
        self.quantizers = quantizers
        self._sample: Sample | None = None
        self._measured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._order: list[str] = []

    def measure(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, mean H) on G(z, y) of the probe sample, with no side effect on the run."""
        assert self._sample is not None, "begin() first"
        with probing(self.quantizers, self.generator, self.student):
            x = self.method.generate(self.generator, self._sample)
            t, s = self.teacher(x), self.student(x)
        return game_value(t, s), disagreement_entropy(t, s).mean()

    def begin(self, sample: Sample) -> None:
        self._sample, self._order = sample, []
        self._measured = {"before": self.measure()}

    def after_generator(self, batch: Batch) -> None:
        self._measured["g"] = self.measure()
        self._order.append("g")

    def after_students(self) -> None:
        self._measured["q"] = self.measure()
        self._order.append("q")

    def values(self) -> dict[str, torch.Tensor]:
        """The point values of this iteration: R before/after each step kind, Δ_g, Δ_q, the Balance Gap, H_g, H_q."""
        before = self._measured["before"]
        after_g = self._measured.get("g", before)
        after_q = self._measured["q"]
        r0, (r_g, h_g), (r_q, h_q) = before[0], after_g, after_q
        if self._order[:1] == ["q"] and "g" in self._order:  # ZAQ's order: Q steps first, then G
            delta_q, delta_g, gap = r0 - r_q, r_g - r_q, r_g - r0
        else:
            delta_g, delta_q, gap = r_g - r0, r_g - r_q, r_q - r0
        return {"H_g": h_g, "H_q": h_q, "R_before": r0, "R_after_g": r_g, "R_after_q": r_q,
                "delta_g": delta_g, "delta_q": delta_q, "balance_gap": gap}
