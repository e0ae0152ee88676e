"""How the quantizer is compiled: inductor told to keep eager's arithmetic, one compiled function per quantizer
function.

The fused path of :mod:`dfqbench.quant.modules` (a module's ``fused`` flag) runs its quantizer functions
through :func:`compiled`; :func:`configure_inductor_numerics` makes inductor's generated kernels round like
eager (no contraction of s·x − z into a fused multiply-add, IEEE division), so the compiled quantizer is
bit-identical to the eager one (:mod:`dfqbench.quant.fused`; tests/test_engine.py). The compiled engine
(:mod:`dfqbench.core.engine`) calls it too, for the steps it compiles. Nothing here imports the rest of the
quantizer: the layers above ask it for compilation, never the reverse.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch


def configure_inductor_numerics() -> None:
    """Eager-equal arithmetic in inductor's generated kernels, where this torch version has the switches."""
    import torch._dynamo
    import torch._inductor.config as inductor

    if hasattr(inductor, "emulate_precision_casts"):  # also turns off Triton's FMA contraction
        inductor.emulate_precision_casts = True
    numerics = getattr(inductor, "eager_numerics", None)
    if numerics is not None and hasattr(numerics, "division_rounding"):
        numerics.division_rounding = True  # div_rn instead of Triton's approximate division
    cpp = getattr(inductor, "cpp", None)
    if cpp is not None and hasattr(cpp, "enable_floating_point_contract_flag"):
        cpp.enable_floating_point_contract_flag = "off"
    # One recompilation per phase and sample structure (ranges on/off, warm-up, superposed batches, ...).
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))


@functools.lru_cache(maxsize=None)
def compiled(fn: Callable) -> Callable:
    """``fn`` compiled by inductor as one graph with eager numerics; one compiled function per ``fn``, shared
    by every quantizer of every model (shapes are dynamic after the first recompile)."""
    configure_inductor_numerics()
    return torch.compile(fn, fullgraph=True, dynamic=None)
