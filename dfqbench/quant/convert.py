"""Quantization config and the model converter of the official ``quantize_model`` (GDFQ ``main.py`` L225-260).

The converter is a plain recursive walk over ``named_children`` that swaps modules by attribute, so
further options (e.g. BN folding, not implemented; the official codes keep BN unfolded) can be added as
extra cases of :func:`_replacement` or as a pre-pass on the deep copy.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dfqbench.errors import DfqbenchError
from dfqbench.registry import unknown_choice
from dfqbench.quant.bn_condition import ZERO_VARIANCE_BN, recondition_zero_variance_bn
from dfqbench.quant.modules import QuantAct, QuantConv2d, QuantLinear
from dfqbench.quant.primitives import MAX_BITS, MIN_BITS, check_bits
from dfqbench.quant.trackers import TRACKERS, check_tracker

_BITS_RE = re.compile(r"[wW]([1-9][0-9]?)[aA]([1-9][0-9]?)")
_WEIGHT_TYPES = (nn.Conv2d, nn.Linear)
_ACT_TYPES = (nn.ReLU, nn.ReLU6)


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how (the official quantizer's choices, see :mod:`dfqbench.quant`).

    wbits / abits: weight / activation bit-widths (2..16). tracker: activation range tracker, one of
    :data:`TRACKERS` ("ema_gdfq" is the faithful GDFQ-lineage default). momentum: EMA β.
    first_last_wbits: if set, the weights of the first and the last conv/linear layer (in module order)
    use this width instead of wbits; the official code has no such exception (None).
    zero_variance_bn: "keep" (faithful: the student's BN parameters are the teacher's) or "recondition" (BN
    channels with zero running variance re-expressed with the same function, :mod:`dfqbench.quant.bn_condition`).
    """

    wbits: int
    abits: int
    tracker: str = "ema_gdfq"
    momentum: float = 0.9
    first_last_wbits: int | None = None
    zero_variance_bn: str = "keep"

    def __post_init__(self) -> None:
        check_bits(self.wbits, "wbits")
        check_bits(self.abits, "abits")
        check_tracker(self.tracker)
        momentum = self.momentum
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise DfqbenchError(f"invalid momentum {momentum!r}: expected a number with 0 <= momentum < 1")
        if self.first_last_wbits is not None:
            check_bits(self.first_last_wbits, "first_last_wbits")
        if self.zero_variance_bn not in ZERO_VARIANCE_BN:
            raise DfqbenchError(unknown_choice("quant.zero_variance_bn", self.zero_variance_bn,
                                               list(ZERO_VARIANCE_BN)))

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict; ``QuantConfig(**cfg.to_dict())`` rebuilds the config."""
        return dataclasses.asdict(self)


def parse_bits(text: str) -> tuple[int, int]:
    """Parse "wXaY" (case-insensitive, e.g. "w4a4", "W3A3", "w4a8") into (wbits, abits)."""
    match = _BITS_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is not None:
        wbits, abits = int(match.group(1)), int(match.group(2))
        if MIN_BITS <= wbits <= MAX_BITS and MIN_BITS <= abits <= MAX_BITS:
            return wbits, abits
    raise DfqbenchError(
        f"invalid bits {text!r}: expected wXaY with {MIN_BITS} <= X, Y <= {MAX_BITS}, e.g. w4a4, w3a3, w5a5, w4a8"
    )


def quantize_model(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """A deep-copied, fake-quantized version of ``model``; ``model`` itself is left untouched (GDFQ ``quantize_model``).

    - every module whose exact type is nn.Conv2d / nn.Linear → QuantConv2d / QuantLinear at cfg.wbits
      (cfg.first_last_wbits for the first and last of them in ``modules()`` order, when set);
    - every nn.ReLU / nn.ReLU6 → nn.Sequential(that ReLU, QuantAct(cfg.abits, ...));
    - everything else (BatchNorm included) is kept as deep-copied FP modules; the input is not quantized;
      with ``zero_variance_bn="recondition"`` the copy's zero-variance BN channels are re-expressed first.
    A module reachable under several names is replaced once, so sharing is preserved (one QuantAct for a
    ReLU reused at two sites, as in ZAQ's ``network/resnet20.py`` L55/L72-75).
    """
    if not isinstance(cfg, QuantConfig):
        raise DfqbenchError(f"invalid quantization config {cfg!r}: expected a dfqbench.quant.QuantConfig")
    if any(isinstance(m, (QuantAct, QuantConv2d, QuantLinear)) for m in model.modules()):
        raise DfqbenchError(
            f"invalid model {type(model).__name__}: it is already quantized; pass the FP model instead"
        )
    qmodel = copy.deepcopy(model)
    if cfg.zero_variance_bn == "recondition":
        recondition_zero_variance_bn(qmodel)
    weight_layers = [m for m in qmodel.modules() if type(m) in _WEIGHT_TYPES]
    special = {id(weight_layers[0]), id(weight_layers[-1])} if weight_layers else set()
    walker = _Converter(cfg, special, _device_of(qmodel))
    if type(qmodel) in _WEIGHT_TYPES + _ACT_TYPES:  # a bare layer: nothing to setattr on
        return walker.replacement(qmodel)  # type: ignore[return-value]
    walker.convert(qmodel)
    return qmodel


class _Converter:
    """The recursive walk over child modules by name; ``memo`` maps an original module's id to its replacement."""

    def __init__(self, cfg: QuantConfig, special: set[int], device: torch.device | None) -> None:
        self.cfg = cfg
        self.special = special
        self.device = device
        self.memo: dict[int, nn.Module] = {}
        self.visited: set[int] = set()

    def convert(self, module: nn.Module) -> None:
        self.visited.add(id(module))
        # _modules rather than named_children(): the latter hides a module's second name, which must be
        # re-pointed at the shared replacement too.
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            if id(child) in self.memo:
                setattr(module, name, self.memo[id(child)])
                continue
            if id(child) in self.visited:
                continue
            new = self.replacement(child)
            if new is None:
                self.convert(child)
                continue
            self.memo[id(child)] = new
            self.visited.add(id(new))
            setattr(module, name, new)

    def replacement(self, child: nn.Module) -> nn.Module | None:
        """The quantized stand-in for ``child``, or None to keep it (and recurse into it)."""
        cfg = self.cfg
        kind = type(child)
        if kind in _WEIGHT_TYPES:
            wbits = cfg.wbits
            if cfg.first_last_wbits is not None and id(child) in self.special:
                wbits = cfg.first_last_wbits
            layer_cls = QuantConv2d if kind is nn.Conv2d else QuantLinear
            new: nn.Module = layer_cls(child, wbits)  # type: ignore[arg-type]
        elif kind in _ACT_TYPES:
            new = nn.Sequential(child, QuantAct(cfg.abits, cfg.tracker, cfg.momentum, device=self.device))
        else:
            return None
        return new.train(child.training)


def _device_of(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def set_range_update(model: nn.Module, enabled: bool) -> None:
    """Turn activation-range updates on or off for every QuantAct of ``model`` (official running_stat)."""
    for act in activation_quantizers(model):
        act.update_ranges = bool(enabled)


def activation_quantizers(model: nn.Module) -> list[QuantAct]:
    """The QuantAct modules of ``model`` in ``modules()`` order, each once."""
    return [m for m in model.modules() if isinstance(m, QuantAct)]


__all__ = [
    "TRACKERS",
    "QuantConfig",
    "activation_quantizers",
    "parse_bits",
    "quantize_model",
    "set_range_update",
]
