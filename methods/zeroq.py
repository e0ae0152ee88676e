"""ZeroQ (Cai et al., CVPR 2020) and "ZeroQ data + KD fine-tune" (the protocol behind IntraQ's ZeroQ numbers).

``zeroq`` — calibration only, faithful to amirgholami/ZeroQ ``classification/uniform_test.py`` L60-97 and
``distill_data.py`` L30-157: one batch of 64 distilled images (``run.sh``/README batch size), then one
no-grad forward of that batch through the quantized model with the widening ``minmax`` range tracker, ranges
frozen, no fine-tuning. In the shared trainer: the distillation runs in :meth:`setup`; the "generator" is the
bank of distilled images; the schedule is one epoch of one iteration that is all warm-up, so the trainer's
only Q forward is the calibration pass and the one evaluation gives calibrated = best = final.
Deviations: any bit-width (the official code hard-codes W8A8); the initial noise is seeded (official:
an unseeded 32-worker DataLoader); teacher gradients are not accumulated (no effect on the images).

``zeroq_kd`` — ZeroQ-distilled data used to fine-tune the quantized model with KD only, as IntraQ's authors
describe for their ZeroQ rows (zysxmu/IntraQ issue #1). The fine-tuning pipeline is IntraQ's
``main_direct.py``/``trainer_direct.py`` with the ``cifar10_resnet20.hocon``/``imagenet.hocon`` settings
(inferred: the issue names the loss, not the script): 20 distilled batches of 256 (IntraQ's data amount,
4 groups × 5 batches); per image RandomResizedCrop(scale 0.5-1) + horizontal flip; L_Q = α·T²·KL_batchmean
(p_T ‖ p_Q) with α = T = 20 and no CE; SGD-Nesterov 0.9, wd 1e-4, lr 1e-4 (CIFAR, ×0.1 at epochs
20/40/60, batch 256) or 1e-6 (ImageNet, ×0.1 at 100/200/350, batch 16); 151 epochs × 200 iterations;
the GDFQ EMA range tracker updated during epochs 0-3 with no student step. Deviation: IntraQ calibrates
the ranges in epochs 0-3 on images of a GDFQ generator it trains there and then discards; here the
ranges are calibrated on the distilled set itself (no generator step: ``steps = ("Q+",)``).
Measured instability of the faithful values (not a dfqbench defect as far as we can tell): for large T,
T²·KL_T ≈ ‖centred(s − t)‖²/(2C), so α = 20 makes L_Q a logit regression with ~100× the curvature of
GDFQ's element-mean KD; with SGD-Nesterov at lr 1e-4 and BN in eval mode (IntraQ ``trainer_direct.py``
train() calls ``model.eval()``), the fine-tuning diverges here within ~10 steps at W3A3, W4A4, W8A8 and
even for the unquantized shared ResNet-20 on Gaussian inputs, started at zero loss. Training then stops
and the record says ``diverged``; its best epoch is the calibrated one, as IntraQ's loop (which trains
on through NaN and keeps its best epoch) would report. ``method.kd_weight=1`` trains stably.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dfqbench.blocks.distill import INITS, DistilledSet, DistillSettings, distill
from dfqbench.blocks.losses import kd_kl_batchmean
from dfqbench.blocks.interface import LossTerms, Method, Sample, StepContext, register_method
from dfqbench.errors import DfqbenchError
from dfqbench.specs.validate import check_positive
from dfqbench.registry import unknown_choice

AUGMENTS = ("intraq", "none")
QUICK_KD_BATCHES = 2  # quick protocol: distilled batches for zeroq_kd (paper: 20)
QUICK_KD_BATCH_SIZE = 64  # quick protocol: images per distilled batch for zeroq_kd (paper: 256)


@dataclass(frozen=True)
class ZeroQConfig(DistillSettings):
    """ZeroQ distillation settings (distill_data.py, data_utils.py, run.sh): the optimiser settings of
    :class:`DistillSettings` (``init`` "official" is faithful: std ≈ 0.0136, the variance used as std;
    "unit_std" divides by the std) plus how many images are distilled."""

    batch_size: int = 64  # images per distilled batch
    num_batches: int = 1

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise DfqbenchError(unknown_choice("method.init", self.init, list(INITS)))
        for name in ("batch_size", "num_batches", "steps"):
            if getattr(self, name) < 1:
                raise DfqbenchError(f"invalid method.{name}={getattr(self, name)!r}: must be >= 1")


@dataclass(frozen=True)
class ZeroQKDConfig(ZeroQConfig):
    """ZeroQ distillation plus IntraQ's KD fine-tuning settings (hocon KD options, main_direct.py loader)."""

    batch_size: int = 256
    num_batches: int = 20
    temperature: float = 20.0  # T
    kd_weight: float = 20.0  # α
    augment: str = "intraq"  # RandomResizedCrop(scale_min..1) + horizontal flip per image; "none" for raw images
    crop_scale_min: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.augment not in AUGMENTS:
            raise DfqbenchError(unknown_choice("method.augment", self.augment, list(AUGMENTS)))
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise DfqbenchError(f"invalid method.crop_scale_min={self.crop_scale_min!r}: must be in (0, 1]")
        check_positive("method.temperature", self.temperature)


def draw_crops(batch: int, size: int, scale_min: float) -> tuple[Tensor, Tensor]:
    """Per-image RandomResizedCrop boxes (top, left, h, w) and horizontal-flip flags, from torch's global RNG."""
    from torchvision.transforms import RandomResizedCrop  # lazy: keeps `import dfqbench.methods` light (grid dry runs)

    like = torch.empty(1, size, size)
    boxes = [RandomResizedCrop.get_params(like, [scale_min, 1.0], [3 / 4, 4 / 3]) for _ in range(batch)]
    flips = torch.rand(batch) < 0.5
    return torch.tensor(boxes, dtype=torch.long), flips


def _source_index(start: Tensor, length: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear (align_corners=False) source rows for resizing [start, start+length) to ``size``: i0, i1, weight."""
    dst = torch.arange(size, device=start.device, dtype=torch.float32)
    src = ((dst + 0.5) * (length.float()[:, None] / size) - 0.5).clamp_min(0.0)
    i0 = src.floor().long()
    weight = src - i0
    i1 = torch.minimum(i0 + 1, length[:, None] - 1)
    i0 = torch.minimum(i0, length[:, None] - 1)
    return start[:, None] + i0, start[:, None] + i1, weight


def resized_crop(x: Tensor, boxes: Tensor, flips: Tensor) -> Tensor:
    """Crop each image to its box, resize it back to the input size (bilinear) and flip where flagged.

    Equals a per-image ``F.interpolate(crop, size, mode="bilinear", align_corners=False)`` followed by a
    horizontal flip (torchvision's tensor RandomResizedCrop + RandomHorizontalFlip without antialiasing,
    as in the torchvision 0.8 that IntraQ used; crops are never larger than the image, so it only upsamples).
    """
    b, c, h, w = x.shape
    boxes, flips = boxes.to(x.device), flips.to(x.device)
    r0, r1, wy = _source_index(boxes[:, 0], boxes[:, 2], h)
    c0, c1, wx = _source_index(boxes[:, 1], boxes[:, 3], w)

    def rows(index: Tensor) -> Tensor:
        return x.gather(2, index[:, None, :, None].expand(b, c, h, w))

    def cols(t: Tensor, index: Tensor) -> Tensor:
        return t.gather(3, index[:, None, None, :].expand(b, c, h, w))

    wy, wx = wy[:, None, :, None].to(x.dtype), wx[:, None, None, :].to(x.dtype)
    top, bottom = rows(r0), rows(r1)
    upper = cols(top, c0) * (1 - wx) + cols(top, c1) * wx
    lower = cols(bottom, c0) * (1 - wx) + cols(bottom, c1) * wx
    out = upper * (1 - wy) + lower * wy
    return torch.where(flips[:, None, None, None], out.flip(3), out)


class _DistilledDataMethod(Method):
    """Shared by both variants: distil in :meth:`setup`, serve the fixed set, train no generator."""

    steps = ("Q+",)  # a student step (or, in warm-up, a calibration pass) on the next distilled batch; no G
    shuffle: bool = False

    def __init__(self, config: Any, num_classes: int, input_size: int, dataset: str) -> None:
        super().__init__(config, num_classes, input_size, dataset)
        self.data: DistilledSet | None = None
        self.distill_losses: list[list[float]] = []  # per batch, the loss before each Adam step

    def setup(self, teacher: nn.Module, device: torch.device) -> None:
        """Distil ``num_batches`` batches (seeded by the trainer) and label them with the teacher's argmax."""
        cfg = self.config
        result = distill(teacher, cfg.num_batches, cfg.batch_size, self.input_size, cfg, device)
        with torch.no_grad():
            labels = torch.cat([teacher(x).argmax(1) for x in result.images.split(cfg.batch_size)])
        self.distill_losses = result.losses
        self.data = DistilledSet(result.images, labels, shuffle=self.shuffle)

    def setup_description(self) -> str:
        cfg = self.config
        return f"distilling {cfg.num_batches} batch(es) of {cfg.batch_size} images, {cfg.steps} Adam steps each"

    def build_generator(self) -> nn.Module:
        if self.data is None:
            raise RuntimeError(f"{self.name}: setup(teacher, device) must run before build_generator()")
        return self.data

    def sample(self, batch_size: int, device: torch.device) -> Sample:
        assert self.data is not None, "setup() has not run"
        indices = self.data.next_indices(batch_size)
        return Sample(z=indices, labels=self.data.labels[indices])

    def generate(self, generator: nn.Module, sample: Sample) -> torch.Tensor:
        return generator(sample.z)

    def generator_loss(self, ctx: StepContext) -> tuple[torch.Tensor, LossTerms]:
        raise RuntimeError(f"{self.name} trains no generator")


@register_method
class ZeroQ(_DistilledDataMethod):
    name = "zeroq"
    paper = "Cai et al., ZeroQ: A Novel Zero Shot Quantization Framework, CVPR 2020 (calibration only)"
    version = "1"
    config_class = ZeroQConfig
    default_tracker = "minmax"

    @classmethod
    def paper_protocol(cls, dataset: str, model: str, wbits: int, abits: int) -> dict[str, dict[str, Any]]:
        """One all-warm-up iteration on the whole distilled batch: the calibration pass, then one evaluation."""
        train = {"epochs": 1, "iters_per_epoch": 1, "batch_size": 64, "warmup_epochs": 1, "range_update_epochs": 1,
                 "milestones_q": (), "milestones_g": (), "eval_start_epoch": 0}
        return {"train": train, "method": {"batch_size": 64, "num_batches": 1}, "quant": {}}

    def student_loss(self, ctx: StepContext) -> tuple[torch.Tensor, LossTerms]:
        """Logged only (ZeroQ never steps Q): KL(p_T ‖ p_Q) at T = 1, batch mean."""
        kl = kd_kl_batchmean(ctx.teacher_logits, ctx.student_logits, 1.0)
        return kl, {"kl": kl}


@register_method
class ZeroQKD(_DistilledDataMethod):
    name = "zeroq_kd"
    paper = ("Cai et al., ZeroQ, CVPR 2020: distilled data + KD fine-tune, the protocol of ZeroQ rows in "
             "Zhong et al., IntraQ, CVPR 2022 (IntraQ issue #1)")
    version = "2"  # 2: ema_gdfq tracker bit-exact with the official float32 arithmetic (golden tests)
    config_class = ZeroQKDConfig
    default_tracker = "ema_gdfq"  # IntraQ's QuantAct is GDFQ's compounding EMA
    shuffle = True

    @classmethod
    def paper_protocol(cls, dataset: str, model: str, wbits: int, abits: int) -> dict[str, dict[str, Any]]:
        train: dict[str, Any] = {"epochs": 151, "iters_per_epoch": 200, "warmup_epochs": 4, "range_update_epochs": 4,
                                 "milestones_g": (), "eval_start_epoch": 0}
        if dataset == "imagenet":
            train.update(batch_size=16, lr_q=1e-6, milestones_q=(100, 200, 350))
        else:
            train.update(batch_size=256, lr_q=1e-4, milestones_q=(20, 40, 60))
        return {"train": train, "method": {"batch_size": 256, "num_batches": 20}, "quant": {}}

    @classmethod
    def quick_protocol(cls, method: dict[str, Any]) -> dict[str, Any]:
        """Fewer and smaller distilled batches (the 500 Adam steps per batch are kept)."""
        return {**method, "num_batches": min(method["num_batches"], QUICK_KD_BATCHES),
                "batch_size": min(method["batch_size"], QUICK_KD_BATCH_SIZE)}

    def sample(self, batch_size: int, device: torch.device) -> Sample:
        sample = super().sample(batch_size, device)
        if self.config.augment == "intraq":  # drawn here, not in generate(): probes must not consume RNG
            boxes, flips = draw_crops(batch_size, self.input_size, self.config.crop_scale_min)
            sample.extra.update(boxes=boxes, flips=flips)
        return sample

    def generate(self, generator: nn.Module, sample: Sample) -> torch.Tensor:
        x = generator(sample.z)
        if "boxes" in sample.extra:
            x = resized_crop(x, sample.extra["boxes"], sample.extra["flips"])
        return x

    def student_loss(self, ctx: StepContext) -> tuple[torch.Tensor, LossTerms]:
        """IntraQ ``loss_fn_kd`` without labels: α·T²·KL_batchmean(p_T ‖ p_Q) at temperature T."""
        cfg = self.config
        kd = cfg.kd_weight * cfg.temperature**2 * kd_kl_batchmean(ctx.teacher_logits, ctx.student_logits,
                                                                  cfg.temperature)
        return kd, {"kd": kd}
