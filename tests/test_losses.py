"""Shared loss terms and the teacher BN-statistics loss against values computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfqbench.blocks.hooks import BNStatisticsLoss
from dfqbench.blocks.losses import disagreement_entropy, entropy, game_value, kd_kl_element_mean, soft_cross_entropy


def test_kd_element_mean_is_batch_kl_divided_by_classes():
    t = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    s = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    temperature = 2.0
    p_t = torch.softmax(t / temperature, 1)
    p_s = torch.softmax(s / temperature, 1)
    kl_per_sample = (p_t * (p_t.log() - p_s.log())).sum(1)  # by hand
    expected = kl_per_sample.mean().item() / 3  # element mean over B·C = batch mean / C
    assert kd_kl_element_mean(t, s, temperature).item() == pytest.approx(expected, rel=1e-6)
    assert kd_kl_element_mean(t, t, temperature).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_cross_entropy_matches_ce_on_one_hot_and_mixes_linearly():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]])
    labels = torch.tensor([1, 2])
    one_hot = F.one_hot(labels, 3).float()
    assert soft_cross_entropy(logits, one_hot).item() == pytest.approx(F.cross_entropy(logits, labels).item())
    mixed = torch.tensor([[0.25, 0.75, 0.0], [0.5, 0.0, 0.5]])
    log_p = torch.log_softmax(logits, 1)
    by_hand = -(0.25 * log_p[0, 0] + 0.75 * log_p[0, 1] + 0.5 * log_p[1, 0] + 0.5 * log_p[1, 2]) / 2
    assert soft_cross_entropy(logits, mixed).item() == pytest.approx(by_hand.item())


def test_entropy_and_game_value_extremes():
    c = 10
    uniform = torch.zeros(4, c)
    assert torch.allclose(entropy(uniform), torch.full((4,), math.log(c)))
    peaked = torch.zeros(2, c)
    peaked[:, 3] = 100.0
    assert entropy(peaked).max().item() < 1e-6
    # t == s: p_ds is uniform, H' = 1, R = 0 (full agreement); t − s peaked: R → 1 (full disagreement)
    assert game_value(uniform, uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert game_value(peaked, torch.zeros(2, c)).item() == pytest.approx(1.0, abs=1e-6)
    two = torch.tensor([[math.log(3.0), 0.0]])  # softmax = (3/4, 1/4)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert disagreement_entropy(two, torch.zeros(1, 2)).item() == pytest.approx(h)


def test_bns_loss_uses_biased_variance_and_averages_layers():
    teacher = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2)).eval()
    teacher[0].running_mean.copy_(torch.tensor([1.0, -1.0]))
    teacher[0].running_var.copy_(torch.tensor([2.0, 0.5]))
    x = torch.tensor([1.0, 3.0, 5.0, 7.0]).view(4, 1, 1, 1).repeat(1, 2, 1, 1)  # mean 4, biased var 5
    hooks = BNStatisticsLoss(teacher)
    hooks.start()
    teacher[0](x)  # a lone first-layer pass: one term
    layer0 = hooks.stop().item()
    expected0 = ((4 - 1) ** 2 + (4 + 1) ** 2) / 2 + ((5 - 2) ** 2 + (5 - 0.5) ** 2) / 2
    assert layer0 == pytest.approx(expected0)
    hooks.start()
    teacher(x)
    both = hooks.stop().item()
    out = teacher[0](x)  # the second BN's input
    # the second layer sees the first's output; its running stats are the defaults (mean 0, var 1)
    expected1 = (out[:, 0].mean().item() ** 2 + out[:, 1].mean().item() ** 2) / 2 + (
        (out[:, 0].var(unbiased=False).item() - 1) ** 2 + (out[:, 1].var(unbiased=False).item() - 1) ** 2) / 2
    assert both == pytest.approx((expected0 + expected1) / 2, rel=1e-5)
    # disabled hooks record nothing
    teacher(x)
    hooks.start()
    with pytest.raises(RuntimeError):
        hooks.stop()
