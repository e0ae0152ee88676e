"""Tests of the shared fake-quantizer (the official ``quant_utils.py`` / ``quant_modules.py``): arithmetic, STE,
trackers, modules and converter."""

from __future__ import annotations

import copy
import dataclasses
import io
import json

import pytest
import torch
from torch import nn

from dfqbench.errors import DfqbenchError
from dfqbench.quant import (
    TRACKERS,
    FakeQuantSTE,
    QuantAct,
    QuantConfig,
    QuantConv2d,
    QuantLinear,
    activation_quantizers,
    fake_quantize,
    parse_bits,
    quantize_model,
    set_range_update,
)
from dfqbench.zoo.tiny import build_tiny as _build_tiny

_TINY: list[nn.Module] = []


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These tensors are tiny: one intra-op thread avoids OpenMP spin-waits on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_tiny() -> nn.Module:
    """A fresh copy of the seeded tiny network (built once per module: building it takes ~1 s)."""
    if not _TINY:
        _TINY.append(_build_tiny())
    return copy.deepcopy(_TINY[0])


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def official_reference(x: torch.Tensor, k: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """GDFQ ``quant_utils.py`` L85-139 written out literally, out of place, one op per formula step."""
    s = (2**k - 1) / torch.clamp(hi - lo, min=1e-8)
    z = torch.round(s * lo) + 2 ** (k - 1)
    q = torch.clamp(torch.round(s * x - z), -(2 ** (k - 1)), 2 ** (k - 1) - 1)
    return (q + z) / s


# ---------------------------------------------------------------- fake_quantize


def test_k2_known_range_clips_both_ends() -> None:
    # k=2 on [0, 3]: s = 1, z = 0 + 2; grid {0, 1, 2, 3}; below 0 and above 3 clip.
    x = t(-1.0, 0.0, 0.4, 1.0, 2.6, 3.0, 5.0)
    out = fake_quantize(x, 2, t(0.0)[0], t(3.0)[0])
    assert torch.equal(out, t(0.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0))


def test_zero_is_exactly_representable_when_lo_below_zero_below_hi() -> None:
    # k=2 on [-0.3, 1.0]: s = 3/1.3, s·lo = -0.692 → z = -1 + 2 = 1; grid (q + 1)/s for q in [-2, 1]
    # = {-1/s, 0, 1/s, 2/s}: 0 is on it, the top end 1.0 is clipped to 2/s ≈ 0.867.
    lo, hi = torch.tensor(-0.3), torch.tensor(1.0)
    s = 3.0 / 1.3
    out = fake_quantize(t(0.0, -0.3, 1.0, 0.5, 0.2), 2, lo, hi)
    assert out[0].item() == 0.0
    assert torch.allclose(out, t(0.0, -1 / s, 2 / s, 1 / s, 0.0), atol=1e-6)


def test_zero_maps_to_exact_zero_for_random_ranges() -> None:
    gen = torch.Generator().manual_seed(0)
    lo = -torch.rand(500, 1, generator=gen) * 5
    hi = torch.rand(500, 1, generator=gen) * 5
    for k in (2, 3, 4, 8):
        assert torch.equal(fake_quantize(torch.zeros(500, 1), k, lo, hi), torch.zeros(500, 1))


def test_half_way_values_round_half_to_even_in_the_shifted_domain() -> None:
    # Even zero point: [0, 3], k=2 → z = 2; s·x - z = -1.5, -0.5, 0.5 → -2, -0, 0 → x̂ = 0, 2, 2.
    assert torch.equal(fake_quantize(t(0.5, 1.5, 2.5), 2, torch.tensor(0.0), torch.tensor(3.0)), t(0.0, 2.0, 2.0))
    # Odd zero point: [-1, 2], k=2 → s = 1, z = round(-1) + 2 = 1; s·x - z = -0.5, 0.5, -1.5 → -0, 0, -2
    # → x̂ = 1, 1, -1. The "simplified" round(s·x) form would give 0, 2, 0 here: the official order matters.
    assert torch.equal(fake_quantize(t(0.5, 1.5, -0.5), 2, torch.tensor(-1.0), torch.tensor(2.0)), t(1.0, 1.0, -1.0))


def test_per_channel_ranges_on_a_2d_weight() -> None:
    w = torch.tensor([[-1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 2.0, 3.0]])
    lo, hi = w.aminmax(dim=1)
    # Row 0, [-1, 1]: s = 1.5, z = round(-1.5) + 2 = 0 → q = clamp(round(1.5x), -2, 1) → -2, 0, 1, 1 → /1.5.
    # Row 1, [0, 3]: s = 1, z = 2 → exact.
    expected = torch.tensor([[-4 / 3, 0.0, 2 / 3, 2 / 3], [0.0, 1.0, 2.0, 3.0]])
    assert torch.allclose(fake_quantize(w, 2, lo[:, None], hi[:, None]), expected, atol=1e-6)
    linear = nn.Linear(4, 2)
    with torch.no_grad():
        linear.weight.copy_(w)
    assert torch.allclose(QuantLinear(linear, 2).quantized_weight(), expected, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3, 4, 8, 16])
def test_bit_identical_to_the_literal_official_sequence(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    act = torch.relu(torch.randn(200_000, generator=gen))
    assert torch.equal(fake_quantize(act, k, torch.tensor(0.0), act.max() * 0.7),
                       official_reference(act, k, torch.tensor(0.0), act.max() * 0.7))
    w = torch.randn(64, 32, 3, 3, generator=gen)
    lo, hi = w.flatten(1).aminmax(dim=1)
    lo, hi = lo.view(-1, 1, 1, 1), hi.view(-1, 1, 1, 1)
    assert torch.equal(fake_quantize(w, k, lo, hi), official_reference(w, k, lo, hi))
    assert torch.equal(FakeQuantSTE.apply(w, k, lo, hi), official_reference(w, k, lo, hi))


def test_fake_quantize_is_pure_and_the_autograd_path_agrees() -> None:
    x = torch.randn(1000)
    lo, hi = torch.tensor(-1.0), torch.tensor(1.5)
    x0, lo0, hi0 = x.clone(), lo.clone(), hi.clone()
    out = fake_quantize(x, 4, lo, hi)
    assert torch.equal(x, x0) and torch.equal(lo, lo0) and torch.equal(hi, hi0)
    xg = x.clone().requires_grad_(True)
    out_g = fake_quantize(xg, 4, lo, hi)
    assert out_g.requires_grad and torch.equal(out_g.detach(), out)
    assert torch.equal(xg.detach(), x0)


def test_half_precision_input_uses_the_float32_range_arithmetic() -> None:
    x = torch.linspace(0, 4, 1001).half()
    lo, hi = torch.tensor(0.0), torch.tensor(4.0)
    assert torch.equal(fake_quantize(x, 8, lo, hi), official_reference(x.float(), 8, lo, hi))
    assert torch.equal(QuantAct(8, "minmax")(x), official_reference(x.float(), 8, lo, hi))


# ---------------------------------------------------------------- STE


def test_ste_gradient_is_identity_even_when_clipped_and_ranges_get_none() -> None:
    x = t(-5.0, -0.2, 0.3, 0.9, 7.0).requires_grad_(True)  # -5 and 7 are clipped on [-1, 2]
    lo = torch.tensor(-1.0, requires_grad=True)
    hi = torch.tensor(2.0, requires_grad=True)
    upstream = t(1.0, 2.0, 3.0, 4.0, 5.0)
    out = FakeQuantSTE.apply(x, 3, lo, hi)
    (out * upstream).sum().backward()
    assert torch.equal(x.grad, upstream)
    assert lo.grad is None and hi.grad is None


def test_weight_quantized_layers_pass_gradients_to_latent_weights() -> None:
    q = quantize_model(build_tiny(), QuantConfig(4, 4))
    q(torch.randn(4, 3, 8, 8)).square().sum().backward()
    for m in q.modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
    for act in activation_quantizers(q):
        assert all(not b.requires_grad for b in act.buffers())


# ---------------------------------------------------------------- parse_bits / QuantConfig


@pytest.mark.parametrize("text,expected", [("w4a4", (4, 4)), ("w4a8", (4, 8)), ("W3A3", (3, 3)),
                                           ("w5a5", (5, 5)), ("w16a2", (16, 2)), ("w2a16", (2, 16))])
def test_parse_bits_valid(text: str, expected: tuple[int, int]) -> None:
    assert parse_bits(text) == expected


@pytest.mark.parametrize("text", ["4", "w1a4", "w4a1", "w4", "a4", "w33a3", "w17a4", "w4a17", "a4w4",
                                  "", "w4a4x", "w0a4", "wa4", "w4.0a4"])
def test_parse_bits_invalid(text: str) -> None:
    with pytest.raises(DfqbenchError) as err:
        parse_bits(text)
    msg = str(err.value)
    assert repr(text) in msg and "2 <= X, Y <= 16" in msg and "w4a4" in msg and "\n" not in msg


def test_quant_config_validation_and_to_dict() -> None:
    cfg = QuantConfig(4, 8, tracker="minmax", momentum=0.5, first_last_wbits=8)
    assert json.loads(json.dumps(cfg.to_dict())) == {
        "wbits": 4, "abits": 8, "tracker": "minmax", "momentum": 0.5, "first_last_wbits": 8,
        "zero_variance_bn": "keep"}
    assert QuantConfig(**cfg.to_dict()) == cfg
    assert QuantConfig(4, 4).tracker == "ema_gdfq" and QuantConfig(4, 4).momentum == 0.9
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.wbits = 3  # type: ignore[misc]
    with pytest.raises(DfqbenchError, match="ema_gdfq, ema, minmax") as err:
        QuantConfig(4, 4, tracker="percentile")
    assert "'percentile'" in str(err.value)
    assert TRACKERS == ("ema_gdfq", "ema", "minmax")
    for bad in [dict(wbits=1, abits=4), dict(wbits=4, abits=17), dict(wbits=4.0, abits=4),
                dict(wbits=4, abits=4, momentum=1.0), dict(wbits=4, abits=4, momentum=-0.1),
                dict(wbits=4, abits=4, first_last_wbits=1), dict(wbits=True, abits=4)]:
        with pytest.raises(DfqbenchError):
            QuantConfig(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- trackers


def feed(act: QuantAct, values: tuple[float, ...]) -> torch.Tensor:
    return act(t(*values))


def test_ema_gdfq_compounds_exactly_like_the_official_recurrence() -> None:
    act = QuantAct(8, "ema_gdfq", 0.9)
    m_min, m_max = -0.5, 2.0
    v_min = v_max = 0.0
    beta_t = 1.0
    maxima = []
    for step in range(1, 201):
        feed(act, (m_min, 0.3, m_max))
        beta_t *= 0.9
        v_min = (0.9 * v_min + 0.1 * m_min) / (1 - beta_t)
        v_max = (0.9 * v_max + 0.1 * m_max) / (1 - beta_t)
        assert act.x_min.item() == pytest.approx(v_min, rel=1e-4)
        assert act.x_max.item() == pytest.approx(v_max, rel=1e-4)
        assert act.beta_t.item() == pytest.approx(0.9**step, rel=1e-5)
        maxima.append(act.x_max.item())
    assert maxima[0] == pytest.approx(m_max, rel=1e-6)                 # update 1: m
    assert maxima[1] == pytest.approx(m_max / 0.19, rel=1e-6)          # update 2: m / 0.19 ≈ 5.263 m
    assert max(maxima[:20]) > 1000 * m_max                             # inflates by ~10^3
    assert abs(maxima[149] / m_max - 1) < 0.02                         # back within 2 % by update 150
    assert act.x_min.item() == pytest.approx(m_min, rel=1e-3)


def test_ema_is_a_correct_bias_corrected_average() -> None:
    act = QuantAct(8, "ema", 0.9)
    for _ in range(30):
        feed(act, (-0.5, 2.0))
        assert act.x_min.item() == pytest.approx(-0.5, rel=1e-6)
        assert act.x_max.item() == pytest.approx(2.0, rel=1e-6)
    act = QuantAct(8, "ema", 0.9)
    raw, expected = 0.0, []
    for step, m in enumerate((1.0, 3.0, 2.0), start=1):
        raw = 0.9 * raw + 0.1 * m
        expected.append(raw / (1 - 0.9**step))
        feed(act, (0.0, m))
        assert act.x_max.item() == pytest.approx(expected[-1], rel=1e-6)
    assert expected[1] == pytest.approx(0.39 / 0.19) and act.num_updates.item() == 3


def test_minmax_only_widens_and_keeps_zero_inside() -> None:
    act = QuantAct(8, "minmax")
    for values, (lo, hi) in [((1.0, 2.0), (0.0, 2.0)), ((-1.0, 1.0), (-1.0, 2.0)), ((0.5, 0.6), (-1.0, 2.0)),
                             ((-3.0, 0.0), (-3.0, 2.0))]:
        feed(act, values)
        assert (act.x_min.item(), act.x_max.item()) == (lo, hi)
    # Once x_min != x_max, the stored range is used (no fallback): 5 clips to the top of [-3, 2].
    set_range_update(nn.Sequential(act), False)
    assert feed(act, (5.0,)).item() == pytest.approx(2.0, abs=0.02)


def test_minmax_falls_back_to_the_tensor_range_when_degenerate() -> None:
    act = QuantAct(2, "minmax")
    act.update_ranges = False  # x_min == x_max == 0: ZeroQ quantizes with the tensor's own [1, 4]
    x = t(1.0, 2.0, 3.0, 4.0)
    assert torch.equal(act(x), x)
    gdfq = QuantAct(2, "ema_gdfq")  # GDFQ commented the fallback out: everything collapses to ~0
    gdfq.update_ranges = False
    assert gdfq(x).abs().max().item() < 1e-6
    zeros = QuantAct(4, "minmax")  # all-zero batch with updates on: degenerate range, finite zero output
    assert torch.equal(zeros(torch.zeros(5)), torch.zeros(5))


@pytest.mark.parametrize("tracker", TRACKERS)
def test_update_happens_before_quantizing_and_regardless_of_training_mode(tracker: str) -> None:
    act = QuantAct(8, tracker).eval()
    assert act.update_ranges is True
    x = torch.linspace(0, 1, 256)
    out = act(x)  # first batch is quantized with the range it just produced: ≈ identity at 8 bits
    assert (out - x).abs().max().item() <= 0.5 / 255 + 1e-6
    assert act.x_max.item() == pytest.approx(1.0)


# ---------------------------------------------------------------- modules


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_quant_conv_keeps_hyper_parameters(padding_mode: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=True, padding_mode=padding_mode)
    qconv = QuantConv2d(copy.deepcopy(conv), 16)
    assert (qconv.stride, qconv.padding, qconv.dilation, qconv.groups) == ((2, 2), (2, 2), (2, 2), 2)
    assert [n for n, _ in qconv.named_parameters()] == ["weight", "bias"]
    x = torch.randn(2, 4, 9, 9)
    assert torch.allclose(qconv(x), conv(x), atol=1e-3)  # 16-bit weights ≈ FP
    # The range follows the latent weights at every forward.
    with torch.no_grad():
        qconv.weight.mul_(10)
        conv.weight.mul_(10)
    assert torch.allclose(qconv(x), conv(x), atol=1e-2)


def test_quant_conv_weight_is_quantized_per_output_channel() -> None:
    conv = nn.Conv2d(3, 4, 3, bias=False)
    with torch.no_grad():
        conv.weight.mul_(torch.tensor([1.0, 10.0, 0.1, 3.0]).view(4, 1, 1, 1))
    wq = QuantConv2d(conv, 3).quantized_weight()
    for c in range(4):
        w = conv.weight[c].detach()
        assert torch.equal(wq[c], fake_quantize(w, 3, w.min(), w.max()))


# ---------------------------------------------------------------- quantize_model


def count(model: nn.Module, *kinds: type) -> int:
    return sum(type(m) in kinds for m in model.modules())


def buffers_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if ".x_m" in k or "beta_t" in k or "ema_" in k}


def test_quantize_tiny_counts_bn_and_original_untouched() -> None:
    fp = build_tiny()
    fp_state = {k: v.clone() for k, v in fp.state_dict().items()}
    x = torch.randn(8, 3, 8, 8)
    fp_out = fp(x)
    n_conv, n_linear, n_relu = count(fp, nn.Conv2d), count(fp, nn.Linear), count(fp, nn.ReLU, nn.ReLU6)
    assert (n_conv, n_linear, n_relu) == (6, 1, 5)

    q = quantize_model(fp, QuantConfig(4, 4))
    assert count(q, QuantConv2d) == n_conv and count(q, QuantLinear) == n_linear
    assert len(activation_quantizers(q)) == count(q, QuantAct) == n_relu
    assert count(q, nn.Conv2d) == 0 and count(q, nn.Linear) == 0
    assert count(q, nn.ReLU) == n_relu  # the ReLUs are kept, each followed by its QuantAct
    assert type(q.features.init_block.activ) is nn.Sequential
    assert type(q.features.init_block.activ[0]) is nn.ReLU and type(q.features.init_block.activ[1]) is QuantAct
    assert type(q.features.init_block.conv) is QuantConv2d  # the input goes straight into a conv: not quantized

    fp_bns = [m for m in fp.modules() if isinstance(m, nn.BatchNorm2d)]
    q_bns = [m for m in q.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(q_bns) == len(fp_bns) == count(q, nn.BatchNorm2d)
    for a, b in zip(fp_bns, q_bns):
        assert a is not b and all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())

    # The original is untouched: same types, same tensors, same output; no shared parameters.
    assert count(fp, nn.Conv2d) == n_conv and count(fp, QuantAct) == 0
    assert all(torch.equal(v, fp_state[k]) for k, v in fp.state_dict().items())
    assert torch.equal(fp(x), fp_out)
    fp_ids = {id(p) for p in fp.parameters()}
    assert not any(id(p) in fp_ids for p in q.parameters())

    # Parameter names are kept, so FP keys are a subset of the quantized ones (only QuantAct buffers added).
    extra = set(q.state_dict()) - set(fp.state_dict())
    assert set(fp.state_dict()) <= set(q.state_dict())
    assert extra and all(k.rsplit(".", 1)[1] in {"x_min", "x_max", "beta_t"} for k in extra)
    assert q.training == fp.training


def test_resnet20_cifar10_counts() -> None:
    from pytorchcv.model_provider import get_model

    fp = get_model("resnet20_cifar10", pretrained=False)
    n_weight = count(fp, nn.Conv2d, nn.Linear)
    n_relu = count(fp, nn.ReLU, nn.ReLU6)
    assert (n_weight, n_relu) == (22, 19)  # 21 convs (incl. 2 downsampling 1x1) + 1 FC; 19 ReLUs
    q = quantize_model(fp, QuantConfig(4, 4, first_last_wbits=8))
    assert count(q, QuantConv2d) + count(q, QuantLinear) == 22 and count(q, QuantLinear) == 1
    assert len(activation_quantizers(q)) == 19
    eight = [n for n, m in q.named_modules() if isinstance(m, (QuantConv2d, QuantLinear)) and m.wbits == 8]
    assert eight == ["features.init_block.conv", "output"]
    assert q(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_first_last_wbits_only_on_first_and_last_layers() -> None:
    q = quantize_model(build_tiny(), QuantConfig(4, 3, first_last_wbits=8))
    widths = {n: m.wbits for n, m in q.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}
    assert widths.pop("features.init_block.conv") == 8 and widths.pop("output") == 8
    assert widths and set(widths.values()) == {4}
    assert {a.abits for a in activation_quantizers(q)} == {3}
    plain = quantize_model(build_tiny(), QuantConfig(4, 3))
    assert {m.wbits for m in plain.modules() if isinstance(m, (QuantConv2d, QuantLinear))} == {4}


def test_exact_type_matching_shared_relu_and_guards() -> None:
    class MyReLU(nn.ReLU):
        pass

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.relu = nn.ReLU()
            self.other = MyReLU()
            self.leaky = nn.LeakyReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.leaky(self.other(self.relu(self.conv(self.relu(x)))))

    model = Shared()
    model.again = model.relu  # the same ReLU under a second name (ZAQ-style reuse)
    q = quantize_model(model, QuantConfig(4, 4))
    assert q.again is q.relu and len(activation_quantizers(q)) == 1
    assert type(q.other) is MyReLU and type(q.leaky) is nn.LeakyReLU
    with pytest.raises(DfqbenchError, match="already quantized"):
        quantize_model(q, QuantConfig(4, 4))
    assert type(quantize_model(nn.Conv2d(3, 3, 1), QuantConfig(4, 4))) is QuantConv2d
    relu6 = quantize_model(nn.Sequential(nn.ReLU6()), QuantConfig(4, 4))
    assert type(relu6[0][0]) is nn.ReLU6 and type(relu6[0][1]) is QuantAct


@pytest.mark.parametrize("tracker", TRACKERS)
def test_set_range_update_freezes_and_state_dict_round_trip(tracker: str) -> None:
    fp = build_tiny()
    cfg = QuantConfig(4, 4, tracker=tracker)
    q = quantize_model(fp, cfg).eval()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        q(torch.randn(16, 3, 8, 8, generator=gen))
    calibrated = buffers_of(q)
    assert len(calibrated) >= 2 * 5 and any(v.abs().sum() > 0 for v in calibrated.values())

    set_range_update(q, False)
    assert all(a.update_ranges is False for a in activation_quantizers(q))
    x = torch.randn(16, 3, 8, 8, generator=gen) * 3
    out = q(x)
    assert all(torch.equal(v, calibrated[k]) for k, v in buffers_of(q).items())

    # state_dict → torch.save → fresh quantized model: same tracker state, same output.
    blob = io.BytesIO()
    torch.save(q.state_dict(), blob)
    blob.seek(0)
    q2 = quantize_model(fp, cfg).eval()
    q2.load_state_dict(torch.load(blob))
    set_range_update(q2, False)
    assert all(torch.equal(v, calibrated[k]) for k, v in buffers_of(q2).items())
    assert torch.equal(q2(x), out)
    q3 = copy.deepcopy(q)
    assert all(torch.equal(v, calibrated[k]) for k, v in buffers_of(q3).items())
    assert torch.equal(q3(x), out)

    set_range_update(q, True)
    q(x)
    assert any(not torch.equal(v, calibrated[k]) for k, v in buffers_of(q).items())


@pytest.mark.parametrize("tracker,batches", [("ema_gdfq", 200), ("ema", 8), ("minmax", 8)])
def test_w8a8_is_close_to_fp_and_w2a2_is_not(tracker: str, batches: int) -> None:
    fp = build_tiny().eval()
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(8, 3, 8, 8, generator=gen) for _ in range(batches)]
    x = torch.randn(64, 3, 8, 8, generator=gen)
    with torch.no_grad():
        ref = fp(x)
        errors = {}
        for bits in (8, 2):
            q = quantize_model(fp, QuantConfig(bits, bits, tracker=tracker)).eval()
            for batch in calib:
                q(batch)
            set_range_update(q, False)
            errors[bits] = ((q(x) - ref).norm() / ref.norm()).item()
    assert errors[8] < 0.1  # measured 0.02-0.045 (relative L2 error of the logits)
    assert errors[2] > 10 * errors[8] and errors[2] > 0.5  # measured 1.5-2.0
