"""Feature taps: forward hooks that hand a loss the outputs of named modules (e.g. ZAQ's stage features).

ZAQ's networks return their residual-stage outputs from ``forward(x, out_feat=True)`` (ZAQ
``network/resnet20.py``, ``ResNet_2.forward``). pytorchcv models have no such argument,
so the same tensors are read with forward hooks on the stage modules instead: for pytorchcv's CIFAR and
ImageNet ResNets these are ``features.stage1..N``, whose outputs are the last unit's
post-ReLU activations, i.e. already fake-quantized in the student (the QuantAct follows that ReLU).
The tiny test network mirrors that layout, so it needs no special case.

A :class:`FeatureTap` records only inside its own call, so evaluation and diagnostic probes forwarding
through the same model record nothing and keep no tensors alive.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from dfqbench.errors import DfqbenchError

_STAGE = re.compile(r"stage([1-9][0-9]*)")


def stage_names(model: nn.Module) -> list[str]:
    """``["features.stage1", ..., "features.stageN"]`` for a model laid out like pytorchcv's, else ``[]``.

    The stages are the direct children of ``model.features`` named ``stage<k>``, ordered by k; they must
    be numbered 1..N without gaps (anything else is not a stage layout this harness knows, so ``[]``).
    """
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Module):
        return []
    found = {int(m.group(1)): name for name, _ in features.named_children() if (m := _STAGE.fullmatch(name))}
    if sorted(found) != list(range(1, len(found) + 1)):
        return []
    return [f"features.{found[k]}" for k in sorted(found)]


class FeatureTap:
    """Calls ``model`` and also returns the outputs of the modules ``names`` (in that order).

    ``tap(x)`` → ``(model(x), [output of names[0], ...])``. The outputs are the tensors the model itself
    passes on (no copy, no detach), so gradients flow through them like through the logits. A module
    that runs twice in one recorded forward is an error (its feature would be ambiguous).
    """

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        missing = [name for name in names if name not in modules]
        if not names or missing:
            raise DfqbenchError(
                f"invalid feature layers {missing or names!r} for {type(model).__name__}: "
                f"expected module names of the model, e.g. {stage_names(model) or ['features.stage1']}"
            )
        self.model = model
        self.names = list(names)
        self._recording = False
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._recorder(name)) for name in self.names]

    def _recorder(self, name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not self._recording:
                return
            if name in self._outputs:
                raise RuntimeError(f"feature layer {name!r} ran twice in one forward; its output is ambiguous")
            self._outputs[name] = output

        return record

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._outputs = {}
        self._recording = True
        try:
            out = self.model(x)
        finally:
            self._recording = False
        outputs, self._outputs = self._outputs, {}
        absent = [name for name in self.names if name not in outputs]
        if absent:
            raise RuntimeError(f"feature layers {absent} did not run in the forward of {type(self.model).__name__}")
        return out, [outputs[name] for name in self.names]

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
