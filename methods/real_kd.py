"""The real-data reference (**not data-free**): the direct family's fine-tuning on a bank of real training images.

DFQ papers print, beside their data-free rows, what the same quantized network reaches when fine-tuned on the
original training data (e.g. Qimera §3: CIFAR-100 ResNet-20 W4A4 "fine-tuned with the original data" 68.28,
``../shared/spec/paper-tables.md``): the upper bound a data-free method approaches. ``real_kd`` gives it through
the direct family's own path (:mod:`methods._direct`, spec newer-methods.md §8.1), with only the images changed:

- **Bank**: ``bank_batches × bank_batch_size`` (default 20 × 256 = 5,120, the synthetic banks' size) real images of
  the dataset's training split, class-balanced (⌊N / C⌋ per class, the remainder to seeded classes) and drawn
  with the run's seed (:mod:`dfqbench.zoo.train_data`), stored with their true labels, normalised as the teacher
  is evaluated, in the shared bank store (:mod:`dfqbench.store.bank`; fp16 by default: its error ≤ 2^-11 relative
  is far below the source's 8-bit step). The bank key names the data's identity (torchvision's md5 list; for a
  folder the digest of its file names and of the chosen files' bytes), the normalisation, transform, seed and
  count, never the bits: W3A3/W4A4/W5A5 of a seed read one bank.
- **Ranges** (``calibration``): "bank" by default — calibrated on real (cropped) bank batches in the warm-up
  epochs, as a real-data quantizer would; "generator" runs the direct family's GDFQ-generator calibration instead.
- **Fine-tuning**: IntraQ's recipe unchanged (IQ = zysxmu/IntraQ @ 5228f76): per-image RandomResizedCrop(0.5-1) +
  flip (IQ:main_direct.py:L111-124), L_Q = α·T²·KL_bm(p_T ‖ p_S) + CE(S(x), y) with α = T = 20 and y the true
  labels (IQ:trainer_direct.py:L117-128, L260-263); 151 × 200 iterations, batch 256 / 16, lr 1e-4 / 1e-6
  (IntraQ's hocons, :func:`methods._direct.direct_train`).

Labelled not data-free everywhere: the class attribute ``data_free = False`` (``dfqbench list methods``, the grid
dry run) and ``method_config.data_free = false`` in every spec and record (the report keeps such runs out of
the data-free tables and shows them in their own "real-data reference" table, :mod:`dfqbench.report.reference`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dfqbench.blocks.interface import LossTerms, StepContext, register_method
from dfqbench.errors import DfqbenchError
from dfqbench.methods._direct import BankImages, DirectConfig, DirectMethod, direct_train, kd_term
from dfqbench.store.bank import BankKey, build_bank
from dfqbench.store.layout import ResultsStore
from dfqbench.zoo.train_data import SOURCES, TrainSplit, locate_train_split

if TYPE_CHECKING:
    from dfqbench.specs import RunSpec

REAL_BANK_VERSION = "1"  # part of every real bank's key: bump when the images a bank holds change on purpose
TINY_REAL_BANK = {"bank_batches": 2, "bank_batch_size": 16}  # the test network: 32 images


@dataclass(frozen=True)
class RealKDConfig(DirectConfig):
    """The direct family's settings (:class:`methods._direct.DirectConfig`) for a bank of real images; the
    synthesis settings (``synthesis_lr``, ``plateau_patience``, ``aug_prob`` …) are unused."""

    data_free: bool = False  # a label, recorded in every spec: this method fine-tunes on real training data
    source: str = "auto"  # "auto" | "folder" | "torchvision" (dfqbench.zoo.train_data)
    balanced: bool = True  # class-balanced draw; false: uniform without replacement
    synthesis_steps: int = 0  # nothing is synthesised
    aug_prob: float = 0.0
    bank_storage: str = "fp16"
    calibration: str = "bank"  # ranges from real images; "generator": the direct family's GDFQ calibration

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data_free is not False:
            raise DfqbenchError(f"invalid method.data_free={self.data_free!r}: real_kd fine-tunes on real training "
                                "images and is never data-free; choices: false")
        if self.source not in SOURCES:
            raise DfqbenchError(f"invalid method.source={self.source!r}; choices: {', '.join(SOURCES)}")
        if not isinstance(self.balanced, bool):
            raise DfqbenchError(f"invalid method.balanced={self.balanced!r}; choices: true, false")
        if self.synthesis_steps != 0:
            raise DfqbenchError(f"invalid method.synthesis_steps={self.synthesis_steps!r}: real_kd reads real images "
                                "and synthesises nothing; choices: 0")


def real_bank_key(spec: "RunSpec", config: RealKDConfig, split: TrainSplit, image_size: int,
                  num_classes: int) -> BankKey:
    """The key of the real bank a run of ``spec`` reads: the source data's identity, the normalisation, the draw
    (seed, count, balance) and the storage; not the teacher (real images do not depend on it) nor the bits."""
    count = config.bank_batches * config.bank_batch_size
    norm = spec.normalization
    return BankKey(method=spec.method, method_version=spec.method_version, model=spec.model, dataset=spec.dataset,
                   seed=spec.seed, teacher={"not_used": "real training images do not depend on the teacher"},
                   num_batches=config.bank_batches, batch_size=config.bank_batch_size, steps=0,
                   image_size=image_size, num_classes=num_classes,
                   synthesis={"real_bank": REAL_BANK_VERSION, "balanced": config.balanced,
                              "source": split.identity(count, num_classes, spec.seed, config.balanced),
                              "normalization": {"mean": list(norm["mean"]), "std": list(norm["std"])}},
                   storage=config.bank_storage)


@register_method
class RealKD(DirectMethod):
    name = "real_kd"
    paper = ("NOT DATA-FREE: real-data reference (the upper bound DFQ papers print beside their rows): 5,120 real "
             "training images, class-balanced, fine-tuned with IntraQ's KD recipe (zysxmu/IntraQ @ 5228f76, "
             "trainer_direct.py:L117-128) and per-image crop + flip; ranges calibrated on real images")
    version = "1"
    config_class = RealKDConfig
    data_free = False  # read by `list methods` and the grid dry run (Method has no such attribute: default True)

    def __init__(self, config: Any, num_classes: int, input_size: int, dataset: str) -> None:
        super().__init__(config, num_classes, input_size, dataset)
        self.split: TrainSplit | None = None

    @classmethod
    def paper_protocol(cls, dataset: str, model: str, wbits: int, abits: int) -> dict[str, dict[str, Any]]:
        """IntraQ's schedule (151 × 200, batch 256 / 16, lr 1e-4 / 1e-6); the tiny network: a bank of 2 × 16."""
        method: dict[str, Any] = dict(TINY_REAL_BANK) if dataset == "tiny" else {}
        return {"train": direct_train(dataset, epochs=151, cifar_lr=1e-4), "method": method, "quant": {}}

    @classmethod
    def bank_of(cls, spec: "RunSpec", config: DirectConfig) -> BankKey:
        from dfqbench.zoo import model_info

        assert isinstance(config, RealKDConfig)
        info = model_info(spec.model)
        return real_bank_key(spec, config, locate_train_split(info, config.source), info.input_size,
                             info.num_classes)

    def setup_description(self) -> str:
        cfg = self.config
        return (f"real-data bank (not data-free): {cfg.bank_batches * cfg.bank_batch_size:,} "
                f"{'class-balanced ' if cfg.balanced else ''}training images (read if already stored)")

    def setup(self, teacher: nn.Module, device: torch.device) -> None:
        """The real bank of this run's key: read when stored, else built from the chosen training images (under
        the bank's lease, batch by batch, resuming after the last stored batch)."""
        if self.spec is None or self.results is None:
            raise RuntimeError(f"{self.name}: prepare_run(spec, results) must run before setup()")
        from dfqbench.zoo import model_info

        spec, cfg = self.spec, self.config
        info = model_info(spec.model)
        split = self.split = locate_train_split(info, cfg.source)
        key = real_bank_key(spec, cfg, split, info.input_size, info.num_classes)
        chosen = split.choose(key.images, info.num_classes, spec.seed, cfg.balanced)
        mean = torch.tensor(spec.normalization["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.normalization["std"], dtype=torch.float32).view(1, 3, 1, 1)

        def produce(index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            positions = chosen[index * key.batch_size:(index + 1) * key.batch_size]
            images = split.read(positions.tolist()).float().div_(255).sub_(mean).div_(std)
            return images, split.labels[positions], torch.empty(0)

        reader = build_bank(ResultsStore(self.results).bank(key.name), key, produce)
        self.bank = BankImages(reader, device, next(teacher.parameters()).dtype)

    def student_loss(self, ctx: StepContext) -> tuple[torch.Tensor, LossTerms]:
        """L_Q = 8000·KL_bm + CE on the true labels (IQ:trainer_direct.py:L124-128, L260-263)."""
        return kd_term(self.config, ctx.teacher_logits, ctx.student_logits, ctx.sample.labels)
