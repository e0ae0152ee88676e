"""ZAQ plugin: SCRM and L1 terms against hand computations, G's sign, the Q-first 5:1 loop with Q in train mode,
never-frozen ranges that evaluation does not move, calibration on generated data, determinism and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfqbench.blocks.features import FeatureTap, stage_names
from dfqbench.blocks.interface import Sample, StepContext
from dfqbench.core.trainer import Trainer
from dfqbench.errors import DfqbenchError
from dfqbench.methods import zaq as zaq_module
from dfqbench.plugins import load_methods
from dfqbench.quant import QuantAct, QuantConfig, quantize_model
from dfqbench.runner import prepare, resolve_settings, run
from dfqbench.zoo import build_model
from dfqbench.zoo.tiny import build_tiny

from conftest import CrashAfterEpoch, RecordingProgress, same_state

ZAQ_OVERRIDES = ["train.epochs=3", "train.iters_per_epoch=3", "train.batch_size=8"]


def _zaq(**config):
    cls = load_methods().get("zaq")
    return cls(cls.config_class(**config), 10, 8, "tiny")


def _request(tiny_request, **changes):
    return tiny_request(method="zaq", overrides=list(ZAQ_OVERRIDES), **changes)


def _trainer(request) -> Trainer:
    prepared = prepare(request)
    prepared.folder.create(prepared.spec)
    return Trainer(prepared, RecordingProgress())


# -- SCRM and the losses, by hand --------------------------------------------------------------------------
def _normalise(f):  # f[c][i], L2 over channels per position
    norms = [math.sqrt(sum(f[c][i] ** 2 for c in range(len(f)))) for i in range(len(f[0]))]
    return [[f[c][i] / norms[i] for i in range(len(f[0]))] for c in range(len(f))]


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _spatial(f, gamma=0.1):
    n = len(f[0])
    a = [_softmax([sum(fc[i] * fc[j] for fc in f) for j in range(n)]) for i in range(n)]
    return [[gamma * sum(a[i][j] * fc[j] for j in range(n)) + fc[i] for i in range(n)] for fc in f]


def _channel(f, gamma=0.1):
    c_n, n = len(f), len(f[0])
    energy = [[sum(f[c][i] * f[d][i] for i in range(n)) for d in range(c_n)] for c in range(c_n)]
    a = [_softmax([max(row) - v for v in row]) for row in energy]
    return [[gamma * sum(a[c][d] * f[d][i] for d in range(c_n)) + f[c][i] for i in range(n)] for c in range(c_n)]


def _l1(a, b):
    flat = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(flat) / len(flat)


def _hand_scrm(fq, fp):
    q, p = _normalise(fq), _normalise(fp)
    return _l1(_spatial(q), _spatial(p)) + _l1(_channel(q), _channel(p))


FQ = [[1.0, 2.0, 0.5, 1.0], [0.0, 1.0, 3.0, 0.2]]  # C=2 channels × HW=4 positions (H=W=2), row-major
FP = [[0.3, 1.5, 1.0, 2.0], [1.0, 0.0, 2.0, 0.7]]


def _tensor(f):
    return torch.tensor(f, dtype=torch.float64).view(1, 2, 2, 2)


def test_relation_branches_match_hand_computation():
    f = _tensor(FQ)
    assert torch.allclose(zaq_module.spatial_relation(f), torch.tensor(_spatial(FQ), dtype=torch.float64).view(1, 2, 2, 2))
    assert torch.allclose(zaq_module.channel_relation(f), torch.tensor(_channel(FQ), dtype=torch.float64).view(1, 2, 2, 2))


def test_scrm_matches_hand_computation_and_sums_stages():
    fq, fp = _tensor(FQ), _tensor(FP)
    one = zaq_module.scrm_loss([fq], [fp])
    assert one.item() == pytest.approx(_hand_scrm(FQ, FP), rel=1e-12)
    assert one.item() > 0
    assert zaq_module.scrm_loss([fq], [fq]).item() == 0.0
    two = zaq_module.scrm_loss([fq, fp], [fp, fq])
    assert two.item() == pytest.approx(_hand_scrm(FQ, FP) + _hand_scrm(FP, FQ), rel=1e-12)
    # channel L2-normalisation: rescaling a feature map changes nothing
    assert zaq_module.scrm_loss([3.0 * fq], [fp]).item() == pytest.approx(one.item(), rel=1e-12)


def test_channel_normalize_faithful_gradient_explodes_at_zero_vectors_and_safe_variant_does_not():
    # position 0 has an all-zero channel vector (what a ≤4-bit quantized post-ReLU stage output often has)
    f = torch.tensor([[0.0, 3.0], [0.0, 4.0]], dtype=torch.float64).view(1, 2, 1, 2).requires_grad_(True)
    faithful = zaq_module.channel_normalize(f)
    faithful.sum().backward()
    assert f.grad[0, :, 0, 0].tolist() == [1e12, 1e12]  # d/dx (x / max(0, 1e-12)) = 1e12
    f.grad = None
    safe = zaq_module.channel_normalize(f, safe=True)
    assert torch.equal(safe.detach(), faithful.detach())  # same values: 0 and (0.6, 0.8)
    safe.sum().backward()
    assert f.grad[0, :, 0, 0].tolist() == [0.0, 0.0]
    # at a non-zero vector the gradient is the normalisation's: (I - x̂x̂ᵀ)/‖x‖ · 1 = ((0.8-0.6)·0.8, (0.6-0.8)·0.6)/5
    assert torch.allclose(f.grad[0, :, 0, 1], torch.tensor([0.032, -0.024], dtype=torch.float64))
    fq, fp = _tensor(FQ), _tensor(FP)
    assert zaq_module.scrm_loss([fq], [fp], safe_normalize=True).item() == pytest.approx(_hand_scrm(FQ, FP), rel=1e-12)


def _ctx(t, s, tf, sf):
    return StepContext(torch.zeros(t.shape[0], 3, 8, 8), Sample(torch.zeros(t.shape[0], 256), torch.zeros(
        t.shape[0], dtype=torch.long)), t, s, None, 10, tf, sf)


def test_student_loss_is_l1_plus_alpha_scrm():
    torch.manual_seed(0)
    t, s = torch.randn(3, 10, dtype=torch.float64), torch.randn(3, 10, dtype=torch.float64)
    tf, sf = [_tensor(FP)], [_tensor(FQ)]
    loss, terms = _zaq().student_loss(_ctx(t, s, tf, sf))
    l1 = (s - t).abs().mean().item()
    assert terms["l1"].item() == pytest.approx(l1, rel=1e-12)
    assert terms["scrm"].item() == pytest.approx(_hand_scrm(FQ, FP), rel=1e-12)
    assert loss.item() == pytest.approx(l1 + _hand_scrm(FQ, FP), rel=1e-12)
    loss2, _ = _zaq(alpha=2.5).student_loss(_ctx(t, s, tf, sf))
    assert loss2.item() == pytest.approx(l1 + 2.5 * _hand_scrm(FQ, FP), rel=1e-12)


def test_generator_loss_maximises_discrepancy_and_teacher_activation():
    torch.manual_seed(0)
    t = torch.randn(3, 10, dtype=torch.float64)
    s = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)
    tf, sf = [_tensor(FP), -_tensor(FQ)], [_tensor(FQ), _tensor(FP)]
    m = _zaq()
    loss_g, terms = m.generator_loss(_ctx(t, s, tf, sf))
    loss_q, _ = m.student_loss(_ctx(t, s, tf, sf))
    act = _tensor(FQ).abs().mean().item()  # mean |g_P[-1]|: the teacher's LAST stage
    assert terms["act"].item() == pytest.approx(act)
    assert loss_g.item() == pytest.approx(-loss_q.item() - 0.1 * act, rel=1e-12)
    # G descends −(L1 + SCRM): its gradient is exactly the negative of Q's
    g_grad = torch.autograd.grad(loss_g, s)[0]
    q_grad = torch.autograd.grad(loss_q, s)[0]
    assert torch.equal(g_grad, -q_grad) and g_grad.abs().sum() > 0


def test_generator_gradient_reaches_x_through_teacher_and_through_quantized_student():
    teacher = build_tiny().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = quantize_model(teacher, QuantConfig(wbits=4, abits=4, tracker="minmax")).train()
    names = stage_names(teacher)
    t_tap, s_tap = FeatureTap(teacher, names), FeatureTap(student, names)
    m = _zaq()
    torch.manual_seed(0)
    for detach in ("teacher", "student"):
        x = torch.randn(4, 3, 8, 8, requires_grad=True)
        t, tf = t_tap(x)
        s, sf = s_tap(x)
        if detach == "teacher":
            t, tf = t.detach(), [f.detach() for f in tf]
        else:
            s, sf = s.detach(), [f.detach() for f in sf]
        loss, _ = m.generator_loss(_ctx(t, s, tf, sf))
        (grad,) = torch.autograd.grad(loss, x)
        assert grad.abs().sum() > 0, f"no gradient to x with the {detach} detached"


def test_generator_is_dafl_unconditional_with_default_bn():
    gen = zaq_module.DAFLGenerator(latent_dim=256, img_size=32)
    bns = [m for m in gen.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.num_features for bn in bns] == [128, 128, 64, 3]
    assert all(bn.eps == 1e-5 and bn.momentum == 0.1 for bn in bns)
    assert gen.out_bn.affine is False and all(bn.affine for bn in bns[:3])
    assert gen.l1.in_features == 256 and gen.l1.out_features == 128 * 8 * 8
    assert not any(isinstance(m, nn.Embedding) for m in gen.modules())
    m = _zaq()
    torch.manual_seed(0)
    sample = m.sample(6, torch.device("cpu"))
    assert sample.z.shape == (6, 256) and sample.labels.shape == (6,)
    g = m.build_generator()
    x = m.generate(g, sample)
    assert x.shape == (6, 3, 8, 8)
    assert torch.equal(x, m.generate(g, Sample(sample.z, torch.zeros_like(sample.labels))))  # labels unused
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=x.dtype), atol=1e-5)


# -- features --------------------------------------------------------------------------------------------------
def test_static_staged_models_really_have_stages():
    from dfqbench.methods.zaq import STAGED_ZOO_MODELS

    for name in STAGED_ZOO_MODELS:
        model = build_tiny() if name == "tiny_cifar10" else build_model(name)
        assert stage_names(model), name


def test_stage_taps_on_tiny_and_pytorchcv_and_quantized_student():
    tiny = build_tiny().eval()
    assert stage_names(tiny) == ["features.stage1", "features.stage2"]
    assert stage_names(build_model("resnet20_cifar10")) == [f"features.stage{k}" for k in (1, 2, 3)]
    assert stage_names(nn.Sequential(nn.Conv2d(3, 3, 1))) == []
    gapped = nn.Module()
    gapped.features = nn.Sequential()
    gapped.features.add_module("stage1", nn.Identity())
    gapped.features.add_module("stage3", nn.Identity())
    assert stage_names(gapped) == []
    x = torch.randn(5, 3, 8, 8)
    tap = FeatureTap(tiny, stage_names(tiny))
    out, feats = tap(x)
    s1 = tiny.features.stage1(tiny.features.init_block(x))
    assert torch.equal(out, tiny(x)) and torch.equal(feats[0], s1) and torch.equal(feats[1], tiny.features.stage2(s1))
    assert tap._outputs == {}  # nothing kept between calls, nothing recorded by plain forwards
    tiny(x)
    assert tap._outputs == {}
    with pytest.raises(DfqbenchError, match="features.stage9"):
        FeatureTap(tiny, ["features.stage9"])
    # the student's stage outputs are post-ReLU QuantAct outputs: at most 2^abits levels
    student = quantize_model(tiny, QuantConfig(wbits=4, abits=3, tracker="minmax")).eval()
    _, sfeats = FeatureTap(student, stage_names(student))(x)
    assert all(f.unique().numel() <= 8 for f in sfeats)


def test_presets_quick_and_unsupported_cells():
    cls = load_methods().get("zaq")
    train, method, quant = resolve_settings(cls, "cifar10", "resnet20_cifar10", "w4a4", "paper", [])
    assert (train["epochs"], train["iters_per_epoch"], train["batch_size"], train["warmup_epochs"],
            train["range_update_epochs"]) == (300, 60, 256, 0, 300)
    assert (train["lr_q"], train["q_momentum"], train["q_nesterov"], train["q_weight_decay"]) == (0.1, 0.9, False, 5e-4)
    assert (train["lr_g"], tuple(train["g_betas"])) == (1e-3, (0.9, 0.999))
    assert tuple(train["milestones_q"]) == tuple(train["milestones_g"]) == (100, 200) and train["lr_gamma"] == 0.1
    assert quant["tracker"] == "minmax"
    assert (method["latent_dim"], method["alpha"], method["beta"]) == (256, 1.0, 0.1)
    assert resolve_settings(cls, "cifar100", "resnet20_cifar100", "w3a3", "paper", [])[0] == \
        resolve_settings(cls, "cifar10", "resnet20_cifar10", "w3a3", "paper", [])[0]
    quick = resolve_settings(cls, "cifar10", "resnet20_cifar10", "w3a3", "quick", [])[0]
    assert (quick["epochs"], quick["iters_per_epoch"], quick["batch_size"], quick["warmup_epochs"],
            quick["range_update_epochs"]) == (4, 50, 16, 0, 4)  # batch ≤ 16 (ZAQ.quick_train); ranges never frozen
    assert "CIFAR-10/100 only" in cls.unsupported_reason("imagenet", "resnet18", 4, 4)
    assert "CIFAR-10/100 only" in cls.unsupported_reason("imagenet", "mobilenetv2_w1", 4, 4)
    assert "features.stage1..N" in cls.unsupported_reason("cifar10", "ror3_56_cifar10", 4, 4)
    assert cls.unsupported_reason("cifar100", "resnet20_cifar100", 3, 3) is None
    with pytest.raises(DfqbenchError, match="does not support resnet18"):
        resolve_settings(cls, "imagenet", "resnet18", "w4a4", "paper", [])
    with pytest.raises(DfqbenchError, match="method.latent_dim"):
        _zaq(latent_dim=0)


# -- the loop --------------------------------------------------------------------------------------------------
def test_five_q_steps_then_one_g_step_on_fresh_batches_with_q_in_train_mode(tiny_request):
    trainer = _trainer(_request(tiny_request))
    events: list = []
    method = trainer.method
    for name, opt in (("q", trainer.opt_q), ("g", trainer.opt_g)):
        def step(*args, _orig=opt.step, _name=name, **kwargs):
            events.append(_name)
            return _orig(*args, **kwargs)
        opt.step = step
    drawn = []
    orig_sample, orig_gen_loss, orig_q_loss = method.sample, method.generator_loss, method.student_loss
    method.sample = lambda b, d: drawn.append(orig_sample(b, d)) or drawn[-1]

    def _index(sample):  # which drawn sample a step trains on (samples are drawn up front, in step order)
        return next(i for i, d in enumerate(drawn) if d is sample)

    def gen_loss(ctx):
        events.append(("G ctx", _index(ctx.sample), ctx.x.requires_grad, trainer.student.training))
        return orig_gen_loss(ctx)

    def q_loss(ctx):
        events.append(("Q ctx", _index(ctx.sample), ctx.x.requires_grad, trainer.student.training))
        return orig_q_loss(ctx)

    method.generator_loss, method.student_loss = gen_loss, q_loss
    bn_modes = []
    for bn in (m for m in trainer.student.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.register_forward_pre_hook(lambda m, inp: bn_modes.append(m.training))
    bn = next(m for m in trainer.student.modules() if isinstance(m, nn.BatchNorm2d))
    running_before = bn.running_mean.clone()
    trainer.generator.train()
    trainer.student.train(method.student_bn_train)
    for _ in range(2):
        trainer.train_iteration(0, log=False)
    expected = []
    for it in range(2):
        for k in range(5):
            expected += [("Q ctx", 6 * it + k, False, True), "q"]
        expected += [("G ctx", 6 * it + 5, True, True), "g"]
    assert events == expected
    assert len(drawn) == 12 and len({id(s.z) for s in drawn}) == 12
    assert all(not torch.equal(drawn[0].z, s.z) for s in drawn[1:])
    assert bn_modes and all(bn_modes)  # Q's BN in train mode in every Q step and in the G step
    assert not torch.equal(bn.running_mean, running_before)  # its running statistics drift to the fake data
    assert trainer.state["images_generated"] == 2 * 6 * 8


def test_tiny_run_end_to_end_with_generated_calibration_and_diagnostics(tiny_request):
    request = _request(tiny_request)
    prepared = prepare(request)
    prepared.folder.create(prepared.spec)
    progress = RecordingProgress()
    trainer = Trainer(prepared, progress)
    student_init = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    quantizers = [m for m in trainer.student.modules() if isinstance(m, QuantAct)]
    evaluated = []
    real_evaluate = prepared.evaluate

    def evaluate(model):  # evaluation must neither update ranges nor train
        if model is trainer.student:
            ranges = [q.state_dict() for q in quantizers]
            assert not model.training and not any(q.update_ranges for q in quantizers)
            weights = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(("x_min", "x_max"))}
            evaluated.append((ranges, weights))
        top1 = real_evaluate(model)
        if model is trainer.student:
            assert all(same_state(a, q.state_dict()) for a, q in zip(ranges, quantizers))
        return top1

    trainer.run.evaluate = evaluate
    grad_forwards = []
    quantizers[0].register_forward_pre_hook(lambda m, inp: grad_forwards.append(m.update_ranges)
                                            if torch.is_grad_enabled() else None)
    record = trainer.fit()
    # the calibration pass: pretrained weights, ranges from one generated batch, BN statistics untouched
    calib_ranges, calib_weights = evaluated[0]
    assert len(calib_weights) > 20 and all(torch.equal(calib_weights[k], student_init[k]) for k in calib_weights)
    assert all(float(r["x_max"]) > 0 for r in calib_ranges)
    assert record.calibrated_top1 is not None
    assert any(m.startswith("calibrated top-1") for m in progress.messages)
    assert len(evaluated) == 1 + 3
    # every training forward with gradients (Q and G steps, all epochs) updates the ranges: never frozen
    assert len(grad_forwards) == 3 * 3 * 6 and all(grad_forwards)
    assert record.images_generated == 8 + 3 * 3 * 6 * 8
    assert record.best_top1 == max(record.top1_per_epoch.values())
    assert record.final_top1 == record.top1_per_epoch["2"]
    rows = [json.loads(line) for line in prepared.folder.metrics_path.read_text().splitlines()]
    iters = [r for r in rows if r["type"] == "iter"]
    assert iters
    for row in iters:
        assert {"g/loss", "g/l1", "g/scrm", "g/act", "q/loss", "q/l1", "q/scrm"} <= set(row)
        assert row["g/loss"] == pytest.approx(-row["g/l1"] - row["g/scrm"] - 0.1 * row["g/act"], rel=1e-5)
        assert row["delta_q"] == pytest.approx(row["R_before"] - row["R_after_q"], abs=1e-6)
        assert row["delta_g"] == pytest.approx(row["R_after_g"] - row["R_after_q"], abs=1e-6)
        assert row["balance_gap"] == pytest.approx(row["delta_g"] - row["delta_q"], abs=1e-6)
        assert row["R_after_q"] == pytest.approx(1 - row["H_q"] / math.log(10), abs=1e-5)
        assert row["R_after_g"] == pytest.approx(1 - row["H_g"] / math.log(10), abs=1e-5)


def test_same_seed_bit_for_bit_and_diagnostics_do_not_perturb(tiny_request, tmp_path):
    runs = []
    for name, log_every, seed in (("a", 1, 0), ("b", 100, 0), ("c", 1, 1)):
        trainer = _trainer(_request(tiny_request, results=str(tmp_path / name), log_every=log_every, seed=seed))
        record = trainer.fit()
        runs.append((trainer.student.state_dict(), trainer.generator.state_dict(), record))
    (sa, ga, ra), (sb, gb, rb), (sc, _, _) = runs
    assert same_state(sa, sb) and same_state(ga, gb)  # BN running stats and ranges included
    assert ra.top1_per_epoch == rb.top1_per_epoch and ra.calibrated_top1 == rb.calibrated_top1
    assert not same_state(sa, sc)


def test_resume_matches_uninterrupted_and_does_not_recalibrate(tiny_request, tmp_path):
    straight = _request(tiny_request, results=str(tmp_path / "straight"))
    full = run(straight, RecordingProgress())
    crashed = _request(tiny_request, results=str(tmp_path / "crashed"))
    first = CrashAfterEpoch(1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(crashed, first)
    assert any(m.startswith("calibrated top-1") for m in first.messages)
    second = RecordingProgress()
    resumed = run(crashed, second)
    assert any("resuming" in m for m in second.messages)
    assert not any(m.startswith("calibrated top-1") for m in second.messages)
    assert resumed.sessions == 2
    assert resumed.calibrated_top1 == full.calibrated_top1
    assert resumed.top1_per_epoch == full.top1_per_epoch
    assert resumed.images_generated == full.images_generated
    a = torch.load(prepare(straight).folder.checkpoint_path, weights_only=True)
    b = torch.load(prepare(crashed).folder.checkpoint_path, weights_only=True)
    assert same_state(a["student"], b["student"]) and same_state(a["generator"], b["generator"])
