"""Golden fixtures of GDFQ from the official code (tests/golden/gdfq/README.md).

    git clone https://github.com/xushoukai/GDFQ /tmp/GDFQ-clone   # any clone holding commit a93210e
    tests/golden/make/prepare_official.sh gdfq /tmp/GDFQ-clone/.git /tmp/golden/GDFQ
    python tests/golden/make/make_gdfq.py /tmp/golden/GDFQ tests/golden/gdfq

Runs the official ``main.Generator`` / ``main.Generator_imagenet`` forward, ``Trainer.loss_fn_kd`` and one whole
``Trainer.train`` iteration (G step, then Q step) on deterministic weights (golden_common.fill_) and inputs,
and saves inputs and outputs as tensors only. The generator forwards and the iteration run in float64
(``torch.set_default_dtype(torch.float64)`` before the networks are built: convolutions and reductions then
differ across CPU kernels by ~1e-16 relative instead of flipping float32 roundings); ``loss_fn_kd`` runs in
float32 and in float64. The official ``options`` (pyhocon) and ``termcolor`` imports are replaced by empty
stand-in modules: settings are passed as a namespace, and nothing is logged in colour.
"""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_common import (FORMAT, default_dtype, digest, fill_, portable_randn, random_batches,  # noqa: E402
                           state_pairs)

REPO, COMMIT = "xushoukai/GDFQ", "a93210e7309527cdd0ac2763d2a6928a8a767838"
TEACHER_SEED, GENERATOR_SEED, CALIBRATION_SEED, NOISE_SEED, ITERATION_SEED = 101, 102, 103, 104, 105
BATCH = 8

# The official hocon's settings (cifar100_resnet20.hocon) for a 10-class teacher, batch 8, no warm-up (so the
# first iteration has a Q step) and lr_S 0.01 instead of 1e-4 (so the student's update is far above float32
# rounding of its weights). Everything else as in the hocon.
SETTINGS = dict(nClasses=10, latent_dim=100, img_size=32, channels=3, qw=4, qa=4, nGPU=1, GPU=0, momentum=0.9,
                weightDecay=1e-4, opt_type="SGD", lr_S=0.01, lrPolicy_S="multi_step", step_S=[100, 200, 300],
                decayRate_S=0.1, lr_G=1e-3, lrPolicy_G="multi_step", step_G=[100, 200, 300], decayRate_G=0.1,
                b1=0.5, b2=0.999, batchSize=BATCH, warmup_epochs=0, nEpochs=400, temperature=20, alpha=1)


def load_official(root: Path) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """Import the official ``main``, ``trainer`` and ``utils`` modules from an export made by prepare_official.sh."""
    sys.modules["options"] = types.ModuleType("options")  # main.py: `from options import Option` (pyhocon)
    sys.modules["options"].Option = None
    sys.modules["termcolor"] = types.ModuleType("termcolor")  # utils/log_print.py: `from termcolor import colored`
    sys.modules["termcolor"].colored = lambda text, *args, **kwargs: text
    sys.path.insert(0, str(root))
    import main  # noqa: PLC0415
    import trainer  # noqa: PLC0415
    import utils  # noqa: PLC0415

    assert Path(main.__file__).resolve().parent == root.resolve(), main.__file__
    return main, trainer, utils


def settings(**changes) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{**SETTINGS, **changes})


def generator_case(gen: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor) -> dict:
    """Train-mode forward of an official generator (float64), its BN buffers after it, and parameter gradients
    for a fixed upstream gradient."""
    fill_(state_pairs(gen), GENERATOR_SEED)
    names = [name for name, _ in state_pairs(gen)]
    assert all(p.dtype == torch.float64 for p in gen.state_dict().values() if p.is_floating_point())
    gen.train()
    out = gen(z, labels)
    assert out.dtype == torch.float64
    upstream = random_batches(NOISE_SEED + 1, 1, tuple(out.shape), dtype=torch.float64)[0]
    (out * upstream).sum().backward()
    state = dict(gen.state_dict())
    return {"fill_names": names, "z": z, "labels": labels, "out": out.detach(), "upstream": upstream,
            "buffers_after": {k: v.clone() for k, v in state.items() if "running" in k or "num_batches" in k},
            "grads": {n: digest(p.grad) for n, p in gen.named_parameters()}}


def kd_cases(trainer_mod: types.ModuleType) -> list[dict]:
    """Official ``Trainer.loss_fn_kd`` (L_Q = α·T²·KLDivLoss()(log p_Q, p_T) + CE) on fixed logits, in float32
    and on the same logits in float64 (``loss64``)."""
    cases = []
    gen = torch.Generator().manual_seed(106)
    for classes, temperature, alpha in ((10, 20.0, 1.0), (100, 20.0, 1.0), (10, 4.0, 0.5)):
        student = portable_randn((BATCH, classes), gen, torch.float64, 4.0)
        teacher = portable_randn((BATCH, classes), gen, torch.float64, 4.0)
        labels = torch.randint(0, classes, (BATCH,), generator=gen)
        fake = types.SimpleNamespace(settings=settings(temperature=temperature, alpha=alpha))
        loss = trainer_mod.Trainer.loss_fn_kd(fake, student.float(), labels, teacher.float())
        loss64 = trainer_mod.Trainer.loss_fn_kd(fake, student, labels, teacher)
        assert loss.dtype == torch.float32 and loss64.dtype == torch.float64
        cases.append({"classes": classes, "temperature": temperature, "alpha": alpha, "student": student.float(),
                      "teacher": teacher.float(), "student64": student, "teacher64": teacher, "labels": labels,
                      "loss": loss.detach(), "loss64": loss64.detach()})
    return cases


def whole_iteration(main: types.ModuleType, trainer_mod: types.ModuleType, utils: types.ModuleType) -> dict:
    """One official ``Trainer.train`` iteration (epoch 0, ranges unfrozen, no warm-up: G step then Q step), run
    in float64: call it under ``default_dtype(torch.float64)``."""
    assert torch.get_default_dtype() == torch.float64
    opts = settings()
    teacher = main.ptcv_get_model("resnet20_cifar10", pretrained=False)
    fill_(state_pairs(teacher), TEACHER_SEED)
    # The draws the test must rebuild: every filled entry, concatenated in fill order (sums and a sample).
    teacher_init = digest(torch.cat([v.reshape(-1) for _, v in state_pairs(teacher)]), seed=1)
    set_bn_statistics(teacher)
    teacher_bn = {k: v.clone() for k, v in teacher.state_dict().items() if "running" in k or "num_batches" in k}
    experiment = main.ExperimentDesign.__new__(main.ExperimentDesign)  # only its quantize/freeze helpers
    experiment.settings = opts
    student = experiment.quantize_model(copy.deepcopy(teacher))
    experiment.unfreeze_model(student)  # main.run(): epochs < 4 update the activation ranges
    student.eval()
    calibration = random_batches(CALIBRATION_SEED, 2, (BATCH, 3, 32, 32), dtype=torch.float64)
    with torch.no_grad():  # two earlier updates of every range (as after two iterations), outside the trainer
        for x in calibration:
            student(x)
    ranges_before = quant_act_state(student)
    generator = main.Generator(options=opts)
    fill_(state_pairs(generator), GENERATOR_SEED)
    for net in (teacher, student, generator):  # float64 throughout: nothing on the path made in float32
        assert all(t.dtype in (torch.float64, torch.int64) for t in net.state_dict().values()), net
    lr_s = utils.LRPolicy(opts.lr_S, opts.nEpochs, opts.lrPolicy_S)
    lr_s.set_params({"step": opts.step_S, "decay_rate": opts.decayRate_S})
    lr_g = utils.LRPolicy(opts.lr_G, opts.nEpochs, opts.lrPolicy_G)
    lr_g.set_params({"step": opts.step_G, "decay_rate": opts.decayRate_G})
    trainer = trainer_mod.Trainer(model=student, model_teacher=teacher, generator=generator, lr_master_S=lr_s,
                                  lr_master_G=lr_g, train_loader=None, test_loader=None, settings=opts,
                                  logger=None, opt_type=opts.opt_type)
    seen: dict = {}

    def keep_locals(frame, event, arg):  # the official losses are locals of Trainer.train
        if event == "return" and frame.f_code is trainer_mod.Trainer.train.__code__:
            seen.update(frame.f_locals)

    torch.manual_seed(ITERATION_SEED)
    sys.setprofile(keep_locals)
    try:
        trainer.train(epoch=0)
    finally:
        sys.setprofile(None)
    return {
        "settings": dict(SETTINGS), "seeds": {"teacher": TEACHER_SEED, "generator": GENERATOR_SEED,
                                              "calibration": CALIBRATION_SEED, "iteration": ITERATION_SEED},
        "teacher_fill_names": [n for n, _ in state_pairs(teacher)], "teacher_init": teacher_init,
        "teacher_bn": teacher_bn, "generator_fill_names": [n for n, _ in state_pairs(generator)],
        "calibration": [digest(x, seed=2) for x in calibration],
        "ranges_before": ranges_before,
        "z": seen["z"].detach(), "labels": seen["labels"].detach(), "images": seen["images"].detach(),
        "teacher_logits": seen["output_teacher_batch"].detach(), "student_logits": seen["output"].detach(),
        "loss_G": seen["loss_G"].detach().reshape(()), "loss_one_hot": seen["loss_one_hot"].detach().reshape(()),
        "BNS_loss": seen["BNS_loss"].detach().reshape(()), "loss_S": seen["loss_S"].detach().reshape(()),
        "generator_after": {k: digest(v) for k, v in generator.state_dict().items()},
        "student_after": {k: digest(v) for k, v in student.state_dict().items()},
        "ranges_after": quant_act_state(student),
    }


def set_bn_statistics(model: torch.nn.Module) -> None:
    """Give the randomly filled teacher consistent BN running statistics: the cumulative mean and variance of
    its BN inputs over 4 N(0, 1) batches (train mode, momentum None), so its logits and L_BNS are of a
    realistic size. The result (a reduction: CPU-dependent in its last bits) is saved in the fixture
    (``teacher_bn``) and loaded by the test."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for x in random_batches(TEACHER_SEED, 4, (16, 3, 32, 32), dtype=torch.get_default_dtype()):
            model(x)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def quant_act_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every official QuantAct's (x_min, x_max, beta_t) by module name, as a (3,) tensor."""
    return {name: torch.cat([m.x_min, m.x_max, m.beta_t]).detach().clone()
            for name, m in model.named_modules() if type(m).__name__ == "QuantAct"}


def main_(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: make_gdfq.py GDFQ_DIR OUT_DIR")
    root, out_dir = Path(argv[0]), Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # as every golden maker: reductions' rounding depends on the thread count
    main, trainer_mod, utils = load_official(root)
    meta = {"format": FORMAT, "torch": str(torch.__version__), "repo": REPO, "commit": COMMIT}

    torch.save({**meta, "cases": kd_cases(trainer_mod)}, out_dir / "loss_q.pt")
    with default_dtype(torch.float64):  # generators and the iteration: float64 networks, inputs and steps
        z = portable_randn((4, 100), torch.Generator().manual_seed(NOISE_SEED), torch.float64)
        cifar = generator_case(main.Generator(options=settings()), z, torch.tensor([3, 7, 3, 0]))
        torch.save({**meta, "dtype": "float64", **cifar}, out_dir / "generator_cifar.pt")
        imagenet = generator_case(main.Generator_imagenet(options=settings()), z, torch.tensor([5, 999, 5, 123]))
        torch.save({**meta, "dtype": "float64", **imagenet}, out_dir / "generator_imagenet.pt")
        iteration = whole_iteration(main, trainer_mod, utils)
    torch.save({**meta, "dtype": "float64", **iteration}, out_dir / "iteration.pt")
    for path in sorted(out_dir.glob("*.pt")):
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main_(sys.argv[1:])
