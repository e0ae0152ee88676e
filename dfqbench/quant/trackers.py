"""Per-tensor activation range trackers (GDFQ ``quant_modules.py`` L75-96, ZeroQ ``quant_modules.py`` L66-82).

A tracker is a stateless strategy: its state lives in buffers registered on the owning
:class:`~dfqbench.quant.modules.QuantAct`, so ``state_dict()``, checkpoints and ``copy.deepcopy`` carry it.
Every tracker uses the buffers ``x_min``/``x_max`` (0-dim, start at 0) for the range it quantizes with;
some add their own. All updates are tensor ops on those buffers: no host sync.

- ``ema_gdfq``: GDFQ/Qimera/AdaSG/AdaDFQ's EMA with the bias correction written back into the state, so
  it compounds (≈5× at update 2, ≈10^3× around updates 10-20, back to ≈1× after ~150 updates).
- ``ema``: a correct bias-corrected EMA (the corrected switch for the above).
- ``minmax``: ZeroQ/ZAQ's running min/max that only widens, with ZeroQ's x_min == x_max fallback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dfqbench.errors import DfqbenchError

if TYPE_CHECKING:
    from torch import nn


class RangeTracker:
    """Base class: declares buffers, updates them from a batch min/max, and says which range to use."""

    name: str = ""

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum = float(momentum)

    def buffers(self) -> dict[str, Tensor]:
        """Initial values of the buffers to register on the QuantAct (x_min and x_max always included)."""
        return {"x_min": torch.zeros(()), "x_max": torch.zeros(())}

    def update(self, act: nn.Module, m_min: Tensor, m_max: Tensor) -> None:
        """Fold the current batch's min and max into the buffers of ``act`` (in place)."""
        raise NotImplementedError

    def quant_range(
        self, act: nn.Module, x: Tensor, batch_minmax: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        """The (lo, hi) to quantize ``x`` with; ``batch_minmax`` is x's aminmax when already computed."""
        return act.x_min, act.x_max

    @torch.no_grad()
    def set_range(self, act: nn.Module, lo: Tensor, hi: Tensor) -> None:
        """Make (lo, hi) the range ``act`` quantizes with, its state consistent with it: later updates continue
        from it as if it had been tracked (in place; the buffers keep their dtype and device)."""
        act.x_min.fill_(lo)
        act.x_max.fill_(hi)

    def extra_repr(self) -> str:
        return f"tracker={self.name}, momentum={self.momentum}"


def _coefficients_in(dtype: torch.dtype, momentum: float) -> tuple[float, float]:
    """(β, 1 − β) computed in ``dtype``, as a buffer of that dtype holding β gives them."""
    beta = torch.tensor(momentum, dtype=dtype)
    return float(beta), float(1.0 - beta)


class EmaGdfqTracker(RangeTracker):
    """GDFQ-lineage EMA with compounding "bias correction" (GDFQ ``quant_modules.py`` L75-96).

    beta_t starts at 1; per update: beta_t ← beta_t·β, then v ← (β·v + (1-β)·m) / (1 - beta_t) for v in
    (x_min, x_max). The corrected value is stored, so for a constant m the range inflates before decaying.

    The arithmetic is the official one: β is a buffer of the default dtype there, so in float32 1 − β is
    fl32(1 − fl32(β)) (0.100000024 for β = 0.9, not 0.1), and the two products are added unfused. A range
    one ulp off moves the quantization grid, which flips roundings somewhere in a real network
    (tests/test_golden_adasg.py).
    """

    name = "ema_gdfq"

    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__(momentum)
        # (β, 1 − β) as the official buffer's precision gives them: its buffer has the default dtype, float32
        # (fl32(β), fl32(1 − fl32(β))), or float64 when a run is in double precision (tests/golden/qimera).
        self.coefficients = {dtype: _coefficients_in(dtype, self.momentum) for dtype in (torch.float32, torch.float64)}

    def buffers(self) -> dict[str, Tensor]:
        return {**super().buffers(), "beta_t": torch.ones(())}

    @torch.no_grad()
    def update(self, act: nn.Module, m_min: Tensor, m_max: Tensor) -> None:
        beta, one_minus = self.coefficients[torch.float64 if act.x_min.dtype == torch.float64 else torch.float32]
        act.beta_t.mul_(beta)
        denom = 1.0 - act.beta_t
        act.x_min.copy_((act.x_min * beta + m_min * one_minus) / denom)
        act.x_max.copy_((act.x_max * beta + m_max * one_minus) / denom)


class EmaTracker(RangeTracker):
    """Correct bias-corrected EMA: raw r ← β·r + (1-β)·m, range r / (1 - β^t) (t = number of updates).

    The corrected range is written to x_min/x_max after each update; a constant m gives m at every step.
    """

    name = "ema"

    def buffers(self) -> dict[str, Tensor]:
        return {
            **super().buffers(),
            "ema_min": torch.zeros(()),
            "ema_max": torch.zeros(()),
            "num_updates": torch.zeros((), dtype=torch.long),
        }

    @torch.no_grad()
    def update(self, act: nn.Module, m_min: Tensor, m_max: Tensor) -> None:
        beta = self.momentum
        act.num_updates.add_(1)
        denom = 1.0 - torch.pow(beta, act.num_updates.to(act.ema_min.dtype))
        act.ema_min.mul_(beta).add_(m_min, alpha=1.0 - beta)
        act.ema_max.mul_(beta).add_(m_max, alpha=1.0 - beta)
        torch.div(act.ema_min, denom, out=act.x_min)
        torch.div(act.ema_max, denom, out=act.x_max)

    @torch.no_grad()
    def set_range(self, act: nn.Module, lo: Tensor, hi: Tensor) -> None:
        """The raw EMA becomes range × (1 − β^t), so the corrected range is (lo, hi); with no update yet, t
        becomes 1 (the range counts as one observation)."""
        act.num_updates.clamp_(min=1)
        denom = 1.0 - torch.pow(self.momentum, act.num_updates.to(act.ema_min.dtype))
        super().set_range(act, lo, hi)
        torch.mul(act.x_min, denom, out=act.ema_min)
        torch.mul(act.x_max, denom, out=act.ema_max)


class MinMaxTracker(RangeTracker):
    """ZeroQ/ZAQ running min/max that only widens; buffers start at 0, so 0 is always inside.

    ZeroQ ``quant_modules.py`` L66-82. ZeroQ fallback (ZeroQ ``quant_utils.py`` L123-125): when x_min == x_max at
    forward time, the current tensor's own min/max are used instead (selected with ``torch.where``, no host sync).
    """

    name = "minmax"

    @torch.no_grad()
    def update(self, act: nn.Module, m_min: Tensor, m_max: Tensor) -> None:
        torch.minimum(act.x_min, m_min, out=act.x_min)
        torch.maximum(act.x_max, m_max, out=act.x_max)

    def quant_range(
        self, act: nn.Module, x: Tensor, batch_minmax: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        b_min, b_max = batch_minmax if batch_minmax is not None else torch.aminmax(x.detach())
        degenerate = act.x_min == act.x_max
        return torch.where(degenerate, b_min, act.x_min), torch.where(degenerate, b_max, act.x_max)

    def extra_repr(self) -> str:
        return f"tracker={self.name}"


_TRACKER_CLASSES: dict[str, type[RangeTracker]] = {
    cls.name: cls for cls in (EmaGdfqTracker, EmaTracker, MinMaxTracker)
}
TRACKERS: tuple[str, ...] = tuple(_TRACKER_CLASSES)


def check_tracker(name: object) -> str:
    """Return ``name`` if it is a known tracker, else raise a one-line DfqbenchError naming the choices."""
    if not isinstance(name, str) or name not in _TRACKER_CLASSES:
        raise DfqbenchError(f"invalid tracker {name!r}: expected one of {', '.join(TRACKERS)}")
    return name


def make_tracker(name: str, momentum: float = 0.9) -> RangeTracker:
    """The tracker called ``name`` (one of :data:`TRACKERS`)."""
    return _TRACKER_CLASSES[check_tracker(name)](momentum)
