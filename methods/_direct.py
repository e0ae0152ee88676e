"""The protocol the "direct" DFQ family shares (IntraQ, HAST, SynQ): an image bank, range calibration, fine-tuning.

Spec: ``/work/shared/spec/newer-methods.md`` §1 and §8.1 (IQ = zysxmu/IntraQ @ 5228f76, HA = lihuantong/HAST @ 83dfc16,
SQ = snudm-starlab/SynQ @ 8681480). All three keep the GDFQ quantizer, student BN in eval mode and SGD-Nesterov;
what they change, and what this base class does:

- **Image bank** (:meth:`DirectMethod.setup`): ``bank_batches`` × ``bank_batch_size`` images, each batch optimised from
  N(0, 1) pixels by Adam(0.5) with the plateau schedule for ``synthesis_steps`` steps under the method's synthesis
  loss, the per-step augmentation coin, the sampled labels stored with the images (IQ:data_generate/distill_data.py
  L237-262, HA:data_generate/distill_data.py:L107-135). The loop and the store are shared
  (:mod:`dfqbench.blocks.synthesis`, :mod:`dfqbench.store.bank`): the bank is keyed by teacher, synthesis settings,
  seed and method version, not by bits, so a grid's W3A3/W4A4/W5A5 cells synthesise it once, and a killed synthesis
  resumes after its last finished batch. It runs under a forked RNG, so the training stream is the same whether this
  session synthesised the bank or read it.
- **Range calibration** (``calibration``): "generator" (faithful) — in the warm-up epochs (0-3) a GDFQ generator is
  trained at batch ``calibration_batch_size`` = 16 (hard-coded there) with L_G = CE(T(x), y) + 0.1·BNS, Adam 1e-3,
  and the student only forwards its batches, which move the EMA ranges; the bank takes over afterwards and never
  touches the ranges (IQ:trainer_direct.py:L206-245, HA:L229-290, SQ:src/trainer_direct.py:L419-473). "bank": the
  ranges are calibrated on the bank's (cropped) batches instead (a fix: no second synthetic source; ``zeroq_kd``'s way).
- **Fine-tuning batches**: ``train.batch_size`` bank images per step, shuffled with the last incomplete batch
  dropped, each per image RandomResizedCrop(scale ``crop_scale_min``..1) + horizontal flip (IQ:main_direct.py
  L111-124, L369-374; HA:L114-123; SQ:src/main_direct.py:L178-187), with the stored sampled labels. Deviation: the
  shuffled order continues across epochs (the official loader restarts at each epoch; the same thing whenever an
  epoch is a whole number of passes, as the released 200 × 256 = 10 × 5,120).
- **KD**: α·T²·KL_batchmean(p_T ‖ p_S), α = T = 20, i.e. 8000 × KL (IQ:trainer_direct.py:L117-127).

Small banks (CIFAR: 5,120 images = 63 MB in float32) are held on the device; larger ones (ImageNet) are read per batch
from the memory-mapped bank files (:meth:`dfqbench.store.bank.BankReader.gather`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfqbench.blocks.direct_finetune import intraq_student_loss
from dfqbench.blocks.direct_synthesis import draw_resized_crop_boxes, resized_crop
from dfqbench.blocks.generators import build_gdfq_generator
from dfqbench.blocks.interface import G_STEP, Q_FRESH_STEP, Q_STEP, LossTerms, Method, Sample, StepContext
from dfqbench.blocks.synthesis import SynthesisSettings, bank_key, synthesise_bank
from dfqbench.errors import DfqbenchError
from dfqbench.registry import unknown_choice
from dfqbench.specs.validate import check_int, check_positive, check_real
from dfqbench.store.bank import STORAGES, BankKey, BankReader

if TYPE_CHECKING:
    from dfqbench.specs import RunSpec

CALIBRATIONS = ("generator", "bank")
IN_MEMORY_BYTES = 1 << 30  # a bank up to 1 GiB of float32 pixels is held on the device; larger ones are streamed
QUICK_BANK_BATCHES = 4  # quick protocol: 4 × 128 images, 250 Adam steps each (paper: 20 × 256, 1,000)
QUICK_BANK_BATCH_SIZE = 128
QUICK_SYNTHESIS_STEPS = 250
TINY_BANK = {"bank_batches": 2, "bank_batch_size": 16, "synthesis_steps": 20}  # the test network: seconds


# SynthesisSettings field -> DirectConfig field
SETTING_NAMES = {"num_batches": "bank_batches", "batch_size": "bank_batch_size", "steps": "synthesis_steps",
                 "lr": "synthesis_lr", "plateau_patience": "plateau_patience", "min_lr": "min_lr",
                 "aug_prob": "aug_prob", "crop_scale_min": "aug_scale_min", "storage": "bank_storage"}


@dataclass(frozen=True)
class DirectConfig:
    """Settings every direct method has: the bank's synthesis, the range calibration, the fine-tuning batches and KD.

    Defaults are IntraQ's CIFAR-10 release; each method's presets set its own (file:line in its module)."""

    # -- the bank (IQ:data_generate/distill_data.py:L237-262; spec §8.1)
    bank_batches: int = 20  # 4 groups × 5 batches
    bank_batch_size: int = 256
    synthesis_steps: int = 1000
    synthesis_lr: float = 0.5
    plateau_patience: int = 50
    min_lr: float = 1e-4
    aug_prob: float = 0.5  # the per-step augmentation coin (HAST/SynQ CIFAR: 0, no augmentation)
    aug_scale_min: float = 0.5  # its RandomResizedCrop scale (IntraQ 0.5, HAST/SynQ ImageNet 0.4)
    bank_storage: str = "fp32"  # fp32 exact; fp16/uint8 compact (ImageNet presets: fp16; docs/banks.md)
    # -- range calibration in the warm-up epochs (IQ:trainer_direct.py:L206-245)
    calibration: str = "generator"  # "generator" (faithful) | "bank"
    calibration_batch_size: int = 16  # hard-coded torch.randn(16, ...) in all three
    latent_dim: int = 100
    bns_weight: float = 0.1  # L_G = CE + 0.1·BNS
    # -- fine-tuning (IQ:main_direct.py:L111-124; trainer_direct.py:L117-127)
    crop_scale_min: float = 0.5
    temperature: float = 20.0  # T
    kd_weight: float = 20.0  # α: KD = α·T²·KL_batchmean = 8000·KL

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise DfqbenchError(unknown_choice("method.calibration", self.calibration, list(CALIBRATIONS)))
        if self.bank_storage not in STORAGES:
            raise DfqbenchError(unknown_choice("method.bank_storage", self.bank_storage, list(STORAGES)))
        check_int("method.calibration_batch_size", self.calibration_batch_size, 1, 65_536)
        check_int("method.latent_dim", self.latent_dim, 1, 1_000_000)
        check_real("method.crop_scale_min", self.crop_scale_min, 0.0, 1.0, low_open=True, high_open=False)
        check_positive("method.temperature", self.temperature)
        try:  # the shared loop checks the bank's settings; the message names them as the user wrote them
            self.synthesis_settings()
        except DfqbenchError as exc:
            message = str(exc)
            for theirs, ours in SETTING_NAMES.items():
                message = message.replace(f"synthesis.{theirs}", f"method.{ours}")
            raise DfqbenchError(message) from None

    def synthesis_settings(self) -> SynthesisSettings:
        """The shared synthesis loop's settings (:class:`dfqbench.blocks.synthesis.SynthesisSettings`)."""
        return SynthesisSettings(**{theirs: getattr(self, ours) for theirs, ours in SETTING_NAMES.items()})

    def synthesis_loss(self) -> dict[str, Any]:
        """The method's synthesis-loss settings, as the bank key hashes them (subclasses add theirs)."""
        return {}


# -- the bank as the fine-tuning source ------------------------------------------------------------------------------
class BankImages:
    """A finished bank's images and sampled labels: on the device when small, else gathered per batch from the
    memory-mapped files (labels always in memory: 8 bytes an image)."""

    def __init__(self, reader: BankReader, device: torch.device, dtype: torch.dtype) -> None:
        self.reader, self.device, self.dtype = reader, device, dtype
        self.in_memory = len(reader) * 3 * reader.key.image_size ** 2 * 4 <= IN_MEMORY_BYTES
        if self.in_memory:
            images, labels = reader.load_all()
            self.images: Tensor | None = images.to(device, dtype)
            self.labels = labels.to(device)
        else:
            self.images = None
            self.labels = reader.labels().to(device)

    def __len__(self) -> int:
        return len(self.reader)

    def gather(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Images and labels at bank positions ``indices`` (on the device)."""
        if self.images is not None:
            return self.images[indices], self.labels[indices]
        images, labels = self.reader.gather(indices.cpu())
        return images.to(self.device, self.dtype), labels.to(self.device)


class BankStream(nn.Module):
    """Which bank images the next fine-tuning batch takes: a fresh random permutation per pass (torch's global
    generator), the last incomplete batch dropped (a shuffled ``DataLoader`` with ``drop_last``, IQ:main_direct.py
    L369-374). Order and cursor are buffers, so a checkpoint resumes the same stream."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("order", torch.arange(size))
        self.register_buffer("cursor", torch.tensor(size))  # a first permutation is drawn on first use
        self._cursor = size  # host copy of ``cursor``: no device read per batch

    def next_indices(self, batch_size: int) -> Tensor:
        if batch_size > self.size:
            raise DfqbenchError(f"train.batch_size={batch_size} exceeds the bank's {self.size} images; lower it or "
                                "raise method.bank_batches/method.bank_batch_size")
        if self._cursor + batch_size > self.size:
            self.order.copy_(torch.randperm(self.size))
            self._cursor = 0
        indices = self.order[self._cursor: self._cursor + batch_size]
        self._cursor += batch_size
        self.cursor.fill_(self._cursor)
        return indices

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "cursor" in state_dict:
            self._cursor = int(state_dict[prefix + "cursor"])


class DirectSource(nn.Module):
    """The run's "generator": the GDFQ generator of the calibration epochs (``calibration``, None when the ranges
    are calibrated on the bank) and the bank's sampling state (``stream``). The bank's pixels are not part of it
    (they live in the bank store, not in every checkpoint)."""

    def __init__(self, calibration: nn.Module | None, size: int) -> None:
        super().__init__()
        self.calibration = calibration
        self.stream = BankStream(size)


# -- helpers ---------------------------------------------------------------------------------------------------------
FA_UNITS = {"ResUnit": "body", "_ResUnit": "body", "LinearBottleneck": "conv3", "DwsConvBlock": "pw_conv.bn"}


def attention_layer_names(model: nn.Module) -> list[str]:
    """HAST's feature-attention taps (HA:trainer_direct.py:L235-248, SQ:src/trainer_direct.py:L419-437): the output of
    every ``ResUnit.body`` (residual branch before the add), MobileNetV2 ``LinearBottleneck.conv3``, MobileNetV1
    ``DwsConvBlock.pw_conv.bn``, in module order (the tiny test network's ``_ResUnit`` mirrors ResUnit)."""
    names = [f"{name}.{FA_UNITS[type(m).__name__]}" for name, m in model.named_modules()
             if type(m).__name__ in FA_UNITS]
    if not names:
        raise DfqbenchError(f"feature attention needs ResUnit, LinearBottleneck or DwsConvBlock units; "
                            f"{type(model).__name__} has none")
    return names


def kd_term(cfg: DirectConfig, teacher_logits: Tensor, student_logits: Tensor, labels: Tensor) -> tuple[Tensor, LossTerms]:
    """α·T²·KL_bm + CE on the stored labels (IQ:trainer_direct.py:L117-127, L260-263): IntraQ's L_Q, and what the
    warm-up Q forwards of all three log."""
    return intraq_student_loss(teacher_logits, student_logits, labels, cfg.temperature, cfg.kd_weight)


def direct_train(dataset: str, *, epochs: int, cifar_lr: float, imagenet_lr: float = 1e-6) -> dict[str, Any]:
    """The released fine-tuning schedule: ``epochs`` × 200 iterations incl. 4 calibration epochs, effective batch 256
    (CIFAR) / 16 (ImageNet), SGD lr ×0.1 at [20, 40, 60] (CIFAR hocons) or [100, 200, 350] (ImageNet hocons: only 100
    fires), ranges updated in epochs 0-3, every epoch evaluated (IQ:cifar10_resnet20.hocon:L12-21, imagenet.hocon)."""
    train: dict[str, Any] = {"epochs": epochs, "iters_per_epoch": 200, "warmup_epochs": 4, "range_update_epochs": 4,
                             "milestones_g": (), "eval_start_epoch": 0}
    if dataset == "imagenet":
        train.update(batch_size=16, lr_q=imagenet_lr, milestones_q=(100, 200, 350))
    else:
        train.update(batch_size=256, lr_q=cifar_lr, milestones_q=(20, 40, 60))
    return train


# -- the method base class -------------------------------------------------------------------------------------------
class DirectMethod(Method):
    """Bank in :meth:`setup`, two-phase sampling (:meth:`phase_steps`), crops per image; subclasses give the synthesis
    objective (:meth:`synthesis_objective`) and the student loss."""

    steps = (Q_FRESH_STEP,)  # fine-tuning: a student step on the next bank batch; no generator after calibration
    default_tracker = "ema_gdfq"  # GDFQ's compounding EMA QuantAct (spec §0)
    config_class = DirectConfig

    def __init__(self, config: Any, num_classes: int, input_size: int, dataset: str) -> None:
        super().__init__(config, num_classes, input_size, dataset)
        self.spec: RunSpec | None = None
        self.results: Path | None = None
        self.bank: BankImages | None = None
        self.source: DirectSource | None = None

    # -- configuration --------------------------------------------------------------------------------------------
    @classmethod
    def quick_protocol(cls, method: dict[str, Any]) -> dict[str, Any]:
        """A smaller bank: at most 4 batches of 128 images, 250 Adam steps each (the quick protocol's schedule is
        the generic one: 4 calibration + 4 fine-tuning epochs × 50 iterations at batch ≤ 64)."""
        return {**method, "bank_batches": min(method["bank_batches"], QUICK_BANK_BATCHES),
                "bank_batch_size": min(method["bank_batch_size"], QUICK_BANK_BATCH_SIZE),
                "synthesis_steps": min(method["synthesis_steps"], QUICK_SYNTHESIS_STEPS)}

    @classmethod
    def bank_of(cls, spec: "RunSpec", config: DirectConfig) -> BankKey:
        from dfqbench.zoo import model_info

        info = model_info(spec.model)
        return bank_key(spec, config.synthesis_settings(), info.input_size, info.num_classes,
                        config.synthesis_loss())

    @classmethod
    def needs_bank(cls, spec: "RunSpec") -> BankKey:
        return cls.bank_of(spec, cls.config_class(**spec.method_config))

    # -- the bank -------------------------------------------------------------------------------------------------
    def prepare_run(self, spec: "RunSpec", results: Path) -> None:
        self.spec, self.results = spec, Path(results)

    def setup_description(self) -> str:
        cfg = self.config
        return (f"image bank: {cfg.bank_batches} batch(es) of {cfg.bank_batch_size} images, {cfg.synthesis_steps} "
                "Adam steps each (read if already synthesised)")

    def synthesis_objective(self, teacher: nn.Module, device: torch.device) -> Any:
        """The method's synthesis loss (:class:`dfqbench.blocks.synthesis.Objective`, with a ``remove()``)."""
        raise NotImplementedError

    def setup(self, teacher: nn.Module, device: torch.device) -> None:
        """The bank of this run's key: read when finished, else synthesised (resuming a killed synthesis)."""
        if self.spec is None or self.results is None:
            raise RuntimeError(f"{self.name}: prepare_run(spec, results) must run before setup()")
        key = self.bank_of(self.spec, self.config)
        objective = self.synthesis_objective(teacher, device)
        try:
            cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
                if device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                reader = synthesise_bank(teacher, objective, key, self.config.synthesis_settings(), self.results,
                                         device)
        finally:
            objective.remove()
        self.bank = BankImages(reader, device, next(teacher.parameters()).dtype)

    def build_generator(self) -> nn.Module:
        if self.bank is None:
            raise RuntimeError(f"{self.name}: setup(teacher, device) must run before build_generator()")
        calibration = None
        if self.config.calibration == "generator":
            calibration = build_gdfq_generator(self.dataset, self.num_classes, self.input_size,
                                               self.config.latent_dim)
        self.source = DirectSource(calibration, len(self.bank))
        return self.source

    # -- sampling -------------------------------------------------------------------------------------------------
    def phase_steps(self, warmup: bool) -> tuple[str, ...]:
        """Calibration epochs: a G step of the GDFQ generator, then the student's forward on its batch (no SGD
        step), as IQ:trainer_direct.py:L223-245; fine-tuning (or calibration on the bank): a bank batch."""
        if warmup and self.config.calibration == "generator":
            return (G_STEP, Q_STEP)
        return self.steps

    def phase_sample(self, warmup: bool, batch_size: int, device: torch.device) -> Sample:
        if warmup and self.config.calibration == "generator":  # z, y of the calibration generator, batch 16
            n = self.config.calibration_batch_size
            z = torch.randn(n, self.config.latent_dim, device=device)
            return Sample(z=z, labels=torch.randint(0, self.num_classes, (n,), device=device))
        return self.sample(batch_size, device)

    def sample(self, batch_size: int, device: torch.device) -> Sample:
        """The next bank batch: images, their stored labels and each image's crop box and flip (drawn here from
        torch's global generator, so probes and graph replays consume no random numbers)."""
        if self.bank is None or self.source is None:
            raise RuntimeError(f"{self.name}: setup() and build_generator() must run before sample()")
        images, labels = self.bank.gather(self.source.stream.next_indices(batch_size))
        boxes, flips = draw_resized_crop_boxes(batch_size, self.input_size, self.input_size,
                                               (self.config.crop_scale_min, 1.0), device="cpu")
        return Sample(z=images, labels=labels, extra={"boxes": boxes.to(device), "flips": flips.to(device)})

    def generate(self, generator: nn.Module, sample: Sample) -> Tensor:
        """A calibration sample (latent z, 2-D) through the GDFQ generator; a bank sample (images, 4-D) cropped,
        flipped and passed through :meth:`transform` (the dispatch is on the sample's shape, never on values)."""
        if sample.z.dim() == 2:
            return generator.calibration(sample.z, sample.labels)
        return self.transform(resized_crop(sample.z, sample.extra["boxes"], sample.extra["flips"]))

    def transform(self, x: Tensor) -> Tensor:
        """What the method does to every augmented bank batch (SynQ: the low-pass filter); nothing by default."""
        return x

    # -- objectives -----------------------------------------------------------------------------------------------
    def generator_loss(self, ctx: StepContext) -> tuple[Tensor, LossTerms]:
        """The calibration generator's L_G = CE(T(x), y) + 0.1·BNS (IQ:trainer_direct.py:L230-244; GDFQ's)."""
        ce = F.cross_entropy(ctx.teacher_logits, ctx.sample.labels)
        return ce + self.config.bns_weight * ctx.bns_loss, {"ce": ce, "bns": ctx.bns_loss}
