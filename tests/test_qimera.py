"""Qimera plugin and the reusable superposed sampler, against hand-computed values."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfqbench.blocks.generators import CifarGenerator, ConditionalBatchNorm2d, ImageNetGenerator
from dfqbench.blocks.generators_qimera import QimeraGenerator, embed_normalize, teacher_class_embedding
from dfqbench.blocks.interface import Sample, StepContext
from dfqbench.blocks.superposed import (
    MIX_WEIGHTS, SLOT_LABELS, generate_gdfq_superposed, mixing_weights, soft_targets, superposed_sample,
)
from dfqbench.core.trainer import Trainer
from dfqbench.errors import DfqbenchError
from dfqbench.plugins import load_methods
from dfqbench.runner import RunRequest, prepare, run

from conftest import RecordingProgress

CPU = torch.device("cpu")


def _method(name="qimera", dataset="cifar10", num_classes=10, size=32, **config):
    cls = load_methods().get(name)
    return cls(cls.config_class(**config), num_classes, size, dataset)


def _settings(prob, k=3):
    return SimpleNamespace(superposed_prob=prob, superposed_k=k)


# -- the superposed sampler ---------------------------------------------------------------------------
def test_mixing_weights_are_a_softmax_of_gaussian_draws_and_sum_to_one():
    torch.manual_seed(7)
    weights = mixing_weights(5, 4, CPU)
    torch.manual_seed(7)
    eps = torch.randn(5, 4)
    expected = torch.exp(eps) / torch.exp(eps).sum(dim=1, keepdim=True)
    assert torch.allclose(weights, expected, atol=1e-7)
    assert torch.allclose(weights.sum(dim=1), torch.ones(5), atol=1e-6)
    assert (weights > 0).all()


def test_soft_targets_scatter_add_repeated_classes():
    labels = torch.tensor([[2, 2, 0], [1, 3, 1]])
    weights = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    targets = soft_targets(labels, weights, 4)
    expected = torch.tensor([[0.2, 0.0, 0.8, 0.0], [0.0, 0.4, 0.0, 0.6]])  # class 2: 0.5 + 0.3; class 1: 0.1 + 0.3
    assert torch.allclose(targets, expected)
    assert torch.allclose(targets.sum(dim=1), torch.ones(2))


def test_p0_gives_one_hot_batches_without_drawing_a_coin():
    torch.manual_seed(3)
    samples = [superposed_sample(_settings(0.0), 6, 5, 4, CPU) for _ in range(20)]
    torch.manual_seed(3)
    for s in samples:  # the same draws as a plain GDFQ batch: z then labels, no coin
        z, labels = torch.randn(6, 4), torch.randint(0, 5, (6,))
        assert torch.equal(s.z, z) and torch.equal(s.labels, labels)
        assert torch.equal(s.targets, F.one_hot(labels, 5).float())
        assert s.extra["superposed"] is False


def test_p1_gives_only_superposed_batches_with_consistent_fields():
    torch.manual_seed(4)
    for _ in range(20):
        s = superposed_sample(_settings(1.0, k=3), 6, 5, 4, CPU)
        assert s.extra["superposed"] is True
        assert s.z.shape == (6, 3, 4) and s.extra[SLOT_LABELS].shape == (6, 3) and s.extra[MIX_WEIGHTS].shape == (6, 3)
        assert torch.allclose(s.targets, soft_targets(s.extra[SLOT_LABELS], s.extra[MIX_WEIGHTS], 5))
        assert torch.equal(s.labels, s.targets.argmax(dim=1))  # the hard label: the class of largest total weight


def test_coin_per_batch_and_official_draw_order():
    torch.manual_seed(11)
    s = superposed_sample(_settings(0.5, k=2), 4, 10, 3, CPU)
    torch.manual_seed(11)
    coin = torch.rand(1).item()
    assert s.extra["superposed"] is (coin < 0.5)
    if s.extra["superposed"]:
        z, labels, eps = torch.randn(4, 2, 3), torch.randint(0, 10, (4, 2)), torch.randn(4, 2)
        assert torch.equal(s.z, z) and torch.equal(s.extra[SLOT_LABELS], labels)
        assert torch.allclose(s.extra[MIX_WEIGHTS], torch.softmax(eps, dim=1))
    else:
        assert torch.equal(s.z, torch.randn(4, 3))


def test_superposed_rate_and_same_seed_same_batches():
    def draw():
        torch.manual_seed(5)
        return [superposed_sample(_settings(0.4, k=2), 3, 10, 2, CPU) for _ in range(400)]

    a, b = draw(), draw()
    assert all(torch.equal(x.z, y.z) and torch.equal(x.targets, y.targets) for x, y in zip(a, b))
    rate = sum(s.extra["superposed"] for s in a) / len(a)
    assert 0.33 < rate < 0.47  # Binomial(400, 0.4): ±3 standard deviations


@pytest.mark.parametrize("bad, match", [({"superposed_prob": 1.5}, "superposed_prob=1.5"),
                                        ({"superposed_k": 0}, "superposed_k=0"),
                                        ({"embedding_init": "pca"}, "embedding_init.*teacher, random"),
                                        ({"latent_dim": 0}, "latent_dim=0")])
def test_bad_config_is_a_one_line_error(bad, match):
    with pytest.raises(DfqbenchError, match=match):
        _method(**bad)
    if "superposed_prob" in bad or "superposed_k" in bad:
        with pytest.raises(DfqbenchError, match=match):
            _method("gdfq", **bad)


# -- the generator input path -------------------------------------------------------------------------
def test_embed_normalizer_one_label_branch_standardises_each_sample_over_its_features():
    e = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]])
    out = embed_normalize(e)
    s1, s2 = math.sqrt(2 / 3 + 1e-5), math.sqrt(8 / 3 + 1e-5)  # biased variances 2/3 and 8/3, eps 1e-5
    expected = torch.tensor([[-1 / s1, 0.0, 1 / s1], [-2 / s2, 0.0, 2 / s2]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_embed_normalizer_mixed_branch_standardises_each_slot_over_features_and_samples():
    e = torch.tensor([[[0.0, 2.0], [1.0, 1.0]],
                      [[4.0, 6.0], [3.0, 7.0]]])  # (B=2, K=2, D=2)
    out = embed_normalize(e)
    # slot 0 holds {0, 2, 4, 6}: mean 3, biased variance 5; slot 1 holds {1, 1, 3, 7}: mean 3, variance 6
    s0, s1 = math.sqrt(5 + 1e-5), math.sqrt(6 + 1e-5)
    expected = torch.tensor([[[-3 / s0, -1 / s0], [-2 / s1, -2 / s1]],
                             [[1 / s0, 3 / s0], [0.0, 4 / s1]]])
    assert torch.allclose(out, expected, atol=1e-6)
    # and it is what the official op gives: BatchNorm1d(affine=False, track_running_stats=False) on e.T
    bn = nn.BatchNorm1d(2, affine=False, track_running_stats=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 3-D .T is deprecated
        official = bn(e.T).T
    one_label = e[:, 0]  # (B, D)
    assert torch.allclose(out, official, atol=1e-6)
    assert torch.allclose(embed_normalize(one_label), bn(one_label.T).T, atol=1e-6)


@pytest.mark.parametrize("dataset, size", [("cifar10", 16), ("imagenet", 16)])
def test_dm_off_by_default_and_on_shapes(dataset, size):
    torch.manual_seed(0)
    off = QimeraGenerator(dataset, 10, size, latent_dim=12)
    on = QimeraGenerator(dataset, 10, size, latent_dim=12, dm=True)
    assert off.fc_reducer is None and off.body.l1.in_features == 12
    assert on.fc_reducer.in_features == 12 and on.fc_reducer.out_features == 100 and on.body.l1.in_features == 100
    z1, y1 = torch.randn(4, 12), torch.randint(0, 10, (4,))
    zk, yk, w = torch.randn(4, 3, 12), torch.randint(0, 10, (4, 3)), torch.softmax(torch.randn(4, 3), 1)
    assert off.input_path(z1, y1).shape == (4, 12) and on.input_path(z1, y1).shape == (4, 100)
    assert off.input_path(zk, yk).shape == (4, 3, 12) and on.input_path(zk, yk).shape == (4, 3, 100)
    for gen in (off, on):
        assert gen(z1, y1).shape == (4, 3, size, size) and gen(zk, yk, w).shape == (4, 3, size, size)


def test_dm_is_applied_per_slot_before_mixing():
    torch.manual_seed(1)
    gen = QimeraGenerator("cifar10", 10, 8, latent_dim=6, dm=True, noise_scale=0.5)
    z, y, w = torch.randn(3, 2, 6), torch.randint(0, 10, (3, 2)), torch.softmax(torch.randn(3, 2), 1)
    slots = gen.fc_reducer(embed_normalize(gen.label_emb(y) + 0.5 * z))
    latent = w[:, 0:1] * slots[:, 0] + w[:, 1:2] * slots[:, 1]
    assert torch.allclose(gen(z, y, w), gen.body.trunk(latent), atol=1e-6)


def test_cbn_mix_divide_by_k_quirk_and_corrected():
    cbn = ConditionalBatchNorm2d(3, 2)
    with torch.no_grad():
        cbn.gamma.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
        cbn.beta.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]]))
    x = torch.tensor([[1.0, 0.0], [3.0, 4.0]]).view(2, 2, 1, 1)
    # BN over the batch: channel 0 {1, 3} has mean 2, variance 1; channel 1 {0, 4} has mean 2, variance 4
    a, b = 1 / math.sqrt(1 + 1e-5), 2 / math.sqrt(4 + 1e-5)
    normed = torch.tensor([[-a, -b], [a, b]])
    labels = torch.tensor([[0, 2], [1, 1]])
    weights = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    gamma = torch.tensor([[4.0, 5.0], [3.0, 4.0]])  # 0.25·γ0 + 0.75·γ2; 0.5·γ1 + 0.5·γ1
    beta = torch.tensor([[1.5, 1.75], [1.0, 0.0]])
    corrected = cbn(x, labels, weights, divide_by_k=False).view(2, 2)
    quirk = cbn(x, labels, weights, divide_by_k=True).view(2, 2)
    assert torch.allclose(corrected, gamma * normed + beta, atol=1e-5)
    assert torch.allclose(quirk, gamma / 2 * normed + beta / 2, atol=1e-5)  # (1/K)·Σ λ_k γ_{y_k}, K = 2
    assert torch.equal(cbn(x, torch.tensor([0, 2])), cbn.gamma(torch.tensor([0, 2]))[:, :, None, None] * cbn.bn(x)
                       + cbn.beta(torch.tensor([0, 2]))[:, :, None, None])


def test_qimera_imagenet_generator_switch_reaches_the_cbn():
    torch.manual_seed(2)
    quirk = QimeraGenerator("imagenet", 5, 8, latent_dim=6)
    fixed = QimeraGenerator("imagenet", 5, 8, latent_dim=6, cbn_divide_by_k=False)
    with torch.no_grad():
        for cbn in (quirk.body.cbn0, quirk.body.cbn1, quirk.body.cbn2):
            cbn.gamma.weight.uniform_(0.5, 2.0)
            cbn.beta.weight.uniform_(-1.0, 1.0)
    fixed.load_state_dict(quirk.state_dict())
    z, y, w = torch.randn(4, 3, 6), torch.randint(0, 5, (4, 3)), torch.softmax(torch.randn(4, 3), 1)
    assert quirk.cbn_divide_by_k and not fixed.cbn_divide_by_k
    assert not torch.allclose(quirk(z, y, w), fixed(z, y, w))
    z1, y1 = torch.randn(4, 6), torch.randint(0, 5, (4,))
    assert torch.equal(quirk(z1, y1), fixed(z1, y1))  # one-label batches do not mix


def test_teacher_class_embedding_linear_and_squeezed_1x1_conv():
    linear = nn.Sequential()
    linear.add_module("output", nn.Linear(4, 3))
    assert torch.equal(teacher_class_embedding(linear), linear.output.weight)
    conv = nn.Sequential()
    conv.add_module("output", nn.Conv2d(4, 3, 1, bias=False))  # MobileNetV2's classifier
    emb = teacher_class_embedding(conv)
    assert emb.shape == (3, 4) and torch.equal(emb, conv.output.weight[:, :, 0, 0])


def _trainer(tmp_path, *overrides, method="qimera"):
    request = RunRequest(method=method, model="tiny_cifar10", bits="w4a4", seed=0, protocol="quick",
                         overrides=["train.batch_size=8", "train.iters_per_epoch=2", *overrides],
                         results=str(tmp_path / "results"), device="cpu", log_every=1)
    return Trainer(prepare(request), RecordingProgress())


def test_embedding_initialised_from_the_teacher_last_layer_and_trainable(tmp_path):
    trainer = _trainer(tmp_path)
    weight = trainer.teacher.output.weight
    assert trainer.generator.label_emb.weight.shape == weight.shape == (10, 16)  # D = the tiny teacher's features
    assert torch.equal(trainer.generator.label_emb.weight, weight)
    assert trainer.generator.label_emb.weight.requires_grad
    rand = _trainer(tmp_path, "method.embedding_init=random", "method.latent_dim=5")
    assert rand.generator.label_emb.weight.shape == (10, 5)


def test_teacher_init_rejects_a_latent_dim_other_than_the_feature_size(tmp_path):
    with pytest.raises(DfqbenchError, match="latent_dim=5.*feature size 16"):
        _trainer(tmp_path, "method.latent_dim=5")


# -- losses -------------------------------------------------------------------------------------------
def _ctx(t, s, targets, bns=None, labels=None):
    labels = targets.argmax(1) if labels is None else labels
    return StepContext(torch.zeros(len(t), 3, 8, 8), Sample(torch.zeros(len(t), 4), labels, targets), t, s, bns,
                       t.shape[1])


def test_generator_loss_is_soft_ce_plus_tenth_bns_by_hand():
    t = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    targets = torch.tensor([[0.3, 0.7, 0.0], [0.5, 0.0, 0.5]])
    loss, terms = _method(num_classes=3).generator_loss(_ctx(t, None, targets, bns=torch.tensor(2.0)))
    lse0 = math.log(math.e + math.e**2 + 1)
    lse1 = math.log(2 + math.e**3)
    ce = (-(0.3 * (1 - lse0) + 0.7 * (2 - lse0)) - (0.5 * (0 - lse1) + 0.5 * (3 - lse1))) / 2
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(ce + 0.2, rel=1e-6)


def test_student_loss_is_kd_element_mean_plus_soft_ce_by_hand():
    torch.manual_seed(1)
    t, s = torch.randn(4, 10) * 5, torch.randn(4, 10) * 5
    targets = soft_targets(torch.randint(0, 10, (4, 3)), torch.softmax(torch.randn(4, 3), 1), 10)
    loss, terms = _method().student_loss(_ctx(t, s, targets))
    p_t, p_s = torch.softmax(t / 20, 1), torch.softmax(s / 20, 1)
    kd = 400 * (p_t * (p_t.log() - p_s.log())).sum() / (4 * 10)
    ce = -(targets * torch.log_softmax(s, 1)).sum() / 4
    assert terms["kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert loss.item() == pytest.approx(kd.item() + ce.item(), rel=1e-5)


# -- presets ------------------------------------------------------------------------------------------
def test_presets_follow_the_official_scripts_and_requested_bits():
    cls = load_methods().get("qimera")
    c10 = cls.paper_protocol("cifar10", "resnet20_cifar10", 4, 4)
    assert c10["method"] == {"superposed_prob": 0.4, "superposed_k": 2, "embedding_init": "random", "latent_dim": 64}
    assert (c10["train"]["batch_size"], c10["train"]["lr_q"], c10["train"]["warmup_epochs"]) == (200, 1e-4, 4)
    assert cls.paper_protocol("cifar100", "resnet20_cifar100", 4, 4)["method"]["superposed_k"] == 10
    assert cls.paper_protocol("cifar100", "resnet20_cifar100", 5, 5)["method"]["superposed_k"] == 50
    r50 = cls.paper_protocol("imagenet", "resnet50", 4, 4)
    assert r50["method"] == {"superposed_prob": 0.7, "superposed_k": 500, "embedding_init": "teacher", "latent_dim": 2048}
    assert (r50["train"]["batch_size"], r50["train"]["lr_q"], r50["train"]["warmup_epochs"]) == (16, 1e-6, 50)
    assert cls.paper_protocol("imagenet", "mobilenetv2_w1", 4, 4)["method"]["latent_dim"] == 1280
    assert cls.paper_protocol("imagenet", "resnet18", 5, 5)["method"]["superposed_k"] == 100
    other = cls.paper_protocol("cifar10", "resnet56_cifar10", 4, 4)["method"]
    assert "latent_dim" not in other and other["superposed_k"] == 2  # D: the teacher's own feature size


def test_three_bit_cells_take_the_four_bit_script_settings():
    """No official script runs 3 bits; W3A3 (and W4A8, W8A4) use run_cifar10_4bit.sh's p, K, --randemb and the
    hocon's latent 64, as `run_cifar10_4bit.sh --qw 3 --qa 3` would (issue 14)."""
    cls = load_methods().get("qimera")
    four = cls.paper_protocol("cifar10", "resnet20_cifar10", 4, 4)
    for bits in ((3, 3), (4, 8), (8, 4)):
        assert cls.paper_protocol("cifar10", "resnet20_cifar10", *bits) == four
    assert cls.paper_protocol("cifar10", "resnet20_cifar10", 5, 5)["method"] == four["method"]  # the 5-bit script: same


# -- end to end ---------------------------------------------------------------------------------------
def test_tiny_qimera_run_end_to_end(tiny_request):
    record = run(tiny_request(method="qimera", overrides=[
        "train.epochs=3", "train.iters_per_epoch=4", "train.batch_size=8", "train.warmup_epochs=1",
        "train.range_update_epochs=1", "method.superposed_prob=0.5", "method.superposed_k=3"]), RecordingProgress())
    assert record.spec["method"] == "qimera"
    assert record.spec["method_config"]["superposed_k"] == 3
    assert all(math.isfinite(v) for v in record.top1_per_epoch.values()) and record.best_top1 is not None
    assert record.images_generated >= 3 * 4 * 8


# -- GDFQ with the superposed switch -----------------------------------------------------------------
def test_gdfq_default_samples_and_losses_as_before():
    m = _method("gdfq")
    assert m.config.superposed_prob == 0.0
    torch.manual_seed(0)
    s = m.sample(5, CPU)
    torch.manual_seed(0)
    assert torch.equal(s.z, torch.randn(5, 100)) and torch.equal(s.labels, torch.randint(0, 10, (5,)))
    assert s.targets is None and s.extra == {}
    gen = CifarGenerator(10, 8)
    torch.manual_seed(1)
    a = m.generate(gen, s)
    torch.manual_seed(1)
    assert torch.equal(a, gen(s.z, s.labels))
    t, q = torch.randn(5, 10), torch.randn(5, 10)
    ctx = StepContext(a, s, t, q, torch.tensor(1.0), 10)
    assert torch.equal(m.generator_loss(ctx)[1]["ce"], F.cross_entropy(t, s.labels))
    assert torch.equal(m.student_loss(ctx)[1]["ce"], F.cross_entropy(q, s.labels))


def test_gdfq_superposed_mixes_conditioned_inputs_before_the_trunk():
    m = _method("gdfq", superposed_prob=1.0, superposed_k=3)
    torch.manual_seed(2)
    s = m.sample(4, CPU)
    assert s.extra["superposed"] and s.z.shape == (4, 3, 100)
    gen = CifarGenerator(10, 8)
    y, w = s.extra[SLOT_LABELS], s.extra[MIX_WEIGHTS]
    latent = sum(w[:, k:k + 1] * gen.label_emb(y[:, k]) * s.z[:, k] for k in range(3))
    assert torch.allclose(m.generate(gen, s), gen.trunk(latent), atol=1e-5)
    t = torch.randn(4, 10)
    ce = m.generator_loss(StepContext(torch.zeros(1), s, t, None, torch.tensor(0.0), 10))[1]["ce"]
    assert ce.item() == pytest.approx(-(s.targets * torch.log_softmax(t, 1)).sum().item() / 4, rel=1e-6)


def test_gdfq_superposed_imagenet_generator_mixes_noise_and_cbn():
    torch.manual_seed(3)
    gen = ImageNetGenerator(6, 8)
    s = superposed_sample(_settings(1.0, k=2), 4, 6, 100, CPU)
    y, w = s.extra[SLOT_LABELS], s.extra[MIX_WEIGHTS]
    latent = w[:, 0:1] * s.z[:, 0] + w[:, 1:2] * s.z[:, 1]
    for divide in (True, False):
        expected = gen.trunk(latent, y, w, divide)
        assert torch.allclose(generate_gdfq_superposed(gen, s, divide), expected, atol=1e-6)


def test_gdfq_with_superposed_on_runs(tiny_request):
    record = run(tiny_request(overrides=[
        "train.epochs=2", "train.iters_per_epoch=3", "train.batch_size=8", "train.warmup_epochs=1",
        "train.range_update_epochs=1", "method.superposed_prob=1.0", "method.superposed_k=3"]), RecordingProgress())
    assert record.spec["method_config"]["superposed_prob"] == 1.0
    assert all(math.isfinite(v) for v in record.top1_per_epoch.values())


def test_freeze_applies_to_the_extracted_embedding_only():
    teacher_table = torch.randn(10, 8)
    frozen = QimeraGenerator("cifar10", 10, 8, 8, embedding=teacher_table, freeze_embedding=True)
    assert not frozen.label_emb.weight.requires_grad
    random_table = QimeraGenerator("cifar10", 10, 8, 8, embedding=None, freeze_embedding=True)
    assert random_table.label_emb.weight.requires_grad  # official --freeze has no effect with --randemb
