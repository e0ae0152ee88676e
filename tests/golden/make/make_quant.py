"""Golden fixtures of the common quantizer from the official code (tests/golden/quant/README.md).

    python tests/golden/make/make_quant.py /tmp/golden/GDFQ /tmp/golden/ZeroQ /tmp/golden/ZAQ tests/golden/quant

The three folders are exports made by ``prepare_official.sh`` from clones of the official repositories
(commands in tests/golden/quant/README.md; no patch is needed for the quantizer files).
Each official quantizer package is loaded by path under its own name (``gdfq_qu``, ``zeroq_qu``, ``zaq_qu``),
the official classes and functions are run on small fixed inputs, and the inputs and outputs are saved as
tensors only. Nothing official is copied into dfqbench. Everything runs in float32 (the quantizer's float32
arithmetic, e.g. the ``ema_gdfq`` 1 − β, is the point); the inputs are made portably (golden_common's
portable_randn and :func:`linspace` below: the same bits on every CPU), and every output but a conv / linear
layer's output and gradients is elementwise or min/max arithmetic, so the tests compare those bit for bit.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_common import FORMAT, portable_randn, random_batches  # noqa: E402

SOURCES = {
    "gdfq": ("xushoukai/GDFQ", "a93210e7309527cdd0ac2763d2a6928a8a767838", "quantization_utils"),
    "zeroq": ("amirgholami/ZeroQ", "9715739b8731a44d064901b50260aeebbe9a10bc",
              "classification/utils/quantization_utils"),
    "zaq": ("FLHonker/ZAQ-code", "e7e9f55791e36c6784d58c356d3ced76a7583369", "quantization/quant_utils"),
}


def load_quant_package(alias: str, folder: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """Import the official ``quant_utils`` and ``quant_modules`` of ``folder`` as package ``alias``."""
    package = types.ModuleType(alias)
    package.__path__ = [str(folder)]  # a namespace-like package, so `from .quant_utils import *` resolves
    sys.modules[alias] = package
    return importlib.import_module(f"{alias}.quant_utils"), importlib.import_module(f"{alias}.quant_modules")


def linspace(start: float, end: float, steps: int) -> torch.Tensor:
    """``torch.linspace(start, end, steps)`` in float32 with the same bits on every CPU: ATen's vectorised
    linspace rounds differently from its scalar one. Here start + i·step in float64 (a multiplication and an
    addition, each exactly rounded), then a correctly rounded cast."""
    step = (end - start) / (steps - 1)
    return (torch.arange(steps, dtype=torch.float64) * step + start).to(torch.float32)


def function_cases(qu: types.ModuleType) -> list[dict]:
    """GDFQ's AsymmetricQuantFunction on fixed inputs: exact rounding ties, random values, a degenerate range."""
    cases = []
    halves = torch.arange(-6.0, 14.0, 0.5)  # every half-integer and integer in [-6, 13.5]: ties, clipping
    specs = [
        ("tie_even_zero_point", 4, -4.0, 11.0, halves),  # s = 1, z = -4 + 8 = 4
        ("tie_odd_zero_point", 4, -3.0, 12.0, halves),  # s = 1, z = 5: ties round away from round(s·x)
        ("tie_scaled_quarter", 4, -1.0, 2.75, halves * 0.25),  # s = 4 exactly
        ("tie_3bit", 3, -2.0, 5.0, halves),  # s = 1, z = 2
        ("degenerate_range", 4, 0.0, 0.0, linspace(-1e-8, 2e-8, 13)),  # s = 15/1e-8; no fallback in GDFQ
    ]
    gen = torch.Generator().manual_seed(11)
    for bits in (2, 4, 8):
        x = (portable_randn((64,), gen, torch.float64, 1.5) + 0.3).float()
        lo, hi = float(x.min() * 0.8), float(x.max() * 0.9)  # some values outside the range: clipping
        specs.append((f"random_{bits}bit", bits, lo, hi, x))
    for name, bits, lo, hi, x in specs:
        lo_t, hi_t = torch.tensor([lo]), torch.tensor([hi])
        x = x.clone().requires_grad_(True)
        out = qu.AsymmetricQuantFunction.apply(x, bits, lo_t, hi_t)
        upstream = linspace(-1.0, 1.0, x.numel())
        out.backward(upstream)
        cases.append({"name": name, "bits": bits, "lo": lo_t.reshape(()), "hi": hi_t.reshape(()),
                      "x": x.detach(), "out": out.detach(), "upstream": upstream, "grad_x": x.grad.clone()})
    return cases


def _record_weight_function(module: nn.Module) -> list[torch.Tensor]:
    """Wrap the official module's ``weight_function`` (an instance attribute) to keep the quantized weight."""
    seen: list[torch.Tensor] = []
    original = module.weight_function

    def recording(*args):
        out = original(*args)
        seen.append(out.detach().clone())
        return out

    module.weight_function = recording
    return seen


def tie_conv_weight() -> torch.Tensor:
    """(5, 2, 2, 2) conv weights with exact ties per channel, a constant channel and a zero channel."""
    ch0 = [-4.0, 11.0, -3.5, 0.5, 2.5, 10.5, -2.5, 7.5]  # lo -4, hi 11: s = 1, z = 4 (4 bits)
    ch1 = [-3.0, 12.0, 0.5, 1.5, -2.5, 6.5, 11.5, 3.5]  # lo -3, hi 12: z = 5 (odd)
    ch2 = [v * 0.25 for v in ch0]  # s = 4
    ch3 = [0.3] * 8  # degenerate per-channel range: s = 15/1e-8
    ch4 = [0.0] * 8
    return torch.tensor([ch0, ch1, ch2, ch3, ch4]).reshape(5, 2, 2, 2)


def weight_cases(qm: types.ModuleType) -> list[dict]:
    """GDFQ's Quant_Conv2d / Quant_Linear: per-output-channel quantized weight, output and STE gradients."""
    cases = []
    gen = torch.Generator().manual_seed(12)
    convs = [("conv_random", bits, portable_randn((8, 4, 3, 3), gen, scale=0.3), None, (1, 1)) for bits in (2, 4, 8)]
    convs.append(("conv_ties", 4, tie_conv_weight(), torch.tensor([0.1, -0.2, 0.0, 0.3, 0.05]), (0, 1)))
    for name, bits, weight, bias, (padding, stride) in convs:
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], stride=stride, padding=padding,
                         bias=bias is not None)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
        module = qm.Quant_Conv2d(weight_bit=bits)
        module.set_param(conv)
        seen = _record_weight_function(module)
        x = portable_randn((2, weight.shape[1], 6, 6), gen).requires_grad_(True)
        out = module(x)
        upstream = portable_randn(tuple(out.shape), gen)
        out.backward(upstream)
        cases.append({"name": name, "kind": "conv", "bits": bits, "weight": weight, "bias": bias,
                      "padding": padding, "stride": stride, "x": x.detach(), "weight_q": seen[0],
                      "out": out.detach(), "upstream": upstream, "grad_x": x.grad.clone(),
                      "grad_weight": module.weight.grad.clone()})
    tie_rows = tie_conv_weight().reshape(5, 8)
    linears = [("linear_random", 4, portable_randn((6, 10), gen, scale=0.4), portable_randn((6,), gen, scale=0.1)),
               ("linear_ties", 4, tie_rows, torch.zeros(5))]
    for name, bits, weight, bias in linears:
        linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        module = qm.Quant_Linear(weight_bit=bits)
        module.set_param(linear)
        seen = _record_weight_function(module)
        x = portable_randn((3, weight.shape[1]), gen).requires_grad_(True)
        out = module(x)
        upstream = portable_randn(tuple(out.shape), gen)
        out.backward(upstream)
        cases.append({"name": name, "kind": "linear", "bits": bits, "weight": weight, "bias": bias,
                      "x": x.detach(), "weight_q": seen[0], "out": out.detach(), "upstream": upstream,
                      "grad_x": x.grad.clone(), "grad_weight": module.weight.grad.clone(),
                      "grad_bias": module.bias.grad.clone()})
    return cases


def activation_batches(seed: int, count: int) -> list[torch.Tensor]:
    """(2, 3, 4, 4) batches with drifting location and spread, half of them post-ReLU (min exactly 0)."""
    raw = random_batches(seed, count, (2, 3, 4, 4))
    out = []
    for i, x in enumerate(raw):
        x = x * (0.5 + 0.25 * i) + (0.3 * i - 1.0)
        out.append(torch.relu(x) if i % 2 else x)
    return out


def act_sequence(qm: types.ModuleType, bits: int, batches: list[torch.Tensor], frozen: torch.Tensor,
                 with_grad: bool) -> dict:
    """An official QuantAct (fresh) updated on each batch (running_stat True), then fixed and run on ``frozen``.

    Records the output and the (x_min, x_max[, beta_t]) buffers after every forward; with ``with_grad`` also the
    input gradient for a fixed upstream gradient (the STE).
    """
    act = qm.QuantAct(activation_bit=bits)
    steps = []
    for i, x in enumerate(batches + [frozen]):
        if i == len(batches):
            act.fix()
        x = x.clone().requires_grad_(with_grad)
        out = act(x)
        step = {"x": x.detach(), "out": out.detach(), "x_min": act.x_min.detach().clone().reshape(()),
                "x_max": act.x_max.detach().clone().reshape(()), "update": i < len(batches)}
        if hasattr(act, "beta_t"):
            step["beta_t"] = act.beta_t.detach().clone().reshape(())
        if with_grad:
            upstream = linspace(-2.0, 2.0, x.numel()).reshape(x.shape)
            out.backward(upstream)
            step["upstream"], step["grad_x"] = upstream, x.grad.clone()
        steps.append(step)
    return {"bits": bits, "steps": steps}


def frozen_fresh(qm: types.ModuleType, bits: int, x: torch.Tensor) -> dict:
    """A fresh QuantAct fixed before any update (x_min = x_max = 0) run on ``x``: GDFQ collapses to ~0, ZeroQ
    and ZAQ fall back to x's own min/max."""
    act = qm.QuantAct(activation_bit=bits)
    act.fix()
    with torch.no_grad():
        return {"bits": bits, "x": x, "out": act(x).clone()}


def tie_activation(qm: types.ModuleType) -> list[dict]:
    """A fixed GDFQ QuantAct whose buffers are set to exact-tie ranges, on half-integer inputs."""
    cases = []
    x = torch.arange(-6.0, 14.0, 0.5).reshape(1, 1, 5, 8)
    for lo, hi in ((-4.0, 11.0), (-3.0, 12.0), (0.0, 15.0)):
        act = qm.QuantAct(activation_bit=4)
        act.x_min.fill_(lo)
        act.x_max.fill_(hi)
        act.fix()
        with torch.no_grad():
            cases.append({"lo": torch.tensor(lo), "hi": torch.tensor(hi), "x": x, "out": act(x).clone()})
    return cases


def main(argv: list[str]) -> None:
    if len(argv) != 4:
        raise SystemExit("usage: make_quant.py GDFQ_DIR ZEROQ_DIR ZAQ_DIR OUT_DIR")
    roots = dict(zip(("gdfq", "zeroq", "zaq"), map(Path, argv[:3])))
    out_dir = Path(argv[3])
    out_dir.mkdir(parents=True, exist_ok=True)
    packages = {kind: load_quant_package(f"{kind}_qu", roots[kind] / SOURCES[kind][2]) for kind in roots}
    meta = {"format": FORMAT, "torch": str(torch.__version__),
            "sources": {k: {"repo": r, "commit": c, "path": p} for k, (r, c, p) in SOURCES.items()}}

    g_qu, g_qm = packages["gdfq"]
    torch.save({**meta, "cases": function_cases(g_qu)}, out_dir / "function.pt")
    torch.save({**meta, "cases": weight_cases(g_qm)}, out_dir / "weights.pt")

    frozen = activation_batches(21, 1)[0] * 3.0  # wider than the tracked range: clipping
    gdfq_acts = {
        "ema_4bit": act_sequence(g_qm, 4, activation_batches(22, 12), frozen, with_grad=True),
        "ema_8bit": act_sequence(g_qm, 8, activation_batches(23, 4), frozen, with_grad=False),
        "frozen_fresh": frozen_fresh(g_qm, 4, frozen),
        "ties": tie_activation(g_qm),
    }
    torch.save({**meta, **gdfq_acts}, out_dir / "act_gdfq_ema.pt")

    _, z_qm = packages["zeroq"]
    zeroq_acts = {
        "minmax_4bit": act_sequence(z_qm, 4, activation_batches(24, 6), frozen, with_grad=False),
        "frozen_fresh_fallback": frozen_fresh(z_qm, 4, frozen),
    }
    torch.save({**meta, **zeroq_acts}, out_dir / "act_zeroq_minmax.pt")

    _, a_qm = packages["zaq"]
    zaq_acts = {
        "minmax_4bit": act_sequence(a_qm, 4, activation_batches(25, 4), frozen, with_grad=True),
        "frozen_fresh_fallback": frozen_fresh(a_qm, 4, frozen),
    }
    torch.save({**meta, **zaq_acts}, out_dir / "act_zaq_minmax.pt")
    for path in sorted(out_dir.glob("*.pt")):
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
