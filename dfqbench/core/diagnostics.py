"""Side-effect-free probe forwards and sync-free metric accumulation for the trainer's diagnostics.

A probe forward (used to measure R before/after the G and Q steps for the Balance Gap, AdaSG paper,
Definition 3) must not change the run: it updates no activation range, no BN running statistic and no
teacher BN-loss record, and draws no random numbers. So diagnostics can be switched on or off without
changing a single trained weight.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

from dfqbench.quant import QuantAct


@contextlib.contextmanager
def probing(quantizers: list[QuantAct], *modules: nn.Module) -> Iterator[None]:
    """No grad, activation ranges frozen, and BN layers in train mode prevented from updating their buffers."""
    saved_ranges = [q.update_ranges for q in quantizers]
    bns = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_tracking = [bn.track_running_stats for bn in bns]
    for q in quantizers:
        q.update_ranges = False
    for bn in bns:
        if bn.training:  # in train mode this makes BN use batch statistics without touching its buffers
            bn.track_running_stats = False
    try:
        with torch.no_grad():
            yield
    finally:
        for q, value in zip(quantizers, saved_ranges):
            q.update_ranges = value
        for bn, value in zip(bns, saved_tracking):
            bn.track_running_stats = value


class WindowMeans:
    """Running sums of detached scalar tensors on the device; read back with one host sync per window."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._points: dict[str, torch.Tensor] = {}

    def add(self, prefix: str, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            key = f"{prefix}{name}"
            value = value.detach().float()
            self._sums[key] = self._sums[key] + value if key in self._sums else value
            self._counts[key] = self._counts.get(key, 0) + 1

    def point(self, terms: dict[str, torch.Tensor]) -> None:
        """Values measured once at the logged iteration (not averaged)."""
        self._points.update({k: v.detach().float() for k, v in terms.items()})

    def flush(self) -> dict[str, float]:
        """Means over the window plus point values as Python floats (one device→host transfer), then reset."""
        keys = list(self._sums) + list(self._points)
        if not keys:
            return {}
        tensors = [self._sums[k] / self._counts[k] for k in self._sums] + list(self._points.values())
        values = torch.stack([t.reshape(()) for t in tensors]).tolist()
        self._sums, self._counts, self._points = {}, {}, {}
        return dict(zip(keys, values))


def non_finite(values: dict[str, float]) -> list[str]:
    """Names of logged values that are NaN or infinite (divergence)."""
    return [k for k, v in values.items() if not math.isfinite(v)]
