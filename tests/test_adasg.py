"""AdaSG and AdaDFQ: the game loss terms against hand computations, the plugins' weights and presets, and
tiny end-to-end runs (official AdaSG/AdaDFQ ``CIFAR/trainer.py``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dfqbench.blocks import game_losses as gl
from dfqbench.blocks.interface import Sample, StepContext
from dfqbench.core.trainer import Trainer
from dfqbench.errors import DfqbenchError
from dfqbench.plugins import load_methods
from dfqbench.quant import set_range_update
from dfqbench.runner import prepare, run

from conftest import RecordingProgress

ADASG_DEFAULT_WEIGHTS = {"bound": 1.0, "ds": 0.1, "as": 0.1, "bns": 1.0}
WEIGHT_FIELDS = {"bound": "bound_weight", "ds": "ds_weight", "as": "as_weight", "bns": "bns_weight"}


def _method(name: str, num_classes: int = 10, **config):
    cls = load_methods().get(name)
    return cls(cls.config_class(**config), num_classes, 32, "cifar10")


# -- pure-Python references (no torch) -----------------------------------------------------------------
def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _entropy(row: list[float]) -> float:
    return -sum(p * math.log(p) for p in _softmax(row) if p > 0)


def _ref_ce(rows: list[list[float]], labels: list[int]) -> float:
    return sum(-math.log(_softmax(r)[y]) for r, y in zip(rows, labels)) / len(rows)


def _ref_bound(h: list[float], num_classes: int, lo: float, hi: float) -> float:
    m, top = min(h), math.log(num_classes)
    hn = [(v - m) / (top - m) for v in h]
    return sum(max(lo - v, 0.0) for v in hn) / len(h) + sum(max(v - hi, 0.0) for v in hn) / len(h)


def _ref_terms(t: list[list[float]], s: list[list[float]], y: list[int], tau: float, lo=0.3, hi=0.8) -> dict:
    diff = [[a - b for a, b in zip(tr, sr)] for tr, sr in zip(t, s)]
    summ = [[a + b for a, b in zip(tr, sr)] for tr, sr in zip(t, s)]
    return {
        "ds": _ref_ce(diff, y), "as": _ref_ce(summ, y),
        "bound": _ref_bound([_entropy(r) for r in diff], len(t[0]), lo, hi),
        "q": -(tau**2) * sum(_entropy([v / tau for v in r]) for r in diff) / len(t),
    }


T3 = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, -1.0, 3.0]]
S3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
Y3 = [0, 1, 2]


def test_terms_on_fixed_3x3_logits_match_hand_computation():
    t, s, y = torch.tensor(T3), torch.tensor(S3), torch.tensor(Y3)
    ref = _ref_terms(T3, S3, Y3, tau=20.0)
    assert gl.disagreement_ce(t, s, y).item() == pytest.approx(ref["ds"], rel=1e-6)
    assert gl.agreement_ce(t, s, y).item() == pytest.approx(ref["as"], rel=1e-6)
    assert gl.bound_loss(t, s, 0.3, 0.8).item() == pytest.approx(ref["bound"], rel=1e-5)
    assert gl.entropy_maximization_loss(t, s, 20.0).item() == pytest.approx(ref["q"], rel=1e-5)
    # L_ds spelled out: t − s = (1, 0, −1), (0.5, −0.5, 0), (1, −1, 2) with y = 0, 1, 2
    e = math.exp
    by_hand = -(math.log(e(1) / (e(1) + 1 + e(-1))) + math.log(e(-0.5) / (e(0.5) + e(-0.5) + 1))
                + math.log(e(2) / (e(1) + e(-1) + e(2)))) / 3
    assert gl.disagreement_ce(t, s, y).item() == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("batch", [16, 5])
def test_terms_at_any_batch_size_match_reference(batch):
    gen = torch.Generator().manual_seed(batch)
    t = torch.randn(batch, 10, generator=gen, dtype=torch.float64) * 3
    s = torch.randn(batch, 10, generator=gen, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (batch,), generator=gen)
    for tau in (20.0, 5.0):
        ref = _ref_terms(t.tolist(), s.tolist(), y.tolist(), tau)
        assert gl.disagreement_ce(t, s, y).item() == pytest.approx(ref["ds"], rel=1e-10)
        assert gl.agreement_ce(t, s, y).item() == pytest.approx(ref["as"], rel=1e-10)
        assert gl.bound_loss(t, s, 0.3, 0.8).item() == pytest.approx(ref["bound"], rel=1e-9)
        assert gl.entropy_maximization_loss(t, s, tau).item() == pytest.approx(ref["q"], rel=1e-10)


def test_bound_loss_batch_min_normalisation_and_both_hinges():
    top = math.log(10)
    m = 0.5
    wanted = [0.0, 0.1, 0.5, 0.95]  # h' values: below λ_l, below λ_l, inside, above λ_u
    h = torch.tensor([m + v * (top - m) for v in wanted], dtype=torch.float64)
    hn = gl.batch_min_normalized_entropy(h, 10)
    assert hn.tolist() == pytest.approx(wanted, abs=1e-12)
    assert hn[0].item() == 0.0  # the argmin sample
    loss = gl.bound_loss_from_entropy(h, 10, 0.3, 0.8)
    assert loss.item() == pytest.approx((0.3 + 0.2) / 4 + 0.15 / 4, rel=1e-12)
    # only the upper hinge: everything inside [λ_l, λ_u] except the top sample
    assert gl.bound_loss_from_entropy(h, 10, 0.0, 0.8).item() == pytest.approx(0.15 / 4, rel=1e-12)
    # only the lower hinge
    assert gl.bound_loss_from_entropy(h, 10, 0.3, 1.0).item() == pytest.approx(0.5 / 4, rel=1e-12)


def test_bound_loss_gradient_flows_through_the_batch_min():
    top, m = math.log(10), 0.5
    h = torch.tensor([m + v * (top - m) for v in (0.0, 0.1, 0.5, 0.95)], dtype=torch.float64, requires_grad=True)
    gl.bound_loss_from_entropy(h, 10, 0.3, 0.8).backward()
    batch, denom = 4, top - m
    g = [-1 / batch, -1 / batch, 0.0, 1 / batch]  # ∂L_b/∂h'_i: lower hinge, lower hinge, inside, upper hinge
    hv = h.detach().tolist()
    argmin_grad = sum(g[i] * (hv[i] - top) / denom**2 for i in range(1, batch))
    expected = [argmin_grad] + [g[i] / denom for i in range(1, batch)]
    assert h.grad.tolist() == pytest.approx(expected, rel=1e-10)
    assert h.grad[0].item() != 0.0  # a detached min would give the argmin sample no gradient at all


def test_soft_targets_replace_the_one_hot():
    t, s, y = torch.tensor(T3), torch.tensor(S3), torch.tensor(Y3)
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    assert gl.disagreement_ce(t, s, y, one_hot).item() == pytest.approx(gl.disagreement_ce(t, s, y).item(), rel=1e-6)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75], [1.0, 0.0, 0.0]])
    diff = [[a - b for a, b in zip(tr, sr)] for tr, sr in zip(T3, S3)]
    summ = [[a + b for a, b in zip(tr, sr)] for tr, sr in zip(T3, S3)]
    ref = lambda rows: -sum(sum(w * math.log(p) for w, p in zip(wr, _softmax(r))) for wr, r in zip(soft.tolist(), rows)) / 3
    assert gl.disagreement_ce(t, s, y, soft).item() == pytest.approx(ref(diff), rel=1e-6)
    assert gl.agreement_ce(t, s, y, soft).item() == pytest.approx(ref(summ), rel=1e-6)
    # the plugin uses the soft targets when the sample carries them
    ctx = StepContext(torch.zeros(3, 3, 8, 8), Sample(torch.zeros(3, 100), y, soft), t, s, torch.tensor(0.0), 3)
    terms = _method("adasg", 3).generator_loss(ctx)[1]
    assert terms["ds"].item() == pytest.approx(ref(diff), rel=1e-6)


def _ctx(batch: int = 16, num_classes: int = 10, seed: int = 0, grad: bool = False) -> StepContext:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(batch, num_classes, generator=gen) * 3
    s = (torch.randn(batch, num_classes, generator=gen) * 3).requires_grad_(grad)
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    bns = torch.tensor(0.7, requires_grad=grad)
    return StepContext(torch.zeros(batch, 3, 32, 32), Sample(torch.zeros(batch, 100), y), t, s, bns, num_classes)


@pytest.mark.parametrize("batch", [16, 5])
def test_adasg_generator_loss_is_the_weighted_sum(batch):
    ctx = _ctx(batch)
    loss, terms = _method("adasg").generator_loss(ctx)
    t, s, y = ctx.teacher_logits.tolist(), ctx.student_logits.tolist(), ctx.sample.labels.tolist()
    ref = _ref_terms(t, s, y, 20.0)
    assert terms["bound"].item() == pytest.approx(ref["bound"], rel=1e-5)
    assert terms["ds"].item() == pytest.approx(ref["ds"], rel=1e-5)
    assert terms["as"].item() == pytest.approx(ref["as"], rel=1e-5)
    assert loss.item() == pytest.approx(ref["bound"] + 0.1 * ref["ds"] + 0.1 * ref["as"] + 0.7, rel=1e-5)


def test_adasg_student_loss_is_negative_tau_squared_entropy_with_teacher_detached():
    ctx = _ctx(5, grad=True)
    ctx.teacher_logits.requires_grad_(True)
    loss, terms = _method("adasg").student_loss(ctx)
    ref = _ref_terms(ctx.teacher_logits.tolist(), ctx.student_logits.tolist(), ctx.sample.labels.tolist(), 20.0)
    assert loss.item() == pytest.approx(ref["q"], rel=1e-5)
    assert terms["entropy_tau"].item() == pytest.approx(-ref["q"] / 400, rel=1e-5)
    loss.backward()
    assert ctx.teacher_logits.grad is None and ctx.student_logits.grad.abs().sum() > 0
    ctx5 = _ctx(5)
    tau5 = _method("adasg", temperature=5.0).student_loss(ctx5)[0]
    ref5 = _ref_terms(ctx5.teacher_logits.tolist(), ctx5.student_logits.tolist(), ctx5.sample.labels.tolist(), 5.0)
    assert tau5.item() == pytest.approx(ref5["q"], rel=1e-5)


def test_adadfq_with_adasg_weights_equals_adasg():
    adasg = _method("adasg")
    adadfq = _method("adadfq", alpha_ds=0.1, alpha_as=0.1, beta=1.0, gamma=1.0, lambda_l=0.3, lambda_u=0.8)
    for batch in (16, 5):
        ctx = _ctx(batch, seed=batch)
        a, b = adasg.generator_loss(ctx), adadfq.generator_loss(ctx)
        assert a[0].item() == pytest.approx(b[0].item(), rel=1e-7)
        assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])
        assert torch.equal(adasg.student_loss(ctx)[0], adadfq.student_loss(ctx)[0])
    # with its own (CIFAR) defaults AdaDFQ is L_b(0.1, 0.8) + 1·(0.2·L_ds + 0.1·L_as) + 1·L_BNS
    ctx = _ctx(16)
    ref = _ref_terms(ctx.teacher_logits.tolist(), ctx.student_logits.tolist(), ctx.sample.labels.tolist(), 20.0, lo=0.1)
    expected = ref["bound"] + 0.2 * ref["ds"] + 0.1 * ref["as"] + 0.7
    assert _method("adadfq").generator_loss(ctx)[0].item() == pytest.approx(expected, rel=1e-5)
    beta = _method("adadfq", beta=2.0, gamma=3.0).generator_loss(ctx)[0].item()
    assert beta == pytest.approx(ref["bound"] + 2 * (0.2 * ref["ds"] + 0.1 * ref["as"]) + 3 * 0.7, rel=1e-5)


@pytest.mark.parametrize("term", sorted(WEIGHT_FIELDS))
def test_a_zero_weight_removes_its_term(term):
    ctx = _ctx(16)
    full, terms = _method("adasg").generator_loss(ctx)
    without, _ = _method("adasg", **{WEIGHT_FIELDS[term]: 0.0}).generator_loss(ctx)
    assert without.item() == pytest.approx(full.item() - ADASG_DEFAULT_WEIGHTS[term] * terms[term].item(), rel=1e-6)
    # the gradient of a run with only this term on is the gradient of this term alone
    ctx = _ctx(16, grad=True)
    only = {field: (1.0 if k == term else 0.0) for k, field in WEIGHT_FIELDS.items()}
    loss, terms = _method("adasg", **only).generator_loss(ctx)
    assert loss.item() == pytest.approx(terms[term].item(), rel=1e-7)
    grads = torch.autograd.grad(loss, [ctx.student_logits, ctx.bns_loss], allow_unused=True, retain_graph=True)
    alone = torch.autograd.grad(terms[term], [ctx.student_logits, ctx.bns_loss], allow_unused=True)
    for g, a in zip(grads, alone):
        assert (g is None and a is None) or torch.equal(g, a)


def test_config_rejects_bad_values_with_one_line_errors():
    cls = load_methods().get("adasg")
    with pytest.raises(DfqbenchError, match="ds_weight=-0.1"):
        cls.config_class(ds_weight=-0.1)
    with pytest.raises(DfqbenchError, match="lambda_l=0.9 > method.lambda_u=0.8"):
        cls.config_class(lambda_l=0.9)
    with pytest.raises(DfqbenchError, match="temperature"):
        cls.config_class(temperature=0.0)
    with pytest.raises(DfqbenchError, match="all 0"):
        cls.config_class(bound_weight=0.0, ds_weight=0.0, as_weight=0.0, bns_weight=0.0)
    with pytest.raises(DfqbenchError, match="beta=-1"):
        load_methods().get("adadfq").config_class(beta=-1.0)


# -- presets -------------------------------------------------------------------------------------------
def _presets(name, dataset, model, bits):
    return load_methods().get(name).paper_protocol(dataset, model, bits, bits)


@pytest.mark.parametrize("name", ["adasg", "adadfq"])
def test_schedule_presets_per_model(name):
    cifar = _presets(name, "cifar100", "resnet20_cifar100", 3)
    assert (cifar["train"]["batch_size"], cifar["train"]["lr_q"], cifar["train"]["warmup_epochs"]) == (16, 1e-4, 4)
    assert cifar["train"]["milestones_q"] == cifar["train"]["milestones_g"] == (100, 200, 300)
    assert cifar["method"]["temperature"] == 20.0 and "eval_start_epoch" not in cifar["train"]
    assert _presets(name, "cifar10", "resnet20_cifar10", 3) == cifar  # CIFAR-10 runs (the official code refuses it)
    for model in ("resnet18", "mobilenetv2_w1"):
        p = _presets(name, "imagenet", model, 3)
        assert (p["train"]["lr_q"], p["train"]["milestones_q"], p["train"]["warmup_epochs"]) == (1e-5, (350, 400), 50)
        assert p["train"]["eval_start_epoch"] == 49 and p["method"]["temperature"] == 5.0
    for p in (cifar, _presets(name, "imagenet", "resnet50", 3)):
        t = p["train"]
        assert (t["epochs"], t["iters_per_epoch"], t["batch_size"], t["lr_g"], t["g_betas"]) == (400, 200, 16, 1e-3, (0.5, 0.999))
    r50 = {bits: _presets(name, "imagenet", "resnet50", bits)["train"] for bits in (3, 4, 5)}
    assert [r50[b]["lr_q"] for b in (3, 4, 5)] == [1e-4] * 3
    assert [r50[b]["warmup_epochs"] for b in (3, 4, 5)] == [100, 50, 50]  # "50 for 4/5 bit"
    assert [r50[b]["eval_start_epoch"] for b in (3, 4, 5)] == [99, 49, 49]
    if name == "adasg":
        assert [r50[b]["milestones_q"] for b in (3, 4, 5)] == [(200, 300, 400)] * 3
    else:
        assert [r50[b]["milestones_q"] for b in (3, 4, 5)] == [(150, 300, 400), (200, 300, 400), (350, 400)]


def test_adasg_method_presets_are_only_tau():
    assert _presets("adasg", "imagenet", "resnet18", 3)["method"] == {"temperature": 5.0}
    assert _presets("adasg", "cifar10", "resnet20_cifar10", 5)["method"] == {"temperature": 20.0}


@pytest.mark.parametrize("model,bits,expected", [
    ("resnet20_cifar10", 3, (0.2, 0.1, 0.1)), ("resnet20_cifar10", 5, (0.2, 0.1, 0.1)),
    ("resnet18", 3, (0.2, 0.1, 0.1)), ("resnet18", 4, (0.2, 0.1, 0.3)), ("resnet18", 5, (0.3, 0.1, 0.3)),
    ("mobilenetv2_w1", 3, (0.2, 0.1, 0.1)), ("mobilenetv2_w1", 4, (0.3, 0.1, 0.1)), ("mobilenetv2_w1", 5, (0.2, 0.1, 0.1)),
    ("resnet50", 3, (0.2, 0.1, 0.4)), ("resnet50", 4, (0.1, 0.1, 0.3)), ("resnet50", 5, (0.2, 0.1, 0.3)),
])
def test_adadfq_parameters_per_model_and_bits(model, bits, expected):
    dataset = "cifar10" if "cifar" in model else "imagenet"
    method = _presets("adadfq", dataset, model, bits)["method"]
    assert (method["alpha_ds"], method["alpha_as"], method["lambda_l"]) == expected
    assert (method["lambda_u"], method["beta"], method["gamma"]) == (0.8, 1.0, 1.0)
    load_methods().get("adadfq").config_class(**{**load_methods().get("adadfq").default_config(), **method})


def test_mixed_bits_use_the_hocon_values():
    p = load_methods().get("adadfq").paper_protocol("imagenet", "resnet50", 4, 8)
    assert p["train"]["warmup_epochs"] == 100 and p["train"]["milestones_q"] == (150, 300, 400)
    assert p["method"]["lambda_l"] == 0.4


def _official_lr(base: float, steps: tuple[int, ...], epoch: int) -> float:
    """GDFQ utils/lr_policy.py multi_step: base·0.1^#{s : epoch + 1 > s}."""
    return base * 0.1 ** sum(1 for s in steps if epoch + 1.0 > s)


@pytest.mark.parametrize("name,model,bits", [("adasg", "resnet50", 3), ("adasg", "resnet18", 3),
                                             ("adadfq", "resnet50", 3), ("adadfq", "resnet50", 5)])
def test_milestone_of_400_never_fires_like_the_official_policy(name, model, bits):
    train = _presets(name, "imagenet", model, bits)["train"]
    assert 400 in train["milestones_q"]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=train["lr_q"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(train["milestones_q"]), 0.1)
    lrs = []
    for epoch in range(train["epochs"]):  # the trainer reads the lr during the epoch, then steps once
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    official = [_official_lr(train["lr_q"], train["milestones_q"], e) for e in range(train["epochs"])]
    assert lrs == pytest.approx(official, rel=1e-9)
    fired = len([s for s in train["milestones_q"] if s < 400])
    assert lrs[-1] == pytest.approx(train["lr_q"] * 0.1**fired, rel=1e-9)  # the 400 milestone never applied


def test_trainer_applies_a_last_epoch_milestone_never(tiny_request):
    overrides = ["train.epochs=3", "train.iters_per_epoch=2", "train.batch_size=5", "train.warmup_epochs=1",
                 "train.range_update_epochs=1", "train.milestones_q=[1,3]", "train.milestones_g=[1,3]"]
    request = tiny_request(method="adasg", overrides=overrides)
    run(request, RecordingProgress())
    rows = [json.loads(line) for line in prepare(request).folder.metrics_path.read_text().splitlines()]
    lr_q = [r["lr_q"] for r in rows if r["type"] == "epoch"]
    assert lr_q == pytest.approx([1e-4, 1e-5, 1e-5])  # milestone 3 = the epoch count: like 400 in a 400-epoch run


# -- the plugins inside the trainer --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["adasg", "adadfq"])
def test_generator_gradient_passes_through_the_quantized_student(name, tiny_request):
    trainer = Trainer(prepare(tiny_request(method=name)), RecordingProgress())
    method = trainer.method
    assert method.student_in_generator_loss and not method.student_bn_train
    trainer.generator.train()
    trainer.student.train(False)
    set_range_update(trainer.student, True)
    sample = method.sample(6, trainer.device)
    x = method.generate(trainer.generator, sample)
    trainer.step.bns.start()
    t = trainer.teacher(x)
    bns = trainer.step.bns.stop()
    s = trainer.student(x)
    set_range_update(trainer.student, False)
    params = [p for p in trainer.generator.parameters()]
    through_q = torch.autograd.grad(method.generator_loss(StepContext(x, sample, t, s, bns, 10))[0], params,
                                    retain_graph=True)
    without_q = torch.autograd.grad(method.generator_loss(StepContext(x, sample, t, s.detach(), bns, 10))[0],
                                    params, retain_graph=True)
    assert any(not torch.allclose(a, b) for a, b in zip(through_q, without_q))
    student_grads = torch.autograd.grad(method.generator_loss(StepContext(x, sample, t, s, bns, 10))[0],
                                        [p for p in trainer.student.parameters()], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in student_grads)


def test_generation_is_gdfqs(tiny_request):
    adasg = Trainer(prepare(tiny_request(method="adasg")), RecordingProgress())
    gdfq = Trainer(prepare(tiny_request(method="gdfq")), RecordingProgress())
    assert type(adasg.generator) is type(gdfq.generator)
    assert adasg.generator.state_dict().keys() == gdfq.generator.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(adasg.generator.state_dict().values(),
                                                 gdfq.generator.state_dict().values()))  # same seed, same init
    torch.manual_seed(3)
    a = adasg.method.sample(4, torch.device("cpu"))
    torch.manual_seed(3)
    b = gdfq.method.sample(4, torch.device("cpu"))
    assert torch.equal(a.z, b.z) and torch.equal(a.labels, b.labels) and a.targets is None


@pytest.mark.parametrize("name", ["adasg", "adadfq"])
def test_tiny_end_to_end_run(name, tiny_request):
    overrides = ["train.epochs=3", "train.iters_per_epoch=4", "train.batch_size=5", "train.warmup_epochs=1",
                 "train.range_update_epochs=1"]
    request = tiny_request(method=name, overrides=overrides)
    record = run(request, RecordingProgress())
    assert record.spec["method"] == name and record.spec["train"]["batch_size"] == 5
    assert all(math.isfinite(v) for v in record.top1_per_epoch.values())
    assert record.calibrated_top1 is not None and record.best_top1 >= record.final_top1
    rows = [json.loads(line) for line in prepare(request).folder.metrics_path.read_text().splitlines()]
    iters = [r for r in rows if r["type"] == "iter"]
    keys = {"g/loss", "g/bound", "g/ds", "g/as", "g/bns", "q/loss", "q/entropy_tau", "balance_gap", "H_g", "H_q"}
    assert iters and all(keys <= set(r) and all(math.isfinite(r[k]) for k in keys) for r in iters)
    for r in iters:
        assert r["q/loss"] == pytest.approx(-400 * r["q/entropy_tau"], rel=1e-5)
        assert 0.0 <= r["g/bound"] <= 1.0  # two hinges of a quantity in [0, 1] with 0.1 <= λ_l <= λ_u = 0.8


@pytest.mark.parametrize("name", ["adasg", "adadfq"])
def test_superposed_sampling_switch_feeds_soft_targets_to_the_game_terms(name, tiny_request):
    with pytest.raises(DfqbenchError, match="superposed_prob=2.0"):
        load_methods().get(name).config_class(superposed_prob=2.0)
    off = _method(name).sample(4, torch.device("cpu"))
    assert off.targets is None and off.z.shape == (4, 100)
    trainer = Trainer(prepare(tiny_request(method=name, overrides=["method.superposed_prob=1.0", "train.batch_size=5"])),
                      RecordingProgress())
    sample = trainer.method.sample(5, trainer.device)
    assert sample.z.shape == (5, 2, 100) and sample.targets is not None
    assert not torch.equal(sample.targets, torch.nn.functional.one_hot(sample.labels, 10).float())
    x = trainer.method.generate(trainer.generator, sample)
    with torch.no_grad():
        t, s = trainer.teacher(x), trainer.student(x)
    terms = trainer.method.generator_loss(StepContext(x, sample, t, s, torch.tensor(0.0), 10))[1]
    assert terms["ds"].item() == pytest.approx(gl.disagreement_ce(t, s, sample.labels, sample.targets).item())
    assert terms["ds"].item() != pytest.approx(gl.disagreement_ce(t, s, sample.labels).item())
    trainer.train_iteration(0, log=True)  # one full iteration of the loop with superposed batches
    assert all(math.isfinite(v) for v in trainer.window.flush().values())
