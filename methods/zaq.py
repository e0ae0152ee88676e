"""ZAQ: Zero-shot Adversarial Quantization (Liu et al., CVPR 2021), faithful to FLHonker/ZAQ-code.

L_Q = L1(Q(x), P(x)) + α·SCRM(g_Q, g_P)                                  (main.py L33-35)
L_G = −L1(Q(x), P(x)) − α·SCRM(g_Q, g_P) − β·mean|g_P[−1]|               (main.py L45; α 1, β 0.1)
SCRM = Σ_stages L1(spatial(f_Q), spatial(f_P)) + L1(channel(f_Q), channel(f_P)), features L2-normalised
along channels; both relation branches fixed at γ 0.1 (utils/loss.py L65-109, class SCRM).
g are the residual-stage outputs (ZAQ ``forward(x, out_feat=True)``; here ``features.stage1..N`` read by
hooks, :mod:`dfqbench.blocks.features`). L1 is F.l1_loss's element mean.
Loop (main.py L21-57, L160-185): per iteration 5 Q steps, each on a fresh z ~ N(0, I) batch with G(z)
detached, then 1 G step on a fresh batch (``steps``); gradients reach G through P and
through Q (identity STE). Q in train mode throughout (its BN uses batch statistics and its running
statistics drift), P in eval mode. Q: SGD lr 0.1, momentum 0.9, wd 5e-4; G: Adam lr 1e-3 (0.9, 0.999);
both ×0.1 at epochs 100 and 200; 300 epochs × 60 iterations, batch 256, no warm-up. Running min/max
activation ranges (tracker ``minmax``) updated by every training forward and never frozen
(range_update_epochs = epochs). Unconditional DAFL generator, nz 256 (network/gan.py).

Quirk reproduced by default, with a corrected switch:
- SCRM normalises features with F.normalize, whose Jacobian at an all-zero channel vector is 1e12·I.
  Quantized post-ReLU stage outputs at ≤ 4-bit activations have such positions: on ResNet-20 the first Q
  step's max |grad| is 5e8 (W3A3) / 2e8 (W4A4), against 0.3-0.4 at the official W6A8 and at W8A8, and
  within the first iteration (5 SGD steps at lr 0.1) Q's weights reach ~5e8 and its logits ~1e14.
  ``method.safe_normalize=true`` maps zero vectors to zero with zero gradient (identical values; gradients
  elsewhere unchanged).

Deviations from the official code (none has a switch unless named):
- Initial activation ranges. The official ``main()`` first runs test() on the **real** CIFAR test set with
  range updates on (main.py L155-156), and every later test() keeps widening the ranges: a data leak. Here
  evaluation never updates ranges, and the initial ranges come from generated data only: before epoch 0 the
  trainer passes one generated batch through Q (eval mode, no grad, ranges updating) and evaluates; that is
  the record's ``calibrated_top1`` (pretrained weights, no fine-tuning). No switch restores the leak, on
  purpose: it would need evaluation with range updates on, which the trainer never does.
- Models: pytorchcv's pretrained ResNets (as in the GDFQ lineage) instead of ZAQ's self-trained networks;
  they have one ReLU module per site, so no QuantAct is shared between two sites as in ZAQ's blocks
  (``network/resnet20.py`` L55/L72-75).
  Evaluation uses the harness's per-model normalisation.
- Bits come from ``--bits`` (the official defaults are W6A8); the seed is the run's seed (official 6786).
- The official G is unconditional, so ``Sample.labels`` are an unused placeholder drawn uniformly at
  random (after z); no ZAQ loss reads them.
- Datasets: ZAQ's code is CIFAR-only (main.py), so ImageNet cells are unsupported (:meth:`unsupported_reason`),
  as are models without ``features.stage1..N``. mobilenetv2_w1 is ImageNet and therefore unsupported;
  note that its pytorchcv stages end in linear bottlenecks (no ReLU, hence not quantized in Q), unlike
  the ResNets', and ZAQ's own MobileNetV2 exposes no features at all (its forward has no ``out_feat``).
- The official Q step leaves P's features undetached and the G step leaves gradients in Q (cleared by
  the next Q step's zero_grad); neither changes any trained number, so neither is reproduced.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfqbench.blocks.features import stage_names
from dfqbench.blocks.interface import LossTerms, Method, Sample, StepContext, register_method
from dfqbench.errors import DfqbenchError

SUPPORTED_DATASETS = ("cifar10", "cifar100", "tiny")
QUICK_MAX_BATCH = 16  # quick protocol batch (see ZAQ.quick_train)


@dataclass(frozen=True)
class ZAQConfig:
    latent_dim: int = 256  # nz
    alpha: float = 1.0  # weight of SCRM in L_Q and L_G (--alpha)
    beta: float = 0.1  # weight of P's last-stage activation term in L_G (--beta)
    relation_gamma: float = 0.1  # SCRM's residual weight of both relation branches (hard-coded in the official code)
    # Corrected variant (off = faithful): SCRM's channel normalisation maps an all-zero feature vector to zero
    # with zero gradient instead of F.normalize's x / max(‖x‖, 1e-12), whose Jacobian there is 1e12·I.
    safe_normalize: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.latent_dim, bool) or not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise DfqbenchError(f"invalid method.latent_dim {self.latent_dim!r}: expected an integer >= 1")
        if not isinstance(self.safe_normalize, bool):
            raise DfqbenchError(f"invalid method.safe_normalize {self.safe_normalize!r}: expected true or false")
        for name in ("alpha", "beta", "relation_gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DfqbenchError(f"invalid method.{name} {value!r}: expected a finite number")


class DAFLGenerator(nn.Module):
    """ZAQ ``network/gan.py`` Generator (DAFL), unconditional: z → FC(nz → 128·(s/4)²) → BN → ×2 →
    conv128-BN-LReLU(0.2) → ×2 → conv64-BN-LReLU(0.2) → conv3 → tanh → BN(3, no affine). BN eps/momentum default."""

    def __init__(self, latent_dim: int = 256, img_size: int = 32, channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.init_size = img_size // 4
        self.l1 = nn.Linear(latent_dim, 2 * width * self.init_size**2)
        self.bn0 = nn.BatchNorm2d(2 * width)
        self.conv1 = nn.Conv2d(2 * width, 2 * width, 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(2 * width)
        self.conv2 = nn.Conv2d(2 * width, width, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, channels, 3, stride=1, padding=1)
        self.out_bn = nn.BatchNorm2d(channels, affine=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.l1(z.flatten(1)).view(z.shape[0], -1, self.init_size, self.init_size)
        img = F.interpolate(self.bn0(out), scale_factor=2)
        img = F.leaky_relu(self.bn1(self.conv1(img)), 0.2)
        img = F.interpolate(img, scale_factor=2)
        img = F.leaky_relu(self.bn2(self.conv2(img)), 0.2)
        return self.out_bn(torch.tanh(self.conv3(img)))


def spatial_relation(f: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """SCRM spatial branch: with F = f as C×HW, A = softmax_rows(FᵀF) (HW×HW) and out = F·Aᵀ; γ·out + f."""
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w)
    attention = torch.softmax(flat.transpose(1, 2) @ flat, dim=-1)
    return gamma * (flat @ attention.transpose(1, 2)).view(b, c, h, w) + f


def channel_relation(f: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """SCRM channel branch: E = F·Fᵀ (C×C), A = softmax_rows(rowmax(E) − E), out = A·F; γ·out + f."""
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w)
    energy = flat @ flat.transpose(1, 2)
    attention = torch.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)
    return gamma * (attention @ flat).view(b, c, h, w) + f


def channel_normalize(f: torch.Tensor, safe: bool = False) -> torch.Tensor:
    """L2-normalise f along dim 1. Faithful (``safe=False``): F.normalize, i.e. f / max(‖f‖, 1e-12), as
    ZAQ ``utils/loss.py`` SCRM.cal_loss. Its gradient at an all-zero vector is 1e12 × the incoming one;
    quantized post-ReLU stage outputs at ≤ 4-bit activations have such positions, so one SGD step of Q
    blows up (W3A3/W4A4; not at the official W6A8). ``safe=True``: zero vectors stay zero and pass no gradient."""
    if not safe:
        return F.normalize(f, dim=1)
    norm = f.norm(dim=1, keepdim=True)
    nonzero = norm > 0
    return torch.where(nonzero, f / torch.where(nonzero, norm, torch.ones_like(norm)), torch.zeros_like(f))


def scrm_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], gamma: float = 0.1,
              safe_normalize: bool = False) -> torch.Tensor:
    """Σ over stages of L1(spatial(q̂), spatial(p̂)) + L1(channel(q̂), channel(p̂)), with q̂, p̂ the features
    L2-normalised along the channel dimension (:func:`channel_normalize`); L1 = mean absolute difference."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"SCRM needs matching non-empty feature lists, got {len(student)} and {len(teacher)}")
    total = student[0].new_zeros(())
    for f_q, f_p in zip(student, teacher):
        f_q, f_p = channel_normalize(f_q, safe_normalize), channel_normalize(f_p, safe_normalize)
        total = total + F.l1_loss(spatial_relation(f_q, gamma), spatial_relation(f_p, gamma))
        total = total + F.l1_loss(channel_relation(f_q, gamma), channel_relation(f_p, gamma))
    return total


# Zoo models known to expose ``features.stage1..N`` (checked by tests/test_zaq.py), answered without
# building the model, so that planning a grid does not import pytorchcv (and torchvision) for them.
STAGED_ZOO_MODELS = frozenset({"resnet20_cifar10", "resnet20_cifar100", "tiny_cifar10"})


@functools.lru_cache(maxsize=None)
def _has_stages(model: str) -> bool:
    if model in STAGED_ZOO_MODELS:
        return True
    from dfqbench.zoo import build_model

    return bool(stage_names(build_model(model)))


@register_method
class ZAQ(Method):
    name = "zaq"
    paper = "Liu et al., Zero-shot Adversarial Quantization, CVPR 2021"
    version = "1"
    config_class = ZAQConfig

    steps = ("Q+",) * 5 + ("G",)  # main.py train(): 5 Q steps on fresh batches, then 1 G step on a fresh batch
    student_in_generator_loss = True  # L_G reads Q(x) and its features, gradient through the STE
    student_bn_train = True
    uses_features = True
    default_tracker = "minmax"

    @classmethod
    def paper_protocol(cls, dataset: str, model: str, wbits: int, abits: int) -> dict[str, dict[str, Any]]:
        """main.py defaults; the same for CIFAR-10 and CIFAR-100 (and the tiny test model)."""
        epochs = 300
        train = {
            "epochs": epochs, "iters_per_epoch": 60, "batch_size": 256, "warmup_epochs": 0,
            "range_update_epochs": epochs,  # never frozen
            "lr_q": 0.1, "q_momentum": 0.9, "q_nesterov": False, "q_weight_decay": 5e-4,
            "lr_g": 1e-3, "g_betas": (0.9, 0.999),
            "milestones_q": (100, 200), "milestones_g": (100, 200), "lr_gamma": 0.1, "eval_start_epoch": 0,
        }
        return {"train": train, "method": {}, "quant": {}}

    @classmethod
    def quick_train(cls, train: dict[str, Any]) -> dict[str, Any]:
        """Batch ≤ 16 under ``quick``: an iteration is 5 Q steps + 1 G step, each with SCRM's HW×HW spatial
        attention (1024² per image at stage 1); measured on 2 loaded CPU cores, ~60 s per iteration at batch 64,
        ~4 s at 32, ~2.5 s at 16, so 4 × 50 iterations fit in the quick protocol's minutes only at 16."""
        return {**train, "batch_size": min(train["batch_size"], QUICK_MAX_BATCH)}

    @classmethod
    def unsupported_reason(cls, dataset: str, model: str, wbits: int, abits: int) -> str | None:
        if dataset not in SUPPORTED_DATASETS:
            return (f"the official ZAQ code supports CIFAR-10/100 only (its main.py has no {dataset} schedule or "
                    "generator to be faithful to)")
        if not _has_stages(model):
            return f"{model} has no stages features.stage1..N, which ZAQ's stage-feature losses need"
        return None

    def build_generator(self) -> nn.Module:
        return DAFLGenerator(self.config.latent_dim, self.input_size)

    def sample(self, batch_size: int, device: torch.device) -> Sample:
        z = torch.randn(batch_size, self.config.latent_dim, device=device)
        labels = torch.randint(0, self.num_classes, (batch_size,), device=device)  # unused placeholder
        return Sample(z=z, labels=labels)

    def generate(self, generator: nn.Module, sample: Sample) -> torch.Tensor:
        return generator(sample.z)

    def _discrepancy(self, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        if ctx.student_logits is None or ctx.teacher_features is None or ctx.student_features is None:
            raise RuntimeError("ZAQ's losses need the student's logits and both networks' stage features")
        l1 = F.l1_loss(ctx.student_logits, ctx.teacher_logits)
        scrm = scrm_loss(ctx.student_features, ctx.teacher_features, self.config.relation_gamma,
                         self.config.safe_normalize)
        return l1, scrm

    def student_loss(self, ctx: StepContext) -> tuple[torch.Tensor, LossTerms]:
        l1, scrm = self._discrepancy(ctx)
        return l1 + self.config.alpha * scrm, {"l1": l1, "scrm": scrm}

    def generator_loss(self, ctx: StepContext) -> tuple[torch.Tensor, LossTerms]:
        l1, scrm = self._discrepancy(ctx)
        act = ctx.teacher_features[-1].abs().mean()
        cfg = self.config
        return -l1 - cfg.alpha * scrm - cfg.beta * act, {"l1": l1, "scrm": scrm, "act": act}
