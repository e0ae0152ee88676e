"""The example plugin's own tests: its extra loss term by hand, and dfqbench's method contract."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("dfqbench_gdfq_ie", reason="the example plugin is not installed (dfqbench's own pytest run "
                    "collects this file too; tests/test_example_plugin.py fails under DFQBENCH_REQUIRE_EXAMPLE=1)")

from dfqbench.blocks.interface import Sample, StepContext
from dfqbench.plugins import METHOD_SOURCES, load_methods
from dfqbench.errors import DfqbenchError
from dfqbench.testing import check_method_contract
from dfqbench_gdfq_ie.method import GDFQIE, GDFQIEConfig, information_entropy  # noqa: E402


def test_registered_by_its_entry_point():
    assert load_methods().get("gdfq_ie") is GDFQIE and GDFQIE.name == "gdfq_ie"
    assert METHOD_SOURCES["gdfq_ie"].startswith("dfqbench-gdfq-ie ")
    assert load_methods().get("gdfq").name == "gdfq"  # the parent keeps its own name


def test_information_entropy_by_hand():
    assert information_entropy(torch.zeros(4, 10)).item() == pytest.approx(-1.0)  # uniform: −log10(10)
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # softmax rows (3/4, 1/4) and (1/2, 1/2)
    p = torch.tensor([5 / 8, 3 / 8])
    assert information_entropy(logits).item() == pytest.approx((p * p.log10()).sum().item())
    assert information_entropy(torch.tensor([[0.0, -200.0]])).item() == 0.0  # underflowed class counts 0


def test_generator_loss_is_gdfq_plus_weighted_term():
    torch.manual_seed(0)
    method = GDFQIE(GDFQIEConfig(ie_weight=2.0), num_classes=10, input_size=8, dataset="cifar10")
    base = load_methods().get("gdfq")(load_methods().get("gdfq").config_class(), 10, 8, "cifar10")
    ctx = StepContext(x=torch.randn(4, 3, 8, 8), sample=Sample(z=torch.randn(4, 100), labels=torch.tensor([0, 1, 2, 3])),
                      teacher_logits=torch.randn(4, 10), student_logits=None, bns_loss=torch.tensor(0.5), num_classes=10)
    loss, terms = method.generator_loss(ctx)
    gdfq_loss, _ = base.generator_loss(ctx)
    assert set(terms) == {"ce", "bns", "ie"}
    assert loss.item() == pytest.approx(gdfq_loss.item() + 2.0 * information_entropy(ctx.teacher_logits).item())


def test_negative_weight_is_rejected():
    with pytest.raises(DfqbenchError, match="method.ie_weight"):
        GDFQIEConfig(ie_weight=-1.0)


def test_method_contract(tmp_path):
    check_method_contract("gdfq_ie", tmp_path)
