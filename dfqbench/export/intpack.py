"""The integer pack (``--format int``): integer weights, scales and zero points as tensors, and its loader.

A folder with ``tensors.safetensors`` (no pickle: it loads without executing anything) and ``manifest.json``.
For every weight-quantized layer ``L`` (module path of the student):

- ``L.weight_q``: the k-bit integers q (int8, or int16 above 8 bits), in [−2^(k−1), 2^(k−1) − 1];
- ``L.weight_zero_point`` (int32, per output channel) = −z and ``L.weight_scale`` (float32) = 1/s: the
  dequantized weight is ``(q − zero_point) · scale`` in the usual convention;
- ``L.weight_inv_scale`` (float32) = s, the quantizer's own "levels per unit": ``(q − zero_point) / inv_scale``
  is the trained student's fake-quantized weight bit for bit (the form :func:`load_int` uses);
- ``L.bias`` (float32) when the layer has one.

For every activation quantizer ``A``: ``A.scale`` (float32), ``A.zero_point`` (int32), ``A.inv_scale`` and the
frozen range ``A.range_min`` / ``A.range_max`` it was derived from (as above; the activation integers are
``clamp(round(x·s − z), −2^(k−1), 2^(k−1) − 1)``). Every other parameter and buffer of the student
(BatchNorm) is stored in float32 under its own name. ``manifest.json`` lists the layers with their bits, the run's spec
(to rebuild the architecture) and where the student came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dfqbench.errors import DfqbenchError
from dfqbench.store.files import parse_json
from dfqbench.export.deps import require
from dfqbench.export.quantities import student_quantities
from dfqbench.export.source import ExportSource
from dfqbench.quant import QuantAct, QuantConv2d, QuantLinear, fake_quantize

FORMAT = "dfqbench-int"
FORMAT_VERSION = 1
TENSORS_FILE = "tensors.safetensors"
MANIFEST_FILE = "manifest.json"


def pack_tensors(source: ExportSource) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and the manifest of ``source``'s student."""
    student = source.student
    weights, acts = student_quantities(student)
    tensors: dict[str, Tensor] = {}
    layers, activations = [], []
    for w in weights:
        tensors[f"{w.name}.weight_q"] = w.q.to(torch.int8 if w.bits <= 8 else torch.int16)
        tensors[f"{w.name}.weight_zero_point"] = (-w.zero).to(torch.int32)
        tensors[f"{w.name}.weight_scale"] = 1.0 / w.inv_scale
        tensors[f"{w.name}.weight_inv_scale"] = w.inv_scale
        if w.bias is not None:
            tensors[f"{w.name}.bias"] = w.bias
        layers.append({"name": w.name, "kind": w.kind, "bits": w.bits, "bias": w.bias is not None,
                       "shape": list(w.q.shape)})
    for a in acts:
        tensors.update({f"{a.name}.scale": 1.0 / a.inv_scale, f"{a.name}.zero_point": (-a.zero).to(torch.int32),
                        f"{a.name}.inv_scale": a.inv_scale, f"{a.name}.range_min": a.lo, f"{a.name}.range_max": a.hi})
        activations.append({"name": a.name, "bits": a.bits})
    quantized = _quantized_names(student)  # every name of a quantized module, aliases of a shared one too
    for name, tensor in student.state_dict().items():
        owner = name.rpartition(".")[0]
        if owner not in quantized and tensor.is_floating_point():
            tensors[name] = tensor.detach().to(torch.float32)
        elif owner not in quantized:
            tensors[name] = tensor.detach()  # e.g. BatchNorm's num_batches_tracked
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "tensors": TENSORS_FILE,
                "convention": "x = (q - zero_point) * scale; exactly as trained: (q - zero_point) / inv_scale",
                "source": source.metadata(), "spec": source.spec, "layers": layers, "activations": activations}
    return {k: v.contiguous().clone() for k, v in tensors.items()}, manifest


def _quantized_names(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, (QuantAct, QuantConv2d, QuantLinear))}


def write_int(source: ExportSource, folder: Path) -> Path:
    """Write the pack of ``source`` into ``folder`` (created); returns the manifest's path."""
    require("safetensors", "--format int")
    from safetensors.torch import save

    from dfqbench.store import atomic_write_bytes, atomic_write_json

    tensors, manifest = pack_tensors(source)
    folder = Path(folder)
    atomic_write_bytes(folder / TENSORS_FILE, save(tensors, metadata={"format": FORMAT}))
    atomic_write_json(folder / MANIFEST_FILE, manifest, allow_nan=False)
    return folder / MANIFEST_FILE


class FixedActQuant(nn.Module):
    """An activation quantizer with a fixed range: :func:`dfqbench.quant.fake_quantize` on [lo, hi], which is
    what a frozen :class:`~dfqbench.quant.QuantAct` computes."""

    def __init__(self, bits: int, lo: Tensor, hi: Tensor) -> None:
        super().__init__()
        self.bits = int(bits)
        self.register_buffer("range_min", lo.clone())
        self.register_buffer("range_max", hi.clone())

    def forward(self, x: Tensor) -> Tensor:
        return fake_quantize(x, self.bits, self.range_min, self.range_max)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def _plain(module: QuantConv2d | QuantLinear, weight: Tensor, bias: Tensor | None) -> nn.Module:
    if isinstance(module, QuantConv2d):
        layer: nn.Module = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                     module.padding, module.dilation, module.groups, bias is not None,
                                     module.padding_mode)
    else:
        layer = nn.Linear(module.in_features, module.out_features, bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def load_int(path: str | Path) -> nn.Module:
    """The float model an integer pack describes (``path``: the pack's folder or its ``manifest.json``), in eval
    mode: the run's architecture with plain Conv2d/Linear layers holding the dequantized weights
    ``(q − zero_point) / inv_scale`` and each activation quantizer replaced by :class:`FixedActQuant` on its
    stored range. It computes what the exported student computed (its top-1 is the recorded one)."""
    require("safetensors", "loading an integer pack")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from dfqbench.core.snapshots import build_student

    folder = Path(path)
    folder = folder.parent if folder.name == MANIFEST_FILE else folder
    try:
        manifest = parse_json((folder / MANIFEST_FILE).read_bytes())
        if not isinstance(manifest, dict):
            raise ValueError("the manifest is not a JSON object")
        tensors = load_file(str(folder / manifest.get("tensors", TENSORS_FILE)))
    except (OSError, ValueError, SafetensorError) as exc:
        raise DfqbenchError(f"'{folder}' is not a readable dfqbench integer pack ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise DfqbenchError(f"'{folder}' is not a {FORMAT} pack of version {FORMAT_VERSION} "
                            f"(found {manifest.get('format')!r} version {manifest.get('format_version')!r})")
    model = build_student(manifest["spec"])
    bits = {a["name"]: a["bits"] for a in manifest["activations"]}
    replaced: dict[int, nn.Module] = {}  # by the id of the module it replaces (a shared module once)
    for name, module in model.named_modules():  # first names: the pack's tensors are stored under them
        if isinstance(module, (QuantConv2d, QuantLinear)):
            q = tensors[f"{name}.weight_q"].to(torch.float32)
            shape = (-1,) + (1,) * (q.dim() - 1)
            zero = tensors[f"{name}.weight_zero_point"].to(torch.float32).view(shape)
            weight = (q - zero) / tensors[f"{name}.weight_inv_scale"].view(shape)  # = (q + z) / s, as trained
            replaced[id(module)] = _plain(module, weight, tensors.get(f"{name}.bias"))
        elif isinstance(module, QuantAct):
            replaced[id(module)] = FixedActQuant(bits[name], tensors[f"{name}.range_min"],
                                                 tensors[f"{name}.range_max"])
    aliases = [(name, module) for name, module in model.named_modules(remove_duplicate=False)
               if id(module) in replaced]
    for name, module in aliases:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replaced[id(module)])
    replaced_names = {name for name, _ in aliases}
    rest = {k: v for k, v in tensors.items() if k.rpartition(".")[0] not in replaced_names}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    missing = [k for k in missing if k.rpartition(".")[0] not in replaced_names]
    if missing or unexpected:
        raise DfqbenchError(f"integer pack '{folder}' does not fit its model {manifest['spec'].get('model')!r} "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()
