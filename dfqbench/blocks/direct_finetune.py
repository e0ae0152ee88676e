"""Student-side terms of the "direct" DFQ family (IntraQ, HAST, SynQ): what the quantized model's step minimises.

Pure tensor functions (no ``.item()``, no Python branch on a tensor's value, every new tensor on the input's
device, no hooks): the models enter only through callables the caller passes (e.g. a
:class:`~dfqbench.blocks.features.FeatureTap`, which records inside its own call only). Faithful to the official
code by default; corrected behaviours are named keyword switches (``/work/shared/spec/newer-methods.md`` §3.4,
§4.4, §8.5). Citations: IQ = zysxmu/IntraQ @ 5228f76, HA = lihuantong/HAST @ 83dfc16, SQ = snudm-starlab/SynQ
@ 8681480.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfqbench.blocks.losses import kd_kl_batchmean
from dfqbench.errors import DfqbenchError
from dfqbench.registry import unknown_choice

# ----------------------------------------------------------------------------------------------------------------
# KD and CE


def kd_batchmean(teacher_logits: Tensor, student_logits: Tensor, temperature: float, alpha: float,
                 log_offset: float = 0.0) -> Tensor:
    """α·T²·KL_batchmean(p_T ‖ p_S) at temperature T (IQ:trainer_direct.py:L106-130, HA:trainer_direct.py:L112-127).

    ``log_offset``: SynQ adds 1e-7 to the student's log-probabilities before ``KLDivLoss`` (SQ:src/
    trainer_direct.py:L212), which lowers the value by α·T²·1e-7·Σ_c p_T,c (no gradient effect); 0 elsewhere.
    """
    kd = kd_kl_batchmean(teacher_logits, student_logits, temperature)
    if log_offset:
        p_t = F.softmax(teacher_logits / temperature, dim=1)
        kd = kd - log_offset * p_t.sum(dim=1).mean()
    return alpha * temperature * temperature * kd


def intraq_student_loss(teacher_logits: Tensor, student_logits: Tensor, labels: Tensor, temperature: float = 20.0,
                        alpha: float = 20.0) -> tuple[Tensor, dict[str, Tensor]]:
    """L_Q = α·T²·KL_bm + CE(S(x), y) on the stored sampled labels (IQ:trainer_direct.py:L124-128, L260-263)."""
    kd = kd_batchmean(teacher_logits, student_logits, temperature, alpha)
    ce = F.cross_entropy(student_logits, labels)
    return kd + ce, {"kd": kd.detach(), "ce": ce.detach()}


def confident_mask(teacher_logits: Tensor, labels: Tensor, tau: float, inclusive: bool = False) -> Tensor:
    """SynQ's easy-sample mask: 1 where δ_i = 1 − softmax(T(x))_{y_i} < τ (SQ:src/trainer_direct.py:L495-499).

    ``inclusive=True`` uses δ_i ≤ τ (the paper's Eq. 6). Returned as a bool tensor, no gradient."""
    p_true = F.softmax(teacher_logits.detach(), dim=1).gather(1, labels[:, None]).squeeze(1)
    difficulty = 1.0 - p_true
    return difficulty <= tau if inclusive else difficulty < tau


def selective_cross_entropy(student_logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """SynQ's CE on easy samples: CE over the whole batch with the hard samples' logits and labels set to 0
    (SQ:src/trainer_direct.py:L287-292), i.e. (1/B)·[Σ_easy CE_i + n_hard·log C]: hard samples add a constant."""
    masked_logits = torch.where(mask[:, None], student_logits, torch.zeros_like(student_logits))
    masked_labels = torch.where(mask, labels, torch.zeros_like(labels))
    return F.cross_entropy(masked_logits, masked_labels)


# ----------------------------------------------------------------------------------------------------------------
# HAST: channel attention transfer and sample-difficulty promotion


def channel_attention(feature: Tensor) -> Tensor:
    """a(f) = L2-normalise over channels of mean_{h,w} f² (HA:trainer_direct.py:L183-184; SQ:L348-354)."""
    return F.normalize(feature.pow(2).mean(dim=(2, 3)).reshape(feature.shape[0], -1))


def attention_transfer_loss(student_features: list[Tensor], teacher_features: list[Tensor], weight: float
                            ) -> Tensor:
    """L_FA = λ·Σ_l mean_{b,c}(a_l^S − a_l^T)² (HA:trainer_direct.py:L129-134, SQ:L219-227).

    The features are the outputs of every ``ResUnit.body`` (residual branch before the add; MobileNetV2
    ``LinearBottleneck.conv3``, MobileNetV1 ``DwsConvBlock.pw_conv.bn``) of student and teacher alike (HA:L235-248).
    The teacher's attention is **not** detached (the official code keeps its graph)."""
    if len(student_features) != len(teacher_features) or not student_features:
        raise DfqbenchError(f"attention transfer needs as many student as teacher features (and at least one); got "
                            f"{len(student_features)} and {len(teacher_features)}")
    terms = [(channel_attention(s) - channel_attention(t)).pow(2).mean()
             for s, t in zip(student_features, teacher_features)]
    return weight * torch.stack(terms).sum()


def fgsm_perturb(loss: Tensor, x: Tensor, eps: float) -> Tensor:
    """x' = x + ε·sgn(∂loss/∂x), detached, not clipped (HA:trainer_direct.py:L309-313, SQ:L511-515).

    ``x`` must require grad and ``loss`` depend on it; the graph is kept (``retain_graph``) for the caller's
    backward of the same loss."""
    (grad,) = torch.autograd.grad(loss, x, retain_graph=True)
    return (x + eps * torch.sgn(grad)).detach()


# ----------------------------------------------------------------------------------------------------------------
# SynQ: low-pass filter and Grad-CAM alignment


def gaussian_low_pass(height: int, width: int, d0: float, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """The (H, W) filter G_uv = exp(−((u − W//2)² + (v − H//2)²)/(2·D0²)) on the centred spectrum, returned
    ``ifftshift``-ed so it multiplies the unshifted FFT (SQ:src/trainer_direct.py:L168-175: integer frequency-index
    distances, the centre at (W//2, H//2))."""
    y = torch.arange(height, device=device)[:, None]
    x = torch.arange(width, device=device)[None, :]
    d_square = (x - width // 2) ** 2 + (y - height // 2) ** 2
    h = torch.exp((-d_square).to(dtype) / (2 * d0 ** 2))
    return torch.fft.ifftshift(h, dim=(-2, -1))


def low_pass_filter(x: Tensor, d0: float = 80.0, reference_size: int | None = None) -> Tensor:
    """SynQ's low-pass filter: x^F = Re(IFFT2(FFT2(x)·G)) per image and channel (SQ:src/trainer_direct.py:L161-184,
    paper Eq. 4); multiplying the unshifted spectrum by ``ifftshift(G)`` is the official fftshift → ·G → ifftshift,
    a permutation of the same products.

    ``d0`` is in frequency-index units, absolute (faithful: D0 = 80 leaves a 32×32 image nearly unfiltered,
    G ≥ 0.96). ``reference_size`` (a fix, spec §4.3/§8.5): D0 is meant for images of that side and is scaled by
    min(H, W)/reference_size (e.g. 224: D0 = 80 becomes 11.4 on 32×32 images)."""
    h, w = x.shape[-2:]
    if reference_size is not None:
        d0 = d0 * min(h, w) / reference_size
    real = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    g = gaussian_low_pass(h, w, d0, x.device, real)
    return torch.fft.ifft2(torch.fft.fft2(x, dim=(-2, -1)) * g, dim=(-2, -1)).real


CAM_CLASSES = ("argmax", "label")


def grad_cam(activations: Tensor, logits: Tensor, size: tuple[int, int], classes: Tensor | None = None,
             zero_gradient_offset: bool = True, eps: float = 1e-10) -> Tensor:
    """SynQ's Grad-CAM saliency (B, 1, H, W) in [0, 1] (SQ:src/gradcam.py:L114-195).

    ``activations`` (B, K, h, w) are the output of the model's last conv in module order (SQ:src/gradcam.py:L89-103;
    :func:`last_conv_name`) from the forward that gave ``logits``. Score = logit of ``classes`` (default: each
    sample's own argmax, the official quirk; paper Eq. 5 uses the label). w_k = spatial mean of ∂score/∂A_k,
    clamped to ≥ 1e-10, **not** differentiated (the official plain ``backward``); S = ReLU(Σ_k w_k·A_k), bilinearly
    upsampled to ``size``, min-max normalised per sample with eps 1e-10. The gradient reaches the model only
    through A. ``zero_gradient_offset`` (faithful): the official loop adds 1e-10 to every gradient while any is
    exactly 0 (gradcam.py:L167-168); here once (a second round needs an entry of exactly −1e-10).
    """
    if classes is None:
        classes = logits.detach().argmax(dim=1)
    score = logits.gather(1, classes[:, None]).sum()
    (grad,) = torch.autograd.grad(score, activations, retain_graph=True)
    if zero_gradient_offset:
        grad = grad + eps * (grad == 0).any().to(grad.dtype)
    b, k = grad.shape[:2]
    weights = grad.reshape(b, k, -1).mean(dim=2).clamp(min=eps).reshape(b, k, 1, 1)
    saliency = F.relu((weights * activations).sum(dim=1, keepdim=True))
    saliency = F.interpolate(saliency, size=size, mode="bilinear", align_corners=False)
    flat = saliency.reshape(b, -1)
    lo = flat.amin(dim=1).reshape(b, 1, 1, 1)
    hi = flat.amax(dim=1).reshape(b, 1, 1, 1)
    return (saliency - lo) / (hi - lo + eps)


def cam_alignment_loss(teacher_activations: Tensor, teacher_logits: Tensor, student_activations: Tensor,
                       student_logits: Tensor, size: tuple[int, int], labels: Tensor | None = None,
                       cam_class: str = "argmax") -> Tensor:
    """L_CAM = MSE(S_T, S_S) of the two Grad-CAM maps (SQ:src/trainer_direct.py:L255-274).

    ``cam_class``: "argmax" (faithful: each model's own argmax, SQ:src/gradcam.py:L148-149) or "label" (paper
    Eq. 5: the sampled label, the same class for both). The teacher's activations need a graph to its logits
    (its input requires grad); its map is used as a constant target."""
    if cam_class not in CAM_CLASSES:
        raise DfqbenchError(unknown_choice("method.cam_class", cam_class, list(CAM_CLASSES)))
    classes = labels if cam_class == "label" else None
    target = grad_cam(teacher_activations, teacher_logits, size, classes).detach()
    return F.mse_loss(target, grad_cam(student_activations, student_logits, size, classes))


def last_conv_name(model: nn.Module) -> str:
    """Name of the last ``nn.Conv2d`` or quantized conv (a module with a ``conv`` weight of 4 dims that is not a
    container of one) in module order: SynQ's Grad-CAM layer, whatever ``layer_name`` says (SQ:src/gradcam.py:
    L89-103)."""
    from dfqbench.quant.modules import QuantConv2d

    names = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, QuantConv2d))]
    if not names:
        raise DfqbenchError(f"Grad-CAM needs a convolution; {type(model).__name__} has none")
    return names[-1]


# ----------------------------------------------------------------------------------------------------------------
# Whole student objectives (HAST, SynQ): several forwards, so the models come in as callables

Forward = Callable[[Tensor], tuple]  # x -> (logits, features[, cam activations])


@dataclass(frozen=True)
class HastStudentLoss:
    """HAST's fine-tuning loss settings. ``fa_weight``/``eps`` are the values the code uses whatever the hocon says
    (HA:options.py:L59-61: λ = 1000, ε = 0.01; the hocons' 2000/0.02, 4000/0.01 are dead, spec §3.4).
    ``detach_teacher_in_perturbation`` (fix, spec §8.5): the FGSM gradient ignores the teacher's dependence on x
    (official: the teacher runs with grad, HA:trainer_direct.py:L304-309)."""

    temperature: float = 20.0
    alpha: float = 20.0
    fa_weight: float = 1000.0
    eps: float = 0.01
    detach_teacher_in_perturbation: bool = False


def hast_student_loss(x: Tensor, labels: Tensor, teacher: Forward, student: Forward, cfg: HastStudentLoss
                      ) -> tuple[Tensor, dict[str, Tensor]]:
    """One HAST student objective (HA:trainer_direct.py:L291-319): L(x) + L(x'), L = α·T²·KL_bm + L_FA (no CE),
    x' = x + ε·sgn(∂L(x)/∂x) with the teacher's graph (faithful), teacher under no_grad on x'.

    ``teacher(x)``/``student(x)`` return (logits, FA features). The teacher is called with grad enabled on an
    input that requires grad. Returns the total and its terms (detached)."""
    if not x.requires_grad:  # a trainer step hands over a leaf that already requires grad (one traceable graph)
        x = x.detach().requires_grad_(True)
    t_logits, t_feats = teacher(x)
    s_logits, s_feats = student(x)
    if cfg.detach_teacher_in_perturbation:
        t_logits, t_feats = t_logits.detach(), [f.detach() for f in t_feats]
    kd = kd_batchmean(t_logits, s_logits, cfg.temperature, cfg.alpha)
    fa = attention_transfer_loss(s_feats, t_feats, cfg.fa_weight)
    x_p = fgsm_perturb(kd + fa, x, cfg.eps)
    with torch.no_grad():
        tp_logits, tp_feats = teacher(x_p)
    sp_logits, sp_feats = student(x_p)
    kd_p = kd_batchmean(tp_logits, sp_logits, cfg.temperature, cfg.alpha)
    fa_p = attention_transfer_loss(sp_feats, tp_feats, cfg.fa_weight)
    total = kd + fa + kd_p + fa_p
    return total, {"kd": kd.detach(), "fa": fa.detach(), "kd_perturbed": kd_p.detach(),
                   "fa_perturbed": fa_p.detach()}


@dataclass(frozen=True)
class SynqStudentLoss:
    """SynQ's fine-tuning loss settings: code defaults (SQ:src/main_direct.py:L613-627; λ_FA and ε from
    SQ:src/options.py:L90-92). The shipped ImageNet run uses λ_CE = 0.5, λ_CAM = 50 (``run_imagenet.sh``).

    Switches: ``perturbed_fa`` (official: True on ImageNet only, SQ:src/trainer_direct.py:L526-529);
    ``cam_class`` "argmax" (faithful) / "label" (paper Eq. 5); ``inclusive_tau`` (paper: δ ≤ τ);
    ``paper_objective`` (paper Eq. 6: KD + selective CE + CAM, no FA and no perturbation term);
    ``detach_teacher_in_perturbation`` (as HAST's); ``kd_log_offset`` 1e-7 (SQ:L212; 0 removes it).
    The low-pass filter is a batch transform (:func:`low_pass_filter`) applied before this loss."""

    temperature: float = 20.0
    alpha: float = 20.0
    lambda_ce: float = 5.0
    tau: float = 0.5
    selective_ce: bool = True
    lambda_cam: float = 200.0
    lambda_pert: float = 1.0
    fa_weight: float = 1000.0
    eps: float = 0.01
    perturbed_fa: bool = False
    cam_class: str = "argmax"
    inclusive_tau: bool = False
    paper_objective: bool = False
    detach_teacher_in_perturbation: bool = False
    kd_log_offset: float = 1e-7

    def __post_init__(self) -> None:
        if self.cam_class not in CAM_CLASSES:
            raise DfqbenchError(unknown_choice("method.cam_class", self.cam_class, list(CAM_CLASSES)))


def synq_student_loss(x: Tensor, labels: Tensor, teacher: Forward, student: Forward, cfg: SynqStudentLoss
                      ) -> tuple[Tensor, dict[str, Tensor]]:
    """One SynQ student objective on the filtered batch x (SQ:src/trainer_direct.py:L488-535):

    L_s = α·T²·KL_bm + λ_CE·CE_sel + L_FA; x' = x + ε·sgn(∂L_s/∂x); L_p = KD(x') + λ_CE·CE_sel(x')
    [+ L_FA(x') if ``perturbed_fa``] with the teacher under no_grad on x' and the mask of x;
    total = L_s + λ_pert·L_p + λ_CAM·L_CAM(x). ``teacher(x)``/``student(x)`` return (logits, FA features, the last
    conv's output). The CAM maps are computed from the same forwards as L_s (the official code runs the two
    models once more on x for them: same values, same gradient)."""
    if not x.requires_grad:  # a trainer step hands over a leaf that already requires grad (one traceable graph)
        x = x.detach().requires_grad_(True)
    t_logits, t_feats, t_act = teacher(x)
    s_logits, s_feats, s_act = student(x)
    mask = confident_mask(t_logits, labels, cfg.tau, cfg.inclusive_tau) if cfg.selective_ce else None

    def ce_of(logits: Tensor) -> Tensor:
        return selective_cross_entropy(logits, labels, mask) if mask is not None else F.cross_entropy(logits, labels)

    grad_t_logits, grad_t_feats = t_logits, t_feats
    if cfg.detach_teacher_in_perturbation:
        grad_t_logits, grad_t_feats = t_logits.detach(), [f.detach() for f in t_feats]
    kd = kd_batchmean(grad_t_logits, s_logits, cfg.temperature, cfg.alpha, cfg.kd_log_offset)
    ce = ce_of(s_logits)
    terms: dict[str, Tensor] = {"kd": kd.detach(), "ce": ce.detach()}
    loss_s = kd + cfg.lambda_ce * ce
    if not cfg.paper_objective:
        fa = attention_transfer_loss(s_feats, grad_t_feats, cfg.fa_weight)
        terms["fa"] = fa.detach()
        loss_s = loss_s + fa
        x_p = fgsm_perturb(loss_s, x, cfg.eps)
        with torch.no_grad():
            tp_logits, tp_feats, _ = teacher(x_p)
        sp_logits, sp_feats, _ = student(x_p)
        kd_p = kd_batchmean(tp_logits, sp_logits, cfg.temperature, cfg.alpha, cfg.kd_log_offset)
        ce_p = ce_of(sp_logits)
        loss_p = kd_p + cfg.lambda_ce * ce_p
        terms.update(kd_perturbed=kd_p.detach(), ce_perturbed=ce_p.detach())
        if cfg.perturbed_fa:
            fa_p = attention_transfer_loss(sp_feats, tp_feats, cfg.fa_weight)
            terms["fa_perturbed"] = fa_p.detach()
            loss_p = loss_p + fa_p
        loss_s = loss_s + cfg.lambda_pert * loss_p
    cam = cam_alignment_loss(t_act, t_logits, s_act, s_logits, tuple(x.shape[-2:]), labels, cfg.cam_class)
    terms["cam"] = cam.detach()
    if mask is not None:
        terms["easy_fraction"] = mask.to(x.dtype).mean()
    return loss_s + cfg.lambda_cam * cam, terms
