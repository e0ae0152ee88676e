"""Zero-variance BatchNorm channels (the shared offline teacher's option-A shortcuts) and
``quant.zero_variance_bn=recondition``, which re-expresses them in the student with the same function."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from dfqbench.cli import main
from dfqbench.errors import DfqbenchError
from dfqbench.quant import QuantConfig, quantize_model
from dfqbench.quant.bn_condition import recondition_zero_variance_bn, zero_variance_channels
from dfqbench.request import RunRequest
from dfqbench.runner import predict_spec, zero_variance_warning

EPS = 1e-5


def shortcut_like() -> nn.Sequential:
    """conv 4→8 + BN, built as the shared ResNet-20 writes an option-A shortcut: channels 0-3 copy the input
    (0/1 weights, real statistics), channels 4-7 are zero padding (zero weights, μ = σ² = 0, γ = √ε, β = 0)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 1, bias=False)
    bn = nn.BatchNorm2d(8, eps=EPS)
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(4):
            conv.weight[c, c] = 1.0
        bn.running_mean[:4] = torch.tensor([0.5, -0.2, 0.1, 0.3])
        bn.running_var[:4] = torch.tensor([0.9, 1.2, 0.4, 0.7])
        bn.weight[:4] = torch.sqrt(bn.running_var[:4] + EPS)  # the identity on the copied channels
        bn.bias[:4] = bn.running_mean[:4]
        bn.running_mean[4:] = 0.0
        bn.running_var[4:] = 0.0
        bn.weight[4:] = math.sqrt(EPS)
        bn.bias[4:] = 0.0
    return nn.Sequential(conv, bn).eval()


def test_recondition_keeps_the_function_and_removes_the_gain_on_gamma():
    teacher = shortcut_like()
    assert zero_variance_channels(teacher) == {"1": 4}
    keep = quantize_model(teacher, QuantConfig(8, 8)).eval()
    fixed = quantize_model(teacher, QuantConfig(8, 8, zero_variance_bn="recondition")).eval()
    assert zero_variance_channels(teacher) == {"1": 4}  # the teacher (BNS targets) is never changed
    assert zero_variance_channels(fixed) == {} and zero_variance_channels(keep) == {"1": 4}
    assert torch.equal(fixed[1].running_var[:4], teacher[1].running_var[:4])  # other channels untouched
    x = torch.randn(5, 4, 6, 6)
    torch.testing.assert_close(fixed(x), keep(x), rtol=0, atol=1e-6)

    # once the padding rows leave zero (a fine-tuning step moved them), dL/dγ is 1/√ε larger when kept
    grads = []
    for student in (keep, fixed):
        with torch.no_grad():
            student[0].weight[4:, 0] = 0.01
        student[1].weight.grad = None
        student(x)[:, 4:].sum().backward()
        grads.append(student[1].weight.grad[4:])
    torch.testing.assert_close(grads[0] / grads[1], torch.full((4,), 1 / math.sqrt(EPS)), rtol=1e-3, atol=0)


def test_recondition_skips_bns_without_a_zero_variance_channel_or_an_affine_weight():
    plain = nn.BatchNorm2d(3)
    plain.running_var.fill_(0.5)
    no_affine = nn.BatchNorm2d(3, affine=False)
    no_affine.running_var.zero_()
    model = nn.Sequential(plain, no_affine)
    assert recondition_zero_variance_bn(model) == {}
    assert torch.equal(no_affine.running_var, torch.zeros(3)) and torch.equal(plain.running_var, torch.full((3,), 0.5))


def test_a_bad_value_is_one_line_naming_the_choices():
    with pytest.raises(DfqbenchError, match=r"quant.zero_variance_bn.*'fold'.*keep, recondition") as err:
        QuantConfig(4, 4, zero_variance_bn="fold")
    assert "\n" not in str(err.value)


def test_keep_leaves_every_run_id_as_before_and_recondition_is_a_new_run(tmp_path):
    request = RunRequest(method="gdfq", model="tiny_cifar10", bits="w4a4", seed=0, protocol="quick",
                         overrides=[], results=str(tmp_path), device="cpu")
    spec = predict_spec(request)
    assert spec.quant["zero_variance_bn"] == "keep"
    assert spec.run_id == "a3ef39d91776"  # the id this cell had before the setting existed (dfqbench 76d2298)
    without = dataclasses.replace(spec, quant={k: v for k, v in spec.quant.items() if k != "zero_variance_bn"})
    assert without.run_id == spec.run_id
    fixed = predict_spec(dataclasses.replace(request, overrides=["quant.zero_variance_bn=recondition"]))
    assert fixed.run_id != spec.run_id and fixed.changed == {"quant.zero_variance_bn": "recondition"}


def test_a_method_whose_student_bn_trains_refuses_recondition(tmp_path, capsys):
    code = main(["run", "--method", "zaq", "--model", "tiny_cifar10", "--bits", "w4a4", "--protocol", "quick",
                 "--device", "cpu", "--results", str(tmp_path / "r"), "quant.zero_variance_bn=recondition"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "quant.zero_variance_bn=recondition for zaq" in err[0] and "use keep" in err[0]
    assert not (tmp_path / "r").exists()


def test_the_run_says_when_the_teacher_has_zero_variance_channels():
    line = zero_variance_warning(shortcut_like())
    assert line is not None and "4 BatchNorm channel(s) with zero running variance (in 1)" in line
    assert "quant.zero_variance_bn=recondition" in line and "\n" not in line
    healthy = shortcut_like()
    healthy[1].running_var.fill_(1.0)
    assert zero_variance_warning(healthy) is None


def test_a_spec_written_before_the_setting_reads_as_keep(tmp_path):
    """A record's spec from before the setting existed (no ``changed`` either): the report resolves its cell's
    default and finds it equal, so the run stays the cell's default configuration."""
    from dfqbench.report.defaults import configuration_diff

    request = RunRequest(method="gdfq", model="tiny_cifar10", bits="w4a4", seed=0, protocol="quick",
                         overrides=[], results=str(tmp_path), device="cpu")
    old = predict_spec(request).to_dict()
    old.pop("changed")
    old["quant"] = {k: v for k, v in old["quant"].items() if k != "zero_variance_bn"}
    assert configuration_diff(old) == []
    old["quant"]["zero_variance_bn"] = "recondition"
    assert configuration_diff(old) == [("quant.zero_variance_bn", "recondition")]
