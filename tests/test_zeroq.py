"""ZeroQ: distillation loss and init against hand-computed values, the calibration-only run, the KD variant."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfqbench.blocks.distill import DistilledSet, DistillSettings, ZeroQLoss, distill, init_images
from dfqbench.blocks.interface import Sample, StepContext
from dfqbench.core.trainer import Trainer
from dfqbench.errors import DfqbenchError
from dfqbench.methods.zeroq import draw_crops, resized_crop
from dfqbench.plugins import load_methods
from dfqbench.quant import activation_quantizers
from dfqbench.runner import prepare, resolve_settings
from dfqbench.zoo.tiny import build_tiny

from conftest import TINY_OVERRIDES, RecordingProgress


def _toy_conv_bn() -> nn.Module:
    """1×1 conv picking input channel 0, then a BN with running mean 1 and running std 2."""
    conv = nn.Conv2d(3, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(4.0)
    return nn.Sequential(conv, bn).eval()


def test_per_sample_bn_loss_against_hand_computation():
    # two samples, 3 channels, 1×2 pixels; sample 0 channels: [1,3] [-1,1] [5,5]; sample 1: [0,0] [2,2] [0,2]
    x = torch.tensor([[[[1.0, 3.0]], [[-1.0, 1.0]], [[5.0, 5.0]]],
                      [[[0.0, 0.0]], [[2.0, 2.0]], [[0.0, 2.0]]]])
    loss_fn = ZeroQLoss(_toy_conv_bn(), eps=0.0)
    total, terms = loss_fn(x)
    # conv output = channel 0: per-sample means (2, 0), unbiased stds (√2, 0) vs BN (1, 2)
    assert terms["bn_mean"].item() == pytest.approx(((1 - 2) ** 2 + (1 - 0) ** 2) / 2)
    assert terms["bn_std"].item() == pytest.approx(5 - 2 * math.sqrt(2))
    # input: means (2,0,5) and (0,2,1) vs 0; stds (√2,√2,0) and (0,0,√2) vs 1
    assert terms["input_mean"].item() == pytest.approx((29 + 5) / 2)
    assert terms["input_std"].item() == pytest.approx(6 - 3 * math.sqrt(2))
    assert total.item() == pytest.approx(29 - 5 * math.sqrt(2))
    loss_fn.remove()


def test_bn_loss_pairs_first_convs_with_bns_and_sums_layers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Conv2d(2, 5, 1)).eval()
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 5, 5)
    total, terms = ZeroQLoss(net, eps=1e-6)(x)
    # by hand: layer outputs of conv 0 and conv 3 (the head conv 5 has no BN and is not hooked)
    expected = 0.0
    for out, bn in ((net[0](x), net[1]), (net[3](net[2](net[1](net[0](x)))), net[4])):
        flat = out.flatten(2)
        mu, sd = flat.mean(2), (flat.var(2, unbiased=True) + 1e-6).sqrt()
        expected += ((mu - bn.running_mean) ** 2).sum(1).mean() + ((sd - (bn.running_var + 1e-6).sqrt()) ** 2).sum(1).mean()
    flat = x.flatten(2)
    expected += (flat.mean(2) ** 2).sum(1).mean() + (((flat.var(2) + 1e-6).sqrt() - 1) ** 2).sum(1).mean()
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert (terms["bn_mean"] + terms["bn_std"]).item() > 0


def test_bn_loss_rejects_a_teacher_without_bn():
    with pytest.raises(DfqbenchError, match="BatchNorm2d"):
        ZeroQLoss(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_official_init_uses_the_variance_as_divisor():
    gen = torch.Generator().manual_seed(0)
    official = init_images(64, 32, "official", gen)
    corrected = init_images(64, 32, "unit_std", torch.Generator().manual_seed(0))
    assert official.shape == (64, 3, 32, 32)
    # integers 0..254 minus 127.5, divided by 5418.75: std √5418.67 / 5418.75 ≈ 0.0136, range ±0.0235
    assert official.std().item() == pytest.approx(0.0136, abs=2e-4)
    assert official.min().item() >= -127.5 / 5418.75 - 1e-9 and official.max().item() <= 126.5 / 5418.75 + 1e-9
    pixels = official * 5418.75 + 127.5
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    assert corrected.std().item() == pytest.approx(1.0, abs=0.01)
    assert torch.allclose(corrected * math.sqrt(5418.75), official * 5418.75, atol=1e-3)  # same draw, other scale
    assert torch.equal(official, init_images(64, 32, "official", torch.Generator().manual_seed(0)))
    with pytest.raises(DfqbenchError, match="method.init.*official, unit_std"):
        init_images(2, 4, "gaussian")


def test_distillation_lowers_the_loss_and_leaves_the_teacher_alone():
    teacher = build_tiny().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(0)
    result = distill(teacher, 2, 8, 8, DistillSettings(steps=60), torch.device("cpu"))
    assert result.images.shape == (16, 3, 8, 8) and len(result.losses) == 2
    loss_fn = ZeroQLoss(teacher)
    final = loss_fn(result.images[:8])[0].item()
    assert final < 0.2 * result.losses[0][0]
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    torch.manual_seed(0)
    again = distill(teacher, 2, 8, 8, DistillSettings(steps=60), torch.device("cpu"))
    assert torch.equal(result.images, again.images)  # seeded


def test_distilled_set_serves_in_order_or_shuffled_passes():
    images, labels = torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10)
    ordered = DistilledSet(images, labels, shuffle=False)
    assert ordered.next_indices(4).tolist() == [0, 1, 2, 3]
    assert ordered.next_indices(4).tolist() == [4, 5, 6, 7]
    assert ordered.next_indices(4).tolist() == [0, 1, 2, 3]  # the incomplete last batch is dropped
    torch.manual_seed(0)
    shuffled = DistilledSet(images, labels, shuffle=True)
    first = shuffled.next_indices(5).tolist() + shuffled.next_indices(5).tolist()
    assert sorted(first) == list(range(10)) and first != list(range(10))
    state = {k: v.clone() for k, v in shuffled.state_dict().items()}
    rng = torch.get_rng_state()
    expected = [shuffled.next_indices(3).tolist() for _ in range(4)]
    resumed = DistilledSet(images, labels, shuffle=True)
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    assert [resumed.next_indices(3).tolist() for _ in range(4)] == expected
    with pytest.raises(DfqbenchError, match="batch_size=11 exceeds the 10 distilled images"):
        ordered.next_indices(11)


def test_resized_crop_matches_per_image_interpolation_and_flip():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 12, 12)
    boxes, flips = draw_crops(6, 12, 0.5)
    flips[0], flips[1] = True, False
    out = resized_crop(x, boxes, flips)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        assert 0 < h <= 12 and 0 < w <= 12 and h * w >= 0.5 * 144 * 0.9
        ref = F.interpolate(x[i:i + 1, :, top:top + h, left:left + w], size=(12, 12), mode="bilinear",
                            align_corners=False)
        ref = ref.flip(3) if flips[i] else ref
        assert torch.allclose(out[i:i + 1], ref, atol=1e-5)


def _method(name, **config):
    cls = load_methods().get(name)
    return cls(cls.config_class(**config), 10, 8, "tiny")


def test_zeroq_kd_student_loss_is_alpha_t2_batchmean_kl():
    torch.manual_seed(1)
    t, s = torch.randn(4, 10) * 5, torch.randn(4, 10) * 5
    ctx = StepContext(torch.zeros(4, 3, 8, 8), Sample(torch.zeros(4), torch.zeros(4, dtype=torch.long)), t, s, None,
                      10)
    loss, terms = _method("zeroq_kd").student_loss(ctx)
    reference = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / 20, 1), F.softmax(t / 20, 1))
    assert loss.item() == pytest.approx(20 * 400 * reference.item(), rel=1e-5)
    assert set(terms) == {"kd"}


def test_protocols_keep_zeroq_and_shrink_zeroq_kd_under_quick():
    registry = load_methods()
    zeroq, kd = registry.get("zeroq"), registry.get("zeroq_kd")
    train, method, quant = resolve_settings(zeroq, "cifar10", "resnet20_cifar10", "w4a4", "quick", [])
    assert (train["epochs"], train["iters_per_epoch"], train["batch_size"], train["warmup_epochs"],
            train["range_update_epochs"]) == (1, 1, 64, 1, 1)
    assert (method["batch_size"], method["num_batches"], method["steps"]) == (64, 1, 500)
    assert quant["tracker"] == "minmax"
    train, method, quant = resolve_settings(kd, "cifar10", "resnet20_cifar10", "w4a4", "paper", [])
    assert (train["epochs"], train["batch_size"], train["lr_q"], tuple(train["milestones_q"])) == (151, 256, 1e-4,
                                                                                                   (20, 40, 60))
    assert (method["num_batches"], method["batch_size"], quant["tracker"]) == (20, 256, "ema_gdfq")
    imnet = kd.paper_protocol("imagenet", "resnet18", 4, 4)["train"]
    assert (imnet["batch_size"], imnet["lr_q"], imnet["milestones_q"]) == (16, 1e-6, (100, 200, 350))
    train, method, _ = resolve_settings(kd, "cifar10", "resnet20_cifar10", "w4a4", "quick", [])
    assert (method["num_batches"], method["batch_size"], method["steps"]) == (2, 64, 500)
    assert (train["warmup_epochs"], train["range_update_epochs"], train["batch_size"]) == (4, 4, 64)
    with pytest.raises(DfqbenchError, match="method.augment"):
        resolve_settings(kd, "cifar10", "resnet20_cifar10", "w4a4", "quick", ["method.augment=cutout"])


def test_zeroq_tiny_run_calibrates_once_and_freezes_ranges(tiny_request):
    prepared = prepare(tiny_request(method="zeroq", overrides=["method.steps=100"]))
    trainer = Trainer(prepared, RecordingProgress())
    record = trainer.fit()
    assert record.calibrated_top1 == record.best_top1 == record.final_top1 is not None
    assert (record.epochs, record.iterations, record.images_generated) == (1, 1, 64)
    quantizers = activation_quantizers(trainer.student)
    assert quantizers and all(not q.update_ranges for q in quantizers)
    # the frozen ranges are exactly the min/max (with 0) of one pass of the 64 distilled images
    seen = []
    handles = [q.register_forward_pre_hook(lambda m, inp: seen.append(torch.aminmax(inp[0]))) for q in quantizers]
    ranges = [(q.x_min.clone(), q.x_max.clone()) for q in quantizers]
    with torch.no_grad():
        trainer.student(trainer.generator.images)
    for h in handles:
        h.remove()
    for (lo, hi), (x_min, x_max) in zip(seen, ranges):
        assert x_max == torch.clamp(hi, min=0) and x_min == torch.clamp(lo, max=0)
    prepared.evaluate(trainer.student)
    assert all(torch.equal(q.x_max, r[1]) for q, r in zip(quantizers, ranges))


def test_zeroq_kd_tiny_run_trains_q_and_repeats_bit_for_bit(tiny_request, tmp_path):
    overrides = list(TINY_OVERRIDES) + ["method.steps=20", "method.num_batches=2", "method.batch_size=8"]
    states, records = [], []
    for i in range(2):
        prepared = prepare(tiny_request(method="zeroq_kd", overrides=overrides, results=str(tmp_path / f"r{i}")))
        initial = {k: v.clone() for k, v in prepared.student.named_parameters()}
        trainer = Trainer(prepared, RecordingProgress())
        records.append(trainer.fit())
        states.append({k: v.clone() for k, v in trainer.student.state_dict().items()})
        assert any(not torch.equal(p, initial[k]) for k, p in trainer.student.named_parameters())
    assert records[0].top1_per_epoch == records[1].top1_per_epoch
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert records[0].images_generated == 3 * 4 * 8
