"""Make tests/golden/zaq/*.pt from the official ZAQ code (FLHonker/ZAQ-code).

Usage::

    python tests/golden/make/make_zaq.py --zaq <ZAQ-code clone at the README's commit> [--work /tmp/golden_b_zaq]

The official tree is copied to ``--work`` unchanged and imported from there. Its ``utils`` package imports visdom
(a plotting client), so a no-op ``visdom.Visdom`` stands in for it, and empty ``pydot``/``graphviz`` modules
for the imports of ``quantization/torchTransformer.py`` (a graph drawer the code path here never calls);
nothing else is replaced. Then:
- terms.pt: ``network.gan.Generator`` forward (DAFL; in float64), ``utils.loss.SCRM`` (spatial_wise,
  channel_wise, cal_loss, forward) and its gradient, on seeded inputs;
- iteration.pt: ``main.train`` with ``epoch_itrs = 1`` (5 Q steps, then 1 G step, exactly its loop) on
  a pytorchcv resnet20_cifar10 with seeded weights, quantized by the official ``quantization.quantize_model``
  at W6A8 (main.py's defaults), in float64 (``torch.set_default_dtype(torch.float64)`` before anything is
  built; nothing on this path creates a float32 tensor explicitly). ZAQ's own networks answer
  ``model(x, True)`` with (stage features, logits); a small wrapper (below) gives the pytorchcv network that
  interface, so the same weights go into both.
- the official activation quantizer ``QuantAct`` on exact rounding ties (``ties/`` in terms.pt).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_b_common import (  # noqa: E402
    calibrate_bn_stats, default_dtype, digests, net_bn_entries, official_imports, portable_randn, pytorchcv_name,
    save_fixture, seeded_state, tie_fixture, to_official_generator,
)

NET_SEED, GEN_SEED, ITER_SEED, INPUT_SEED = 30, 31, 32, 33
BATCH, NZ, WBITS, ABITS = 4, 256, 6, 8
OFFICIAL_MODULES = ("main", "network", "utils", "dataloader", "quantization")


class StageOutputs(nn.Module):
    """ZAQ's model interface for a pytorchcv CIFAR ResNet: ``forward(x, out_feat)`` returns the logits, or
    ([stage1, stage2, stage3] outputs, logits). Children of ``features`` are reached by position because the
    official quantize_model rebuilds every nn.Sequential with numbered children."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, out_feat: bool = False):
        f = self.net.features
        x = f[0](x)
        g1 = f[1](x)
        g2 = f[2](g1)
        g3 = f[3](g2)
        x = f[4](g3)
        logits = self.net.output(x.view(x.size(0), -1))
        return ([g1, g2, g3], logits) if out_feat else logits


class _NoVisdom:
    """Stands in for visdom.Visdom (a plotting server client the training loop logs to): every call does nothing."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def import_official(folder: Path):
    with official_imports(folder, OFFICIAL_MODULES):
        sys.modules["visdom"] = types.SimpleNamespace(Visdom=_NoVisdom)  # utils.visualizer imports it
        for name in ("pydot", "graphviz"):  # imported by quantization/torchTransformer.py, a graph drawer never called
            sys.modules.setdefault(name, types.SimpleNamespace(Digraph=None))
        import main as official_main
        import network
        from quantization import quantize_model
    return official_main, network, quantize_model


def term_fixture(main, network) -> dict[str, torch.Tensor]:
    from dfqbench.methods.zaq import DAFLGenerator  # only for the state-dict layout of the seeded weights

    gen = torch.Generator().manual_seed(INPUT_SEED)
    out: dict[str, torch.Tensor] = {}
    with default_dtype(torch.float64):  # the generator forward (train-mode BN: batch statistics) in float64
        generator = network.gan.Generator(nz=NZ, nc=3, img_size=32)
        generator.load_state_dict(to_official_generator(seeded_state(DAFLGenerator(NZ, 32), GEN_SEED)))
        generator.train()
        z = portable_randn((BATCH, NZ, 1, 1), gen, torch.float64)
        out["gen_z"] = z
        out["gen_x"] = generator(z).detach()
        out.update(digests({k: v for k, v in generator.state_dict().items()}, "gen_after_forward/"))
    scrm = main.SCRM()  # SCRM's terms in float32 (small reductions; tolerances from the measured spread)
    shapes = [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]  # ResNet-20's stage widths, smaller maps
    fs = [torch.relu(portable_randn(s, gen)) for s in shapes]
    ft = [torch.relu(portable_randn(s, gen)) for s in shapes]
    fs[0][:, :, 0, 0] = 0.0  # an all-zero channel vector (F.normalize's 1e-12 floor)
    for i, (a, b) in enumerate(zip(fs, ft)):
        out[f"fs{i}"], out[f"ft{i}"] = a, b
        out[f"spatial{i}"] = scrm.spatial_wise(torch.nn.functional.normalize(a, dim=1))
        out[f"channel{i}"] = scrm.channel_wise(torch.nn.functional.normalize(a, dim=1))
        out[f"cal_loss{i}"] = scrm.cal_loss(a, b)
    # (fs0 excluded from the gradient check: its zero vector has the 1e12 Jacobian)
    fs_grad = [t.clone().requires_grad_(True) for t in fs[1:]]
    total = scrm(fs_grad, ft[1:])
    total.backward()
    out["scrm_12"] = total.detach()
    out["scrm_12_grad1"], out["scrm_12_grad2"] = fs_grad[0].grad, fs_grad[1].grad
    return out


def whole_iteration(main, quantize_model) -> dict[str, torch.Tensor]:
    """``main.train`` for one iteration (5 Q steps, 1 G step) in float64."""
    with default_dtype(torch.float64):
        return _whole_iteration(main, quantize_model)


def _whole_iteration(main, quantize_model) -> dict[str, torch.Tensor]:
    from pytorchcv.model_provider import get_model

    from dfqbench.methods.zaq import DAFLGenerator

    net = get_model("resnet20_cifar10", pretrained=False)
    init_net = seeded_state(net, NET_SEED)
    net.load_state_dict(init_net)
    bn_stats = calibrate_bn_stats(net, NET_SEED + 1000)
    init_net.update(bn_stats)
    net.load_state_dict(init_net)
    p_model = StageOutputs(net)
    args = SimpleNamespace(weight_bit=WBITS, activation_bit=ABITS, epoch_itrs=1, batch_size=BATCH, nz=NZ,
                           device=torch.device("cpu"), alpha=1.0, beta=0.1, log_interval=10)
    q_model = quantize_model(copy.deepcopy(p_model), args)
    p_model.eval()
    generator = main.network.gan.Generator(nz=NZ, nc=3, img_size=32)
    gen_state = seeded_state(DAFLGenerator(NZ, 32), GEN_SEED)
    gen_init = to_official_generator(gen_state)
    generator.load_state_dict(gen_init)

    out: dict[str, torch.Tensor] = net_bn_entries(bn_stats)
    out.update(digests(init_net, "init/net/"))
    out.update(digests(gen_state, "init/gen/"))

    # main.py main(): the optimizers (lr_Q 0.1, wd 5e-4, momentum 0.9; Adam lr_G 1e-3)
    optimizer_q = torch.optim.SGD(q_model.parameters(), lr=0.1, weight_decay=5e-4, momentum=0.9)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=1e-3)

    seen: dict[str, list] = {"z": [], "p": [], "q": [], "scrm": []}
    generator.register_forward_pre_hook(lambda m, a: seen["z"].append(a[0].detach().clone()))
    p_model.register_forward_hook(lambda m, a, o: seen["p"].append(o))
    q_model.register_forward_hook(lambda m, a, o: seen["q"].append(o))
    official_scrm = main.SCRM

    class RecordingSCRM(official_scrm):
        def forward(self, g_s, g_t):
            value = super().forward(g_s, g_t)
            seen["scrm"].append(value.detach().clone())
            return value

    main.SCRM = RecordingSCRM
    torch.manual_seed(ITER_SEED)
    main.train(args, p_model, q_model, generator, [optimizer_q, optimizer_g], epoch=1)
    main.SCRM = official_scrm

    out["z"] = torch.stack([z.flatten(1) for z in seen["z"]])  # (6, B, nz): 5 Q steps, then the G step
    for k in range(6):
        (g_p, p_logit), (_, q_logit) = seen["p"][k], seen["q"][k]
        kind = f"q{k}" if k < 5 else "g"
        out[f"{kind}/l1"] = torch.nn.functional.l1_loss(q_logit, p_logit).detach()
        out[f"{kind}/scrm"] = seen["scrm"][k]
        out[f"{kind}/student_logits"] = q_logit.detach()
        out[f"{kind}/teacher_logits"] = p_logit.detach()
        if k == 5:
            out["g/act"] = g_p[-1].abs().mean().detach()

    def rename(key: str) -> str:
        name = pytorchcv_name(p_model, key)
        return name[len("net."):] if name.startswith("net.") else name

    after_student = {rename(k): v for k, v in q_model.state_dict().items()}
    out.update(digests(after_student, "after/student/"))
    out.update(digests({k: v - init_net[k] for k, v in after_student.items() if k in init_net
                        and v.is_floating_point()}, "delta/student/"))
    gen_after = dict(generator.state_dict())
    out.update(digests(gen_after, "after/gen/"))
    out.update(digests({k: v - gen_init[k] for k, v in gen_after.items() if v.is_floating_point()}, "delta/gen/"))
    return out


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zaq", type=Path, required=True, help="export of FLHonker/ZAQ-code")
    parser.add_argument("--work", type=Path, default=Path("/tmp/golden_b_zaq"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = args.work / "ZAQ-code"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(args.zaq, folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    main, network, quantize_model = import_official(folder)
    terms = term_fixture(main, network)
    # the activation quantizer (quantization/quant_utils/quant_modules.py QuantAct) on exact ties
    quant_modules = sys.modules["quantization.quant_utils.quant_modules"]
    terms.update(tie_fixture(quant_modules.QuantAct, lambda cls, bits: cls(activation_bit=bits, running_stat=False)))
    save_fixture("zaq", "terms", terms)
    save_fixture("zaq", "iteration", whole_iteration(main, quantize_model))


if __name__ == "__main__":
    main_cli()
