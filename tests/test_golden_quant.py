"""dfqbench's quantizer against golden fixtures from the official code (tests/golden/quant/README.md).

The fixtures hold the inputs and outputs of the official GDFQ ``AsymmetricQuantFunction``, ``Quant_Conv2d``,
``Quant_Linear`` and ``QuantAct`` (EMA tracker), and of ZeroQ's and ZAQ's ``QuantAct`` (min/max tracker), made
by tests/golden/make/make_quant.py. Each test runs dfqbench's own quantizer on the same inputs.

Tolerances: outputs and ranges rtol 1e-6 with no absolute slack (a rounding flip moves a value by a whole
step, at least 1e-3 relative here, and zeros must stay exactly zero); straight-through gradients exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dfqbench.quant import FakeQuantSTE, QuantAct, QuantConv2d, QuantLinear, fake_quantize

GOLDEN = Path(__file__).parent / "golden" / "quant"
RTOL = 1e-6


def _load(name: str) -> dict:
    return torch.load(GOLDEN / name, weights_only=True)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = RTOL, atol: float = 0.0) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


FUNCTION = _load("function.pt")["cases"]


@pytest.mark.parametrize("case", FUNCTION, ids=[c["name"] for c in FUNCTION])
def test_fake_quantize_matches_official_function(case):
    """GDFQ AsymmetricQuantFunction: exact ties (even and odd zero points), random ranges, a degenerate range."""
    with torch.no_grad():
        out = fake_quantize(case["x"], case["bits"], case["lo"], case["hi"])
    _close(out, case["out"], f"{case['name']} fake_quantize")
    x = case["x"].clone().requires_grad_(True)
    ste = FakeQuantSTE.apply(x, case["bits"], case["lo"], case["hi"])
    _close(ste.detach(), case["out"], f"{case['name']} FakeQuantSTE")
    ste.backward(case["upstream"])
    torch.testing.assert_close(x.grad, case["grad_x"], rtol=0, atol=0)


def test_function_fixture_has_ties_that_rounding_decides():
    """The tie cases really contain values exactly halfway between two levels (so they test the rounding)."""
    case = next(c for c in FUNCTION if c["name"] == "tie_odd_zero_point")
    scale = (2 ** case["bits"] - 1) / (case["hi"] - case["lo"])
    t = case["x"] * scale - (torch.round(scale * case["lo"]) + 2 ** (case["bits"] - 1))
    assert ((t - t.floor()) == 0.5).sum() >= 10


WEIGHTS = _load("weights.pt")["cases"]


def _dfq_weight_layer(case: dict) -> nn.Module:
    weight, bias = case["weight"], case["bias"]
    if case["kind"] == "conv":
        layer = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], stride=case["stride"],
                          padding=case["padding"], bias=bias is not None)
    else:
        layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return (QuantConv2d if case["kind"] == "conv" else QuantLinear)(layer, case["bits"])


@pytest.mark.parametrize("case", WEIGHTS, ids=[c["name"] for c in WEIGHTS])
def test_weight_quantization_matches_official_layers(case):
    """GDFQ Quant_Conv2d / Quant_Linear: per-channel quantized weight, output and STE gradients."""
    layer = _dfq_weight_layer(case)
    with torch.no_grad():
        _close(layer.quantized_weight(), case["weight_q"], f"{case['name']} quantized weight")
    x = case["x"].clone().requires_grad_(True)
    out = layer(x)
    _close(out.detach(), case["out"], f"{case['name']} output", rtol=1e-5, atol=1e-6)
    out.backward(case["upstream"])
    _close(x.grad, case["grad_x"], f"{case['name']} input gradient", rtol=1e-5, atol=1e-6)
    _close(layer.weight.grad, case["grad_weight"], f"{case['name']} weight gradient", rtol=1e-5, atol=1e-6)
    if "grad_bias" in case:
        _close(layer.bias.grad, case["grad_bias"], f"{case['name']} bias gradient", rtol=1e-5, atol=1e-6)


def _run_sequence(seq: dict, tracker: str, what: str) -> None:
    """Replay an official QuantAct sequence (updates, then a frozen forward) on a fresh dfqbench QuantAct."""
    act = QuantAct(seq["bits"], tracker)
    for i, step in enumerate(seq["steps"]):
        act.update_ranges = step["update"]
        with_grad = "grad_x" in step
        x = step["x"].clone().requires_grad_(with_grad)
        with torch.set_grad_enabled(with_grad):
            out = act(x)
        label = f"{what} step {i}"
        _close(act.x_min, step["x_min"], f"{label} x_min")
        _close(act.x_max, step["x_max"], f"{label} x_max")
        if "beta_t" in step:
            _close(act.beta_t, step["beta_t"], f"{label} beta_t")
        _close(out.detach(), step["out"], f"{label} output")
        if with_grad:
            out.backward(step["upstream"])
            torch.testing.assert_close(x.grad, step["grad_x"], rtol=0, atol=0)


GDFQ_ACTS = _load("act_gdfq_ema.pt")


@pytest.mark.parametrize("name", ["ema_4bit", "ema_8bit"])
def test_ema_gdfq_tracker_matches_official_quant_act(name):
    """GDFQ QuantAct: the compounding bias-corrected EMA (β = 0.9) over 12 / 4 updates, then frozen."""
    _run_sequence(GDFQ_ACTS[name], "ema_gdfq", f"gdfq {name}")


def test_ema_gdfq_fixture_shows_the_compounding_inflation():
    """The official ranges inflate (x_max grows far beyond any batch max) — what the tracker must reproduce."""
    steps = GDFQ_ACTS["ema_4bit"]["steps"]
    batch_max = max(float(s["x"].max()) for s in steps)
    assert max(float(s["x_max"]) for s in steps) > 100 * batch_max


def test_ema_gdfq_frozen_fresh_has_no_fallback():
    """GDFQ commented out ZeroQ's x_min == x_max fallback: a never-updated frozen QuantAct collapses x to ~0."""
    case = GDFQ_ACTS["frozen_fresh"]
    act = QuantAct(case["bits"], "ema_gdfq")
    act.update_ranges = False
    with torch.no_grad():
        _close(act(case["x"]), case["out"], "gdfq frozen fresh")


@pytest.mark.parametrize("index", range(3))
def test_activation_ties_match_official_quant_act(index):
    case = GDFQ_ACTS["ties"][index]
    act = QuantAct(4, "ema_gdfq")
    act.x_min.fill_(float(case["lo"]))
    act.x_max.fill_(float(case["hi"]))
    act.update_ranges = False
    with torch.no_grad():
        _close(act(case["x"]), case["out"], f"ties [{float(case['lo'])}, {float(case['hi'])}]")


@pytest.mark.parametrize("source", ["zeroq", "zaq"])
def test_minmax_tracker_matches_official_quant_act(source):
    """ZeroQ's / ZAQ's QuantAct: the running min/max that only widens (ZAQ's also with its STE backward)."""
    data = _load(f"act_{source}_minmax.pt")
    _run_sequence(data["minmax_4bit"], "minmax", f"{source} minmax")


@pytest.mark.parametrize("source", ["zeroq", "zaq"])
def test_minmax_fallback_matches_official(source):
    """ZeroQ/ZAQ: when x_min == x_max (a fresh frozen QuantAct) the tensor's own min/max are used."""
    case = _load(f"act_{source}_minmax.pt")["frozen_fresh_fallback"]
    act = QuantAct(case["bits"], "minmax")
    act.update_ranges = False
    with torch.no_grad():
        _close(act(case["x"]), case["out"], f"{source} fallback")
