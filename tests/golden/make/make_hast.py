"""Make tests/golden/hast/*.pt from the official HAST code.

Usage (``git --git-dir=<mirror> archive 83dfc16… <every path but data/cifar10/*refined*> | tar -x -C /tmp/golden_dq/HAST``;
the image pickles are absent from the stored snapshot and not needed)::

    python tests/golden/make/make_hast.py --hast /tmp/golden_dq/HAST [--work /tmp/golden_dq/work_hast]

- synthesis_*.pt: ``data_generate/distill_data.py`` ``getDistilData_hardsample`` (CIFAR branch: no augmentation),
  one batch of 8, one Adam step, for (β, γ) = (10, 2) (the CIFAR script) and (0.1, 0.5) (the ImageNet script), in
  float64, and (10, 2) in float32 without the dtype patch: the loss terms (official ``print``), the sampled labels,
  the initial pixels' RNG state, the teacher's logits and the pixel gradient. float32 ``torch.randn`` is not the
  same on every CPU, so in the float32 run the batch's ``torch.randn(shape)`` is served by ``portable_randn`` from
  seed ``FLOAT32_PIXEL_SEED`` (:class:`PortableRandnTorch`; the labels still come from the global generator).
- terms.pt: ``Trainer.channel_attention`` and ``Trainer.loss_fa`` (λ = 1000) on seeded feature maps (float32, float64).
- iteration.pt: ``Trainer.train(epoch=4)`` (one iteration; ranges frozen as after the calibration epochs) on a fixed
  batch of 4: KD and FA on x and on the perturbed x', the perturbation's signs, the student's gradients and the
  change of its parameters after the SGD step, in float64.
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
    BITS, RANGE_SEED, STANDARD_STUBS, DDPStandIn, DistillRecording, FixedLoader, copy_patched,
    default_dtype, digest, freeze_ranges, grad_digests, packed_digests, net_bn_entries, official_imports, portable_randn,
    pytorchcv_name, record_inputs, save_fixture, stub_modules, teacher_resnet20,
)

COMMIT = "83dfc1665ee76d67e30d9a8a8a84a30ba81cdd5c"
SYNTH_BATCH, ITER_BATCH = 8, 4
SYNTH = {  # name: (beta, gamma, dtype, torch seed)
    "cifar": (10.0, 2.0, torch.float64, 60),
    "imagenet_values": (0.1, 0.5, torch.float64, 61),
    "cifar_float32": (10.0, 2.0, torch.float32, 60),
}
SYNTH_PATCHES = [
    (".cuda()", ""),
    ("verbose=False,", ""),  # current torch's ReduceLROnPlateau has no `verbose`
    ("for i in range(1280//batch_size):", "for i in range(1):"),  # one batch instead of 1280 // batch_size
    ("for it in range(500*2):", "for it in range(1):"),  # one Adam step instead of 1,000
]
DTYPE_PATCH = ("torch.ones_like(b).float()", "torch.ones_like(b).to(a.dtype)")  # float64 runs only (scatter_ dtype)
TRAIN_PATCHES = {"trainer_direct.py": [("iters = 200", "iters = 1")]}
FLOAT32_PIXEL_SEED = 63  # the float32 run's initial pixels: portable_randn from this seed
MODULES = ("distill_data", "utils", "trainer_direct", "main_direct", "options", "dataloader",  # installed pytorchcv
           "quantization_utils", "conditional_batchnorm")


def prepare(source: Path, work: Path) -> Path:
    folder = work / "HAST"
    copy_patched(source, folder, {"data_generate/distill_data.py": SYNTH_PATCHES, **TRAIN_PATCHES})
    f64 = work / "HAST64"
    copy_patched(folder, f64, {"data_generate/distill_data.py": [DTYPE_PATCH]})
    return folder


def stub_hast_imports() -> None:
    """pytorchcv 0.0.74 has no ``mobilenet.DwsConvBlock`` (HAST's trainer imports it for MobileNetV1 hooks): an empty
    class nothing is an instance of; ``torch.utils.tensorboard`` (imported, unused) when tensorboard is missing."""
    import pytorchcv.models.mobilenet as mobilenet

    if not hasattr(mobilenet, "DwsConvBlock"):
        mobilenet.DwsConvBlock = type("DwsConvBlock", (nn.Module,), {})
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        stub_modules({"torch.utils.tensorboard": {"SummaryWriter": object}})


class PortableRandnTorch:
    """``torch`` for an official module's globals, except that ``randn(shape)`` is :func:`portable_randn` (float64
    draws from ``gen``, cast to ``dtype``): the same bits on every CPU, where float32 ``torch.randn`` is not."""

    def __init__(self, gen: torch.Generator, dtype: torch.dtype) -> None:
        self.gen, self.dtype = gen, dtype

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def randn(self, *size):
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        return portable_randn(tuple(shape), self.gen, self.dtype)


def synthesis(folder: Path, name: str) -> dict[str, torch.Tensor]:
    from pytorchcv.model_provider import get_model

    beta, gamma, dtype, seed = SYNTH[name]
    tree = folder if dtype == torch.float32 else folder.parent / "HAST64"
    with official_imports(tree / "data_generate", MODULES):
        import distill_data as DD
    with default_dtype(dtype):
        teacher, bn = teacher_resnet20(get_model)
        out: dict[str, torch.Tensor] = net_bn_entries(bn)
        with DistillRecording(DD, teacher) as rec:
            torch.manual_seed(seed)
            DD.torch = torch
            if dtype == torch.float32:
                DD.torch = PortableRandnTorch(torch.Generator().manual_seed(FLOAT32_PIXEL_SEED), dtype)
            try:
                DD.DistillData().getDistilData_hardsample(
                    model_name="resnet20_cifar10", teacher_model=teacher, batch_size=SYNTH_BATCH, group=1, beta=beta,
                    gamma=gamma, save_path_head=tempfile.mkdtemp(dir=folder.parent))
            except SystemExit:
                pass
        entry, entries = rec.step_entries([beta, gamma])
        if dtype == torch.float32:
            rng = torch.Generator().manual_seed(FLOAT32_PIXEL_SEED)
            assert torch.equal(portable_randn(tuple(entry["x0"].shape), rng, dtype), entry["x0"])
            out["x0_portable_seed"] = torch.tensor(FLOAT32_PIXEL_SEED)
        else:
            rng = torch.Generator()
            rng.set_state(rec.states[0])
            assert torch.equal(torch.randn(entry["x0"].shape, generator=rng, dtype=dtype), entry["x0"])
        out.update(entries)
        if dtype == torch.float32:
            del out["rng_state"]  # its pixels are redrawn from x0_portable_seed
        out["commit"] = torch.tensor(list(COMMIT.encode()))
        return out


def terms(folder: Path) -> dict[str, torch.Tensor]:
    with official_imports(folder, MODULES):
        import trainer_direct as T
    gen = torch.Generator().manual_seed(62)
    out: dict[str, torch.Tensor] = {}
    shapes = [(4, 16, 8, 8), (4, 32, 4, 4), (4, 64, 2, 2)]
    student = [portable_randn(s, gen, torch.float64) for s in shapes]
    teacher = [portable_randn(s, gen, torch.float64) for s in shapes]
    for tag, dtype in (("32", torch.float32), ("64", torch.float64)):
        this = SimpleNamespace(settings=SimpleNamespace(lam=1000), args=SimpleNamespace(local_rank="cpu"))
        this.channel_attention = lambda x: T.Trainer.channel_attention(this, x)
        s = [f.to(dtype) for f in student]
        t = [f.to(dtype) for f in teacher]
        this.activation = [this.channel_attention(f) for f in s]
        this.activation_teacher = [this.channel_attention(f) for f in t]
        with default_dtype(dtype):  # loss_fa starts from torch.zeros(1)
            fa = T.Trainer.loss_fa(this)
        for i in range(len(shapes)):  # the inputs are redrawn by the test (seed 62, portable draws)
            out[f"attention_s{i}_{tag}"] = this.activation[i]
        out[f"fa_{tag}"] = fa.reshape(())
    out["commit"] = torch.tensor(list(COMMIT.encode()))
    return out


def iteration(folder: Path) -> dict[str, torch.Tensor]:
    with official_imports(folder, MODULES):
        import main_direct as M
        import trainer_direct as T
    T.dist = SimpleNamespace(all_reduce=lambda *a, **k: None, get_world_size=lambda: 1,
                             ReduceOp=SimpleNamespace(SUM=None))  # one process: reduce_minmax divides by 1
    with default_dtype(torch.float64):
        teacher, bn = teacher_resnet20(M.ptcv_get_model)
        out: dict[str, torch.Tensor] = net_bn_entries(bn)
        settings = SimpleNamespace(qw=BITS, qa=BITS, nClasses=10, latent_dim=100, img_size=32, channels=3,
                                   momentum=0.9, weightDecay=1e-4, lr_G=1e-3, b1=0.5, b2=0.999, alpha=20.0,
                                   temperature=20.0, nEpochs=400, lam=1000, eps=0.01)
        designer = SimpleNamespace(settings=settings)
        designer.quantize_model = lambda m: M.ExperimentDesign.quantize_model(designer, m)
        student = designer.quantize_model(copy.deepcopy(teacher))
        gen = torch.Generator().manual_seed(RANGE_SEED)
        ranges = freeze_ranges(student, M.QuantAct, portable_randn((32, 3, 32, 32), gen, torch.float64))
        out.update({f"ranges/{pytorchcv_name(teacher, k)}": v for k, v in ranges.items()})
        x = portable_randn((ITER_BATCH, 3, 32, 32), gen, torch.float64)
        y = torch.randint(0, 10, (ITER_BATCH,), generator=gen)
        out["x"], out["y"] = digest(x), y

        def lr(value):
            policy = T.utils.LRPolicy(value, settings.nEpochs, "multi_step")
            policy.set_params({"step": [20, 40, 60], "decay_rate": 0.1})
            return policy

        args = SimpleNamespace(local_rank="cpu")
        logger = SimpleNamespace(info=lambda *a, **k: None)
        trainer = T.Trainer(DDPStandIn(student), DDPStandIn(teacher), M.Generator(options=settings), lr(1e-5),
                            lr(1e-3), None, None, settings, args, logger)
        inputs, seen = [], {"kd": [], "fa": [], "student": []}
        record_inputs(teacher, inputs)
        student.register_forward_hook(lambda m, a, o: seen["student"].append(o.detach().clone()))
        kd, fa = trainer.loss_fn_kd, trainer.loss_fa
        trainer.loss_fn_kd = lambda *a: seen["kd"].append(kd(*a)) or seen["kd"][-1]
        trainer.loss_fa = lambda: seen["fa"].append(fa()) or seen["fa"][-1]
        step = trainer.optimizer_S.step

        def recording_step(*a, **k):
            out.update(grad_digests(student, teacher, "grad/"))
            return step(*a, **k)

        trainer.optimizer_S.step = recording_step
        before = {pytorchcv_name(teacher, k): v.detach().clone() for k, v in student.named_parameters()}
        trainer.train(epoch=4, direct_dataload=FixedLoader([(x, y)]))
        assert len(inputs) == 2 and len(seen["kd"]) == 2 and len(seen["fa"]) == 2
        out["sign"] = torch.round((inputs[1] - inputs[0]) / settings.eps).to(torch.int8)
        for i, tag in enumerate(("", "_perturbed")):
            out[f"kd{tag}"] = seen["kd"][i][0].detach().reshape(())
            out[f"fa{tag}"] = seen["fa"][i].detach().reshape(())
        out["student_logits"] = seen["student"][0]
        after = {pytorchcv_name(teacher, k): v for k, v in student.named_parameters()}
        out.update(packed_digests({k: v - before[k] for k, v in after.items()}, "delta/"))
        out["commit"] = torch.tensor(list(COMMIT.encode()))
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hast", type=Path, required=True, help="export of lihuantong/HAST at " + COMMIT)
    parser.add_argument("--work", type=Path, default=Path("/tmp/golden_dq/work_hast"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    stub_modules(STANDARD_STUBS)
    stub_hast_imports()
    folder = prepare(args.hast, args.work)
    for name in SYNTH:
        save_fixture("hast", f"synthesis_{name}", synthesis(folder, name))
    save_fixture("hast", "terms", terms(folder))
    save_fixture("hast", "iteration", iteration(folder))


if __name__ == "__main__":
    main()
