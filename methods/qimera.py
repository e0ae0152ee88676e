"""Qimera: Data-free Quantization with Synthetic Boundary Supporting Samples (Choi et al., NeurIPS 2021),
faithful to iamkanghyunchoi/qimera.

GDFQ plus superposed samples and its own generator input path:
- per iteration, with probability p the whole batch is superposed: K labels per sample, K noise vectors,
  λ = softmax(N(0, I_K)), soft target ỹ = Σ_k λ_k·onehot(y_k) (trainer.py L207-235; dfqbench.blocks.superposed);
- generator input DM(norm(E[y_k] + σ_n·z_k)) mixed by λ, E initialised from the teacher's last layer or
  N(0, 1), DM off as the released scripts run it (main.py L28-156; dfqbench.blocks.generators_qimera);
- L_G = SoftCE(T(x), ỹ) + 0.1·L_BNS                          (trainer.py L237-251)
- L_Q = α·T²·KL_el(p_T ‖ p_Q) + SoftCE(Q(x), ỹ), T = 20, α = 1  (trainer.py L109-130; KL element mean)
Schedule, optimisers, quantizer and evaluation are GDFQ's (trainer.py L51-81, main.py L358-412).

Deviations from the official code, each behind a switch whose default is the official behaviour:
``dm`` (official ``--no_DM`` is inverted: DM is off unless the flag is passed; no script passes it),
``cbn_divide_by_k`` (ImageNet CBN mixes γ, β with a mean over K; False = the convex combination),
``kd_reduction`` ("batchmean" multiplies the KD term by C). ``noise_scale`` is applied on every dataset
(the official ImageNet generator ignores it; identical at the default 1.0). The presets follow the
requested bits: the official "4-bit" CIFAR-100 script trains W5A5 (its hocon sets qw = qa = 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dfqbench.blocks.generators_qimera import QimeraGenerator, teacher_class_embedding
from dfqbench.blocks.interface import Method, Sample, register_method
from dfqbench.blocks.superposed import (
    MIX_WEIGHTS, SLOT_LABELS, check_superposed_settings, is_superposed, superposed_sample,
)
from dfqbench.errors import DfqbenchError
from dfqbench.specs.validate import check_positive
from dfqbench.methods.gdfq import GDFQ, KD_REDUCTIONS
from dfqbench.registry import unknown_choice

EMBEDDING_INITS = ("teacher", "random")  # "random" is the official --randemb

# The official run scripts (run_*_4bit.sh, other_train_scripts/run_*_5bit.sh):
# model → {script bits: (superposed_prob p, superposed_k K, embedding_init, latent_dim)}.
SCRIPT_PRESETS: dict[str, dict[int, tuple[float, int, str, int]]] = {
    "resnet20_cifar10": {4: (0.4, 2, "random", 64), 5: (0.4, 2, "random", 64)},
    "resnet20_cifar100": {4: (0.4, 10, "teacher", 64), 5: (0.4, 50, "teacher", 64)},
    "resnet18": {4: (0.4, 500, "random", 512), 5: (0.4, 100, "random", 512)},
    "resnet50": {4: (0.7, 500, "teacher", 2048), 5: (0.7, 100, "teacher", 2048)},
    "mobilenetv2_w1": {4: (0.4, 100, "random", 1280), 5: (0.4, 100, "random", 1280)},
}
# Another architecture on a known dataset takes that dataset's script settings, with latent_dim left to
# the teacher's feature size (the hocons' latent_dim is the feature size of the scripted model).
DATASET_SCRIPT = {"cifar10": "resnet20_cifar10", "cifar100": "resnet20_cifar100", "imagenet": "resnet18"}


@dataclass(frozen=True)
class QimeraConfig:
    latent_dim: int | None = None  # D of E and z; None: the teacher's last-layer input size (as the hocons set it)
    embedding_init: str = "teacher"  # "teacher": E = teacher's last-layer weight; "random": N(0, 1) (--randemb)
    freeze_embedding: bool = False  # --freeze (no official script passes it)
    noise_scale: float = 1.0  # σ_n in e = E[y] + σ_n·z (--noise_scale)
    dm: bool = False  # disentanglement mapping Linear(D → dm_dim) per slot; official default off (inverted --no_DM)
    dm_dim: int = 100  # intermediate_dim (options.py: 100; its "resnet20" → 64 branch never matches)
    superposed_prob: float = 0.4  # p (--multi_label_prob)
    superposed_k: int = 2  # K (--multi_label_num)
    cbn_divide_by_k: bool = True  # ImageNet CBN mix (1/K)·Σ λ_k γ_{y_k} (official); False: Σ λ_k γ_{y_k}
    bns_weight: float = 0.1  # weight of L_BNS in L_G
    temperature: float = 20.0  # KD temperature T
    kd_weight: float = 1.0  # α
    kd_reduction: str = "element_mean"  # faithful; "batchmean" multiplies the KD term by C

    def __post_init__(self) -> None:
        if self.embedding_init not in EMBEDDING_INITS:
            raise DfqbenchError(unknown_choice("method.embedding_init", self.embedding_init, list(EMBEDDING_INITS)))
        if self.kd_reduction not in KD_REDUCTIONS:
            raise DfqbenchError(unknown_choice("method.kd_reduction", self.kd_reduction, list(KD_REDUCTIONS)))
        if self.latent_dim is not None and (not isinstance(self.latent_dim, int) or self.latent_dim < 1):
            raise DfqbenchError(f"invalid method.latent_dim={self.latent_dim!r}: an integer >= 1, or null for the "
                                "teacher's feature size")
        if not isinstance(self.dm_dim, int) or self.dm_dim < 1:
            raise DfqbenchError(f"invalid method.dm_dim={self.dm_dim!r}: must be an integer >= 1")
        check_positive("method.temperature", self.temperature)
        check_superposed_settings(self.superposed_prob, self.superposed_k)


def script_bits(wbits: int, abits: int) -> int:
    """Which official script a cell takes its p, K from: the 5-bit one from W5A5 up, else the 4-bit one."""
    return 5 if min(wbits, abits) >= 5 else 4


@register_method
class Qimera(Method):
    name = "qimera"
    paper = "Choi et al., Qimera: Data-free Quantization with Synthetic Boundary Supporting Samples, NeurIPS 2021"
    version = "2"  # 2: ema_gdfq tracker bit-exact with the official float32 arithmetic (golden tests)
    config_class = QimeraConfig

    def __init__(self, config: QimeraConfig, num_classes: int, input_size: int, dataset: str) -> None:
        super().__init__(config, num_classes, input_size, dataset)
        self.latent_dim: int | None = config.latent_dim
        self.embedding: torch.Tensor | None = None

    @classmethod
    def paper_protocol(cls, dataset: str, model: str, wbits: int, abits: int) -> dict[str, dict[str, Any]]:
        train = GDFQ.paper_protocol(dataset, model, wbits, abits)["train"]  # Qimera's schedule is GDFQ's
        method: dict[str, Any] = {}
        script = model if model in SCRIPT_PRESETS else DATASET_SCRIPT.get(dataset)
        if script is not None:
            prob, k, init, latent = SCRIPT_PRESETS[script][script_bits(wbits, abits)]
            method = {"superposed_prob": prob, "superposed_k": k, "embedding_init": init}
            if script == model:
                method["latent_dim"] = latent
        return {"train": train, "method": method, "quant": {}}

    def setup_description(self) -> str:
        return "class embedding from the teacher's last layer" if self.config.embedding_init == "teacher" else "embedding size"

    def setup(self, teacher: nn.Module, device: torch.device) -> None:
        """Take E's initial value from the teacher's last layer and resolve D (no random numbers drawn)."""
        cfg = self.config
        if cfg.embedding_init != "teacher" and self.latent_dim is not None:
            return
        try:
            weight = teacher_class_embedding(teacher)
        except ValueError as exc:
            raise DfqbenchError(f"method.embedding_init={cfg.embedding_init!r} needs the teacher's classifier: {exc}; "
                                "set method.embedding_init=random and method.latent_dim") from None
        if weight.shape[0] != self.num_classes:
            raise DfqbenchError(f"teacher's last layer has {weight.shape[0]} outputs, expected {self.num_classes} classes")
        if self.latent_dim is None:
            self.latent_dim = int(weight.shape[1])
        if cfg.embedding_init == "teacher":
            if self.latent_dim != weight.shape[1]:
                raise DfqbenchError(f"invalid method.latent_dim={self.latent_dim}: embedding_init=teacher needs the "
                                    f"teacher's feature size {weight.shape[1]} (or null)")
            self.embedding = weight.cpu()

    def build_generator(self) -> nn.Module:
        if self.latent_dim is None:
            raise RuntimeError("Qimera.setup(teacher, device) must run before build_generator()")
        cfg = self.config
        return QimeraGenerator(self.dataset, self.num_classes, self.input_size, self.latent_dim,
                               embedding=self.embedding, freeze_embedding=cfg.freeze_embedding, dm=cfg.dm,
                               dm_dim=cfg.dm_dim, noise_scale=cfg.noise_scale, cbn_divide_by_k=cfg.cbn_divide_by_k)

    def sample(self, batch_size: int, device: torch.device) -> Sample:
        if self.latent_dim is None:
            raise RuntimeError("Qimera.setup(teacher, device) must run before sample()")
        return superposed_sample(self.config, batch_size, self.num_classes, self.latent_dim, device)

    def generate(self, generator: nn.Module, sample: Sample) -> torch.Tensor:
        if is_superposed(sample):
            return generator(sample.z, sample.extra[SLOT_LABELS], sample.extra[MIX_WEIGHTS])
        return generator(sample.z, sample.labels)

    # GDFQ's L_G and L_Q: class_cross_entropy is the soft CE here, since Qimera's samples always carry
    # targets (ỹ when superposed, one-hot otherwise; dfqbench.blocks.superposed.superposed_sample).
    generator_loss = GDFQ.generator_loss
    student_loss = GDFQ.student_loss
