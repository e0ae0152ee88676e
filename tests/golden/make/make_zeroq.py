"""Make tests/golden/zeroq/*.pt (amirgholami/ZeroQ) and tests/golden/intraq/*.pt (zysxmu/IntraQ).

Usage::

    python tests/golden/make/make_zeroq.py --zeroq <ZeroQ export> --intraq <IntraQ export> [--work /tmp/golden_b_zeroq]

ZeroQ: ``classification/`` is copied to ``--work`` and patched there (``.cuda()`` removed; ``range(500)`` →
``range(STEPS)``; ConvBlock imported from its current pytorchcv module;
the removed ``verbose=False`` argument of ReduceLROnPlateau dropped; a stand-in for the unused ``progress``
console package; the random-data loader's ``num_workers=32`` → ``0`` so the official ``UniformDataset``
draws its initial images from the seeded global generator in this process; its ``.float()`` → ``.to(
torch.get_default_dtype())``, the one float32 tensor the path creates, so that under float64 the images are
float64 like the network: identical to the official code at the default dtype). Then ``getDistilData`` runs,
in float64 (``torch.set_default_dtype(torch.float64)``, float64 network), on a pytorchcv resnet20_cifar10 with
seeded weights: its starting images, every ``own_loss`` value of every step (read by wrapping the module's
``own_loss``) and the images it returns are saved, for 1 and 3 steps.

IntraQ: ``trainer_direct.py`` is copied with ``.cuda()`` removed and its ``Trainer.loss_fn_kd`` (the KD loss of
the fine-tuning that zeroq_kd reproduces) is called with the cifar10 hocon's alpha = temperature = 20 on
seeded logits (portable draws), with and without labels, with the gradient, in float32 and (without labels) in
float64.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_b_common import (  # noqa: E402
    calibrate_bn_stats, copy_patched, default_dtype, digest, digests, net_bn_entries, official_imports,
    portable_randn, save_fixture, seeded_state,
)

NET_SEED, DATA_SEED, LOGIT_SEED = 40, 41, 42
BATCH = 8
STEPS = (1, 3)
OFFICIAL_MODULES = ("distill_data", "utils", "trainer_direct")


def purge_and_import(folder: Path, module: str):
    with official_imports(folder, OFFICIAL_MODULES):
        return __import__(module)


def zeroq_fixture(src: Path, work: Path, steps: int) -> dict[str, torch.Tensor]:
    from pytorchcv.model_provider import get_model

    folder = work / f"zeroq_{steps}"
    copy_patched(src / "classification", folder, {
        # current torch's ReduceLROnPlateau has no `verbose` argument (it was False, i.e. silent)
        "distill_data.py": [(".cuda()", ""), ("range(500)", f"range({steps})"), ("verbose=False,", "")],
        # the seeded global generator draws the start images in this process; they take the default dtype
        # (float64 here) instead of the hard-coded float32 (the same values at the default dtype float32)
        "utils/data_utils.py": [("num_workers=32", "num_workers=0"),
                                ("size=self.size).float()", "size=self.size).to(torch.get_default_dtype())")],
        # pytorchcv >= 0.0.6x moved ConvBlock (ZeroQ pins 0.0.51); imported, not used on this path
        "utils/quantize_model.py": [("from pytorchcv.models.common import ConvBlock",
                                     "from pytorchcv.models.common.conv import ConvBlock")],
    })
    # train_utils imports the `progress` package (a console progress bar for its test loop, not called here)
    progress = types.ModuleType("progress")
    progress.bar = types.SimpleNamespace(Bar=None)
    sys.modules.setdefault("progress", progress)
    sys.modules.setdefault("progress.bar", progress.bar)
    distill_data = purge_and_import(folder, "distill_data")
    with default_dtype(torch.float64):
        return _zeroq_run(distill_data, get_model, steps)


def _zeroq_run(distill_data, get_model, steps: int) -> dict[str, torch.Tensor]:
    """getDistilData on the seeded float64 teacher (under float64 default dtype)."""
    teacher = get_model("resnet20_cifar10", pretrained=False)
    state = seeded_state(teacher, NET_SEED)
    teacher.load_state_dict(state)
    bn_stats = calibrate_bn_stats(teacher, NET_SEED + 1000)
    state.update(bn_stats)
    teacher.load_state_dict(state)
    teacher.eval()

    out: dict[str, torch.Tensor] = net_bn_entries(bn_stats)
    out.update(digests(state, "init/net/"))
    seen: dict[str, list] = {"x0": [], "own": []}
    handle = teacher.register_forward_pre_hook(lambda m, a: seen["x0"].append(a[0].detach().clone()))
    official_own_loss = distill_data.own_loss

    def recording_own_loss(a, b):
        value = official_own_loss(a, b)
        seen["own"].append(value.detach().clone())
        return value

    distill_data.own_loss = recording_own_loss
    torch.manual_seed(DATA_SEED)
    refined = distill_data.getDistilData(teacher, "cifar10", BATCH, num_batch=1)
    handle.remove()
    if steps == 1:
        out["x0"] = seen["x0"][0]
    else:  # x0 is the 1-step fixture's (the same seed)
        out["x0_digest"] = digest(seen["x0"][0])
    out["refined"] = refined[0]
    calls = torch.stack(seen["own"]).view(steps, -1, 2)  # per step: (layers + input) × (mean, std)
    out["own_loss"] = calls
    return out


def intraq_fixture(src: Path, work: Path) -> dict[str, torch.Tensor]:
    folder = work / "intraq"
    copy_patched(src, folder, {"trainer_direct.py": [(".cuda()", "")]})
    sys.modules.setdefault("termcolor", types.SimpleNamespace(colored=lambda text, *a, **k: text))
    trainer_direct = purge_and_import(folder, "trainer_direct")
    owner = SimpleNamespace(settings=SimpleNamespace(alpha=20, temperature=20))  # cifar10_resnet20.hocon
    gen = torch.Generator().manual_seed(LOGIT_SEED)
    out: dict[str, torch.Tensor] = {}
    for i, scale in enumerate((0.5, 3.0, 10.0)):
        t = portable_randn((16, 10), gen, torch.float32, scale)
        s = portable_randn((16, 10), gen, torch.float32, scale)
        y = torch.randint(0, 10, (16,), generator=gen)
        out[f"t{i}"], out[f"s{i}"], out[f"y{i}"] = t, s, y
        s_grad = s.clone().requires_grad_(True)
        kd = trainer_direct.Trainer.loss_fn_kd(owner, s_grad, None, t)
        kd.backward()
        out[f"kd{i}"], out[f"kd_grad{i}"] = kd.detach(), s_grad.grad
        out[f"kd_ce{i}"] = trainer_direct.Trainer.loss_fn_kd(owner, s, y, t).detach()
        s64 = s.double().requires_grad_(True)  # the same function in float64: free of float32 rounding
        kd64 = trainer_direct.Trainer.loss_fn_kd(owner, s64, None, t.double())
        kd64.backward()
        out[f"kd64_{i}"], out[f"kd64_grad{i}"] = kd64.detach(), s64.grad
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zeroq", type=Path, required=True, help="export of amirgholami/ZeroQ")
    parser.add_argument("--intraq", type=Path, required=True, help="export of zysxmu/IntraQ")
    parser.add_argument("--work", type=Path, default=Path("/tmp/golden_b_zeroq"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for steps in STEPS:
        save_fixture("zeroq", f"distill_{steps}step", zeroq_fixture(args.zeroq, args.work, steps))
    save_fixture("intraq", "kd", intraq_fixture(args.intraq, args.work))


if __name__ == "__main__":
    main()
