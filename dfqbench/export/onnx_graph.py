"""The trained student as an ONNX graph in QDQ form (QuantizeLinear/DequantizeLinear pairs), opset 21.

The student is traced with :mod:`torch.fx` (the quantized layers and activation quantizers as leaves) and each
node is written with :mod:`onnx.helper`:

- ``QuantConv2d`` / ``QuantLinear`` → DequantizeLinear(k-bit integer weight, per-channel scale = 1/s and zero
  point = −z, ``axis=0``) → Conv / Gemm with the float bias (the official layers keep the bias in float);
- ``QuantAct`` → [Clip] → QuantizeLinear → DequantizeLinear, per tensor, on the frozen range
  (:mod:`dfqbench.export.encoding` chooses the types);
- BatchNorm (unfolded, as trained), ReLU, ReLU6, residual adds, pooling and flattening as float ONNX ops;
  the input is not quantized (as in training).

Only the operations of the zoo's networks (pytorchcv ResNets, MobileNetV2, the tiny network) are written;
anything else is a one-line :class:`DfqbenchError` naming it.
"""

from __future__ import annotations

import json
import operator
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from dfqbench.errors import DfqbenchError
from dfqbench.export.encoding import IntType, act_encoding, weight_encoding
from dfqbench.export.quantities import ActQuant, WeightQuant, by_name, student_quantities
from dfqbench.quant import QuantAct, QuantConv2d, QuantLinear

OPSET = 21  # int4 DequantizeLinear (weights), int16/uint16 QuantizeLinear/DequantizeLinear
IR_VERSION = 10  # the IR version of opset 21
INPUT, OUTPUT = "input", "logits"
SUPPORTED = ("QuantConv2d", "QuantLinear", "QuantAct", "Conv2d", "Linear", "BatchNorm2d", "ReLU", "ReLU6",
             "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d(1)", "Flatten", "Dropout", "Identity", "add", "flatten",
             "view/reshape(x.size(0), -1)")


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (QuantAct, QuantConv2d, QuantLinear)) or super().is_leaf_module(m, qualname)


class _BatchSize:
    """The value of ``x.size(0)``: only used to flatten (``x.view(x.size(0), -1)``)."""


def _onnx():
    from dfqbench.export.deps import require

    require("onnx", "--format onnx")
    import onnx

    return onnx


def _pair(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 2


class _Graph:
    """Nodes and initializers being written, with unique names."""

    def __init__(self, onnx: Any) -> None:
        self.onnx = onnx
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.names: set[str] = set()

    def const(self, name: str, array: np.ndarray) -> str:
        name = self._unique(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def float_const(self, name: str, tensor: torch.Tensor | float) -> str:
        data = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.array(tensor)
        return self.const(name, data.astype(np.float32))

    def int_const(self, name: str, values: np.ndarray, kind: IntType) -> str:
        if values.size and (values.min() < kind.low or values.max() > kind.high):
            raise ValueError(f"internal: {name} outside {kind.name}")  # a cast below would wrap silently
        return self.const(name, values.astype(_numpy_type(kind)))

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        out = self._unique(name)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def _unique(self, name: str) -> str:
        base, n = name, 1
        while name in self.names:
            n += 1
            name = f"{base}_{n}"
        self.names.add(name)
        return name


def _numpy_type(kind: IntType) -> Any:
    if kind.bits == 4:
        import ml_dtypes  # onnx's own dependency for its 4-bit types

        return ml_dtypes.int4 if kind.signed else ml_dtypes.uint4
    return np.dtype(("int" if kind.signed else "uint") + str(kind.bits))


def _weight(g: _Graph, w: WeightQuant) -> str:
    enc = weight_encoding(w)
    scale = g.float_const(f"{w.name}.weight_scale", 1.0 / w.inv_scale)
    values = g.int_const(f"{w.name}.weight_q", enc.values, enc.type)
    zero = g.int_const(f"{w.name}.weight_zero_point", enc.zero_points, enc.type)
    return g.node("DequantizeLinear", [values, scale, zero], f"{w.name}.weight", axis=0)


def _act(g: _Graph, a: ActQuant, x: str) -> str:
    enc = act_encoding(a)
    scale_value = 1.0 / a.inv_scale
    scale = g.float_const(f"{a.name}.scale", scale_value)
    zero = g.int_const(f"{a.name}.zero_point", np.array(enc.zero_point), enc.type)
    if enc.clip is not None:
        low, high = (g.float_const(f"{a.name}.clip_{end}", value * scale_value) for end, value in
                     zip(("min", "max"), enc.clip))
        x = g.node("Clip", [x, low, high], f"{a.name}.clip")
    q = g.node("QuantizeLinear", [x, scale, zero], f"{a.name}.q")
    return g.node("DequantizeLinear", [q, scale, zero], f"{a.name}.dq")


def _conv(g: _Graph, name: str, module: nn.Module, x: str, weight: str) -> str:
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise DfqbenchError(f"cannot export {name}: padding {module.padding!r} mode {module.padding_mode!r} "
                            "(only numeric zero padding)")
    inputs = [x, weight] + ([g.float_const(f"{name}.bias", module.bias)] if module.bias is not None else [])
    ph, pw = _pair(module.padding)
    return g.node("Conv", inputs, name, kernel_shape=_pair(module.kernel_size), strides=_pair(module.stride),
                  pads=[ph, pw, ph, pw], dilations=_pair(module.dilation), group=int(module.groups))


def _linear(g: _Graph, name: str, module: nn.Module, x: str, weight: str) -> str:
    inputs = [x, weight] + ([g.float_const(f"{name}.bias", module.bias)] if module.bias is not None else [])
    return g.node("Gemm", inputs, name, transB=1)


def _pool(g: _Graph, name: str, module: nn.Module, x: str) -> str:
    kernel = _pair(module.kernel_size)
    stride = _pair(module.stride if module.stride is not None else module.kernel_size)
    ph, pw = _pair(module.padding)
    common = dict(kernel_shape=kernel, strides=stride, pads=[ph, pw, ph, pw], ceil_mode=int(module.ceil_mode))
    if isinstance(module, nn.MaxPool2d):
        if module.return_indices:
            raise DfqbenchError(f"cannot export {name}: MaxPool2d with return_indices")
        return g.node("MaxPool", [x], name, dilations=_pair(module.dilation), **common)
    if module.divisor_override is not None:
        raise DfqbenchError(f"cannot export {name}: AvgPool2d with divisor_override")
    return g.node("AveragePool", [x], name, count_include_pad=int(module.count_include_pad), **common)


def _module(g: _Graph, name: str, module: nn.Module, x: str, weights: dict, acts: dict) -> str:
    if isinstance(module, QuantConv2d):
        return _conv(g, name, module, x, _weight(g, weights[name]))
    if isinstance(module, QuantLinear):
        return _linear(g, name, module, x, _weight(g, weights[name]))
    if isinstance(module, QuantAct):
        return _act(g, acts[name], x)
    if type(module) is nn.Conv2d:  # a layer the quantizer left in float
        return _conv(g, name, module, x, g.float_const(f"{name}.weight", module.weight))
    if type(module) is nn.Linear:
        return _linear(g, name, module, x, g.float_const(f"{name}.weight", module.weight))
    if isinstance(module, nn.BatchNorm2d):
        if module.running_mean is None:
            raise DfqbenchError(f"cannot export {name}: BatchNorm2d without running statistics")
        channels = module.num_features
        weight = module.weight if module.weight is not None else torch.ones(channels)
        bias = module.bias if module.bias is not None else torch.zeros(channels)
        inputs = [x] + [g.float_const(f"{name}.{k}", t) for k, t in (("weight", weight), ("bias", bias), (
            "running_mean", module.running_mean), ("running_var", module.running_var))]
        return g.node("BatchNormalization", inputs, name, epsilon=float(module.eps))
    if type(module) is nn.ReLU:
        return g.node("Relu", [x], name)
    if type(module) is nn.ReLU6:
        return g.node("Clip", [x, g.float_const(f"{name}.min", 0.0), g.float_const(f"{name}.max", 6.0)], name)
    if type(module) in (nn.MaxPool2d, nn.AvgPool2d):
        return _pool(g, name, module, x)
    if type(module) is nn.AdaptiveAvgPool2d and _pair(module.output_size) == [1, 1]:
        return g.node("GlobalAveragePool", [x], name)
    if type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
        return g.node("Flatten", [x], name, axis=1)
    if type(module) in (nn.Dropout, nn.Identity):  # eval mode: the identity
        return x
    raise DfqbenchError(f"cannot export module {name!r} of type {type(module).__name__} to ONNX; "
                        f"supported: {', '.join(SUPPORTED)}")


def _is_flatten(node: fx.Node, values: dict) -> bool:
    """``torch.flatten(x, 1)`` / ``x.flatten(1)`` / ``x.view(x.size(0), -1)`` / ``x.reshape(x.size(0), -1)``."""
    args = list(node.args[1:])
    if node.target in (torch.flatten, "flatten"):
        start = node.kwargs.get("start_dim", args[0] if args else 0)
        end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        return start == 1 and end == -1
    if node.target in ("view", "reshape") and not node.kwargs:
        shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return len(shape) == 2 and isinstance(values.get(shape[0]), _BatchSize) and shape[1] == -1
    return False


def _function(g: _Graph, node: fx.Node, values: dict) -> Any:
    def value(arg: Any) -> Any:
        return values[arg] if isinstance(arg, fx.Node) else arg

    if node.target in (operator.add, operator.iadd, torch.add, "add", "add_") and not node.kwargs:
        a, b = (value(arg) for arg in node.args)
        if isinstance(a, str) and isinstance(b, str):
            return g.node("Add", [a, b], node.name)
    if node.target == "size" and node.args[1:] in ((0,),) and not node.kwargs:
        return _BatchSize()
    if _is_flatten(node, values):
        return g.node("Flatten", [value(node.args[0])], node.name, axis=1)
    if node.target in (torch.relu, nn.functional.relu, "relu", "relu_"):
        return g.node("Relu", [value(node.args[0])], node.name)
    target = getattr(node.target, "__name__", node.target)
    raise DfqbenchError(f"cannot export the operation {target!r} ({node.format_node()}) to ONNX; "
                        f"supported: {', '.join(SUPPORTED)}")


def build_onnx(student: nn.Module, input_size: int, num_classes: int, metadata: dict[str, Any]) -> Any:
    """The ONNX ``ModelProto`` of ``student`` (eval mode, ranges frozen) for float32 input N×3×size×size,
    normalised as the teacher's; ``metadata`` goes into ``metadata_props`` (values as JSON)."""
    onnx = _onnx()
    weights, acts = student_quantities(student)
    weight_of, act_of = by_name(weights), by_name(acts)
    graph = _Tracer().trace(student)
    modules = dict(student.named_modules(remove_duplicate=False))
    g = _Graph(onnx)
    g.names.add(INPUT)
    values: dict[fx.Node, Any] = {}
    output: str | None = None
    for node in graph.nodes:
        if node.op == "placeholder":
            values[node] = INPUT
        elif node.op == "call_module":
            module = modules[node.target]
            name = next(n for n, m in student.named_modules() if m is module)  # a shared module: its first name
            values[node] = _module(g, name, module, values[node.args[0]], weight_of, act_of)
        elif node.op in ("call_function", "call_method"):
            values[node] = _function(g, node, values)
        elif node.op == "output":
            output = values[node.args[0]]
        else:
            raise DfqbenchError(f"cannot export the {node.op} node {node.name!r} to ONNX")
    if not isinstance(output, str):
        raise DfqbenchError("cannot export: the student's output is not one tensor")
    g.nodes.append(onnx.helper.make_node("Identity", [output], [OUTPUT], name=OUTPUT))
    helper, TensorProto = onnx.helper, onnx.TensorProto
    onnx_graph = helper.make_graph(
        g.nodes, "dfqbench_student",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, input_size, input_size])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", num_classes])], g.initializers)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="dfqbench", doc_string="dfqbench fake-quantized student (QDQ)")
    helper.set_model_props(model, {f"dfqbench.{k}": json.dumps(v) for k, v in metadata.items()})
    onnx.checker.check_model(model, full_check=True)
    return model
