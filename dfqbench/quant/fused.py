"""Fused fake quantization: the quantizer's own functions compiled by inductor, bit-identical to eager.

Eagerly, one activation quantizer launches about twenty small kernels per forward (the batch min/max,
the tracker's in-place EMA, the scale and zero point, six passes of the official rounding sequence) and a
weight quantizer about a dozen; on a GPU the training loop is bound by launching them. Compiled with
``torch.compile(fullgraph=True)``, the same functions (:func:`~dfqbench.quant.modules.quant_act_forward`,
:func:`~dfqbench.quant.modules.per_channel_fake_quant`) become a reduction and one or two fused elementwise
kernels. The arithmetic is the official one exactly: s = (2^k−1)/clamp(hi−lo, 1e-8), z = round(s·lo) +
2^(k−1), q = clamp(round(s·x − z), −2^(k−1), 2^(k−1)−1), x̂ = (q + z)/s, round half to even, identity
straight-through gradient — with inductor told not to contract s·x − z into a fused multiply-add and to
divide with IEEE rounding (:func:`dfqbench.quant.compiler.configure_inductor_numerics`), and tests showing
bit-equality with the eager primitive at ties (tests/test_engine.py; on CUDA benchmarks/gpu_check.sh).
PyTorch's ``fake_quantize_per_*_affine`` ops are not used: they multiply by 1/scale, round before adding
the zero point and mask the gradient outside the range, so they differ from the official arithmetic.

A module with ``fused`` set calls ``compiled(quant_act_forward)`` or ``compiled(per_channel_fake_quant)``
(:func:`dfqbench.quant.compiler.compiled`). One compiled function serves every quantizer of a model (shapes
are dynamic after the first recompile); its guards are on the bit-width, the tracker and whether ranges
update, all fixed between steps.
"""

from __future__ import annotations

from torch import nn

from dfqbench.quant.modules import QuantAct, QuantConv2d, QuantLinear


def set_fused_fake_quant(model: nn.Module, enabled: bool) -> int:
    """Switch every quantizer of ``model`` to the fused (compiled) path or back; returns how many were switched."""
    count = 0
    for module in model.modules():
        if isinstance(module, (QuantAct, QuantConv2d, QuantLinear)):
            module.fused = bool(enabled)
            count += 1
    return count
