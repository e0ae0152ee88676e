"""Make tests/golden/adasg/*.pt and tests/golden/adadfq/*.pt from the official AdaSG / AdaDFQ code.

Usage (outside the repository's code path; the official trees are clones at the commits named in
tests/golden/adasg/README.md, or ``git --git-dir=<mirror> archive <commit> | tar -x -C <dir>``)::

    python tests/golden/make/make_adasg.py --adasg <AdaSG export> --adadfq <AdaDFQ export> [--work /tmp/golden_b_adasg]

Each official ``CIFAR/`` folder is copied to ``--work`` and patched there (see the READMEs); then its
``trainer.py`` functions (``compute_entropy``, ``marginal_loss``, ``Trainer.loss_fn_kd``) run on fixed logits,
and its ``Trainer.train(epoch=0)`` runs one whole iteration (G step + Q step) from seeded weights, in float64
(``torch.set_default_dtype(torch.float64)`` before the networks are built: float64 networks, inputs and
optimizer states; nothing on this path creates a float32 tensor explicitly). Only numbers are saved.
Observation is by forward hooks and wrappers, never by editing the official code. terms.pt also holds the
official activation quantizer (``QuantAct``) on exact rounding ties.
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_b_common import (  # noqa: E402
    calibrate_bn_stats, copy_patched, default_dtype, digest, digests, net_bn_entries, official_imports,
    portable_randn, pytorchcv_name, save_fixture, seeded_state, tie_fixture, to_official_generator,
)

NET_SEED, GEN_SEED, ITER_SEED, LOGIT_SEED = 20, 21, 22, 23
BATCH = 16  # marginal_loss hard-codes a zero vector of length 16
BITS = 4
ADADFQ_SETTINGS = {  # the CIFAR hocon values (alpha_ds, alpha_as, lambda_l, lambda_u, beta, gamma) and a perturbed set
    "hocon": dict(alpha_ds=0.2, alpha_as=0.1, lambda_l=0.1, lambda_u=0.8, beta=1.0, gamma=1.0),
    "perturbed": dict(alpha_ds=0.35, alpha_as=0.05, lambda_l=0.2, lambda_u=0.6, beta=1.5, gamma=0.7),
}
OFFICIAL_MODULES = ("trainer", "main", "utils", "options", "dataloader", "pytorchcv", "quantization_utils",
                    "conditional_batchnorm")
PATCHES = {
    "trainer.py": [(".cuda()", ""), ("iters = 200", "iters = 1")],
    # main.py's ImageNet branch of _set_model has an unindented `if` body (IndentationError at import);
    # the `if` line becomes `pass` (the CIFAR path used here never reaches it)
    # current torch: .view on a non-contiguous slice fails in the accuracy logging after the steps
    "utils/compute.py": [("correct[:k].view(-1)", "correct[:k].reshape(-1)")],
    "main.py": [('if self.settings.network in ["resnet18", "mobilenetv2_w1", "resnet50"]:', "pass")],
}


def stub_missing_packages() -> None:
    """termcolor and pyhocon are imported by the official code but not used on this path: empty stand-ins."""
    if "termcolor" not in sys.modules:
        sys.modules["termcolor"] = types.SimpleNamespace(colored=lambda text, *a, **k: text)
    if "pyhocon" not in sys.modules:
        sys.modules["pyhocon"] = types.SimpleNamespace(ConfigFactory=None)


def import_official(folder: Path):
    """Import trainer.py and main.py of a patched official CIFAR folder (clearing an earlier one's modules)."""
    with official_imports(folder, OFFICIAL_MODULES):
        import main as official_main
        import trainer as official_trainer
    official_trainer.utils.data_parallel = lambda model, ngpus, gpu0=0: model  # CPU: no .cuda()/DataParallel
    return official_trainer, official_main


def settings_for(extra: dict) -> SimpleNamespace:
    """The cifar10 hocon values the loop reads, with warmup_epochs 0 so the first iteration has a Q step."""
    return SimpleNamespace(nClasses=10, latent_dim=100, img_size=32, channels=3, qw=BITS, qa=BITS,
                           batchSize=BATCH, nGPU=1, GPU=0, momentum=0.9, weightDecay=1e-4, lr_G=1e-3,
                           b1=0.5, b2=0.999, warmup_epochs=0, nEpochs=400, **extra)


def term_fixture(T, trainer_self) -> dict[str, torch.Tensor]:
    """compute_entropy, marginal_loss and loss_fn_kd on seeded logits (3 scales) for the AdaSG CIFAR trainer, in
    float32 (keys as named) and on the same logits widened to float64 (the same keys with ``64`` after the
    name's first part: ``entropy64_T1_0``, ``bound64_0``, ``q_loss64_0``, ...)."""
    gen = torch.Generator().manual_seed(LOGIT_SEED)
    out: dict[str, torch.Tensor] = {}
    for i, scale in enumerate((0.5, 3.0, 10.0)):
        t = portable_randn((BATCH, 10), gen, torch.float32, scale)
        s = portable_randn((BATCH, 10), gen, torch.float32, scale)
        y = torch.randint(0, 10, (BATCH,), generator=gen)
        out[f"t{i}"], out[f"s{i}"], out[f"y{i}"] = t, s, y
        for tag, dtype in (("", torch.float32), ("64", torch.float64)):
            # marginal_loss's zero vector is torch.zeros(16), float32 at the default dtype: torch.max promotes
            # it, so the float64 terms are computed in float64 throughout
            tt, ss = t.to(dtype), s.to(dtype)
            out[f"entropy{tag}_T1_{i}"] = T.compute_entropy(tt - ss, 1)
            out[f"entropy{tag}_T20_{i}"] = T.compute_entropy(tt - ss, 20)
            if hasattr(T, "marginal_loss") and T.marginal_loss.__code__.co_argcount == 3:
                out[f"bound{tag}_{i}"] = T.marginal_loss(tt, ss, 10)
            else:
                for name, cfg in ADADFQ_SETTINGS.items():
                    out[f"bound{tag}_{name}_{i}"] = T.marginal_loss(tt, ss, 10, cfg["lambda_u"], cfg["lambda_l"])
            s_grad = ss.clone().requires_grad_(True)
            q = T.Trainer.loss_fn_kd(trainer_self, s_grad, y, tt)
            q.backward()
            out[f"q_loss{tag}_{i}"], out[f"q_grad{tag}_{i}"] = q.detach(), s_grad.grad
            assert all(v.dtype == dtype for k, v in out.items() if k.startswith(("entropy", "bound", "q_"))
                       and k.endswith(f"_{i}") and (tag in k) == bool(tag))
    return out


def whole_iteration(T, M, settings: SimpleNamespace, full_x: bool = True) -> dict[str, torch.Tensor]:
    """Trainer.train(epoch=0) with iters patched to 1: one G step then one Q step, from seeded weights, in float64."""
    with default_dtype(torch.float64):
        return _whole_iteration(T, M, settings, full_x)


def _whole_iteration(T, M, settings: SimpleNamespace, full_x: bool) -> dict[str, torch.Tensor]:
    from dfqbench.blocks.generators import CifarGenerator  # only for the state-dict layout of the seeded weights

    teacher = M.ptcv_get_model("resnet20_cifar10", pretrained=False)
    init_net = seeded_state(teacher, NET_SEED)
    teacher.load_state_dict(init_net)
    bn_stats = calibrate_bn_stats(teacher, NET_SEED + 1000)
    init_net.update(bn_stats)
    teacher.load_state_dict(init_net)
    teacher.eval()
    designer = SimpleNamespace(settings=settings)
    designer.quantize_model = lambda m: M.ExperimentDesign.quantize_model(designer, m)
    student = designer.quantize_model(copy.deepcopy(teacher))
    generator = M.Generator(options=settings)
    gen_state = seeded_state(CifarGenerator(10, 32, 100), GEN_SEED)
    generator.load_state_dict(to_official_generator(gen_state))

    out: dict[str, torch.Tensor] = net_bn_entries(bn_stats)
    out.update(digests(dict(teacher.state_dict()), "init/net/"))
    out.update(digests(gen_state, "init/gen/"))

    def lr_master(lr):
        policy = T.utils.LRPolicy(lr, settings.nEpochs, "multi_step")
        policy.set_params({"step": [100, 200, 300], "decay_rate": 0.1})
        return policy

    trainer = T.Trainer(student, teacher, generator, lr_master(1e-4), lr_master(1e-3), None, None, settings, None)

    seen: dict[str, list] = {"gen_in": [], "gen_out": [], "teacher": [], "student": [], "log_soft": [], "mse": [],
                             "bound": []}
    generator.register_forward_pre_hook(lambda m, a: seen["gen_in"].append([v.detach().clone() for v in a]))
    generator.register_forward_hook(lambda m, a, o: seen["gen_out"].append(o.detach().clone()))
    teacher.register_forward_hook(lambda m, a, o: seen["teacher"].append(o[0].detach().clone()))
    student.register_forward_hook(lambda m, a, o: seen["student"].append(o[0].detach().clone()))
    trainer.log_soft.register_forward_hook(lambda m, a, o: seen["log_soft"].append(o.detach().clone()))
    trainer.MSE_loss.register_forward_hook(lambda m, a, o: seen["mse"].append(o.detach().clone()))
    marginal = T.marginal_loss

    def recording_marginal(*args):
        value = marginal(*args)
        seen["bound"].append(value.detach().clone())
        return value

    T.marginal_loss = recording_marginal
    torch.manual_seed(ITER_SEED)
    trainer.train(epoch=0)
    T.marginal_loss = marginal

    z, labels = seen["gen_in"][0]
    onehot = torch.zeros(BATCH, 10).scatter_(1, labels.unsqueeze(1), 1.0)
    out["x" if full_x else "x_digest"] = seen["gen_out"][0] if full_x else digest(seen["gen_out"][0])
    out.update(z=z, labels=labels, teacher_logits=seen["teacher"][0],
               student_logits_g=seen["student"][0], student_logits_q=seen["student"][1])
    out["loss_ds"] = (-(onehot * seen["log_soft"][0]).sum(dim=1)).mean()
    out["loss_as"] = (-(onehot * seen["log_soft"][1]).sum(dim=1)).mean()
    out["loss_bound"] = seen["bound"][0]
    mse = seen["mse"]
    out["loss_bns"] = torch.stack([mse[i] + mse[i + 1] for i in range(0, len(mse), 2)]).sum() / (len(mse) // 2)
    out["loss_g"] = trainer.scalar_info["G loss every epoch"].detach().reshape(())
    out["loss_balance"] = trainer.scalar_info["One-hot loss every epoch"].detach().reshape(())
    out["loss_q"] = trainer.scalar_info["S loss every epoch"].detach().reshape(())
    out.update(digests(dict(generator.state_dict()), "after/gen/"))
    after_student = {pytorchcv_name(teacher, k): v for k, v in student.state_dict().items()}
    out.update(digests({k: v for k, v in after_student.items() if not k.endswith(".beta")},
                       "after/student/"))
    gen_init = to_official_generator(gen_state)
    out.update(digests({k: v - gen_init[k] for k, v in generator.state_dict().items() if v.is_floating_point()},
                       "delta/gen/"))
    out.update(digests({k: v - init_net[k] for k, v in after_student.items()
                        if k in init_net and v.is_floating_point()}, "delta/student/"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adasg", type=Path, required=True, help="export of hfutqian/AdaSG")
    parser.add_argument("--adadfq", type=Path, required=True, help="export of hfutqian/AdaDFQ")
    parser.add_argument("--work", type=Path, default=Path("/tmp/golden_b_adasg"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    stub_missing_packages()

    folder = args.work / "adasg"
    copy_patched(args.adasg / "AdaSG_code" / "CIFAR", folder, PATCHES)
    T, M = import_official(folder)
    settings = settings_for({})
    terms = term_fixture(T, SimpleNamespace(settings=settings))
    # the activation quantizer (quantization_utils/quant_modules.py QuantAct, shared with AdaDFQ) on exact ties
    terms.update(tie_fixture(M.QuantAct, lambda cls, bits: cls(activation_bit=bits, running_stat=False)))
    save_fixture("adasg", "terms", terms)
    save_fixture("adasg", "iteration", whole_iteration(T, M, settings))

    folder = args.work / "adadfq"
    copy_patched(args.adadfq / "AdaDFQ" / "CIFAR", folder, PATCHES)
    T, M = import_official(folder)
    save_fixture("adadfq", "terms", term_fixture(T, SimpleNamespace(settings=settings_for({}))))
    for name, extra in ADADFQ_SETTINGS.items():
        save_fixture("adadfq", f"iteration_{name}", whole_iteration(T, M, settings_for(extra), full_x=False))


if __name__ == "__main__":
    main()
