"""The shared fake-quantizer of all DFQ methods: ZeroQ's ``quant_utils.py`` / ``quant_modules.py``, which all
six official codes copy (GDFQ's copy in ``quantization_utils/``; line numbers below are GDFQ's).

- :mod:`~dfqbench.quant.primitives`: the asymmetric fake-quantization arithmetic and its STE
  (``quant_utils.py`` L85-139);
- :mod:`~dfqbench.quant.trackers`: activation range trackers "ema_gdfq", "ema" and "minmax"
  (``quant_modules.py`` L75-96; ZeroQ's running min/max: its ``quant_modules.py`` L66-82);
- :mod:`~dfqbench.quant.modules`: QuantAct, QuantConv2d, QuantLinear (``quant_modules.py`` L32-192);
- :mod:`~dfqbench.quant.ranges`: activation ranges read and set whatever the tracker;
- :mod:`~dfqbench.quant.convert`: QuantConfig, parse_bits and the model converter (``main.py`` L225-260);
- :mod:`~dfqbench.quant.compiler` and :mod:`~dfqbench.quant.fused`: the same quantizer compiled by inductor
  into fused kernels with eager's numerics (the compiled engine switches a student to it).
"""

from dfqbench.quant.convert import (
    QuantConfig,
    activation_quantizers,
    parse_bits,
    quantize_model,
    set_range_update,
)
from dfqbench.quant.compiler import configure_inductor_numerics
from dfqbench.quant.fused import set_fused_fake_quant
from dfqbench.quant.modules import QuantAct, QuantConv2d, QuantLinear
from dfqbench.quant.primitives import FakeQuantSTE, fake_quantize, quant_params
from dfqbench.quant.ranges import activation_ranges, set_activation_ranges
from dfqbench.quant.trackers import TRACKERS

__all__ = [
    "TRACKERS",
    "FakeQuantSTE",
    "QuantAct",
    "QuantConfig",
    "QuantConv2d",
    "QuantLinear",
    "activation_quantizers",
    "activation_ranges",
    "configure_inductor_numerics",
    "fake_quantize",
    "parse_bits",
    "quant_params",
    "quantize_model",
    "set_activation_ranges",
    "set_fused_fake_quant",
    "set_range_update",
]
