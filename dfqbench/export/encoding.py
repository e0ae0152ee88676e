"""How the quantizer's integers are stored in ONNX QuantizeLinear / DequantizeLinear (opset 21) tensor types.

ONNX computes ``y = saturate(round(x / scale) + zero_point)`` (round half to even) and
``x̂ = (y − zero_point) · scale``, saturating to the range of the zero point's integer type. dfqbench's k-bit
quantizer (:mod:`dfqbench.export.quantities`) outputs the integers n in a window [a, a + 2^k − 1] (x̂ = n / s);
with ``scale = 1/s`` an ONNX pair gives the same n when ``y − zero_point`` is confined to that window:

- activations: the narrowest of uint8, int8, uint16, int16 with at least k bits and a zero point that keeps the
  whole window inside the type. Where the window *is* the type's range (k = 8 or 16, with 0 in the window:
  uint8 with zero point 0 for a ReLU output quantized to 8 bits) saturation alone is the quantizer's clamp;
  otherwise (k = 2-7, 9-15, or a window without 0) an explicit ``Clip`` to [a/s, (a + 2^k − 1)/s] stands in
  front of QuantizeLinear. The 4-bit types are not used for activations although opset 21 has them:
  onnxruntime 1.32 (CPU) cannot run such graphs in general: its QDQ propagation moves a uint4
  DequantizeLinear behind MaxPool, which has no uint4 kernel (ResNet-18: "Type 'tensor(uint4)' … of operator
  (MaxPool) … is invalid"), and its Clip+QuantizeLinear fusion rejects a 4-bit zero point (ReLU6, MobileNetV2).
- weights (constants, DequantizeLinear only): ``y = q`` (the k-bit integers, signed) and ``zero_point = −z``
  per output channel, in the narrowest signed type of at least k bits that holds every zero point (int4, int8,
  int16, else int32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from dfqbench.errors import DfqbenchError
from dfqbench.export.quantities import ActQuant, WeightQuant

WEIGHT_WIDTHS = (4, 8, 16, 32)  # DequantizeLinear-21 inputs: int4, int8, int16, int32
ACT_WIDTHS = (8, 16)  # QuantizeLinear-21 outputs, without the 4-bit types (see the module docstring)


@dataclass(frozen=True)
class IntType:
    """An integer tensor type of ONNX opset 21: its name (``int4``, ``uint8``, …), bit width and range."""

    name: str
    bits: int
    signed: bool

    @property
    def low(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def high(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


def int_type(bits: int, signed: bool) -> IntType:
    return IntType(("int" if signed else "uint") + str(bits), bits, signed)


@dataclass(frozen=True)
class ActEncoding:
    """One activation quantizer as ONNX stores it: type, zero point, and the Clip bounds in integer units (None:
    the type's saturation is the quantizer's clamp)."""

    type: IntType
    zero_point: int
    clip: tuple[int, int] | None


@dataclass(frozen=True)
class WeightEncoding:
    """One weight tensor as ONNX stores it: ``values`` (= q) and ``zero_points`` (= −z) in ``type``."""

    type: IntType
    values: np.ndarray  # int64, in the type's range
    zero_points: np.ndarray  # int64 (out,), in the type's range


def act_encoding(act: ActQuant) -> ActEncoding:
    """The narrowest activation type (8 or 16 bits, unsigned first) with a zero point keeping ``act``'s window inside
    it; a Clip to the window where the type's saturation is not the quantizer's clamp."""
    a0, a1 = act.window
    for bits in ACT_WIDTHS:
        if bits < act.bits:
            continue
        for signed in (False, True):
            kind = int_type(bits, signed)
            # zero points that keep y = n + zero_point inside the type for every n of the window, and inside it
            # themselves; the lowest one puts the window's bottom on the type's bottom when it can
            lowest, highest = max(kind.low, kind.low - a0), min(kind.high, kind.high - a1)
            if lowest <= highest:
                saturates = a0 + lowest == kind.low and a1 + lowest == kind.high
                return ActEncoding(kind, lowest, None if saturates else (a0, a1))
    raise DfqbenchError(f"no ONNX QuantizeLinear type holds the {act.bits}-bit window [{a0}, {a1}] of {act.name} "
                        "(a 16-bit range that does not contain 0 needs a 17-bit or wider integer)")


def weight_encoding(weight: WeightQuant) -> WeightEncoding:
    """q as it is, −z per channel, in the narrowest signed type holding both."""
    values = _int64(weight.q)
    zero_points = -_int64(weight.zero)
    for bits in WEIGHT_WIDTHS:
        kind = int_type(bits, True)
        if bits >= weight.bits and kind.low <= zero_points.min() and zero_points.max() <= kind.high:
            return WeightEncoding(kind, values, zero_points)
    raise DfqbenchError(f"the zero points of {weight.name} do not fit int32 (a degenerate weight range)")


def _int64(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.int64)
