"""dfqbench's quantizer against golden fixtures from the official code (tests/golden/quant/README.md).

The fixtures hold the inputs and outputs of the official GDFQ ``AsymmetricQuantFunction``, ``Quant_Conv2d``,
``Quant_Linear`` and ``QuantAct`` (EMA tracker), and of ZeroQ's and ZAQ's ``QuantAct`` (min/max tracker), made
by tests/golden/make/make_quant.py. Each test runs dfqbench's own quantizer on the same inputs.

Comparisons (tests/golden_compare.py): everything that is elementwise float32 arithmetic or a min/max —
quantized values, quantized weights, activation ranges and beta_t (the ``ema_gdfq`` 1 − β float32
arithmetic), straight-through gradients — bit for bit: those are the same bits on every CPU, and a range one
ulp off is a real difference (it moves the grid). Only a conv / linear layer's output and its input, weight
and bias gradients (oneDNN / BLAS reductions, whose last bits depend on the CPU's kernels) have a tolerance,
set from the spread measured under every kernel setting (tests/golden/quant/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dfqbench.quant import FakeQuantSTE, QuantAct, QuantConv2d, QuantLinear, fake_quantize

from golden_compare import assert_golden_close, assert_golden_equal

sys.path.insert(0, str(Path(__file__).parent / "golden" / "make"))
from golden_common import FORMAT  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "quant"
LAYER_RTOL, LAYER_ATOL = 1e-5, 1e-5  # float32 conv / linear outputs and gradients, values O(1-10) (spread: README)


def _load(name: str) -> dict:
    data = torch.load(GOLDEN / name, weights_only=True)
    assert data["format"] == FORMAT, f"{name}: made with golden_common format {data['format']}, tests use {FORMAT}"
    return data


FUNCTION = _load("function.pt")["cases"]


@pytest.mark.parametrize("case", FUNCTION, ids=[c["name"] for c in FUNCTION])
def test_fake_quantize_matches_official_function(case):
    """GDFQ AsymmetricQuantFunction: exact ties (even and odd zero points), random ranges, a degenerate range."""
    with torch.no_grad():
        out = fake_quantize(case["x"], case["bits"], case["lo"], case["hi"])
    assert_golden_equal(f"{case['name']} fake_quantize", out, case["out"])
    x = case["x"].clone().requires_grad_(True)
    ste = FakeQuantSTE.apply(x, case["bits"], case["lo"], case["hi"])
    assert_golden_equal(f"{case['name']} FakeQuantSTE", ste, case["out"])
    ste.backward(case["upstream"])
    assert_golden_equal(f"{case['name']} STE gradient", x.grad, case["grad_x"])


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
        assert_golden_equal(f"{case['name']} quantized weight", layer.quantized_weight(), case["weight_q"])
    x = case["x"].clone().requires_grad_(True)
    out = layer(x)
    assert_golden_close(f"{case['name']} output", out, case["out"], LAYER_RTOL, LAYER_ATOL)
    out.backward(case["upstream"])
    assert_golden_close(f"{case['name']} input gradient", x.grad, case["grad_x"], LAYER_RTOL, LAYER_ATOL)
    assert_golden_close(f"{case['name']} weight gradient", layer.weight.grad, case["grad_weight"], LAYER_RTOL,
                        LAYER_ATOL)
    if "grad_bias" in case:
        assert_golden_close(f"{case['name']} bias gradient", layer.bias.grad, case["grad_bias"], LAYER_RTOL,
                            LAYER_ATOL)


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
        assert_golden_equal(f"{label} x_min", act.x_min, step["x_min"])
        assert_golden_equal(f"{label} x_max", act.x_max, step["x_max"])
        if "beta_t" in step:
            assert_golden_equal(f"{label} beta_t", act.beta_t, step["beta_t"])
        assert_golden_equal(f"{label} output", out, step["out"])
        if with_grad:
            out.backward(step["upstream"])
            assert_golden_equal(f"{label} STE gradient", x.grad, step["grad_x"])


GDFQ_ACTS = _load("act_gdfq_ema.pt")


@pytest.mark.parametrize("name", ["ema_4bit", "ema_8bit"])
def test_ema_gdfq_tracker_matches_official_quant_act(name):
    """GDFQ QuantAct: the compounding bias-corrected EMA (β = 0.9) over 12 / 4 updates, then frozen; ranges and
    beta_t bit for bit (the official float32 1 − β = fl32(1 − fl32(0.9)), not 0.1)."""
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
        assert_golden_equal("gdfq frozen fresh", act(case["x"]), case["out"])


@pytest.mark.parametrize("index", range(3))
def test_activation_ties_match_official_quant_act(index):
    case = GDFQ_ACTS["ties"][index]
    act = QuantAct(4, "ema_gdfq")
    act.x_min.fill_(float(case["lo"]))
    act.x_max.fill_(float(case["hi"]))
    act.update_ranges = False
    with torch.no_grad():
        assert_golden_equal(f"ties [{float(case['lo'])}, {float(case['hi'])}]", act(case["x"]), case["out"])


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
        assert_golden_equal(f"{source} fallback", act(case["x"]), case["out"])
