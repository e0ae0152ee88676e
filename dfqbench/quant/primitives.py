"""The fake-quantization primitive shared by every method (GDFQ ``quantization_utils/quant_utils.py`` L85-139).

All six official code bases use one quantizer (ZeroQ's ``quant_utils.py``; GDFQ and its forks add an
identity straight-through backward). This module holds that arithmetic and nothing else, so the modules
(:mod:`dfqbench.quant.modules`) and range trackers (:mod:`dfqbench.quant.trackers`) stay thin.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dfqbench.errors import DfqbenchError

MIN_BITS = 2
MAX_BITS = 16
RANGE_EPS = 1e-8  # the official clamp on (hi - lo) before dividing (``quant_utils.py``)


def check_bits(value: Any, what: str = "bits") -> int:
    """Return ``value`` if it is an int in [MIN_BITS, MAX_BITS], else raise a one-line DfqbenchError."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
        raise DfqbenchError(
            f"invalid {what} {value!r}: expected an integer with {MIN_BITS} <= {what} <= {MAX_BITS}"
        )
    return value


def quant_params(bits: int, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Scale s and integer zero point z of the official quantizer (GDFQ ``quant_utils.py`` L85-139).

    s = (2^k - 1) / clamp(hi - lo, min=1e-8) ("levels per unit") and z = round(s·lo) + 2^(k-1).
    Both have the broadcast shape of ``lo``/``hi`` (a scalar for activations, (out, 1, ...) for weights).
    """
    scale = ((1 << bits) - 1) / torch.clamp(hi - lo, min=RANGE_EPS)
    zero = torch.round(scale * lo) + (1 << (bits - 1))
    return scale, zero


def fake_quantize(x: Tensor, bits: int, lo: Tensor, hi: Tensor) -> Tensor:
    """Quantize-dequantize ``x`` onto the k-bit asymmetric grid of [lo, hi] (GDFQ ``quant_utils.py`` L85-139).

    q = clamp(round(s·x - z), -2^(k-1), 2^(k-1) - 1) and x̂ = (q + z) / s, with ``torch.round`` (half to
    even). The operations follow the official order: rounding happens on s·x - z, so at exact ties the
    parity of the integer z matters (an odd z rounds a tie away from the "simplified" round(s·x) result).

    Pure: ``x``, ``lo`` and ``hi`` are not modified; ``lo``/``hi`` broadcast against ``x`` (per-channel
    views for weights). Under autograd (an input requiring grad) it is differentiable as written, i.e.
    round has zero gradient; use :class:`FakeQuantSTE` for the straight-through estimator. No host sync.
    """
    scale, zero = quant_params(bits, lo, hi)
    half = 1 << (bits - 1)
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
        x = x.to(torch.promote_types(x.dtype, scale.dtype))
        q = torch.clamp(torch.round(x * scale - zero), -half, half - 1)
        return (q + zero) / scale
    return _fake_quantize_inplace(x, scale, zero, half)


def _fake_quantize_inplace(x: Tensor, scale: Tensor, zero: Tensor, half: int) -> Tensor:
    """The hot path: one fresh temporary, then in-place passes (6 full-tensor passes, no extra allocation).

    s·x and - z stay two separate roundings (no fused multiply-add such as ``addcmul``) so the result is
    bit-identical to the official out-of-place sequence; a fused version differs at near-ties.
    """
    # A 0-dim float32 scale would not promote a half x (0-dim tensors do not take part in promotion):
    # compute in the wider of the two dtypes so low-precision activations keep the official arithmetic.
    t = torch.mul(x.to(torch.promote_types(x.dtype, scale.dtype)), scale)
    t.sub_(zero)
    t.round_()
    t.clamp_(-half, half - 1)
    t.add_(zero)
    return t.div_(scale)


class FakeQuantSTE(torch.autograd.Function):
    """Fake quantization with the STE of GDFQ/Qimera/AdaSG/AdaDFQ/ZAQ (GDFQ ``quant_utils.py`` L137-139).

    ``FakeQuantSTE.apply(x, bits, lo, hi)``: the forward is :func:`fake_quantize`; the backward passes the
    incoming gradient to ``x`` unchanged (no mask for clipped values) and gives no gradient to ``bits``,
    ``lo`` or ``hi`` (ranges are not learned). Nothing is saved for the backward.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, bits: int, lo: Tensor, hi: Tensor) -> Tensor:  # type: ignore[override]
        scale, zero = quant_params(bits, lo, hi)
        return _fake_quantize_inplace(x, scale, zero, 1 << (bits - 1))

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        return grad_output, None, None, None
