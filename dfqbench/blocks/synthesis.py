"""The "direct" family's image synthesis: pixels optimised under a method's synthesis loss, batch by batch, into a
stored bank (spec newer-methods.md §1, §8.1).

The loop is the one IntraQ and HAST share (IQ = zysxmu/IntraQ @ 5228f76, HA = lihuantong/HAST @ 83dfc16), re-implemented:

- per batch: x ~ N(0, 1) of shape (B, 3, S, S), then labels ~ U{0..C−1} (IQ:data_generate/distill_data.py:L253,
  L261-269; HA:data_generate/distill_data.py:L116, L124-132); Adam(lr 0.5) on x and ReduceLROnPlateau
  (patience 50, min_lr 1e-4, factor 0.1, on the total loss) (IQ:L255-259, HA:L118-122); 1,000 steps (IQ:L327,
  HA:L135), each: loss on the (maybe augmented) batch, gradient, Adam step, scheduler step on the loss value
  (IQ:L388-392, HA:L182-186);
- the augmentation coin: one coin per step, heads with probability p, and then every image is replaced by
  RHF(RRC(x_i)) with RandomResizedCrop(scale (s, 1), ratio (3/4, 4/3)) and a horizontal flip with probability
  0.5, both differentiable (IQ:L244-251, L329-341: p = 0.5, s = 0.5; HA:L110-114, L136-151: CIFAR no coin,
  ImageNet p = 0.5, s = 0.4 (L74));
- 5 batches per group × 4 groups = 20 batches of 256 = 5,120 images (IQ:L237-241, HA:L107; spec §8.1).

Deviations (none changes a formula): every random draw comes from an explicit ``torch.Generator`` seeded per
(seed, batch) (:func:`batch_generator`), instead of torch's global generator plus Python's ``random`` for the
coin, so a bank is reproducible and a killed synthesis resumes with the pixels of an uninterrupted one; the crop
boxes are drawn by :func:`draw_crops` (torchvision's RandomResizedCrop rule, vectorised on that generator);
gradients are taken with respect to the pixels only (the official code also accumulates unused teacher
gradients). A stateful objective (IntraQ's class centroids, IQ:L402-405) learns from each finished batch
through ``end_batch`` with the images **as stored** (fp16-rounded by default), so resumed and uninterrupted
syntheses see the same history.

ZeroQ's distillation (:mod:`dfqbench.blocks.distill`) runs the same optimisation (:func:`optimise_pixels`) with
its own initialisation, loss and schedule.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch
from torch import Tensor, nn

from dfqbench.blocks.hooks import BNStatisticsLoss
from dfqbench.errors import DfqbenchError
from dfqbench.registry import unknown_choice
from dfqbench.specs.validate import check_int, check_real
from dfqbench.store.bank import STORAGES, BankKey, BankReader, build_bank
from dfqbench.store.bank.key import MAX_BANK_BATCH, MAX_BANK_BATCHES, MAX_BANK_STEPS
from dfqbench.store.layout import ResultsStore

if TYPE_CHECKING:
    from dfqbench.specs import RunSpec

LOOP_VERSION = "1"  # part of every bank key: bump when this loop's pixels change on purpose
CROP_RATIO = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop's default ratio, as the official code uses it
CROP_TRIES = 10  # torchvision's RandomResizedCrop.get_params tries before its central-crop fallback


@dataclass(frozen=True)
class SynthesisSettings:
    """The bank's size and optimiser (IntraQ/HAST defaults, file:line in the module docstring)."""

    num_batches: int = 20  # 4 groups × 5 batches
    batch_size: int = 256
    steps: int = 1000
    lr: float = 0.5
    plateau_patience: int = 50
    plateau_factor: float = 0.1
    min_lr: float = 1e-4
    aug_prob: float = 0.5  # the per-step coin; 0 = no augmentation (HAST on CIFAR)
    crop_scale_min: float = 0.5  # RandomResizedCrop scale (s, 1): IntraQ 0.5, HAST ImageNet 0.4
    storage: str = "fp16"  # how the bank stores pixels (docs/banks.md: measured loss change)

    def __post_init__(self) -> None:
        check_int("synthesis.num_batches", self.num_batches, 1, MAX_BANK_BATCHES)
        check_int("synthesis.batch_size", self.batch_size, 1, MAX_BANK_BATCH)
        check_int("synthesis.steps", self.steps, 0, MAX_BANK_STEPS)
        check_int("synthesis.plateau_patience", self.plateau_patience, 0, 10_000_000)
        check_real("synthesis.lr", self.lr, 0.0, low_open=True)
        check_real("synthesis.plateau_factor", self.plateau_factor, 0.0, 1.0, low_open=True)
        check_real("synthesis.min_lr", self.min_lr, 0.0)
        check_real("synthesis.aug_prob", self.aug_prob, 0.0, 1.0, high_open=False)
        check_real("synthesis.crop_scale_min", self.crop_scale_min, 0.0, 1.0, low_open=True, high_open=False)
        if self.storage not in STORAGES:
            raise DfqbenchError(unknown_choice("synthesis.storage", self.storage, list(STORAGES)))

    def key_fields(self) -> dict[str, Any]:
        """What of these settings a bank key hashes besides its counts (with this loop's version)."""
        return {"loop": LOOP_VERSION, "lr": self.lr, "plateau_patience": self.plateau_patience,
                "plateau_factor": self.plateau_factor, "min_lr": self.min_lr, "aug_prob": self.aug_prob,
                "crop_scale_min": self.crop_scale_min if self.aug_prob > 0 else None}


class Objective(Protocol):
    """A method's synthesis loss: ``objective(teacher, x, labels, step) -> loss`` (a scalar to minimise).

    Optional hooks, called when present: ``begin_batch(index, labels, generator)`` before a batch is optimised
    (e.g. IntraQ's soft targets, drawn once per batch from ``generator``) and ``end_batch(index, images, labels)``
    after each finished batch, in order, with the images as the bank stores them (IntraQ's centroids)."""

    def __call__(self, teacher: nn.Module, x: Tensor, labels: Tensor, step: int) -> Tensor: ...


# -- the optimisation shared with ZeroQ ---------------------------------------------------------------------------
def optimise_pixels(x0: Tensor, loss_at: Callable[[Tensor, int], Tensor], steps: int, lr: float, patience: int,
                    factor: float, min_lr: float) -> tuple[Tensor, list[float]]:
    """Adam(lr) on a copy of ``x0`` for ``steps`` steps, ReduceLROnPlateau(mode min) stepped on each loss value;
    returns the pixels and the loss before each step (IQ:distill_data.py:L255-259, L388-392; ZeroQ
    distill_data.py L96-108). Gradients reach the pixels only (``torch.autograd.grad``)."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=factor, patience=patience,
                                                       min_lr=min_lr)
    trace = []
    for step in range(steps):
        loss = loss_at(x, step)
        (x.grad,) = torch.autograd.grad(loss, x)
        opt.step()
        value = loss.item()
        sched.step(value)
        trace.append(value)
    return x.detach(), trace


# -- randomness and augmentation ----------------------------------------------------------------------------------
def batch_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of batch ``index`` of a bank synthesised with ``seed`` (63 bits of a sha256 of both)."""
    digest = hashlib.sha256(f"dfqbench-bank:{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def draw_crops(n: int, size: int, scale_min: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per-image RandomResizedCrop boxes (top, left, height, width) on a ``size``² image and flip flags.

    torchvision's rule (``RandomResizedCrop.get_params``): up to 10 tries of area fraction U(scale_min, 1) and
    log-aspect U(log 3/4, log 4/3), the first whose rounded box fits is placed uniformly; else the whole (square)
    image. Drawn for all images at once from ``generator``; flips with probability 0.5 (RandomHorizontalFlip).
    """
    area = torch.empty(n, CROP_TRIES).uniform_(scale_min, 1.0, generator=generator) * size * size
    log_ratio = torch.empty(n, CROP_TRIES).uniform_(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]),
                                                     generator=generator)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().round().long()
    h = (area / ratio).sqrt().round().long()
    fits = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    h = torch.where(first >= 0, h[rows, first.clamp_min(0)], torch.full((n,), size))
    w = torch.where(first >= 0, w[rows, first.clamp_min(0)], torch.full((n,), size))
    offsets = torch.rand(n, 2, generator=generator)
    top = (offsets[:, 0] * (size - h + 1)).floor().long()
    left = (offsets[:, 1] * (size - w + 1)).floor().long()
    flips = torch.rand(n, generator=generator) < 0.5
    return torch.stack([top, left, h, w], 1), flips


def crop_and_flip(x: Tensor, boxes: Tensor, flips: Tensor) -> Tensor:
    """RHF(RRC(x_i)) per image, differentiable: torchvision's tensor ``resized_crop`` (bilinear, no antialias, as
    the torchvision of the official code; a crop only upsamples) back to the input size, then the flip."""
    from torchvision.transforms.functional import resized_crop  # lazy: importing blocks stays light

    size = list(x.shape[-2:])
    out = []
    for image, (top, left, h, w), flip in zip(x, boxes.tolist(), flips.tolist()):
        crop = resized_crop(image, top, left, h, w, size, antialias=False)
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


# -- one batch ----------------------------------------------------------------------------------------------------
def initial_batch(seed: int, index: int, batch_size: int, size: int, num_classes: int
                  ) -> tuple[Tensor, Tensor, torch.Generator]:
    """Batch ``index``'s starting pixels N(0, 1), its sampled labels and the generator that drew them (CPU)."""
    generator = batch_generator(seed, index)
    x0 = torch.randn(batch_size, 3, size, size, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return x0, labels, generator


def synthesise_batch(teacher: nn.Module, objective: Objective, x0: Tensor, labels: Tensor,
                     settings: SynthesisSettings, generator: torch.Generator) -> tuple[Tensor, list[float]]:
    """Optimise one batch from ``x0`` under ``objective``, with the per-step augmentation coin."""
    size = x0.shape[-1]

    def loss_at(x: Tensor, step: int) -> Tensor:
        view = x
        if settings.aug_prob > 0 and torch.rand((), generator=generator).item() < settings.aug_prob:
            boxes, flips = draw_crops(x.shape[0], size, settings.crop_scale_min, generator)
            view = crop_and_flip(x, boxes, flips)
        return objective(teacher, view, labels, step)

    return optimise_pixels(x0, loss_at, settings.steps, settings.lr, settings.plateau_patience,
                           settings.plateau_factor, settings.min_lr)


# -- a whole bank -------------------------------------------------------------------------------------------------
def bank_key(spec: "RunSpec", settings: SynthesisSettings, image_size: int, num_classes: int,
             loss: dict[str, Any]) -> BankKey:
    """The key of the bank a run of ``spec`` synthesises with ``settings`` and the method's loss settings
    ``loss``: its method, version, teacher and seed, never its bits or fine-tuning schedule."""
    return BankKey(method=spec.method, method_version=spec.method_version, model=spec.model, dataset=spec.dataset,
                   seed=spec.seed, teacher=dict(spec.teacher), num_batches=settings.num_batches,
                   batch_size=settings.batch_size, steps=settings.steps, image_size=image_size,
                   num_classes=num_classes, synthesis={**settings.key_fields(), "loss": loss},
                   storage=settings.storage)


def synthesise_bank(teacher: nn.Module, objective: Objective, key: BankKey, settings: SynthesisSettings,
                    results: Path | str, device: torch.device, *, job_id: str | None = None, wait: bool = True,
                    poll_s: float = 5.0, say: Callable[[str], None] = lambda text: None) -> BankReader:
    """The bank of ``key`` in ``<results>/banks/``: read when finished, else synthesised (resuming after the last
    finished batch) under its lease; a task that finds it leased waits for it (:func:`dfqbench.store.bank.build_bank`).
    The teacher must be in eval mode (BN on running statistics, as the official code)."""
    if teacher.training:
        raise RuntimeError("synthesis expects the teacher in eval mode")
    counts = (key.num_batches, key.batch_size, key.steps, key.storage)
    if counts != (settings.num_batches, settings.batch_size, settings.steps, settings.storage):
        raise DfqbenchError(f"bank key {key.name} was made for (batches, batch size, steps, storage) {counts}, "
                            f"not these synthesis settings")
    dtype = next(teacher.parameters()).dtype
    begin, end = getattr(objective, "begin_batch", None), getattr(objective, "end_batch", None)

    def produce(index: int) -> tuple[Tensor, Tensor, Tensor]:
        x0, labels, generator = initial_batch(key.seed, index, key.batch_size, key.image_size, key.num_classes)
        x0, labels = x0.to(device, dtype), labels.to(device)
        if begin is not None:
            begin(index, labels, generator)
        say(f"synthesising bank {key.name}: batch {index + 1}/{key.num_batches}")
        images, trace = synthesise_batch(teacher, objective, x0, labels, settings, generator)
        return images, labels, torch.tensor(trace, dtype=torch.float32)

    def replay(index: int, images: Tensor, labels: Tensor) -> None:
        if end is not None:
            end(index, images.to(device, dtype), labels.to(device))

    folder = ResultsStore(Path(results)).bank(key.name)
    return build_bank(folder, key, produce, replay, job_id=job_id, wait=wait, poll_s=poll_s, say=say)


class BNSObjective:
    """The BNS term alone (GDFQ lineage, :class:`dfqbench.blocks.hooks.BNStatisticsLoss`; IQ:distill_data.py
    L371-378, HA:L168-175 — mean and variance terms, each averaged over layers, summed): every direct method's
    synthesis loss starts with it. Call :meth:`remove` when done."""

    def __init__(self, teacher: nn.Module) -> None:
        self.bns = BNStatisticsLoss(teacher)

    def __call__(self, teacher: nn.Module, x: Tensor, labels: Tensor, step: int) -> Tensor:
        self.bns.start()
        teacher(x)
        return self.bns.stop()

    def remove(self) -> None:
        self.bns.remove()
