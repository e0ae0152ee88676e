"""Run specifications: frozen data that fully determine a run's numbers, and the run id hashed from them.

A :class:`RunSpec` holds everything that changes the numbers (method and its version and hyperparameters,
model, teacher weights identity, normalisation, quantizer, schedule, seed) and nothing that does not
(paths, device, log frequency, the protocol's name). Its :func:`run_id` is a hash of those fields, so
asking for the same run twice finds the same folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from dfqbench.errors import DfqbenchError
from dfqbench.specs.validate import check_finite, check_int, check_real, is_int, is_real, short_repr


@dataclass(frozen=True)
class TrainConfig:
    """The trainer's schedule; defaults are GDFQ's CIFAR hocon and ``trainer.py`` (L48-78, L181-241)."""

    epochs: int = 400
    iters_per_epoch: int = 200
    batch_size: int = 200
    warmup_epochs: int = 4  # generator-only epochs: the student is not stepped before this epoch
    range_update_epochs: int = 4  # activation ranges update in epochs [0, n) then freeze (hard-coded 4 in GDFQ)
    lr_q: float = 1e-4
    lr_g: float = 1e-3
    q_momentum: float = 0.9
    q_nesterov: bool = True
    q_weight_decay: float = 1e-4
    g_betas: tuple[float, float] = (0.5, 0.999)
    milestones_q: tuple[int, ...] = (100, 200, 300)
    milestones_g: tuple[int, ...] = (100, 200, 300)
    lr_gamma: float = 0.1
    eval_start_epoch: int = 0  # GDFQ ImageNet evaluates only once epoch > warmup − 2
    eval_max_images: int | None = None  # None: the full test set; else a fixed seeded subset

    def __post_init__(self) -> None:
        check_train_config(self)


# Upper bounds of the schedule's counts: far above any published protocol (GDFQ: 400 epochs × 200 iterations,
# batch 200), low enough that every count derived from them (evaluations, GPU-hour estimates) stays small.
MAX_EPOCHS = 100_000
MAX_ITERS_PER_EPOCH = 1_000_000
MAX_BATCH_SIZE = 65_536
MAX_EVAL_IMAGES = 10_000_000
MAX_MILESTONES = 1_000
# Learning rates and weight decay: the optimizers hold them as float32 scalars (largest 3.4e38), so 1e300 would
# overflow inside torch. A bound against that, not a plausibility check: 1e30 is how a test makes a run diverge.
MAX_RATE = 1e30


def check_train_config(cfg: TrainConfig) -> None:
    """Types and ranges of every field, as one-line errors naming ``train.<field>`` and the valid range."""
    check_int("train.epochs", cfg.epochs, 1, MAX_EPOCHS)
    check_int("train.iters_per_epoch", cfg.iters_per_epoch, 1, MAX_ITERS_PER_EPOCH)
    check_int("train.batch_size", cfg.batch_size, 1, MAX_BATCH_SIZE)
    for name in ("warmup_epochs", "range_update_epochs", "eval_start_epoch"):
        check_int(f"train.{name}", getattr(cfg, name), 0, MAX_EPOCHS)
    if cfg.warmup_epochs > cfg.epochs:
        raise DfqbenchError(f"invalid train.warmup_epochs={cfg.warmup_epochs} > train.epochs={cfg.epochs}: the "
                            "student would never be fine-tuned; use warmup_epochs <= epochs (equal: calibration only)")
    if cfg.eval_max_images is not None:
        check_int("train.eval_max_images", cfg.eval_max_images, 1, MAX_EVAL_IMAGES)
    for name in ("lr_q", "lr_g"):
        check_real(f"train.{name}", getattr(cfg, name), 0.0, MAX_RATE, low_open=True, high_open=False)
    check_real("train.q_momentum", cfg.q_momentum, 0.0, 1.0)
    check_real("train.q_weight_decay", cfg.q_weight_decay, 0.0, MAX_RATE, high_open=False)
    check_real("train.lr_gamma", cfg.lr_gamma, 0.0, 1.0, low_open=True, high_open=False)
    if not isinstance(cfg.q_nesterov, bool):
        raise DfqbenchError(f"invalid train.q_nesterov={cfg.q_nesterov!r}: expected true or false")
    betas = cfg.g_betas
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(is_real(b) and 0 <= b < 1 for b in betas):
        raise DfqbenchError(f"invalid train.g_betas={betas!r}: expected two finite numbers in [0, 1), "
                            "e.g. [0.5, 0.999]")
    for name in ("milestones_q", "milestones_g"):
        value = getattr(cfg, name)
        if not isinstance(value, (list, tuple)) or len(value) > MAX_MILESTONES or not all(
                is_int(m) and 0 <= m <= MAX_EPOCHS for m in value):
            raise DfqbenchError(f"invalid train.{name}={short_repr(value)}: expected a list of at most "
                                f"{MAX_MILESTONES:,} integers in [0, {MAX_EPOCHS:,}], e.g. [100, 200]")


# (section, setting) -> the value every run had before the setting existed: hashed only when it differs
HASHED_WHEN_SET: dict[tuple[str, str], Any] = {("quant", "zero_variance_bn"): "keep"}


@dataclass(frozen=True)
class RunSpec:
    """Everything that changes a run's numbers. ``protocol`` (a label) and ``changed`` (derived) are left out
    of the hash."""

    method: str
    method_version: str
    model: str
    dataset: str
    bits: str
    seed: int
    teacher: dict[str, Any]
    normalization: dict[str, Any]
    quant: dict[str, Any]
    train: dict[str, Any]
    method_config: dict[str, Any]
    protocol: str = field(default="custom", compare=False)
    # How train/method_config/quant differ from the cell's default ({override key: value}; {} = the default;
    # None = not recorded), :mod:`dfqbench.specs.configuration`. Follows from the hashed fields: not hashed.
    changed: dict[str, Any] | None = field(default=None, compare=False)

    def hashed(self) -> dict[str, Any]:
        """The hashed fields; a setting added after runs were recorded enters only when it is not at the value
        those runs had (:data:`HASHED_WHEN_SET`), so their ids still find them."""
        data = dataclasses.asdict(self)
        data.pop("protocol")
        data.pop("changed")
        for (section, name), earlier in HASHED_WHEN_SET.items():
            values = data.get(section)
            if isinstance(values, dict) and name in values and values[name] == earlier:
                data[section] = {k: v for k, v in values.items() if k != name}
        return data

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, **dataclasses.asdict(self)}

    @property
    def run_id(self) -> str:
        return hashlib.sha256(canonical_json(self.hashed()).encode()).hexdigest()[:12]

    @property
    def run_name(self) -> str:
        return f"{self.method}_{self.model}_{self.bits}_s{self.seed}_{self.run_id}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSpec":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed. NaN and infinity are refused (they are
    not JSON, and no valid spec holds them)."""
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), default=list, allow_nan=False)
    except ValueError as exc:
        raise DfqbenchError(f"run spec is not valid JSON ({exc}); NaN and infinity are not allowed") from None
