"""The shared fake-quantizer of all DFQ methods (methods.md §1, §11.1).

- :mod:`~dfqbench.quant.primitives`: the asymmetric fake-quantization arithmetic and its STE (§1.1-§1.2);
- :mod:`~dfqbench.quant.trackers`: activation range trackers "ema_gdfq", "ema" and "minmax" (§1.5);
- :mod:`~dfqbench.quant.modules`: QuantAct, QuantConv2d, QuantLinear (§1.3);
- :mod:`~dfqbench.quant.convert`: QuantConfig, parse_bits and the model converter (§1.4).
"""

from dfqbench.quant.convert import (
    QuantConfig,
    activation_quantizers,
    parse_bits,
    quantize_model,
    set_range_update,
)
from dfqbench.quant.modules import QuantAct, QuantConv2d, QuantLinear
from dfqbench.quant.primitives import FakeQuantSTE, fake_quantize, quant_params
from dfqbench.quant.trackers import TRACKERS

__all__ = [
    "TRACKERS",
    "FakeQuantSTE",
    "QuantAct",
    "QuantConfig",
    "QuantConv2d",
    "QuantLinear",
    "activation_quantizers",
    "fake_quantize",
    "parse_bits",
    "quant_params",
    "quantize_model",
    "set_range_update",
]
