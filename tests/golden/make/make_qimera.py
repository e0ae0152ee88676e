"""Generate tests/golden/qimera/*.pt by running the official Qimera code (iamkanghyunchoi/qimera) on CPU.

Usage: python tests/golden/make/make_qimera.py /path/to/official/qimera [out_dir]

The official repository is imported from the given path, never copied. CPU patches, applied in memory
only (see tests/golden/qimera/README.md): ``Tensor.cuda`` / ``Module.cuda`` return their argument,
``utils.data_parallel`` returns the model, stub ``options`` and ``termcolor`` modules replace the
pyhocon-based options and the log colouring (the settings are a namespace built here), trainer.py's
hard-coded ``iters = 200`` reads ``settings.iters_per_epoch`` (1 here), so ``Trainer.train(epoch)`` runs
exactly one iteration, and its logging-only teacher-accuracy line compares with ``labels[:, 0]`` on mixed
batches (numpy >= 1.25 raises where the numpy of 2021 returned False).
The starting networks and inputs come from qimera_inputs.py, which the test uses too.
"""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qimera_inputs as qi  # noqa: E402  (imports the installed pytorchcv before the official path is added)

from dfqbench.blocks.generators_qimera import QimeraGenerator, teacher_class_embedding  # noqa: E402
from dfqbench.quant import QuantConfig, quantize_model  # noqa: E402

REPO, COMMIT = "iamkanghyunchoi/qimera", "2f48cbaf1d0dbaf893ca6369681e801af16e4fef"


def load_official(root: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """The official ``main`` and ``trainer`` modules, with the CPU patches described in the module docstring."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    sys.path.insert(0, str(root))
    options = types.ModuleType("options")
    options.Option = None  # the settings are built by settings() below; the real module needs pyhocon
    sys.modules["options"] = options
    termcolor = types.ModuleType("termcolor")  # used by the official log printing only
    termcolor.colored = lambda text, *args, **kwargs: text
    sys.modules.setdefault("termcolor", termcolor)
    import utils  # the official utils package

    utils.data_parallel = lambda model, n_gpu, gpu0=0: model
    path = root / "trainer.py"
    source = path.read_text()
    assert source.count("iters = 200") == 1, "trainer.py changed: the iters patch does not apply"
    # logging only, after both steps: numpy >= 1.25 rejects comparing (B,) with a mixed batch's (B, K) labels
    # (older numpy returned False); compare with the first slot, as the official top-1 logging does
    assert source.count("axis=1) == gt)") == 1, "trainer.py changed: the logging patch does not apply"
    source = source.replace("axis=1) == gt)", "axis=1) == (gt if gt.ndim == 1 else gt[:, 0]))")
    trainer = types.ModuleType("trainer")
    trainer.__file__ = str(path)
    exec(compile(source.replace("iters = 200", "iters = self.settings.iters_per_epoch"), str(path), "exec"),
         trainer.__dict__)
    sys.modules["trainer"] = trainer
    import main

    return main, trainer


def settings(**changes: Any) -> types.SimpleNamespace:
    """cifar10_resnet20.hocon + run_cifar10_4bit.sh's flags, at W3A3, no DM (the scripts' default), 1 iteration."""
    fields = dict(
        nGPU=1, GPU=0, nClasses=qi.NUM_CLASSES, latent_dim=qi.LATENT_DIM, img_size=32, channels=3,
        batchSize=qi.BATCH, momentum=qi.MOMENTUM, weightDecay=qi.WEIGHT_DECAY, lr_S=qi.LR_Q, lr_G=qi.LR_G,
        b1=qi.BETAS[0], b2=qi.BETAS[1], nEpochs=400, step_S=[100, 200, 300], step_G=[100, 200, 300],
        decayRate_S=0.1, decayRate_G=0.1, lrPolicy_S="multi_step", lrPolicy_G="multi_step",
        temperature=qi.TEMPERATURE, alpha=qi.ALPHA, multi_label_prob=qi.PROB, multi_label_num=qi.K,
        no_DM=True, noise_scale=1.0, intermediate_dim=100, qw=qi.BITS, qa=qi.BITS,
        warmup_epochs=0,  # the student steps from the first iteration (the scripts: 4 warm-up epochs first)
        iters_per_epoch=1,
    )
    fields.update(changes)
    return types.SimpleNamespace(**fields)


def official_generator(main: types.ModuleType, ours: QimeraGenerator, teacher_weight: torch.Tensor | None,
                       opts: types.SimpleNamespace) -> nn.Module:
    """The official Generator holding exactly our generator's weights (names mapped, strict load)."""
    gen = main.Generator(opts, teacher_weight=teacher_weight, freeze=False)
    gen.load_state_dict({qi.official_generator_key(k): v.clone() for k, v in ours.state_dict().items()}, strict=True)
    return gen


def design(main: types.ModuleType, opts: types.SimpleNamespace) -> Any:
    """An ExperimentDesign without its __init__ (which builds data loaders): only quantize/freeze are used."""
    exp = main.ExperimentDesign.__new__(main.ExperimentDesign)
    exp.settings = opts
    return exp


def forward_and_loss_goldens(main: types.ModuleType, trainer_mod: types.ModuleType) -> dict[str, torch.Tensor]:
    opts = settings()
    inputs = qi.forward_inputs()
    teacher = qi.seeded_teacher()
    bn = qi.teacher_bn(teacher)
    emb = teacher_class_embedding(teacher)
    gen = official_generator(main, qi.seeded_generator(emb), emb.clone(), opts).train()
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        out["images_single"] = gen(inputs["z_single"], inputs["labels_single"])
        out["images_mixed"] = gen(inputs["z_mixed"], inputs["labels_mixed"], inputs["mix_weights"])
    trainer = trainer_mod.Trainer(model=nn.Linear(1, 1), model_teacher=nn.Identity(), generator=gen,
                                  lr_master_S=_lr(main, opts.lr_S), lr_master_G=_lr(main, opts.lr_G),
                                  train_loader=None, test_loader=None, settings=opts, logger=None)
    s, t = inputs["student_logits"], inputs["teacher_logits"]
    mixed = torch.zeros(qi.FORWARD_BATCH, qi.NUM_CLASSES).scatter_add_(1, inputs["labels_mixed"], inputs["mix_weights"])
    one_hot = torch.zeros(qi.FORWARD_BATCH, qi.NUM_CLASSES).scatter_(1, inputs["labels_single"].unsqueeze(1), 1.0)
    out["soft_targets"] = mixed
    out["loss_q_mixed"] = trainer.loss_fn_kd(s, None, t, mixed)
    out["loss_q_one_hot"] = trainer.loss_fn_kd(s, None, t, one_hot)
    out["kd_term"] = trainer.loss_fn_kd(s, None, t, torch.zeros_like(mixed))  # linear = 0: the KD term alone
    opts.alpha = 0.0
    out["soft_ce_mixed"] = trainer.loss_fn_kd(s, None, t, mixed)  # alpha = 0: the soft CE term alone
    out["soft_ce_one_hot"] = trainer.loss_fn_kd(s, None, t, one_hot)
    return {**{k: v.detach().clone() for k, v in out.items()}, **bn}


def _lr(main: types.ModuleType, lr: float) -> Any:
    policy = main.utils.LRPolicy(lr, 400, "multi_step")
    policy.set_params(params_dict={"step": [100, 200, 300], "decay_rate": 0.1})
    return policy


class Recorder:
    """Observes the official trainer's calls without changing them: loss_G (backward_G), the student's output and
    loss_S (forward), each BNS MSE term (MSE_loss), and the teacher's logits (forward hook)."""

    def __init__(self, trainer: Any, teacher: nn.Module) -> None:
        self.rows: dict[str, Any] = {}
        backward_g, forward, mse = trainer.backward_G, trainer.forward, trainer.MSE_loss

        def record_backward_g(loss_g):
            self.rows["loss_g"] = loss_g.detach().clone().reshape(())
            return backward_g(loss_g)

        def record_forward(images, teacher_outputs, labels=None, linear=None):
            output, loss = forward(images, teacher_outputs, labels, linear)
            self.rows.update(student_logits=output.detach().clone(), loss_q=loss.detach().clone(),
                             images=qi.sketch(images), soft_targets=linear.detach().clone())
            return output, loss

        def record_mse(a, b):
            value = mse(a, b)
            self.rows.setdefault("mse_terms", []).append(value.detach().clone())
            return value

        trainer.backward_G, trainer.forward, trainer.MSE_loss = record_backward_g, record_forward, record_mse
        teacher.register_forward_hook(lambda m, i, o: self.rows.__setitem__("teacher_logits", o.detach().clone()))

    def take(self) -> dict[str, torch.Tensor]:
        rows, self.rows = self.rows, {}
        terms = torch.stack(rows.pop("mse_terms"))  # mean_1, var_1, mean_2, var_2, ... per teacher BN
        rows["bns_layer_terms"] = terms[0::2] + terms[1::2]
        return rows



def state_sketches(gen: nn.Module, student: nn.Module, our_student: dict[str, torch.Tensor],
                   prefix: str) -> dict[str, torch.Tensor]:
    """Sketches of the official generator's and student's weights under dfqbench's names."""
    inverse = {v: k for k, v in qi.GENERATOR_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in gen.state_dict().items():
        module, _, leaf = key.rpartition(".")
        out[f"{prefix}generator/{inverse[module]}.{leaf}"] = qi.sketch(value)
    for key, value in student_names(student, our_student).items():
        out[f"{prefix}student/{key}"] = qi.sketch(value)
    return out

def iteration_goldens(main: types.ModuleType, trainer_mod: types.ModuleType) -> dict[str, torch.Tensor]:
    """One official iteration (G step + Q step, epoch 0: ranges updating, no warm-up) per case, each from the
    same starting weights: "mixed" draws a superposed batch, "single" a one-label batch."""
    bn = qi.teacher_bn(qi.seeded_teacher())
    out: dict[str, torch.Tensor] = dict(bn)
    our_student = quantize_model(qi.seeded_teacher(bn), QuantConfig(qi.BITS, qi.BITS)).state_dict()  # names only
    for case, seed in qi.ITERATION_SEEDS.items():
        opts = settings()
        teacher = qi.seeded_teacher(bn)
        gen = official_generator(main, qi.seeded_generator(None), None, opts)  # --randemb: E ~ N(0, 1), seeded
        student = design(main, opts).quantize_model(copy.deepcopy(teacher))
        trainer = trainer_mod.Trainer(model=student, model_teacher=teacher, generator=gen,
                                      lr_master_S=_lr(main, opts.lr_S), lr_master_G=_lr(main, opts.lr_G),
                                      train_loader=None, test_loader=None, settings=opts, logger=None)
        recorder = Recorder(trainer, teacher)
        torch.manual_seed(seed)
        trainer.train(epoch=0)
        rows = recorder.take()
        rows["superposed"] = torch.tensor(bool(rows["soft_targets"].gt(0).sum(dim=1).gt(1).any()))
        assert bool(rows["superposed"]) == (case == "mixed"), f"seed {seed} no longer gives a {case} batch"
        for name, value in rows.items():
            out[f"{case}/{name}"] = value
        out.update(state_sketches(gen, student, our_student, f"{case}/"))
    return out


def trajectory_goldens(main: types.ModuleType, trainer_mod: types.ModuleType) -> dict[str, torch.Tensor]:
    """The official loop for two epochs of TRAJECTORY_ITERS iterations (epoch 0 with ranges updating, main.run's
    freeze_model, epoch 1 with ranges frozen; no warm-up), from the iteration goldens' starting weights:
    per-iteration loss_G, loss_S and batch kind, and every state entry at the end."""
    opts = settings(iters_per_epoch=qi.TRAJECTORY_ITERS)
    bn = qi.teacher_bn(qi.seeded_teacher())
    teacher = qi.seeded_teacher(bn)
    gen = official_generator(main, qi.seeded_generator(None), None, opts)
    exp = design(main, opts)
    student = exp.quantize_model(copy.deepcopy(teacher))
    trainer = trainer_mod.Trainer(model=student, model_teacher=teacher, generator=gen,
                                  lr_master_S=_lr(main, opts.lr_S), lr_master_G=_lr(main, opts.lr_G),
                                  train_loader=None, test_loader=None, settings=opts, logger=None)
    seq: dict[str, list[torch.Tensor]] = {"loss_g": [], "loss_q": [], "superposed": []}
    backward_g, forward = trainer.backward_G, trainer.forward

    def record_backward_g(loss_g):
        seq["loss_g"].append(loss_g.detach().clone().reshape(()))
        return backward_g(loss_g)

    def record_forward(images, teacher_outputs, labels=None, linear=None):
        output, loss = forward(images, teacher_outputs, labels, linear)
        seq["loss_q"].append(loss.detach().clone())
        seq["superposed"].append(torch.tensor(bool(linear.gt(0).sum(dim=1).gt(1).any())))
        return output, loss

    trainer.backward_G, trainer.forward = record_backward_g, record_forward
    our_student = quantize_model(qi.seeded_teacher(bn), QuantConfig(qi.BITS, qi.BITS)).state_dict()
    torch.manual_seed(qi.TRAJECTORY_SEED)
    trainer.train(epoch=0)
    exp.freeze_model(student)
    trainer.train(epoch=1)
    out = {name: torch.stack(values) for name, values in seq.items()}
    out.update(state_sketches(gen, student, our_student, ""))
    return {**out, **bn}


def student_names(student: nn.Module, ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official student's state under dfqbench's names. The official quantize_model rebuilds every
    nn.Sequential from its children, so ``features.init_block`` becomes ``features.0``; the order and the
    leaf names are the same (``ours``: dfqbench's quantized state, for its names). The official EMA β buffer
    is left out (dfqbench keeps β in its tracker config)."""
    official = [(k, v) for k, v in student.state_dict().items() if not k.endswith(".beta")]
    assert len(official) == len(ours), "student state sizes differ"
    renamed = {}
    for (key, value), (name, mine) in zip(official, ours.items()):
        assert key.rpartition(".")[2] == name.rpartition(".")[2] and value.numel() == mine.numel(), (key, name)
        renamed[name] = value
    return renamed


def main() -> None:
    root = Path(sys.argv[1]).resolve()
    out_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[1] / "qimera"
    torch.set_num_threads(1)
    # float64 throughout: the official code runs unchanged in double precision, where the last-bit differences
    # between CPUs' kernels (~1e-16) stay ~1e-16 instead of flipping 3-bit roundings (tests/golden/README.md)
    torch.set_default_dtype(torch.float64)
    official_main, official_trainer = load_official(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = {"repo": REPO, "commit": COMMIT, "torch": str(torch.__version__)}
    for name, make in (("forward_and_losses", forward_and_loss_goldens), ("iteration", iteration_goldens),
                       ("trajectory", trajectory_goldens)):
        path = out_dir / f"{name}.pt"
        torch.save({**make(official_main, official_trainer), **source}, path)
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
