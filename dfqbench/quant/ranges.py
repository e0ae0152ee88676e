"""Activation ranges read and set through the quantizer, whatever the tracker.

A range is what a :class:`~dfqbench.quant.modules.QuantAct` quantizes with (its ``x_min``/``x_max``); the
tracker keeps any further state (GDFQ's compounding β_t, the bias-corrected EMA's raw averages) consistent
when a range is set (:meth:`~dfqbench.quant.trackers.RangeTracker.set_range`). For ``minmax``, a stored range
with lo == hi still means ZeroQ's fallback to each batch's own min/max at forward time.

Meant for code driving the quantizer from outside a run: an equivalence check against an official loop that
copies its ranges in, or a calibration done elsewhere.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from dfqbench.errors import DfqbenchError
from dfqbench.quant.modules import QuantAct


def activation_ranges(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Every activation quantizer's range as ``{module name: (lo, hi)}``, in ``named_modules()`` order.
    Reads the device once per quantizer (call between steps, not inside one)."""
    return {name: (float(act.x_min), float(act.x_max))
            for name, act in model.named_modules() if isinstance(act, QuantAct)}


def set_activation_ranges(model: nn.Module, ranges: Mapping[str, tuple[float, float]]) -> None:
    """Set the ranges of the named activation quantizers (others keep theirs). Refuses, before changing
    anything, a name that is not an activation quantizer of ``model`` and a range that is not finite with
    lo ≤ hi."""
    quantizers = {name: act for name, act in model.named_modules() if isinstance(act, QuantAct)}
    for name, pair in ranges.items():
        if name not in quantizers:
            known = ", ".join(list(quantizers)[:8]) + (", …" if len(quantizers) > 8 else "")
            raise DfqbenchError(f"no activation quantizer {name!r} in the model; its quantizers: {known}")
        lo, hi = (float(v) for v in pair)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise DfqbenchError(f"invalid range {pair!r} for {name}: expected finite (lo, hi) with lo <= hi")
    for name, (lo, hi) in ranges.items():
        act = quantizers[name]
        act.tracker.set_range(act, torch.as_tensor(float(lo)), torch.as_tensor(float(hi)))
