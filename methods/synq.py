"""SynQ (Kim et al., ICLR 2025), faithful to snudm-starlab/SynQ @ 8681480 (spec newer-methods.md §4; SQ = that repo).

Bank: HAST's synthesis (SQ:src/data_generate/distill_data.py:L287-511; :mod:`methods.hast`): on ImageNet with the
released script's β = 0.1, γ = 0.5 and the coin p = 0.5, RRC scale 0.4-1 (``run_generate_imagenet.sh``, L393-420);
on CIFAR no augmentation. The TexQ-style calibration centers and L-BNS (``--lbns``) are the switch ``lbns`` (below).
SynQ's one CIFAR script (``run_generate_cifar100.sh``, a ResNet-34 teacher) also uses β = 0.1, γ = 0.5, but the
factor (1 − p)^0.5 has an infinite derivative at p = 1, which a confident CIFAR teacher reaches in float32: on the
ResNet-20 CIFAR-10 teacher every pixel of a batch was NaN after ~30 Adam steps (measured here, batch 64). The CIFAR
presets therefore use HAST's CIFAR scripts' β = 10, γ = 2 (SynQ's synthesis is HAST's; ``method.beta``/``gamma``
give SynQ's script values).
Fine-tuning (SQ:src/trainer_direct.py:L394-576): calibration epochs 0-3 on a GDFQ generator (:mod:`methods._direct`);
then per step, on the cropped bank batch passed through the **low-pass filter** x^F = Re(IFFT(FFT(x)·G)),
G = exp(−d²/(2·D0²)) in frequency-index units (L161-184, L480-485):
L_s = 8000·KL_bm + λ_CE·CE_sel + L_FA, CE_sel the CE of the samples the teacher finds easy (1 − p_y < τ; the hard
ones' logits and labels zeroed, L276-295, L495-501), L_FA HAST's (λ = 1000 hard-coded, SQ:src/options.py:L90-92);
x' = x^F + 0.01·sgn(∇_x L_s) and L_p = 8000·KL_bm + λ_CE·CE_sel [+ L_FA on ImageNet only] on x' (L511-529);
L_CAM = MSE of teacher and student Grad-CAM maps at the last conv in module order, for each model's own argmax
(L255-274; gradcam.py:L89-195); loss = L_s + λ_pert·L_p + λ_CAM·L_CAM (L533-539). NaN pixels of the filtered batch
become 0 (``torch.nan_to_num``, L483-484, unconditionally here: a no-op on finite batches, and no host check). The Grad-CAM gradients come from
``torch.autograd.grad`` (:func:`dfqbench.blocks.direct_finetune.grad_cam`), not from hooks that pile up.
Zero-image forwards: the official ``update_cam()`` builds a new GradCAM every iteration, whose constructor forwards a
zero image of batch 1 through the student (gradcam.py:L51-58, L102-112; trainer_direct.py:L448); in the calibration
epochs that moves the EMA ranges. ``zero_image_probe=true`` (faithful) does the same forward before each student step.
Deviations: the evaluation before training with unfrozen ranges (``test(epoch=-1)``, SQ:src/main_direct.py:L543, real
test images entering the EMA) is not done; the trainer also evaluates the calibration epoch (epoch 3, recorded as
``calibrated_top1`` and in ``top1_per_epoch``), but, as SynQ evaluates only epochs ≥ 5 (``eval_start_epoch = 5``), it is
not a candidate for the best epoch.

Presets: ImageNet ResNet-18 from the shipped run (``run_imagenet.sh``: λ_CE 0.5, λ_CAM 50, ``imagenet_3bit.hocon``:
101 epochs, lr 1e-6 ×0.1 at [100, 200, 350]) at the paper's batch 16 (SynQ §5.1; the hocon's per-GPU 4 on one GPU is
``train.batch_size=4``). No configuration is released for CIFAR, ResNet-50 or MobileNetV2 (spec §4.3): ResNet-50 and
MobileNetV2 use the shipped ImageNet run's values; CIFAR uses the paper's batch 256 (§5.1), the code defaults
λ_CE = 5, λ_CAM = 200, D0 = 80, τ = 0.5 (SQ:src/main_direct.py:L613-627, each inside the paper's searched sets, App. D)
except τ = 0.7 on CIFAR-10 (best there, App. C.11), lr 1e-5 (in the paper's searched set {1e-4, 1e-5, 1e-6}; HAST's
CIFAR value, which SynQ's code forks) with HAST's CIFAR milestones [20, 40, 60], and 101 epochs like the shipped run.

Switches (spec §4.4, §8.5): ``cam_class="label"`` (paper Eq. 5) instead of each model's argmax; ``zero_image_probe
=false`` (no zero-image range updates); ``paper_objective=true`` (paper Eq. 6: KD + selective CE + CAM, no FA and no
perturbation); ``d0_reference=224`` (D0 scaled by resolution: absolute D0 = 80 leaves 32×32 images nearly
unfiltered); ``inclusive_tau`` (δ ≤ τ, Eq. 6); ``lambda_eps="hocon"`` (ImageNet hocon λ = 4000); ``kd_log_offset=0``;
``lbns=true`` (the official ``--lbns``, off in both released scripts; :mod:`dfqbench.blocks.calibration_centers`):
before the bank's first batch, ⌈C/B⌉ calibration-center batches of ``bank_batch_size`` images (labels i·B + j, the
last padded with class 0) are optimised for ``center_steps`` = 1,500 Adam steps under ``center_ce_weight`` = 5·CE
+ layer-weighted BNS, their pooled per-layer statistics taken, and every bank batch minimises
``lbns_bns_weight``·BNS + β·(1 − p)^γ·CE + ``lbns_weight``·L-BNS (0.4 and 0.02, SQ:src/data_generate/distill_data.py
L53-198, L340-381, L457-475); ``lbns_variance="pooled"`` weights the first center batch's variance like the others
(the released code adds it unweighted, L357). The centers are **not stored**: they are made (deterministically from
the seed) when the bank's synthesis starts, so a resumed synthesis makes them again; a finished bank is read
without them. With ``lbns`` off the bank key is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from dfqbench.blocks.calibration_centers import (VARIANCES, BNBatchStatistics, lbns_synthesis_objective,
                                                 pooled_statistics, synthesise_centers)
from dfqbench.blocks.direct_finetune import (CAM_CLASSES, SynqStudentLoss, last_conv_name, low_pass_filter,
                                             synq_student_loss)
from dfqbench.blocks.interface import LossTerms, StepContext, register_method
from dfqbench.errors import DfqbenchError
from dfqbench.registry import unknown_choice
from dfqbench.specs.validate import check_int, check_positive, check_real
from dfqbench.store.bank.key import MAX_BANK_STEPS
from dfqbench.methods._direct import TINY_BANK, attention_layer_names, direct_train, kd_term
from dfqbench.methods.hast import HAST, HastConfig

if TYPE_CHECKING:
    from dfqbench.specs import RunSpec

# (λ, ε) of the one released hocon (SQ:src/config/imagenet_3bit.hocon: lam = 4000, eps = 0.01), read by nothing
HOCON_LAMBDA_EPS = {"imagenet": (4000.0, 0.01)}


@dataclass(frozen=True)
class SynqConfig(HastConfig):
    """SynQ's settings: code defaults (SQ:src/main_direct.py:L613-627), CIFAR synthesis of the released script."""

    beta: float = 0.1  # SQ:src/data_generate/run_generate_*.sh (the CIFAR presets use HAST's 10 / 2: docstring)
    gamma: float = 0.5
    lambda_ce: float = 5.0
    tau: float = 0.5
    selective_ce: bool = True
    lambda_cam: float = 200.0
    lambda_pert: float = 1.0
    d0: float = 80.0  # D0 of the low-pass filter, frequency-index units
    d0_reference: int = 0  # 0: D0 absolute (faithful); N: D0 scaled by image side / N (a fix, e.g. 224)
    perturbed_fa: bool = False  # L_FA in L_p: the code adds it on ImageNet only (the ImageNet presets set it)
    cam_class: str = "argmax"  # "argmax" (faithful: each model's own) | "label" (paper Eq. 5)
    inclusive_tau: bool = False  # the paper's δ ≤ τ instead of the code's δ < τ
    paper_objective: bool = False  # paper Eq. 6: no FA, no perturbation term
    zero_image_probe: bool = True  # the student forward of a zero image before every student step (faithful)
    kd_log_offset: float = 1e-7  # SQ:src/trainer_direct.py:L212 (a constant in the KD value; no gradient effect)
    # -- ``--lbns`` (SQ:src/data_generate/generate_data.py:L82, L114-115; off in the released scripts)
    lbns: bool = False  # calibration centers + L-BNS in the bank's synthesis
    lbns_weight: float = 0.02  # weight of L-BNS (SQ:src/data_generate/distill_data.py:L473)
    lbns_bns_weight: float = 0.4  # weight of BNS when lbns is on (L473)
    lbns_variance: str = "official"  # "official" (first center batch's variance unweighted, L357) | "pooled"
    center_steps: int = 1500  # Adam steps per center batch (L131)
    center_ce_weight: float = 5.0  # ``beta_ce`` of the center loss (L53, L143)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cam_class not in CAM_CLASSES:
            raise DfqbenchError(unknown_choice("method.cam_class", self.cam_class, list(CAM_CLASSES)))
        check_positive("method.d0", self.d0)
        check_int("method.d0_reference", self.d0_reference, 0, 100_000)
        check_real("method.tau", self.tau, 0.0, 1.0)
        if not isinstance(self.lbns, bool):
            raise DfqbenchError(f"invalid method.lbns={self.lbns!r}: must be true or false")
        if self.lbns_variance not in VARIANCES:
            raise DfqbenchError(unknown_choice("method.lbns_variance", self.lbns_variance, list(VARIANCES)))
        check_real("method.lbns_weight", self.lbns_weight, 0.0)
        check_real("method.lbns_bns_weight", self.lbns_bns_weight, 0.0)
        check_real("method.center_ce_weight", self.center_ce_weight, 0.0)
        check_int("method.center_steps", self.center_steps, 0, MAX_BANK_STEPS)

    def synthesis_loss(self) -> dict[str, Any]:
        """HAST's settings; with ``lbns`` also the centers' and L-BNS settings (so the bank key changes only then)."""
        loss = super().synthesis_loss()
        if self.lbns:
            loss.update(lbns=True, lbns_weight=self.lbns_weight, lbns_bns_weight=self.lbns_bns_weight,
                        lbns_variance=self.lbns_variance, center_steps=self.center_steps,
                        center_ce_weight=self.center_ce_weight)
        return loss


class LbnsObjective:
    """SynQ's ``--lbns`` synthesis loss (:func:`dfqbench.blocks.calibration_centers.lbns_synthesis_objective`) with
    its state: the calibration centers' pooled BN statistics, made once per synthesis, before its first batch
    (SQ:src/data_generate/generate_data.py:L114-115, distill_data.py:L346-381); kept in memory, never stored."""

    def __init__(self, teacher: nn.Module, cfg: SynqConfig, num_classes: int, input_size: int, seed: int,
                 device: torch.device) -> None:
        self.teacher, self.cfg, self.device = teacher, cfg, device
        self.num_classes, self.input_size, self.seed = num_classes, input_size, seed
        self.stats = BNBatchStatistics(teacher)
        self.target: tuple[list[Tensor], list[Tensor]] | None = None
        self.terms: dict[str, Tensor] = {}

    def prepare(self) -> None:
        """The centers (:func:`synthesise_centers`) and their pooled statistics, once."""
        if self.target is None:
            cfg = self.cfg
            centers = synthesise_centers(self.teacher, self.seed, self.num_classes, cfg.bank_batch_size,
                                         self.input_size, cfg.center_steps, cfg.center_ce_weight, self.device)
            self.target = pooled_statistics(self.teacher, centers, cfg.lbns_variance)

    def begin_batch(self, index: int, labels: Tensor, generator: torch.Generator) -> None:
        self.prepare()

    def __call__(self, teacher: nn.Module, x: Tensor, labels: Tensor, step: int) -> Tensor:
        assert self.target is not None, "begin_batch() (or prepare()) first"
        cfg = self.cfg
        self.stats.start()
        logits = teacher(x)
        loss, self.terms = lbns_synthesis_objective(logits, labels, self.stats.stop(), *self.target, cfg.beta,
                                                    cfg.gamma, cfg.lbns_bns_weight, cfg.lbns_weight)
        return loss

    def remove(self) -> None:
        self.stats.remove()


def synq_presets(dataset: str, model: str) -> dict[str, Any]:
    """The method settings of a cell (module docstring: which are released, which come from the paper)."""
    if dataset == "imagenet":  # run_imagenet.sh (R18 W3A3); R50, MV2: not released, the same values
        return {"lambda_ce": 0.5, "lambda_cam": 50.0, "perturbed_fa": True, "aug_prob": 0.5, "aug_scale_min": 0.4,
                "bank_storage": "fp16"}
    # CIFAR: not released; HAST's CIFAR synthesis (module docstring), code defaults, the paper's τ on CIFAR-10
    method: dict[str, Any] = {"aug_prob": 0.0, "beta": 10.0, "gamma": 2.0}
    if dataset in ("cifar10", "tiny"):
        method["tau"] = 0.7  # paper App. C.11
    if dataset == "tiny":
        method.update(TINY_BANK)
    return method


@register_method
class SynQ(HAST):
    name = "synq"
    paper = ("Kim et al., SynQ: Accurate Zero-shot Quantization by Synthesis-aware Fine-tuning, ICLR 2025 "
             "(snudm-starlab/SynQ @ 8681480; presets: ImageNet R18 from run_imagenet.sh, R50/MV2 the same values, "
             "CIFAR not released: batch 256 (paper §5.1), tau 0.7 on C10 (App. C.11), code defaults, HAST's CIFAR "
             "synthesis beta/gamma and lr; sources in methods/synq.py)")
    version = "1"
    config_class = SynqConfig
    HOCON = HOCON_LAMBDA_EPS

    @classmethod
    def paper_protocol(cls, dataset: str, model: str, wbits: int, abits: int) -> dict[str, dict[str, Any]]:
        """101 × 200 iterations, batch 256 / 16, evaluated from epoch 5 (SQ:src/main_direct.py:L558-564)."""
        train = direct_train(dataset, epochs=101, cifar_lr=1e-5)
        train["eval_start_epoch"] = 5
        return {"train": train, "method": synq_presets(dataset, model), "quant": {}}

    def synthesis_objective(self, teacher: nn.Module, device: torch.device) -> Any:
        """HAST's objective; with ``lbns`` the calibration centers and L-BNS (:class:`LbnsObjective`)."""
        if not self.config.lbns:
            return super().synthesis_objective(teacher, device)
        if self.spec is None:
            raise RuntimeError("synq: prepare_run(spec, results) must run before synthesis_objective()")
        return LbnsObjective(teacher, self.config, self.num_classes, self.input_size, self.spec.seed, device)

    @classmethod
    def bank_prelude_steps(cls, spec: "RunSpec") -> int:
        """With ``lbns``: the calibration centers, ⌈C/B⌉ batches × ``center_steps``, made whenever the bank's
        synthesis starts or resumes (they are not stored)."""
        from dfqbench.zoo import model_info

        cfg = cls.config_class(**spec.method_config)
        if not cfg.lbns:
            return 0
        return -(-model_info(spec.model).num_classes // cfg.bank_batch_size) * cfg.center_steps

    def setup_description(self) -> str:
        text = super().setup_description()
        if self.config.lbns:
            batches = -(-self.num_classes // self.config.bank_batch_size)
            text += (f"; before it, {batches} calibration-center batch(es) of {self.config.center_steps} steps "
                     "(L-BNS)")
        return text

    def feature_layers(self, model: nn.Module) -> list[str]:
        """HAST's attention taps, then the Grad-CAM layer: the last conv in module order (SQ:src/gradcam.py:L89-103)."""
        return attention_layer_names(model) + [last_conv_name(model)]

    def transform(self, x: Tensor) -> Tensor:
        """The low-pass filter on every cropped bank batch (SQ:src/trainer_direct.py:L480-485)."""
        return torch.nan_to_num(low_pass_filter(x, self.config.d0, self.config.d0_reference or None))

    def student_loss_settings(self) -> SynqStudentLoss:  # type: ignore[override]
        """The fine-tuning loss's settings from the config and the resolved λ_FA, ε (built once, by HAST's init)."""
        cfg = self.config
        return SynqStudentLoss(
            temperature=cfg.temperature, alpha=cfg.kd_weight, lambda_ce=cfg.lambda_ce, tau=cfg.tau,
            selective_ce=cfg.selective_ce, lambda_cam=cfg.lambda_cam, lambda_pert=cfg.lambda_pert,
            fa_weight=self.fa_weight, eps=self.eps, perturbed_fa=cfg.perturbed_fa, cam_class=cfg.cam_class,
            inclusive_tau=cfg.inclusive_tau, paper_objective=cfg.paper_objective,
            detach_teacher_in_perturbation=cfg.detach_teacher_in_perturbation, kd_log_offset=cfg.kd_log_offset)

    def student_loss(self, ctx: StepContext) -> tuple[Tensor, LossTerms]:
        """Fine-tuning: L_s + λ_pert·L_p + λ_CAM·L_CAM (SQ:src/trainer_direct.py:L488-539); a warm-up forward logs
        8000·KL_bm + CE. With ``zero_image_probe``, a zero image goes through the student first."""
        nets = ctx.networks
        assert nets is not None, "SynQ's student loss runs the networks itself (student_runs_networks)"
        cfg = self.config
        if cfg.zero_image_probe:  # GradCAM(verbose=True)'s forward of a zero image (SQ:src/gradcam.py:L102-112)
            with torch.no_grad():
                nets.student(torch.zeros((1, *ctx.x.shape[1:]), device=ctx.x.device, dtype=ctx.x.dtype))
        if not nets.steps_student:
            return kd_term(cfg, ctx.teacher_logits, nets.student(ctx.x)[0], ctx.sample.labels)
        return synq_student_loss(ctx.x, ctx.sample.labels, _with_cam(nets.teacher), _with_cam(nets.student),
                                 self.loss_settings)


def _with_cam(forward: Any) -> Any:
    """A network's forward as SynQ's loss takes it: (logits, FA features, the last conv's output) — the tap's last
    feature layer is the Grad-CAM layer (:meth:`SynQ.feature_layers`)."""

    def split(x: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        logits, features = forward(x)
        return logits, features[:-1], features[-1]

    return split
