"""The integer quantities of a trained fake-quantized student: what both export formats write.

The quantizer (:mod:`dfqbench.quant.primitives`, GDFQ ``quant_utils.py`` L85-139) maps a value x of a tensor
with range [lo, hi] to ``q = clamp(round(s·x − z), −2^(k−1), 2^(k−1) − 1)`` and back to ``x̂ = (q + z) / s``, where
``s = (2^k − 1) / max(hi − lo, 1e-8)`` ("levels per unit", called ``inv_scale`` here) and
``z = round(s·lo) + 2^(k−1)``. In the usual affine convention ``x̂ = (q − zero_point) · scale`` that is
``zero_point = −z`` and ``scale = 1 / s``.

- Weights (per output channel, ``per_channel_fake_quant`` of :mod:`dfqbench.quant.modules`): the range is the
  channel's min/max, so the k-bit integers ``q`` are computed here once, with the quantizer's own operations in
  its order, and checked to give back the student's fake-quantized weight bit for bit.
- Activations (per tensor, :class:`~dfqbench.quant.modules.QuantAct`): the frozen tracker range
  (``x_min``, ``x_max``). A range that depends on the batch (the ``minmax`` tracker's fallback when
  ``x_min == x_max``) has no static export and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dfqbench.errors import DfqbenchError
from dfqbench.quant import QuantAct, QuantConv2d, QuantLinear, quant_params


@dataclass(frozen=True)
class WeightQuant:
    """One weight-quantized layer: k-bit integers ``q`` (same shape as the weight) and per-output-channel
    ``zero`` (z, integer-valued float32) and ``inv_scale`` (s, float32), so that ``(q + z) / s`` is the
    student's fake-quantized weight exactly."""

    name: str
    kind: str  # "conv2d" | "linear"
    bits: int
    q: Tensor  # int32, values in [-2^(k-1), 2^(k-1) - 1]
    zero: Tensor  # (out,) float32, integer values
    inv_scale: Tensor  # (out,) float32
    bias: Tensor | None

    def dequantized(self) -> Tensor:
        """``(q + z) / s`` in float32, the quantizer's last two operations in its order (bit-exact)."""
        shape = (-1,) + (1,) * (self.q.dim() - 1)
        return (self.q.to(torch.float32) + self.zero.view(shape)) / self.inv_scale.view(shape)


@dataclass(frozen=True)
class ActQuant:
    """One per-tensor activation quantizer with its frozen range [lo, hi] and the derived s and z (0-dim)."""

    name: str
    bits: int
    lo: Tensor
    hi: Tensor
    zero: Tensor  # float32, integer value
    inv_scale: Tensor  # float32

    @property
    def window(self) -> tuple[int, int]:
        """The integers n = q + z the quantizer can output: [z − 2^(k−1), z + 2^(k−1) − 1] (x̂ = n / s)."""
        half = 1 << (self.bits - 1)
        z = int(self.zero.item())
        return z - half, z + half - 1


def weight_quant(name: str, module: QuantConv2d | QuantLinear) -> WeightQuant:
    """The integers of ``module``'s per-channel fake-quantized weight (``per_channel_fake_quant``)."""
    w = module.weight.detach().to(torch.float32)
    lo, hi = torch.aminmax(w.reshape(w.shape[0], -1), dim=1)
    shape = (-1,) + (1,) * (w.dim() - 1)
    scale, zero = quant_params(module.wbits, lo.view(shape), hi.view(shape))
    half = 1 << (module.wbits - 1)
    t = torch.mul(w, scale)  # the quantizer's order: s·w, − z, round, clamp (primitives._fake_quantize_inplace)
    t.sub_(zero)
    t.round_()
    t.clamp_(-half, half - 1)
    found = WeightQuant(name, "conv2d" if isinstance(module, QuantConv2d) else "linear", module.wbits,
                        t.to(torch.int32), zero.reshape(-1).clone(), scale.reshape(-1).clone(),
                        None if module.bias is None else module.bias.detach().to(torch.float32).clone())
    with torch.no_grad():
        expected = module.quantized_weight().detach()
    if not torch.equal(found.dequantized(), expected):
        raise RuntimeError(f"internal: the integer weights of {name} do not reproduce its fake-quantized weight")
    return found


def act_quant(name: str, act: QuantAct) -> ActQuant:
    """The frozen range of ``act`` and its s, z; refuses a range that would come from each batch."""
    nan = torch.tensor(float("nan"))
    probe = torch.zeros(())
    lo, hi = act.tracker.quant_range(act, probe, (nan, nan))  # a batch-dependent range comes back as NaN
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        raise DfqbenchError(
            f"activation quantizer {name!r} ({act.tracker.name} tracker, x_min == x_max == {float(act.x_min):g}) "
            "takes its range from each batch at inference time, which a static export cannot express")
    lo, hi = lo.detach().to(torch.float32).clone(), hi.detach().to(torch.float32).clone()
    scale, zero = quant_params(act.abits, lo, hi)
    return ActQuant(name, act.abits, lo, hi, zero, scale)


def student_quantities(student: nn.Module) -> tuple[list[WeightQuant], list[ActQuant]]:
    """Every weight-quantized layer and activation quantizer of ``student``, in ``named_modules()`` order (a
    module shared under several names appears once, under its first name)."""
    weights: list[WeightQuant] = []
    acts: list[ActQuant] = []
    for name, module in student.named_modules():
        if isinstance(module, (QuantConv2d, QuantLinear)):
            weights.append(weight_quant(name, module))
        elif isinstance(module, QuantAct):
            acts.append(act_quant(name, module))
    return weights, acts


def by_name(items: list[WeightQuant] | list[ActQuant]) -> dict[str, WeightQuant | ActQuant]:
    return {item.name: item for item in items}
