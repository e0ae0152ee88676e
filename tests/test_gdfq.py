"""GDFQ plugin: generators (with their inherited quirks) and losses against hand-computed values."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfqbench.blocks.generators import CifarGenerator, ImageNetGenerator
from dfqbench.blocks.interface import Sample, StepContext
from dfqbench.errors import DfqbenchError
from dfqbench.plugins import load_methods


def _gdfq(dataset="cifar10", num_classes=10, size=32, **config):
    cls = load_methods().get("gdfq")
    return cls(cls.config_class(**config), num_classes, size, dataset)


def test_cifar_generator_architecture_and_quirks():
    torch.manual_seed(0)
    gen = CifarGenerator(num_classes=10, img_size=32)
    assert gen.l1.out_features == 128 * 8 * 8
    assert gen.bn1.eps == 0.8 and gen.bn2.eps == 0.8 and gen.bn0.eps == 1e-5  # eps, not momentum
    assert gen.out_bn.affine is False
    z, y = torch.randn(6, 100), torch.randint(0, 10, (6,))
    seen = []
    gen.out_bn.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach()))
    x = gen(z, y)
    assert x.shape == (6, 3, 32, 32)
    # the final affine-free BN standardises each channel of the tanh output over the batch (train mode)
    pre_var = seen[0].var(dim=(0, 2, 3), unbiased=False)
    assert seen[0].abs().max() <= 1.0
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.var(dim=(0, 2, 3), unbiased=False), pre_var / (pre_var + 1e-5), atol=1e-5)
    # conditioning is Emb(y) ⊙ z at the input only
    assert torch.equal(gen.embed(z, y), gen.label_emb(y) * z)


def test_imagenet_generator_conditions_through_bn_only():
    torch.manual_seed(0)
    gen = ImageNetGenerator(num_classes=7, img_size=16)
    assert not hasattr(gen, "label_emb")
    assert gen.cbn0.bn.eps == 1e-5 and gen.cbn1.bn.eps == 0.8 and gen.cbn2.bn.eps == 0.8
    assert torch.equal(gen.cbn1.gamma.weight, torch.ones(7, 128)) and torch.equal(gen.cbn1.beta.weight, torch.zeros(7, 128))
    z = torch.randn(4, 100)
    a = gen(z, torch.tensor([0, 1, 2, 3]))
    with torch.no_grad():
        gen.cbn1.gamma.weight[5].mul_(3.0)
    b = gen(z, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(a, b)  # a class not in the batch changes nothing
    assert a.shape == (4, 3, 16, 16)


def test_gdfq_sample_and_generator_for_dataset():
    m = _gdfq()
    s = m.sample(5, torch.device("cpu"))
    assert s.z.shape == (5, 100) and s.labels.shape == (5,) and int(s.labels.max()) < 10
    assert isinstance(m.build_generator(), CifarGenerator)
    assert isinstance(_gdfq("imagenet", 1000, 32).build_generator(), ImageNetGenerator)


def test_gdfq_generator_loss_is_ce_plus_tenth_bns():
    m = _gdfq()
    t = torch.tensor([[2.0, 0.0] + [0.0] * 8, [0.0, 1.0] + [0.0] * 8])
    y = torch.tensor([0, 1])
    bns = torch.tensor(3.0)
    ctx = StepContext(torch.zeros(2, 3, 32, 32), Sample(torch.zeros(2, 100), y), t, None, bns, 10)
    loss, terms = m.generator_loss(ctx)
    assert loss.item() == pytest.approx(F.cross_entropy(t, y).item() + 0.3)
    assert set(terms) == {"ce", "bns"}


def test_gdfq_student_loss_kd_element_mean_times_t_squared_plus_ce():
    m = _gdfq()
    torch.manual_seed(1)
    t, s = torch.randn(4, 10) * 5, torch.randn(4, 10) * 5
    y = torch.tensor([1, 2, 3, 4])
    ctx = StepContext(torch.zeros(4, 3, 32, 32), Sample(torch.zeros(4, 100), y), t, s, None, 10)
    loss, terms = m.student_loss(ctx)
    p_t, p_s = torch.softmax(t / 20, 1), torch.softmax(s / 20, 1)
    kl_el = (p_t * (p_t.log() - p_s.log())).sum() / (4 * 10)  # nn.KLDivLoss() default: element mean
    assert terms["kd"].item() == pytest.approx(400 * kl_el.item(), rel=1e-5)
    assert loss.item() == pytest.approx(400 * kl_el.item() + F.cross_entropy(s, y).item(), rel=1e-5)
    corrected = _gdfq(kd_reduction="batchmean").student_loss(ctx)[1]["kd"]
    assert corrected.item() == pytest.approx(10 * terms["kd"].item(), rel=1e-5)


def test_gdfq_config_rejects_unknown_reduction():
    with pytest.raises(DfqbenchError, match="kd_reduction.*element_mean"):
        _gdfq(kd_reduction="sum")


def test_gdfq_paper_presets_per_dataset():
    cls = load_methods().get("gdfq")
    cifar = cls.paper_protocol("cifar100", "resnet20_cifar100", 4, 4)["train"]
    imnet = cls.paper_protocol("imagenet", "resnet18", 4, 4)["train"]
    assert (cifar["batch_size"], cifar["lr_q"], cifar["warmup_epochs"]) == (200, 1e-4, 4)
    assert (imnet["batch_size"], imnet["lr_q"], imnet["warmup_epochs"]) == (16, 1e-6, 50)
