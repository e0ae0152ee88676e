"""Shared by the makers of the "direct" family's fixtures (make_intraq.py, make_hast.py, make_synq.py).

Our code, no official code: stand-ins for imports the official scripts need but do not use on the recorded path,
a DDP stand-in (``.module``), and *observers*: wrappers that record what the official functions compute without
changing it (an Adam that records its parameters and gradients, a ``print`` that keeps its arguments, recorders of
torchvision's crop boxes and flips, a loader that serves fixed batches). Nothing here edits official code; the
literal source patches each maker applies are listed in the folder READMEs.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_b_common import (  # noqa: E402,F401  (re-exported for the makers)
    calibrate_bn_stats, copy_patched, default_dtype, digest, digests, net_bn_entries, official_imports,
    portable_randn, pytorchcv_name, save_fixture, seeded_state,
)

NET_SEED = 40  # teacher weights (golden_b_common.seeded_state), BN statistics calibrated with seed NET_SEED + 1000
RANGE_SEED = 41  # the batch that sets the student's activation ranges before they are frozen
BITS = 4


def stub_modules(names: dict[str, dict]) -> None:
    """Empty stand-ins for modules the official code imports but does not use on the recorded path."""
    for name, attrs in names.items():
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        for key, value in attrs.items():
            setattr(module, key, value)
        sys.modules[name] = module


STANDARD_STUBS = {
    "termcolor": {"colored": lambda text, *a, **k: text},
    "pyhocon": {"ConfigFactory": None},
    "progress": {}, "progress.bar": {"Bar": object},
    "torchlearning": {}, "torchlearning.mio": {"MIO": object},
    "cv2": {}, "pytz": {},
}


class DDPStandIn(nn.Module):
    """What the HAST/SynQ trainers read from their DDP wrapper: ``.module`` and a forward (CPU, one process)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def teacher_resnet20(get_model) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """``get_model("resnet20_cifar10")`` (the official repository's pytorchcv) with seeded weights and calibrated
    BN statistics, eval mode, in the default dtype; returns it and the BN statistics (stored in every fixture)."""
    teacher = get_model("resnet20_cifar10", pretrained=False)
    state = seeded_state(teacher, NET_SEED)
    teacher.load_state_dict(state)
    bn = calibrate_bn_stats(teacher, NET_SEED + 1000)
    state.update(bn)
    teacher.load_state_dict(state)
    teacher.eval()
    return teacher, bn


class RecordingAdam(torch.optim.Adam):
    """torch.optim.Adam that records, per instance, its first parameter at construction and each step's gradient."""

    log: list[dict] = []

    def __init__(self, params, *args, **kwargs):
        params = list(params)
        super().__init__(params, *args, **kwargs)
        self.entry = {"x0": params[0].detach().clone(), "grads": []}
        RecordingAdam.log.append(self.entry)

    def step(self, closure=None):
        self.entry["grads"].append(self.param_groups[0]["params"][0].grad.detach().clone())
        out = super().step(closure)
        self.entry["x_after"] = self.param_groups[0]["params"][0].detach().clone()
        return out


class PrintRecorder:
    """A ``print`` for an official module's globals: keeps every call's arguments (loss values via ``.item()``)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, *args, **kwargs) -> None:
        self.calls.append(args)

    def rows(self, marker: str) -> list[dict[str, object]]:
        """The calls whose arguments contain ``marker``, as {name: value} of their 'name', value pairs."""
        out = []
        for args in self.calls:
            if marker in args:
                row = {}
                for i in range(len(args) - 1):
                    if isinstance(args[i], str) and not isinstance(args[i + 1], str):
                        row[args[i]] = args[i + 1]
                row["_head"] = args[:2]
                out.append(row)
        return out


class DistillRecording:
    """Observers on an official ``distill_data`` module (HAST's, and SynQ's fork of it) for one synthesis call:
    its ``print`` (loss rows), its pickle dumps (by file name), the teacher's logits, the RNG state when each
    batch's ``RandomResizedCrop`` is built (right before its ``torch.randn``) and :class:`RecordingAdam`'s log.
    Use as a context manager; the teacher's hook is removed on exit."""

    def __init__(self, DD, teacher: nn.Module) -> None:
        self.printed, self.dumped, self.logits, self.states = PrintRecorder(), {}, [], []
        DD.print = self.printed
        DD.optim = SimpleNamespace(Adam=RecordingAdam, lr_scheduler=torch.optim.lr_scheduler)
        DD.pickle = SimpleNamespace(HIGHEST_PROTOCOL=5, dump=lambda obj, fp, protocol=None: self.dumped.setdefault(
            fp.name, obj))
        real_rrc = DD.transforms.RandomResizedCrop

        def rrc(*a, **k):  # constructed right before the batch's torch.randn(shape): keep the RNG state
            self.states.append(torch.get_rng_state())
            return real_rrc(*a, **k)

        DD.transforms = SimpleNamespace(RandomResizedCrop=rrc, RandomHorizontalFlip=DD.transforms.RandomHorizontalFlip)
        self.handle = teacher.register_forward_hook(lambda m, a, o: self.logits.append(o.detach().clone()))
        RecordingAdam.log = []

    def __enter__(self) -> "DistillRecording":
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def step_entries(self, settings: list[float]) -> tuple[dict, dict[str, torch.Tensor]]:
        """(the one Adam step's log entry, the fixture entries of a one-step, one-batch synthesis: RNG state, x0,
        labels, teacher logits, pixel gradient, pixels after the step, ``settings``, and the printed losses)."""
        labels = [torch.as_tensor(v[0]) for k, v in self.dumped.items() if "labels" in k][0]
        (row,) = self.printed.rows("mean_loss")
        (entry,) = RecordingAdam.log
        out = dict(rng_state=self.states[0], x0=digest(entry["x0"]), labels=labels, teacher_logits=self.logits[0],
                   grad=digest(entry["grads"][0]), x_after=digest(entry["x_after"]),
                   settings=torch.tensor(settings, dtype=torch.float64))
        for key in ("mean_loss", "var_loss", "loss_target"):
            out[key] = torch.tensor(row[key], dtype=torch.float64)
        return entry, out


class CropRecorder:
    """Records torchvision's RandomResizedCrop boxes and RandomHorizontalFlip decisions (per image, in call order)
    by wrapping ``RandomResizedCrop.get_params`` and ``transforms.functional.hflip``; the draws are torchvision's."""

    def __init__(self) -> None:
        import torchvision.transforms as T
        import torchvision.transforms.functional as TF

        self.T, self.TF = T, TF
        self.boxes: list[tuple[int, int, int, int]] = []
        self.flipped: list[int] = []
        self._get_params = T.RandomResizedCrop.get_params
        self._hflip = TF.hflip

    def __enter__(self) -> "CropRecorder":
        get_params, hflip = self._get_params, self._hflip

        def recording_get_params(img, scale, ratio):
            box = get_params(img, scale, ratio)
            self.boxes.append(tuple(int(v) for v in box))
            return box

        def recording_hflip(img):
            self.flipped.append(len(self.boxes) - 1)
            return hflip(img)

        self.T.RandomResizedCrop.get_params = staticmethod(recording_get_params)
        self.TF.hflip = recording_hflip
        return self

    def __exit__(self, *exc) -> None:
        self.T.RandomResizedCrop.get_params = staticmethod(self._get_params)
        self.TF.hflip = self._hflip

    def take_range(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (count, 4) and flip flags (count,) of the images ``start`` … ``start + count − 1`` in call order."""
        boxes = torch.tensor(self.boxes[start:start + count], dtype=torch.long)
        flipped = set(self.flipped)
        flips = torch.tensor([start + j in flipped for j in range(count)])
        return boxes, flips


def record_inputs(module: nn.Module, into: list) -> object:
    """Forward pre-hook recording a detached copy of each call's first input."""
    return module.register_forward_pre_hook(lambda m, a: into.append(a[0].detach().clone()))


class FixedLoader:
    """The ``direct_dataload`` the trainers iterate: yields the given (images, labels) batches; ``sampler.set_epoch``."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches
        self.sampler = SimpleNamespace(set_epoch=lambda epoch: None)

    def __iter__(self):
        return iter([(x.clone(), y.clone()) for x, y in self.batches])


def freeze_ranges(student: nn.Module, quant_act_class, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Set the official student's activation ranges by one forward of ``x`` (EMA update, as in epochs 0-3), then fix
    them (``QuantAct.fix``, what ``freeze_model`` does after epoch 3); returns {name: x_min/x_max} by module name."""
    acts = {n: m for n, m in student.named_modules() if isinstance(m, quant_act_class)}
    for m in acts.values():
        m.unfix()
    with torch.no_grad():
        student(x)
    for m in acts.values():
        m.fix()
    out = {}
    for n, m in acts.items():
        out[f"{n}.x_min"] = m.x_min.detach().clone()
        out[f"{n}.x_max"] = m.x_max.detach().clone()
    return out


def fixed_digest(t: torch.Tensor, samples: int = 32) -> torch.Tensor:
    """float64 sum, abs-sum, then ``samples`` values at evenly spaced flat positions (repeated for small tensors)."""
    flat = t.detach().double().flatten()
    idx = torch.linspace(0, flat.numel() - 1, samples, dtype=torch.float64).round().long()
    return torch.cat([flat.sum().view(1), flat.abs().sum().view(1), flat[idx]])


def packed_digests(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """:func:`fixed_digest` of each tensor, packed: ``prefix + "names"`` (the names joined by newlines, as bytes)
    and ``prefix + "digests"`` (N, 2 + 32) float64, one row per name (one entry each instead of N)."""
    names = list(tensors)
    return {prefix + "names": torch.tensor(list("\n".join(names).encode()), dtype=torch.uint8),
            prefix + "digests": torch.stack([fixed_digest(tensors[n]) for n in names])}


def grad_digests(model: nn.Module, fp_model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """:func:`packed_digests` of every parameter's gradient, keyed by the FP model's names."""
    return packed_digests({pytorchcv_name(fp_model, n): p.grad for n, p in model.named_parameters()
                           if p.grad is not None}, prefix)
