"""Make tests/golden/synq/*.pt from the official SynQ code.

Usage (``git --git-dir=<mirror> archive 8681480… | tar -x -C /tmp/golden_dq/SynQ``)::

    python tests/golden/make/make_synq.py --synq /tmp/golden_dq/SynQ [--work /tmp/golden_dq/work_synq]

Everything in float64 (official and ours), on portable inputs (``portable_randn``; float64 ``torch.randn`` from a
stored RNG state for the synthesis pixels, the same bits on every CPU):

- synthesis.pt: ``src/data_generate/distill_data.py`` ``DistillData.get_distil_data`` (``--lbns`` off, the released
  scripts' β = 0.1, γ = 0.5; the CIFAR branch: no augmentation), one batch of 8, one Adam step: the loss terms
  (official ``print``), the sampled labels, the initial pixels' RNG state, the teacher's logits, the pixel
  gradient and the pixels after the step.
- terms.pt: ``Trainer.apply_filters`` (the low-pass filter) for several D0 on square, odd and non-square images;
  ``Trainer.forward`` with a stand-in student (identity on given logits) for KD (with its 1e-7 offset) and the
  selective CE (given mask, and without one), with the CE's gradient; ``Trainer.loss_cam`` with ``GradCAM`` on the
  teacher and the official W4A4 student (its argmax CAM, the official default) and, per image, ``GradCAM.forward``
  with ``class_idx`` = the image's label (the paper's label CAM, see ``label_cam``): the maps, the losses and the
  student's gradients of each loss.
- iteration.pt: ``Trainer.train(epoch=4)`` (one iteration; ranges frozen as after the calibration epochs) on a
  fixed batch of 4, in two cases: ``defaults`` (code defaults: D0 80, τ 0.5, λ_CE 5, λ_CAM 200, λ_pert 1, CIFAR
  branch) and ``imagenet`` (D0 8, τ 0.6, λ_CE 0.5, λ_CAM 50 as the shipped run, ImageNet branch: FA on the
  perturbed batch too). The filtered batch, the selective-CE mask, every loss term, the perturbation's signs, the
  total, the student's logits and gradients, and (``defaults``) the parameter change of the SGD step.
- lbns.pt: ``--lbns``: ``generate_calib_centers`` (3 center batches of 4 for the 10 classes, 2 Adam steps each
  instead of 1,500), then ``get_distil_data`` with those centers (their pooled statistics, one synthesis step of
  0.4·BNS + focal CE + 0.02·L-BNS): per center batch the labels, initial pixels, loss terms and totals, pixel
  gradients and the centers after the steps; the pooled per-layer means and variances; the synthesis step's terms,
  L-BNS per-layer MSEs, total, pixel gradient and pixels after the step.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_direct_common import (  # noqa: E402
    BITS, RANGE_SEED, STANDARD_STUBS, DDPStandIn, DistillRecording, FixedLoader, PrintRecorder, RecordingAdam,
    copy_patched,
    default_dtype, digest, freeze_ranges, grad_digests, net_bn_entries, official_imports, packed_digests,
    portable_randn, pytorchcv_name, record_inputs, save_fixture, stub_modules, teacher_resnet20,
)

COMMIT = "8681480bb51a2e2125beaf9ae2828b69cf33ac80"
SYNTH_BATCH, SYNTH_SEED, SYNTH_BETA, SYNTH_GAMMA = 8, 70, 0.1, 0.5
TERMS_SEED = 71
LPF_CASES = {  # name: (shape, D0)
    "square_d80": ((2, 3, 32, 32), 80),
    "square_d8": ((2, 3, 32, 32), 8),
    "square_d3": ((2, 3, 32, 32), 3),
    "odd_d2": ((2, 3, 7, 9), 2),
    "wide_d5": ((1, 3, 16, 24), 5),
}
ITERATION = {  # case: (d_zero, tau_selce, lambda_ce, lambda_cam, lambda_pert, dataset branch, batch seed)
    "defaults": (80, 0.5, 5.0, 200.0, 1.0, "cifar10", 72),
    "imagenet": (8, 0.6, 0.5, 50.0, 1.0, "imagenet", 73),
}
ITER_BATCH, LR_S = 4, 1e-5
SYNTH_PATCHES = [
    (".cuda()", ""),
    ("verbose=False,", ""),  # current torch's ReduceLROnPlateau has no `verbose`
    ("for it in range(500*2):", "for it in range(1):"),  # one Adam step instead of 1,000
    ("torch.ones_like(b).float()", "torch.ones_like(b).to(a.dtype)"),  # float64 run (scatter_ needs one dtype)
]
TRAIN_PATCHES = [(".cuda()", ""), ("iters = 200", "iters = 1")]
# the ImageNet branch builds its GradCAMs with a zero-image probe of 224 × 224, which ResNet-20 cannot forward
IMAGENET_PROBE_PATCH = ('"input_size": (224, 224)', '"input_size": (32, 32)')
LBNS_BATCH, LBNS_SEED, LBNS_CENTER_STEPS = 4, 74, 2
LBNS_PATCHES = SYNTH_PATCHES + [
    ("for it in range(1500):", f"for it in range({LBNS_CENTER_STEPS}):"),  # 2 Adam steps per center batch
    ("device='cuda'", "device='cpu'"),  # the center labels (CPU)
    ("to('cuda', non_blocking=True)", "to('cpu', non_blocking=True)"),  # the centers' forward for the statistics
    # the printed accuracy: ndarray == tensor is a tensor, which np.mean cannot average (TypeError on CPU)
    ("axis=1) == labels)", "axis=1) == labels.numpy())"),
]
MODULES = ("distill_data", "utils", "pytorchcv", "trainer_direct", "main_direct", "options", "dataloader",
           "quantization_utils", "conditional_batchnorm", "gradcam")


def prepare(source: Path, work: Path) -> None:
    copy_patched(source, work / "SynQ", {"src/data_generate/distill_data.py": SYNTH_PATCHES,
                                         "src/trainer_direct.py": TRAIN_PATCHES})
    copy_patched(work / "SynQ", work / "SynQ_imagenet", {"src/trainer_direct.py": [IMAGENET_PROBE_PATCH]})
    copy_patched(source, work / "SynQ_lbns", {"src/data_generate/distill_data.py": LBNS_PATCHES})


class RecordingPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """ReduceLROnPlateau that records every value it is stepped on (the official total loss, ``.item()``)."""

    log: list[float] = []

    def step(self, metrics, *args, **kwargs):
        RecordingPlateau.log.append(float(metrics))
        return super().step(metrics, *args, **kwargs)


class RecordingLosses:
    """Stand-ins for ``nn.CrossEntropyLoss`` / ``nn.MSELoss`` that record each call's target and output."""

    ce_targets: list[torch.Tensor] = []
    mse_outputs: list[torch.Tensor] = []

    class CrossEntropyLoss(nn.CrossEntropyLoss):
        def forward(self, input, target):
            RecordingLosses.ce_targets.append(target.detach().clone())
            return super().forward(input, target)

    class MSELoss(nn.MSELoss):
        def forward(self, input, target):
            out = super().forward(input, target)
            RecordingLosses.mse_outputs.append(out.detach().clone())
            return out


class MemoryPickle:
    """The module's ``pickle``: ``dump`` keeps the object by file name, ``load`` returns it (nothing unpickled)."""

    HIGHEST_PROTOCOL = 5

    def __init__(self) -> None:
        self.stored: dict[str, object] = {}

    def dump(self, obj, fp, protocol=None) -> None:
        self.stored[fp.name] = obj

    def load(self, fp):
        return self.stored[fp.name]


def synthesis(work: Path) -> dict[str, torch.Tensor]:
    tree = work / "SynQ" / "src"
    with official_imports(tree / "data_generate", MODULES):
        import distill_data as DD
        from pytorchcv.model_provider import get_model
    with default_dtype(torch.float64):
        teacher, bn = teacher_resnet20(get_model)
        out: dict[str, torch.Tensor] = net_bn_entries(bn)
        with DistillRecording(DD, teacher) as rec:
            torch.manual_seed(SYNTH_SEED)
            args = SimpleNamespace(lbns=False, num_data=SYNTH_BATCH)  # one batch (num_data // batch_size)
            try:
                DD.DistillData(args).get_distil_data(
                    model_name="resnet20_cifar10", teacher_model=teacher, batch_size=SYNTH_BATCH, group=1,
                    beta=SYNTH_BETA, gamma=SYNTH_GAMMA, save_path_head=tempfile.mkdtemp(dir=work))
            except SystemExit:
                pass
        entry, entries = rec.step_entries([SYNTH_BETA, SYNTH_GAMMA])
        rng = torch.Generator()
        rng.set_state(rec.states[0])
        assert torch.equal(torch.randn(entry["x0"].shape, generator=rng, dtype=torch.float64), entry["x0"])
        out.update(entries)
        out["commit"] = torch.tensor(list(COMMIT.encode()))
        return out


def lbns(work: Path) -> dict[str, torch.Tensor]:
    """``generate_calib_centers`` then ``get_distil_data`` with ``args.lbns = True`` (resnet20_cifar10: 10 classes,
    batches of LBNS_BATCH), as ``generate_data.py`` L114-126 calls them, on the same teacher."""
    tree = work / "SynQ_lbns" / "src"
    with official_imports(tree / "data_generate", MODULES):
        import distill_data as DD
        from pytorchcv.model_provider import get_model
    with default_dtype(torch.float64):
        teacher, bn = teacher_resnet20(get_model)
        out: dict[str, torch.Tensor] = net_bn_entries(bn)
        printed, store, logits, states = PrintRecorder(), MemoryPickle(), [], []
        DD.print = printed
        DD.optim = SimpleNamespace(Adam=RecordingAdam,
                                   lr_scheduler=SimpleNamespace(ReduceLROnPlateau=RecordingPlateau))
        DD.pickle = store
        DD.nn = SimpleNamespace(BatchNorm2d=nn.BatchNorm2d, CrossEntropyLoss=RecordingLosses.CrossEntropyLoss,
                                MSELoss=RecordingLosses.MSELoss)
        real_rrc = DD.transforms.RandomResizedCrop

        def rrc(*a, **k):  # constructed right before the batch's torch.randn(shape): keep the RNG state
            states.append(torch.get_rng_state())
            return real_rrc(*a, **k)

        DD.transforms = SimpleNamespace(RandomResizedCrop=rrc, RandomHorizontalFlip=DD.transforms.RandomHorizontalFlip)
        RecordingAdam.log, RecordingPlateau.log = [], []
        RecordingLosses.ce_targets, RecordingLosses.mse_outputs = [], []
        torch.manual_seed(LBNS_SEED)
        centers_state = torch.get_rng_state()
        head = tempfile.mkdtemp(dir=work)
        args = SimpleNamespace(lbns=True, num_data=LBNS_BATCH, batch_size=LBNS_BATCH, model="resnet20_cifar10",
                               save_path_head=head)
        args.calib_centers = DD.generate_calib_centers(args, teacher)
        n_centers = len(RecordingAdam.log)
        center_rows = printed.rows("mean_loss")
        mse_before = len(RecordingLosses.mse_outputs)
        handle = teacher.register_forward_hook(lambda m, a, o: logits.append(o.detach().clone()))
        distiller = DD.DistillData(args)
        try:
            distiller.get_distil_data(model_name="resnet20_cifar10", teacher_model=teacher, batch_size=LBNS_BATCH,
                                      group=1, beta=SYNTH_BETA, gamma=SYNTH_GAMMA, save_path_head=head)
        except SystemExit:
            pass
        finally:
            handle.remove()
        layers = len(distiller.calib_running_mean)
        assert n_centers == 3 and len(RecordingAdam.log) == 4 and len(center_rows) == 3 * LBNS_CENTER_STEPS
        assert len(RecordingPlateau.log) == 3 * LBNS_CENTER_STEPS + 1
        # centers: labels (the CE target of each batch's first step), pixels, terms, totals, gradients
        rng = torch.Generator()
        rng.set_state(centers_state)
        for i in range(n_centers):
            entry = RecordingAdam.log[i]
            assert torch.equal(torch.randn(entry["x0"].shape, generator=rng, dtype=torch.float64), entry["x0"])
            out[f"center{i}/labels"] = RecordingLosses.ce_targets[i * LBNS_CENTER_STEPS]
            out[f"center{i}/x0"] = digest(entry["x0"])
            out[f"center{i}/x_after"] = digest(entry["x_after"])
            for it in range(LBNS_CENTER_STEPS):
                row = center_rows[i * LBNS_CENTER_STEPS + it]
                out[f"center{i}/step{it}/grad"] = digest(entry["grads"][it])
                out[f"center{i}/step{it}/total"] = torch.tensor(RecordingPlateau.log[i * LBNS_CENTER_STEPS + it],
                                                                dtype=torch.float64)
                for key in ("mean_loss", "var_loss", "loss_target"):
                    out[f"center{i}/step{it}/{key}"] = torch.tensor(row[key], dtype=torch.float64)
        stored = list(store.stored.values())[0]
        assert len(stored) == n_centers and all(torch.equal(torch.as_tensor(c), RecordingAdam.log[i]["x_after"])
                                                for i, c in enumerate(stored))
        out["centers_rng_state"] = centers_state
        for n in range(layers):
            out[f"pooled/mean/{n}"] = distiller.calib_running_mean[n]
            out[f"pooled/var/{n}"] = distiller.calib_running_var[n]
        # the synthesis step
        main_rows = printed.rows("mean_loss")[3 * LBNS_CENTER_STEPS:]
        (row,) = main_rows
        entry = RecordingAdam.log[-1]
        rng.set_state(states[0])
        assert torch.equal(torch.randn(entry["x0"].shape, generator=rng, dtype=torch.float64), entry["x0"])
        labels = [torch.as_tensor(v[0]) for k, v in store.stored.items() if "labels" in k][0]
        mse = RecordingLosses.mse_outputs[mse_before:]
        assert len(mse) == 2 * layers + 2 * (layers - ((layers + 2) // 2 - 2))
        assert len(logits) == n_centers + 2  # the centers' statistics, the step, the final accuracy forward
        out.update(rng_state=states[0], x0=digest(entry["x0"]), labels=labels, teacher_logits=logits[n_centers],
                   grad=digest(entry["grads"][0]), x_after=digest(entry["x_after"]),
                   lbns_terms=torch.stack([m.reshape(()) for m in mse[2 * layers:]]),
                   total=torch.tensor(RecordingPlateau.log[-1], dtype=torch.float64),
                   settings=torch.tensor([LBNS_BATCH, LBNS_CENTER_STEPS, SYNTH_BETA, SYNTH_GAMMA, layers],
                                         dtype=torch.float64))
        for key in ("mean_loss", "var_loss", "loss_target"):
            out[key] = torch.tensor(row[key], dtype=torch.float64)
        out["commit"] = torch.tensor(list(COMMIT.encode()))
        return out


def official_student(M, teacher: nn.Module, gen: torch.Generator) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """``ExperimentDesign.quantize_model`` (W4A4) of a copy of the teacher, ranges set by one forward of the
    RANGE_SEED batch (``gen``'s first draw) and frozen; returns it and the ranges under the FP model's names."""
    designer = SimpleNamespace(settings=SimpleNamespace(qw=BITS, qa=BITS))
    designer.quantize_model = lambda m: M.ExperimentDesign.quantize_model(designer, m)
    student = designer.quantize_model(copy.deepcopy(teacher))
    ranges = freeze_ranges(student, M.QuantAct, portable_randn((32, 3, 32, 32), gen, torch.float64))
    return student, {f"ranges/{pytorchcv_name(teacher, k)}": v for k, v in ranges.items()}


def label_cam(cam, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The paper's CAM (Eq. 5: the score is the image's label) from the official ``GradCAM.forward``: its
    ``class_idx`` path takes ``logit[:, class_idx]``, one class for the whole batch (a (B,) tensor of labels would
    sum every label's logit over every image), so it is called one image at a time with that image's label; the
    maps are per image (eval-mode BN, frozen ranges), so this is the batched label CAM."""
    maps = [cam(x[i:i + 1], class_idx=int(labels[i]), retain_graph=True)[0] for i in range(x.shape[0])]
    return torch.cat(maps)


def terms(work: Path) -> dict[str, torch.Tensor]:
    with official_imports(work / "SynQ" / "src", MODULES):
        import gradcam as G
        import main_direct as M
        import trainer_direct as T
    gen = torch.Generator().manual_seed(TERMS_SEED)
    out: dict[str, torch.Tensor] = {}
    with default_dtype(torch.float64):
        # low-pass filter (inputs redrawn by the test: seed TERMS_SEED, in LPF_CASES order)
        this = SimpleNamespace()
        for name, (shape, d0) in LPF_CASES.items():
            x = portable_randn(shape, gen, torch.float64)
            y = T.Trainer.apply_filters(this, x, d0)
            out[f"lpf/{name}"] = y if y.numel() <= 400 else digest(y)
        # KD (with SynQ's 1e-7 offset) and the selective CE through Trainer.forward, the student an identity
        s_logits = portable_randn((8, 10), gen, torch.float64, 3.0)
        t_logits = portable_randn((8, 10), gen, torch.float64, 3.0)
        labels = torch.randint(0, 10, (8,), generator=gen)
        mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
        this = SimpleNamespace(model=lambda v: v, loss_fa=lambda: torch.zeros(1), criterion=nn.CrossEntropyLoss(),
                               kl_loss=nn.KLDivLoss(reduction="batchmean"),
                               settings=SimpleNamespace(alpha=20.0, temperature=20.0))
        this.loss_fn_kd = lambda *a: T.Trainer.loss_fn_kd(this, *a)
        for tag, m in (("sel", mask), ("plain", None)):
            s = s_logits.clone().requires_grad_(True)
            _, kd, _, ce = T.Trainer.forward(this, s, t_logits, labels, m)
            (grad,) = torch.autograd.grad(ce, s)
            out[f"ce_{tag}"], out[f"ce_{tag}_grad"] = ce.detach().reshape(()), grad
            out["kd"] = kd.detach().reshape(())
        out.update(s_logits=s_logits, t_logits=t_logits, labels=labels, mask=mask)
        # Grad-CAM alignment on the teacher and the official W4A4 student
        teacher, bn = teacher_resnet20(M.ptcv_get_model)
        out.update(net_bn_entries(bn))
        range_gen = torch.Generator().manual_seed(RANGE_SEED)
        student, ranges = official_student(M, teacher, range_gen)
        out.update(ranges)
        x = portable_randn((4, 3, 32, 32), gen, torch.float64)
        cam_labels = torch.randint(0, 10, (4,), generator=gen)
        out["cam_labels"] = cam_labels
        this = SimpleNamespace(cam_teacher=G.GradCAM({"arch": teacher, "input_size": (32, 32)}, True),
                               cam_student=G.GradCAM({"arch": student, "input_size": (32, 32)}, True))
        for mode in ("argmax", "label"):
            xg = x.clone().requires_grad_(True)
            if mode == "argmax":
                loss = T.Trainer.loss_cam(this, xg)
                maps_t, logits_t = this.cam_teacher(xg, retain_graph=True)
                maps_s, logits_s = this.cam_student(xg, retain_graph=True)
                out["argmax_t"], out["argmax_s"] = logits_t.argmax(1), logits_s.argmax(1)
            else:
                maps_t = label_cam(this.cam_teacher, xg, cam_labels)
                maps_s = label_cam(this.cam_student, xg, cam_labels)
                loss = nn.functional.mse_loss(maps_t, maps_s)  # Trainer.loss_cam's comparison of the two maps
            out[f"cam_{mode}/teacher_map"] = digest(maps_t)
            out[f"cam_{mode}/student_map"] = digest(maps_s)
            out[f"cam_{mode}/loss"] = loss.detach().reshape(())
            student.zero_grad(set_to_none=True)
            loss.backward()
            out.update(grad_digests(student, teacher, f"cam_{mode}/grad/"))
        assert not torch.equal(out["argmax_s"], cam_labels)  # the label CAM differs from the argmax one
    out["commit"] = torch.tensor(list(COMMIT.encode()))
    return out


def iteration(work: Path, case: str) -> dict[str, torch.Tensor]:
    d_zero, tau, lambda_ce, lambda_cam, lambda_pert, dataset, seed = ITERATION[case]
    tree = work / ("SynQ_imagenet" if dataset == "imagenet" else "SynQ") / "src"
    with official_imports(tree, MODULES):
        import main_direct as M
        import trainer_direct as T
    T.dist = SimpleNamespace(all_reduce=lambda *a, **k: None, get_world_size=lambda: 1,
                             ReduceOp=SimpleNamespace(SUM=None))  # one process: reduce_minmax divides by 1
    with default_dtype(torch.float64):
        teacher, bn = teacher_resnet20(M.ptcv_get_model)
        out: dict[str, torch.Tensor] = net_bn_entries(bn)
        gen = torch.Generator().manual_seed(RANGE_SEED)
        student, ranges = official_student(M, teacher, gen)
        out.update(ranges)
        batch_gen = torch.Generator().manual_seed(seed)
        x = portable_randn((ITER_BATCH, 3, 32, 32), batch_gen, torch.float64)
        y = torch.randint(1, 10, (ITER_BATCH,), generator=batch_gen)
        y[::2] = 0  # the seeded teacher's argmax: easy samples beside hard ones for the selective CE
        out["x"], out["y"] = digest(x), y
        settings = SimpleNamespace(qw=BITS, qa=BITS, num_classes=10, latent_dim=100, img_size=32, channels=3,
                                   momentum=0.9, weight_decay=1e-4, lr_g=1e-3, b1=0.5, b2=0.999, alpha=20.0,
                                   temperature=20.0, num_epochs=400, lam=1000, eps=0.01, dataset=dataset)
        args = SimpleNamespace(local_rank="cpu", cam_type="gradcam", selce=True, tau_selce=tau, lambda_ce=lambda_ce,
                               lambda_cam=lambda_cam, lambda_pert=lambda_pert, d_zero=d_zero, few_shot=False)

        def lr(value):
            policy = T.utils.LRPolicy(value, settings.num_epochs, "multi_step")
            policy.set_params({"step": [20, 40, 60], "decay_rate": 0.1})
            return policy

        logger = SimpleNamespace(info=lambda *a, **k: None)
        T.print = lambda *a, **k: None
        trainer = T.Trainer(DDPStandIn(student), DDPStandIn(teacher), M.Generator(options=settings), lr(LR_S),
                            lr(1e-3), None, None, settings, args, logger)
        inputs, forwards, cams, totals = [], [], [], []
        record_inputs(teacher, inputs)
        forward, loss_cam = trainer.forward, trainer.loss_cam

        def recording_forward(images, teacher_outputs, labels=None, mask_selce=None):
            result = forward(images, teacher_outputs, labels, mask_selce)
            forwards.append((mask_selce.clone(), *[r.detach().clone() for r in result]))
            return result

        trainer.forward = recording_forward
        trainer.loss_cam = lambda images: cams.append(loss_cam(images)) or cams[-1]
        compute = T.utils.compute_singlecrop
        T.utils.compute_singlecrop = lambda **k: totals.append(k["loss"].detach().clone()) or compute(**k)
        step = trainer.optimizer_s.step

        def recording_step(*a, **k):
            out.update(grad_digests(student, teacher, "grad/"))
            return step(*a, **k)

        trainer.optimizer_s.step = recording_step
        before = {pytorchcv_name(teacher, k): v.detach().clone() for k, v in student.named_parameters()}
        trainer.train(epoch=4, direct_dataload=FixedLoader([(x, y)]))
        T.utils.compute_singlecrop = compute
        assert len(inputs) == 3 and len(forwards) == 2 and len(cams) == 1 and len(totals) == 1
        assert torch.equal(inputs[2], inputs[0])  # Grad-CAM's teacher forward: the filtered batch again
        mask = forwards[0][0]
        assert 0 < int(mask.sum()) < ITER_BATCH, "the selective CE should see easy and hard samples"
        out["xf"] = digest(inputs[0])
        out["mask"] = mask.bool()
        out["sign"] = torch.round((inputs[1] - inputs[0]) / settings.eps).to(torch.int8)
        for i, tag in enumerate(("", "_perturbed")):
            _, output, kd, fa, ce = forwards[i]
            out[f"kd{tag}"], out[f"fa{tag}"], out[f"ce{tag}"] = kd.reshape(()), fa.reshape(()), ce.reshape(())
            if not tag:
                out["student_logits"] = output
        out["cam"] = cams[0].detach().reshape(())
        out["total"] = totals[0].reshape(())
        out["settings"] = torch.tensor([d_zero, tau, lambda_ce, lambda_cam, lambda_pert, dataset == "imagenet"],
                                       dtype=torch.float64)
        if case == "defaults":  # the parameter change of the SGD step (lr LR_S, momentum 0.9 Nesterov, wd 1e-4)
            after = {pytorchcv_name(teacher, k): v for k, v in student.named_parameters()}
            out.update(packed_digests({k: v - before[k] for k, v in after.items()}, "delta/"))
        out["commit"] = torch.tensor(list(COMMIT.encode()))
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synq", type=Path, required=True, help="export of snudm-starlab/SynQ at " + COMMIT)
    parser.add_argument("--work", type=Path, default=Path("/tmp/golden_dq/work_synq"))
    parser.add_argument("--only", choices=("synthesis", "terms", "iteration", "lbns"), action="append",
                        help="write only these fixtures (default: all)")
    args = parser.parse_args()
    only = set(args.only or ("synthesis", "terms", "iteration", "lbns"))
    torch.set_num_threads(1)
    stub_modules(STANDARD_STUBS)
    args.work.mkdir(parents=True, exist_ok=True)
    prepare(args.synq, args.work)
    if "synthesis" in only:
        save_fixture("synq", "synthesis", synthesis(args.work))
    if "terms" in only:
        save_fixture("synq", "terms", terms(args.work))
    if "iteration" in only:
        for case in ITERATION:
            save_fixture("synq", f"iteration_{case}", iteration(args.work, case))
    if "lbns" in only:
        save_fixture("synq", "lbns", lbns(args.work))


if __name__ == "__main__":
    main()
