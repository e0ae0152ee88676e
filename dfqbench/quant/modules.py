"""Fake-quantized layers: per-tensor activation quantizer and per-channel weight-quantized conv/linear.

Behaviour of the official ``Quant_Conv2d`` / ``Quant_Linear`` / ``QuantAct`` (GDFQ ``quant_modules.py`` L32-192).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfqbench.quant.compiler import compiled
from dfqbench.quant.primitives import FakeQuantSTE, check_bits
from dfqbench.quant.trackers import RangeTracker, make_tracker


class QuantAct(nn.Module):
    """Per-tensor asymmetric activation fake-quantizer with a range tracker (GDFQ ``quant_modules.py`` L75-96).

    While ``update_ranges`` is True (the default, like the official ``running_stat``) every forward first
    folds the batch min/max into the tracker state and then quantizes the batch with the updated range;
    this happens regardless of ``self.training``. The tracker state is held in registered buffers
    (``x_min``, ``x_max`` plus tracker-specific ones), so it is part of ``state_dict()``.
    """

    def __init__(
        self,
        abits: int,
        tracker: str = "ema_gdfq",
        momentum: float = 0.9,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.abits = check_bits(abits, "abits")
        self.tracker: RangeTracker = make_tracker(tracker, momentum)
        self.update_ranges = True
        for name, value in self.tracker.buffers().items():
            self.register_buffer(name, value.to(device))

    fused = False  # True: run through the compiled (fused) version of :func:`quant_act_forward` (dfqbench.quant.fused)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return compiled(quant_act_forward)(self, x)
        return quant_act_forward(self, x)

    def extra_repr(self) -> str:
        return f"abits={self.abits}, {self.tracker.extra_repr()}, update_ranges={self.update_ranges}"


def quant_act_forward(act: QuantAct, x: Tensor) -> Tensor:
    """QuantAct's forward: fold the batch min/max into the tracker (when updating), then fake-quantize x."""
    batch_minmax = None
    if act.update_ranges:
        batch_minmax = torch.aminmax(x.detach())
        act.tracker.update(act, *batch_minmax)
    lo, hi = act.tracker.quant_range(act, x, batch_minmax)
    return FakeQuantSTE.apply(x, act.abits, lo, hi)


def per_channel_fake_quant(weight: Tensor, bits: int) -> Tensor:
    """Fake-quantize ``weight`` per output channel with its current detached min/max (as the official layers)."""
    w = weight.detach()
    lo, hi = torch.aminmax(w.reshape(w.shape[0], -1), dim=1)
    shape = (-1,) + (1,) * (w.dim() - 1)
    return FakeQuantSTE.apply(weight, bits, lo.view(shape), hi.view(shape))


class WeightQuantized(nn.Module):
    """What :class:`QuantConv2d` and :class:`QuantLinear` share: an FP ``weight`` Parameter fake-quantized per
    output channel to ``wbits`` on every forward, eagerly or through the fused (compiled) quantizer."""

    weight: nn.Parameter
    wbits: int
    fused = False  # True: the compiled (fused) per-channel fake-quant (dfqbench.quant.fused)

    def quantized_weight(self) -> Tensor:
        """The fake-quantized weight used by the forward (straight-through to ``weight``)."""
        if not self.fused:
            return per_channel_fake_quant(self.weight, self.wbits)
        return compiled(per_channel_fake_quant)(self.weight, self.wbits)


class QuantConv2d(WeightQuantized):
    """``nn.Conv2d`` with per-output-channel asymmetric weight fake-quantization (``Quant_Conv2d.forward`` L177-192).

    Takes over the ``weight``/``bias`` Parameters and the hyper-parameters of ``conv`` (pass a copy if the
    original must stay independent; :func:`~dfqbench.quant.convert.quantize_model` does). The FP latent
    weight is the trainable parameter; its range is recomputed from the detached weight on every forward.
    The bias stays FP.
    """

    def __init__(self, conv: nn.Conv2d, wbits: int) -> None:
        super().__init__()
        self.wbits = check_bits(wbits, "wbits")
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        self._reversed_padding_repeated_twice = conv._reversed_padding_repeated_twice
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x: Tensor) -> Tensor:
        weight = self.quantized_weight()
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"bias={self.bias is not None}, wbits={self.wbits}"
        )


class QuantLinear(WeightQuantized):
    """``nn.Linear`` with per-output-row asymmetric weight fake-quantization (``Quant_Linear`` L130-143); FP bias."""

    def __init__(self, linear: nn.Linear, wbits: int) -> None:
        super().__init__()
        self.wbits = check_bits(wbits, "wbits")
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, wbits={self.wbits}"
        )
