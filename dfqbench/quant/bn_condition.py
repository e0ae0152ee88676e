"""BatchNorm channels with zero running variance, and a function-preserving re-expression of them in the student.

A frozen-statistics BN computes y = γ·(x − μ)/√(σ² + ε) + β. A teacher can hold channels with σ² = 0: the shared
offline ResNet-20 (``../shared/weights/README.md``) writes its parameter-free "option A" shortcuts as a 1×1 conv
with 0/1 weights plus a BN whose zero-padded channels have μ = σ² = 0 and γ = √ε, so that the BN is the identity.
The function is fine, the parametrisation is not: in the student, ∂L/∂γ = ∂L/∂y·(x − μ)/√ε, a 1/√ε ≈ 316× gain
once the conv row feeding the channel leaves zero, so a fine-tuning step that moves it feeds back through γ and
the student diverges within a few steps at the released learning rates of the 8000·KL methods (measured: HAST
and SynQ at lr 1e-5 train with the switch and diverge without it; IntraQ's 10× larger rate diverges on this
teacher either way, the CIFAR instability its issue #3 reports). The official code never meets this: pytorchcv's
teachers have no such channels.

:func:`recondition_zero_variance_bn` sets those channels to σ² = 1 − ε and γ' = γ/√ε: the same scale
γ/√(σ² + ε), so the same eval-mode function (to float rounding), with a gain of 1 on γ'. It is applied to the
student only (``quant.zero_variance_bn=recondition``), never to the teacher, whose running statistics are the BNS
losses' targets. It is exact only for frozen statistics: a student whose BN trains in train mode (ZAQ) would
average the new σ² into its running estimate, so such methods refuse it.
"""

from __future__ import annotations

import torch
from torch import nn

ZERO_VARIANCE_BN = ("keep", "recondition")  # quant.zero_variance_bn: "keep" = the teacher's parameters as they are


def zero_variance_channels(model: nn.Module) -> dict[str, int]:
    """Per BatchNorm module name, how many of its channels have running variance exactly 0 (modules without any
    are left out)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
            count = int((module.running_var == 0).sum())
            if count:
                found[name] = count
    return found


@torch.no_grad()
def recondition_zero_variance_bn(model: nn.Module) -> dict[str, int]:
    """Re-express every zero-variance BN channel of ``model`` as σ² = 1 − ε, γ' = γ/√ε (module docstring), in
    place; returns the channels changed per module (:func:`zero_variance_channels` before the change). BNs without
    an affine weight are left as they are (no γ to carry the scale)."""
    changed = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.running_var is None \
                or module.weight is None:
            continue
        zero = module.running_var == 0
        if not bool(zero.any()):
            continue
        var = module.running_var
        scale = module.weight / torch.sqrt(var + module.eps)
        var[zero] = 1.0 - module.eps
        module.weight[zero] = scale[zero] * torch.sqrt(var[zero] + module.eps)
        changed[name] = int(zero.sum())
    return changed
