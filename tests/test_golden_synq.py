"""Golden tests: dfqbench's SynQ terms (dfqbench/blocks/direct_*.py) against the official SynQ code.

Fixtures: tests/golden/synq/ (maker: tests/golden/make/make_synq.py; README there), all float64 on portable
inputs: one synthesis step (BNS + hard-sample focal CE, SynQ's own copy of HAST's objective), the low-pass filter,
KD with SynQ's 1e-7 offset and the selective CE, the Grad-CAM alignment (argmax CAM as released and the paper's
label CAM), one whole fine-tuning iteration in two settings (student gradients and the SGD step), and ``--lbns``:
the calibration centers (two steps per batch), their pooled statistics and one L-BNS synthesis step. A failure
means our numbers moved away from the official code's: find out why before touching a tolerance.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from test_golden_intraq import (DELTA_ATOL, DELTA_RTOL, GRAD_ATOL, GRAD_RTOL, LOSS_ATOL, LOSS_RTOL, NET_SEED,
                                check_digest, check_packed, plugin_trainer, sgd_step_delta,
                                student_inputs, teacher_and_student)
from test_golden_hast import hast_synthesis_gradient
from golden_b_helpers import check_close, default_dtype, load_fixture, resnet20
from golden_b_common import digest
from golden_common import portable_randn
from dfqbench.blocks import direct_finetune as dft
from dfqbench.blocks.features import FeatureTap

TERMS_SEED = 71  # as in tests/golden/make/make_synq.py
LPF_CASES = {"square_d80": ((2, 3, 32, 32), 80), "square_d8": ((2, 3, 32, 32), 8), "square_d3": ((2, 3, 32, 32), 3),
             "odd_d2": ((2, 3, 7, 9), 2), "wide_d5": ((1, 3, 16, 24), 5)}
LPF_RTOL, LPF_ATOL = 1e-12, 1e-14  # filtered pixels (FFT round-off ~1e-16 of the image's scale)
MAP_RTOL, MAP_ATOL = 1e-10, 1e-12  # Grad-CAM maps in [0, 1] (min-max normalised)
BODIES = [f"features.stage{s}.unit{u}.body" for s in (1, 2, 3) for u in (1, 2, 3)]  # ResUnit.body, in order


def _terms_inputs() -> dict[str, torch.Tensor]:
    """The maker's draws from TERMS_SEED, in its order."""
    gen = torch.Generator().manual_seed(TERMS_SEED)
    out = {f"lpf/{n}": portable_randn(shape, gen, torch.float64) for n, (shape, _) in LPF_CASES.items()}
    out["s_logits"] = portable_randn((8, 10), gen, torch.float64, 3.0)
    out["t_logits"] = portable_randn((8, 10), gen, torch.float64, 3.0)
    out["labels"] = torch.randint(0, 10, (8,), generator=gen)
    out["x"] = portable_randn((4, 3, 32, 32), gen, torch.float64)
    out["cam_labels"] = torch.randint(0, 10, (4,), generator=gen)
    return out


def test_synq_synthesis_step_matches_official():
    """SynQ's ``get_distil_data`` (``--lbns`` off, β 0.1, γ 0.5): HAST's objective, from SynQ's own code."""
    fx = load_fixture("synq", "synthesis")
    with default_dtype(torch.float64):
        x0, grad = hast_synthesis_gradient(fx, torch.float64, (LOSS_RTOL, LOSS_ATOL))
        check_digest("grad", grad, fx["grad"], GRAD_RTOL, GRAD_ATOL)
        x = x0.detach().clone().requires_grad_(True)  # the official Adam step (lr 0.5)
        opt = torch.optim.Adam([x], lr=0.5)
        x.grad = grad
        opt.step()
        check_digest("x_after", x.detach(), fx["x_after"], 1e-12, 1e-13)


@pytest.mark.parametrize("case", list(LPF_CASES))
def test_low_pass_filter_matches_official(case):
    """``Trainer.apply_filters`` (fftshift → ·G → ifftshift) on square, odd and non-square images, D0 80 … 2."""
    fx = load_fixture("synq", "terms")
    x = _terms_inputs()[f"lpf/{case}"]
    ours = dft.low_pass_filter(x, d0=float(LPF_CASES[case][1]))
    assert ours.dtype == torch.float64
    theirs = fx[f"lpf/{case}"]
    if theirs.shape == ours.shape:
        check_close(f"lpf/{case}", ours, theirs, LPF_RTOL, LPF_ATOL)
    else:
        check_digest(f"lpf/{case}", ours, theirs, LPF_RTOL, LPF_ATOL)
    if LPF_CASES[case][1] <= 8:  # the filter acts (D0 = 80 on 32 × 32 leaves G ≥ 0.96: nearly the identity)
        assert float((ours - x).abs().max()) > 0.1


def test_kd_and_selective_ce_match_official():
    """``Trainer.forward``'s KD (log-probabilities + 1e-7) and its selective CE (hard samples' logits and labels
    set to 0) with a given mask, and the plain CE without one; the CE's gradient with respect to the logits."""
    fx = load_fixture("synq", "terms")
    inputs = _terms_inputs()
    for key in ("s_logits", "t_logits", "labels"):
        check_close(key, inputs[key], fx[key], 0.0, 0.0)
    s, t, labels = inputs["s_logits"], inputs["t_logits"], inputs["labels"]
    kd = dft.kd_batchmean(t, s, 20.0, 20.0, log_offset=1e-7)
    check_close("kd", kd, fx["kd"], LOSS_RTOL, LOSS_ATOL)
    for tag in ("sel", "plain"):
        logits = s.clone().requires_grad_(True)
        if tag == "sel":
            ce = dft.selective_cross_entropy(logits, labels, fx["mask"].bool())
        else:
            ce = F.cross_entropy(logits, labels)
        check_close(f"ce_{tag}", ce, fx[f"ce_{tag}"], LOSS_RTOL, LOSS_ATOL)
        (grad,) = torch.autograd.grad(ce, logits)
        check_close(f"ce_{tag}_grad", grad, fx[f"ce_{tag}_grad"], GRAD_RTOL, GRAD_ATOL)
    assert not torch.allclose(fx["ce_sel"], fx["ce_plain"])


@pytest.mark.parametrize("mode", ["argmax", "label"])
def test_grad_cam_alignment_matches_official(mode):
    """Grad-CAM at the last conv of teacher and student and L_CAM = MSE of the maps: the official ``loss_cam``
    (each model's own argmax, ``cam_class="argmax"``) and the official ``GradCAM`` called per image with its label
    (``cam_class="label"``, paper Eq. 5); maps, loss and the student's gradient of the loss."""
    fx = load_fixture("synq", "terms")
    inputs = _terms_inputs()
    check_close("cam_labels", inputs["cam_labels"], fx["cam_labels"], 0.0, 0.0)
    with default_dtype(torch.float64):
        teacher, student = teacher_and_student(fx)
        t_tap = FeatureTap(teacher, [dft.last_conv_name(teacher)])
        s_tap = FeatureTap(student, [dft.last_conv_name(student)])
        x = inputs["x"].clone().requires_grad_(True)
        t_logits, (t_act,) = t_tap(x)
        s_logits, (s_act,) = s_tap(x)
        if mode == "argmax":
            check_close("argmax_t", t_logits.argmax(1), fx["argmax_t"], 0.0, 0.0)
            check_close("argmax_s", s_logits.argmax(1), fx["argmax_s"], 0.0, 0.0)
        classes = inputs["cam_labels"] if mode == "label" else None
        for who, act, logits in (("teacher", t_act, t_logits), ("student", s_act, s_logits)):
            cam = dft.grad_cam(act, logits, (32, 32), classes)
            check_digest(f"cam_{mode}/{who}_map", cam.detach(), fx[f"cam_{mode}/{who}_map"], MAP_RTOL, MAP_ATOL)
        loss = dft.cam_alignment_loss(t_act, t_logits, s_act, s_logits, (32, 32), inputs["cam_labels"], mode)
        check_close(f"cam_{mode}/loss", loss, fx[f"cam_{mode}/loss"], LOSS_RTOL, LOSS_ATOL)
        loss.backward()
        grads = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
        assert check_packed(fx, f"cam_{mode}/grad/", grads, GRAD_RTOL, GRAD_ATOL) == len(grads)
        t_tap.remove()
        s_tap.remove()


def _forward(model: torch.nn.Module, names: list[str], seen: list | None = None):
    """(logits, FA features, last conv's output) of one forward, through one FeatureTap."""
    tap = FeatureTap(model, names)

    def forward(v):
        if seen is not None:
            seen.append(v.detach())
        logits, feats = tap(v)
        return logits, feats[:-1], feats[-1]

    return forward


@pytest.mark.parametrize("case", ["defaults", "imagenet"])
def test_synq_whole_student_loss_matches_official(case):
    """One official fine-tuning iteration (epoch 4, ``Trainer.train``): the low-pass filter, then our
    synq_student_loss with dfqbench's student (official ranges, frozen) gives the mask, KD, selective CE and FA on
    x, the perturbation's signs, KD, CE (and on the ImageNet branch FA) on x', L_CAM, the total, the student's
    gradients and (defaults) the SGD step. The official code runs both models once more on x for the CAM maps;
    ours reuses the forwards of L_s: the values and gradients below match all the same."""
    fx = load_fixture("synq", f"iteration_{case}")
    d_zero, tau, lambda_ce, lambda_cam, lambda_pert, imagenet = fx["settings"].tolist()
    cfg = dft.SynqStudentLoss(lambda_ce=lambda_ce, tau=tau, lambda_cam=lambda_cam, lambda_pert=lambda_pert,
                              perturbed_fa=bool(imagenet))
    with default_dtype(torch.float64):
        teacher, student = teacher_and_student(fx)
        gen = torch.Generator().manual_seed({"defaults": 72, "imagenet": 73}[case])
        x = portable_randn((4, 3, 32, 32), gen, torch.float64)
        check_close("x", digest(x), fx["x"], 0.0, 0.0)
        xf = dft.low_pass_filter(x, d0=d_zero)
        check_digest("xf", xf, fx["xf"], LPF_RTOL, LPF_ATOL)
        y = fx["y"]
        seen: list[torch.Tensor] = []
        t_fwd = _forward(teacher, BODIES + [dft.last_conv_name(teacher)])
        s_fwd = _forward(student, BODIES + [dft.last_conv_name(student)], seen)
        with torch.no_grad():
            mask = dft.confident_mask(teacher(xf), y, tau)
        check_close("mask", mask, fx["mask"], 0.0, 0.0)
        total, terms = dft.synq_student_loss(xf, y, t_fwd, s_fwd, cfg)
        names = ["kd", "ce", "fa", "kd_perturbed", "ce_perturbed", "cam"] + (["fa_perturbed"] if imagenet else [])
        for name in names:
            check_close(name, terms[name], fx[name], LOSS_RTOL, LOSS_ATOL)
        assert ("fa_perturbed" in terms) == bool(imagenet)
        check_close("easy_fraction", terms["easy_fraction"], fx["mask"].double().mean(), 0.0, 0.0)
        check_close("total", total, fx["total"], LOSS_RTOL, LOSS_ATOL)
        sign = torch.round((seen[1] - seen[0]) / 0.01).to(torch.int8)
        check_close("sign", sign, fx["sign"], 0.0, 0.0)
        total.backward()
        grads = {n: p.grad for n, p in student.named_parameters()}
        assert check_packed(fx, "grad/", grads, GRAD_RTOL, GRAD_ATOL) == len(grads)
        if "delta/names" in fx:  # the official SGD step: lr 1e-5, momentum 0.9 (Nesterov), weight decay 1e-4
            before = {n: p.detach().clone() for n, p in student.named_parameters()}
            torch.optim.SGD(student.parameters(), lr=1e-5, momentum=0.9, nesterov=True, weight_decay=1e-4).step()
            delta = {n: p.detach() - before[n] for n, p in student.named_parameters()}
            assert check_packed(fx, "delta/", delta, GRAD_RTOL, 5e-16) == len(delta)


def test_synq_label_cam_switch_changes_the_iteration():
    """``cam_class="label"`` (paper Eq. 5) is not the released argmax CAM on the official batch: L_CAM moves."""
    fx = load_fixture("synq", "iteration_defaults")
    with default_dtype(torch.float64):
        teacher, student = teacher_and_student(fx)
        gen = torch.Generator().manual_seed(72)
        xf = dft.low_pass_filter(portable_randn((4, 3, 32, 32), gen, torch.float64), d0=80.0)
        t_fwd = _forward(teacher, BODIES + [dft.last_conv_name(teacher)])
        s_fwd = _forward(student, BODIES + [dft.last_conv_name(student)])
        _, terms = dft.synq_student_loss(xf, fx["y"], t_fwd, s_fwd, dft.SynqStudentLoss(cam_class="label"))
    assert abs(float(terms["cam"]) - float(fx["cam"])) > 1e-3 * float(fx["cam"])


@pytest.mark.parametrize("case", ["defaults", "imagenet"])
def test_synq_plugin_iteration_matches_official(case):
    """The ``synq`` plugin's batch transform and student step (its Trainer: paper presets lr 1e-5, SGD-Nesterov,
    wd 1e-4, λ = 1000, ε = 0.01; the fixture's D0, τ, λ_CE, λ_CAM, λ_pert and ImageNet branch; the zero-image
    probe on, as released) on iteration_*.pt's batch, ranges loaded and frozen: the filtered batch, every term,
    the total, the FGSM signs, every gradient and (defaults) the SGD step's parameter changes ``delta/``."""
    from dfqbench.blocks.interface import Sample
    from dfqbench.core.step import Batch

    fx = load_fixture("synq", f"iteration_{case}")
    d_zero, tau, lambda_ce, lambda_cam, lambda_pert, imagenet = fx["settings"].tolist()
    method = {"d0": d_zero, "tau": tau, "lambda_ce": lambda_ce, "lambda_cam": lambda_cam, "lambda_pert": lambda_pert,
              "perturbed_fa": str(bool(imagenet)).lower()}
    with default_dtype(torch.float64):
        teacher, student = teacher_and_student(fx)
        gen = torch.Generator().manual_seed({"defaults": 72, "imagenet": 73}[case])
        x = portable_randn((4, 3, 32, 32), gen, torch.float64)
        check_close("x", digest(x), fx["x"], 0.0, 0.0)
        trainer = plugin_trainer("synq", teacher, student, 4, 1e-5, method)
        cfg = trainer.method.config
        assert (cfg.d0, cfg.tau, cfg.lambda_ce, cfg.lambda_cam, cfg.lambda_pert, cfg.perturbed_fa) == \
            (d_zero, tau, lambda_ce, lambda_cam, lambda_pert, bool(imagenet))
        assert trainer.step.student_tap.names == BODIES + [dft.last_conv_name(student)]
        xf = trainer.method.transform(x)
        check_digest("xf", xf, fx["xf"], LPF_RTOL, LPF_ATOL)
        inputs, logits = student_inputs(trainer.student, 4)
        terms, grads, delta = sgd_step_delta(trainer, Batch(Sample(x, fx["y"]), xf, None, None))
        names = ["kd", "ce", "fa", "kd_perturbed", "ce_perturbed", "cam"] + (["fa_perturbed"] if imagenet else [])
        for name in names:
            check_close(name, terms[name], fx[name], LOSS_RTOL, LOSS_ATOL)
        assert ("fa_perturbed" in terms) == bool(imagenet)
        check_close("easy_fraction", terms["easy_fraction"], fx["mask"].double().mean(), 0.0, 0.0)
        check_close("total", terms["loss"], fx["total"], LOSS_RTOL, LOSS_ATOL)
        assert len(inputs) == 2  # xf, then x' (the CAM reuses the forward on xf)
        check_close("student_logits", logits[0], fx["student_logits"], 1e-10, 1e-13)
        sign = torch.round((inputs[1] - inputs[0]) / 0.01).to(torch.int8)
        check_close("sign", sign, fx["sign"], 0.0, 0.0)
        assert check_packed(fx, "grad/", grads, GRAD_RTOL, GRAD_ATOL) == len(grads)
        if "delta/names" in fx:
            assert check_packed(fx, "delta/", delta, DELTA_RTOL, DELTA_ATOL) == len(delta)
        else:  # the ImageNet branch's fixture stops at the gradients
            assert case == "imagenet"


# -- ``--lbns``: calibration centers and L-BNS (fixture lbns.pt) -----------------------------------------------------
def _lbns_centers(fx: dict, teacher: torch.nn.Module) -> list[torch.Tensor]:
    """The official center batches redrawn from the stored RNG state and optimised by ours, step by step checked
    against the official terms, totals and pixel gradients (float64)."""
    from dfqbench.blocks import calibration_centers as cc

    batch, steps = int(fx["settings"][0]), int(fx["settings"][1])
    labels = cc.center_labels(10, batch)
    rng = torch.Generator()
    rng.set_state(fx["centers_rng_state"])
    recorder = cc.BNBatchStatistics(teacher)
    centers = []
    for i, y in enumerate(labels):
        check_close(f"center{i}/labels", y, fx[f"center{i}/labels"], 0.0, 0.0)
        x0 = torch.randn(batch, 3, 32, 32, generator=rng, dtype=torch.float64)
        check_close(f"center{i}/x0", digest(x0), fx[f"center{i}/x0"], 0.0, 0.0)
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=cc.CENTER_LR)
        for it in range(steps):  # the terms and gradient of every step, then the official Adam step
            recorder.start()
            logits = teacher(x)
            total, terms = cc.center_loss(logits, y, recorder.stop(), 5.0)
            official = fx[f"center{i}/step{it}/mean_loss"] + fx[f"center{i}/step{it}/var_loss"]
            check_close(f"center{i}/step{it}/bns", terms["center_bns"], official, LOSS_RTOL, LOSS_ATOL)
            check_close(f"center{i}/step{it}/ce", terms["center_ce"], fx[f"center{i}/step{it}/loss_target"],
                        LOSS_RTOL, LOSS_ATOL)
            check_close(f"center{i}/step{it}/total", total, fx[f"center{i}/step{it}/total"], LOSS_RTOL, LOSS_ATOL)
            (x.grad,) = torch.autograd.grad(total, x)
            check_digest(f"center{i}/step{it}/grad", x.grad, fx[f"center{i}/step{it}/grad"], GRAD_RTOL, GRAD_ATOL)
            opt.step()
        # the same batch through the shared loop (optimise_pixels + plateau at min_lr 0.05) gives the same pixels
        shared, trace = cc.optimise_center_batch(teacher, recorder, x0, y, steps, 5.0)
        check_close(f"center{i}/trace", torch.tensor(trace, dtype=torch.float64),
                    torch.stack([fx[f"center{i}/step{it}/total"] for it in range(steps)]), LOSS_RTOL, LOSS_ATOL)
        check_digest(f"center{i}/x_after", shared, fx[f"center{i}/x_after"], 1e-12, 1e-13)
        centers.append(shared)
    recorder.remove()
    return centers


def test_synq_calibration_centers_match_official():
    """``generate_calib_centers`` (3 batches of 4 for 10 classes, the last padded with class 0; 2 Adam steps each):
    labels, initial pixels, the layer-weighted BNS (0.2 / 1.1) and 5·CE, totals, pixel gradients, the centers."""
    fx = load_fixture("synq", "lbns")
    with default_dtype(torch.float64):
        _lbns_centers(fx, resnet20(NET_SEED, fx))


def test_synq_lbns_synthesis_step_matches_official():
    """``get_distil_data`` with ``--lbns`` on the official centers: the pooled per-layer mean and variance (the
    first batch's variance unweighted, as released), then one synthesis step of 0.4·BNS + β(1 − p)^γ·CE +
    0.02·L-BNS/(L·B), both from the block's functions and through the plugin's ``LbnsObjective``: terms, the deep
    layers' L-BNS MSEs, total, pixel gradient and the Adam step."""
    from dfqbench.blocks import calibration_centers as cc
    from dfqbench.methods.synq import LbnsObjective, SynqConfig

    fx = load_fixture("synq", "lbns")
    batch, _, beta, gamma, layers = fx["settings"].tolist()
    batch, layers = int(batch), int(layers)
    with default_dtype(torch.float64):
        teacher = resnet20(NET_SEED, fx)
        centers = _lbns_centers(fx, teacher)
        means, variances = cc.pooled_statistics(teacher, centers, "official")
        assert len(means) == layers
        for n in range(layers):
            check_close(f"pooled/mean/{n}", means[n], fx[f"pooled/mean/{n}"], LOSS_RTOL, LOSS_ATOL)
            check_close(f"pooled/var/{n}", variances[n], fx[f"pooled/var/{n}"], LOSS_RTOL, LOSS_ATOL)
        pooled_var = cc.pooled_statistics(teacher, centers, "pooled")[1]
        assert not torch.allclose(pooled_var[0], fx["pooled/var/0"])  # the released weighting is visible here
        rng = torch.Generator()
        rng.set_state(fx["rng_state"])
        x0 = torch.randn(batch, 3, 32, 32, generator=rng, dtype=torch.float64)
        check_close("x0", digest(x0), fx["x0"], 0.0, 0.0)
        labels = fx["labels"]
        recorder = cc.BNBatchStatistics(teacher)
        x = x0.clone().requires_grad_(True)
        recorder.start()
        logits = teacher(x)
        stats = recorder.stop()
        check_close("teacher_logits", logits, fx["teacher_logits"], LOSS_RTOL, LOSS_ATOL)
        total, terms = cc.lbns_synthesis_objective(logits, labels, stats, means, variances, beta, gamma, 0.4, 0.02)
        check_close("bns", terms["bns"], fx["mean_loss"] + fx["var_loss"], LOSS_RTOL, LOSS_ATOL)
        check_close("focal_ce", terms["focal_ce"], fx["loss_target"], LOSS_RTOL, LOSS_ATOL)
        start = cc.deep_layer_start(layers)
        deep = [F.mse_loss(v, t) for n in range(start, layers)
                for v, t in ((stats.means[n], means[n]), (stats.variances[n], variances[n]))]
        check_close("lbns_terms", torch.stack(deep), fx["lbns_terms"], LOSS_RTOL, LOSS_ATOL)
        check_close("lbns", terms["lbns"], fx["lbns_terms"].sum() / (layers * batch), LOSS_RTOL, LOSS_ATOL)
        check_close("total", total, fx["total"], LOSS_RTOL, LOSS_ATOL)
        # L-BNS moves the total far beyond the tolerance: without it (or undivided) the check above would fail
        assert abs(float(fx["total"] - 0.4 * terms["bns"] - terms["focal_ce"])) > 1e3 * LOSS_RTOL
        (grad,) = torch.autograd.grad(total, x)
        check_digest("grad", grad, fx["grad"], GRAD_RTOL, GRAD_ATOL)
        recorder.remove()
        # the plugin's objective, its pooled target set from the official centers
        objective = LbnsObjective(teacher, SynqConfig(lbns=True, beta=beta, gamma=gamma, bank_batch_size=batch), 10,
                                  32, 0, torch.device("cpu"))
        objective.target = (means, variances)
        x = x0.clone().requires_grad_(True)
        plugin_total = objective(teacher, x, labels, 0)
        objective.remove()
        check_close("plugin/total", plugin_total, fx["total"], LOSS_RTOL, LOSS_ATOL)
        (plugin_grad,) = torch.autograd.grad(plugin_total, x)
        check_digest("plugin/grad", plugin_grad, fx["grad"], GRAD_RTOL, GRAD_ATOL)
        x = x0.clone().requires_grad_(True)  # the official Adam step (lr 0.5)
        opt = torch.optim.Adam([x], lr=0.5)
        x.grad = grad
        opt.step()
        check_digest("x_after", x.detach(), fx["x_after"], 1e-12, 1e-13)
