"""Make tests/golden/intraq/synthesis_*.pt and iteration.pt from the official IntraQ code.

Usage (the official tree: ``git --git-dir=<mirror> archive 5228f76… | tar -x -C /tmp/golden_dq/IntraQ``)::

    python tests/golden/make/make_intraq.py --intraq /tmp/golden_dq/IntraQ [--work /tmp/golden_dq/work_intraq]

Synthesis (``data_generate/distill_data.py``, ``getDistilData_hardsample_cosineDistanceEMA_interClass_aug``): two
batches of 64 images, one Adam step each, in float64, for two settings (the CIFAR-10 script's ε_t/m_l/m_u and a
perturbed set whose hinges are active). Recorded through observers (golden_direct_common): each batch's initial
pixels and torch RNG state, sampled labels and soft targets, the per-image crop boxes and flips of an augmented
step, the teacher's input, the final-pool features and the centroids they are compared with, every loss term (the
official ``print``), the pixel gradient and the pixels after the step.
Fine-tuning (``trainer_direct.py``, ``Trainer.train(epoch=4)``, one iteration): KD + CE on a fixed batch, the
student's gradients and its parameters after the SGD step.
"""

from __future__ import annotations

import argparse
import copy
import random
import tempfile
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_direct_common import (  # noqa: E402
    BITS, NET_SEED, RANGE_SEED, STANDARD_STUBS, CropRecorder, FixedLoader, PrintRecorder, RecordingAdam, copy_patched,
    default_dtype, digest, freeze_ranges, grad_digests, packed_digests, net_bn_entries, official_imports, portable_randn,
    pytorchcv_name, record_inputs, save_fixture, stub_modules, teacher_resnet20,
)

COMMIT = "5228f7699fddcd3ced217118e31fca8fc5b3c733"
BATCH = 64  # the centroid update forwards chunks of 64 and drops a smaller rest: 64 is the least that records any
SETTINGS = {  # (targetPro, cosineMargin, cosineMargin_upper, augMargin, torch seed, python seed)
    "hocon": (0.95, 0.05, 0.8, 0.5, 50, 51),
    "perturbed": (0.6, 0.3, 0.05, 0.5, 52, 53),
}
SYNTH_PATCHES = {
    "data_generate/distill_data.py": [
        (".cuda()", ""),
        ("verbose=False,", ""),  # current torch's ReduceLROnPlateau has no `verbose`
        ("assert batch_size * 5 >= 1000", "pass"),  # a sanity check of the released batch count
        ("if i == 5:", "if i == 2:"),  # two batches per call instead of five
        ("for it in range(500*2):", "for it in range(1):"),  # one Adam step per batch instead of 1,000
    ],
}
TRAIN_PATCHES = {
    "trainer_direct.py": [(".cuda()", ""), ("iters = 200", "iters = 1")],
}
MODULES = ("distill_data", "utils", "pytorchcv", "trainer_direct", "main_direct", "options", "dataloader",
           "quantization_utils", "conditional_batchnorm")


def synthesis(folder: Path, setting: str) -> dict[str, torch.Tensor]:
    target_pro, m_l, m_u, aug, seed, py_seed = SETTINGS[setting]
    with official_imports(folder, MODULES), official_imports(folder / "data_generate", ()):
        import distill_data as DD
        from pytorchcv.model_provider import get_model
    with default_dtype(torch.float64):
        teacher, bn = teacher_resnet20(get_model)
        out: dict[str, torch.Tensor] = net_bn_entries(bn)
        printed, dumped, inputs, cos_calls = PrintRecorder(), {}, [], []
        DD.print = printed
        DD.optim = SimpleNamespace(Adam=RecordingAdam, lr_scheduler=torch.optim.lr_scheduler)
        DD.pickle = SimpleNamespace(HIGHEST_PROTOCOL=5, dump=lambda obj, fp, protocol=None: dumped.setdefault(
            fp.name, obj))
        states: list[torch.Tensor] = []
        real_rrc = DD.transforms.RandomResizedCrop

        def rrc(*a, **k):  # constructed right before each batch's torch.randn(shape): keep the RNG state
            states.append(torch.get_rng_state())
            return real_rrc(*a, **k)

        DD.transforms = SimpleNamespace(RandomResizedCrop=rrc, RandomHorizontalFlip=DD.transforms.RandomHorizontalFlip)
        dd = DD.DistillData()
        soft = []
        modify = dd.modify_labels
        dd.modify_labels = lambda labels, t, name: soft.append(modify(labels, t, name)) or soft[-1]
        cos_forward = torch.nn.CosineSimilarity.forward

        def recording_cos(self, x1, x2):
            cos_calls.append((x1.detach().clone(), x2.detach().clone()))
            return cos_forward(self, x1, x2)

        torch.nn.CosineSimilarity.forward = recording_cos
        handle = record_inputs(teacher, inputs)
        RecordingAdam.log = []
        torch.manual_seed(seed)
        random.seed(py_seed)
        try:
            with CropRecorder() as crops:
                dd.getDistilData_hardsample_cosineDistanceEMA_interClass_aug(
                    model_name="resnet20_cifar10", teacher_model=teacher, batch_size=BATCH, group=1,
                    targetPro=target_pro, cosineMargin=m_l, cosineMargin_upper=m_u, augMargin=aug,
                    save_path_head=tempfile.mkdtemp(dir=folder.parent))
        except SystemExit:
            pass
        finally:
            torch.nn.CosineSimilarity.forward = cos_forward
            handle.remove()
        labels = [[torch.as_tensor(a) for a in v] for k, v in dumped.items() if "labels_list" in k][0]
        images = [[torch.as_tensor(a) for a in v] for k, v in dumped.items() if "refined_gaussian" in k][0]
        rows = printed.rows("mean_loss")
        assert len(rows) == 2 and len(RecordingAdam.log) == 2 and len(states) == 2
        # teacher inputs in call order: batch 1 step, final no-grad forward, centroid chunk; batch 2 step, final
        step_inputs = [inputs[0], inputs[3]]
        crop_count = 0
        for b in range(2):
            entry = RecordingAdam.log[b]
            x0 = entry["x0"]
            rng = torch.Generator()
            rng.set_state(states[b])
            regenerated = torch.randn(x0.shape, generator=rng, dtype=torch.float64)
            assert torch.equal(regenerated, x0), "the initial pixels are not the first draw after the recorded state"
            augmented = not torch.equal(step_inputs[b], x0)
            p = f"b{b}/"
            out[p + "rng_state"] = states[b]
            out[p + "x0"] = digest(x0)
            out[p + "labels"] = labels[b]
            out[p + "targets"] = soft[b].gather(1, labels[b][:, None]).squeeze(1)
            out[p + "augmented"] = torch.tensor(augmented)
            if augmented:
                boxes, flips = crops.take_range(crop_count, BATCH)
                out[p + "boxes"], out[p + "flips"] = boxes, flips
                crop_count += BATCH
            out[p + "teacher_input"] = digest(step_inputs[b])
            features, centroids = cos_calls[2 * b]
            out[p + "features"] = digest(features)
            present = sorted(set(labels[0].tolist())) if b == 1 else []
            mask = torch.tensor([float(int(y) in present) for y in labels[b]])
            out[p + "mask"] = mask
            table = torch.zeros(10, features.shape[1], dtype=torch.float64)
            for i, y in enumerate(labels[b].tolist()):
                if mask[i]:
                    table[y] = centroids[i]
            out[p + "centroids"] = table
            for key in ("mean_loss", "var_loss", "loss_target", "loss_cosineDistance", "loss_cosineDistance_upper"):
                out[p + key] = torch.tensor(rows[b][key], dtype=torch.float64)
            out[p + "grad"] = digest(entry["grads"][0])
            out[p + "x_after"] = digest(torch.as_tensor(images[b]))
            assert torch.equal(torch.as_tensor(images[b]), entry["x_after"])
        out["settings"] = torch.tensor([target_pro, m_l, m_u, aug], dtype=torch.float64)
        out["commit"] = torch.tensor(list(COMMIT.encode()))
        return out


def iteration(folder: Path) -> dict[str, torch.Tensor]:
    with official_imports(folder, MODULES):
        import main_direct as M
        import trainer_direct as T
    with default_dtype(torch.float64):
        teacher, bn = teacher_resnet20(M.ptcv_get_model)
        out: dict[str, torch.Tensor] = net_bn_entries(bn)
        settings = SimpleNamespace(qw=BITS, qa=BITS, nClasses=10, latent_dim=100, img_size=32, channels=3,
                                   momentum=0.9, weightDecay=1e-4, lr_G=1e-3, b1=0.5, b2=0.999, alpha=20.0,
                                   temperature=20.0, nEpochs=400, nGPU=1, GPU=0)
        T.utils.data_parallel = lambda model, ngpus, gpu0=0: model  # CPU: it asserts a GPU
        designer = SimpleNamespace(settings=settings)
        designer.quantize_model = lambda m: M.ExperimentDesign.quantize_model(designer, m)
        student = designer.quantize_model(copy.deepcopy(teacher))
        gen = torch.Generator().manual_seed(RANGE_SEED)
        ranges = freeze_ranges(student, M.QuantAct, portable_randn((32, 3, 32, 32), gen, torch.float64))
        out.update({f"ranges/{pytorchcv_name(teacher, k)}": v for k, v in ranges.items()})
        x = portable_randn((16, 3, 32, 32), gen, torch.float64)
        y = torch.randint(0, 10, (16,), generator=gen)
        out["x"], out["y"] = digest(x), y  # the test redraws x from RANGE_SEED (portable draws)

        def lr(value):
            policy = T.utils.LRPolicy(value, settings.nEpochs, "multi_step")
            policy.set_params({"step": [20, 40, 60], "decay_rate": 0.1})
            return policy

        generator = M.Generator(options=settings)
        logger = SimpleNamespace(info=lambda *a, **k: None)
        trainer = T.Trainer(student, teacher, generator, lr(1e-4), lr(1e-3), None, None, settings, logger)
        seen = {"teacher": [], "student": [], "loss": []}
        teacher.register_forward_hook(lambda m, a, o: seen["teacher"].append(o.detach().clone()))
        student.register_forward_hook(lambda m, a, o: seen["student"].append(o.detach().clone()))
        kd = trainer.loss_fn_kd
        trainer.loss_fn_kd = lambda *a: seen["loss"].append(kd(*a)) or seen["loss"][-1]
        step = trainer.optimizer_S.step

        def recording_step(*a, **k):
            out.update(grad_digests(student, teacher, "grad/"))
            return step(*a, **k)

        trainer.optimizer_S.step = recording_step
        before = {pytorchcv_name(teacher, k): v.clone() for k, v in student.state_dict().items()}
        trainer.train(epoch=4, direct_dataload=FixedLoader([(x, y)]))
        out["teacher_logits"], out["student_logits"] = seen["teacher"][0], seen["student"][0]
        out["loss"] = seen["loss"][0].detach().reshape(())
        after = {pytorchcv_name(teacher, k): v for k, v in student.named_parameters()}
        out.update(packed_digests({k: v - before[k] for k, v in after.items()}, "delta/"))
        out["commit"] = torch.tensor(list(COMMIT.encode()))
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intraq", type=Path, required=True, help="export of zysxmu/IntraQ at " + COMMIT)
    parser.add_argument("--work", type=Path, default=Path("/tmp/golden_dq/work_intraq"))
    parser.add_argument("--only-iteration", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    stub_modules(STANDARD_STUBS)
    folder = args.work / "IntraQ"
    copy_patched(args.intraq, folder, {**SYNTH_PATCHES, **TRAIN_PATCHES})
    for name in SETTINGS if not args.only_iteration else ():
        save_fixture("intraq", f"synthesis_{name}", synthesis(folder, name))
    save_fixture("intraq", "iteration", iteration(folder))


if __name__ == "__main__":
    main()
