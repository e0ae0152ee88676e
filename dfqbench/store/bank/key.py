"""A bank's identity: what changes its pixels, hashed into its folder name (``<results>/banks/<name>/``).

The key holds the method and its version, the teacher (model, dataset and weights identity,
:func:`dfqbench.zoo.teacher.teacher_identity`), the synthesis configuration (counts, optimiser, the method's loss
settings and the synthesis loop's version), the seed and the storage format (compaction changes the stored
pixels). Bit-widths, the fine-tuning schedule and the quantizer are **not** in it: every cell that differs only
in those shares one bank, as the official repositories reuse one image pickle across bit-widths (spec §8.1).
Importing this module never imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from dfqbench.errors import DfqbenchError
from dfqbench.registry import unknown_choice
from dfqbench.specs.runspec import canonical_json
from dfqbench.specs.validate import check_finite, check_int, check_method_name, check_seed

# fp16: half the bytes of fp32, relative error ≤ 2^-11; uint8: a quarter, per image and channel min-max affine
# (error ≤ (max − min)/510); fp32: exact. docs/banks.md has the measured loss change of each.
STORAGES = ("fp16", "uint8", "fp32")
DEFAULT_STORAGE = "fp16"
MAX_BANK_BATCHES = 100_000
MAX_BANK_BATCH = 65_536
MAX_BANK_STEPS = 10_000_000


@dataclass(frozen=True)
class BankKey:
    """Everything that changes a bank's pixels; :attr:`bank_id` hashes it, :attr:`name` names its folder."""

    method: str
    method_version: str
    model: str
    dataset: str
    seed: int
    teacher: dict[str, Any]
    num_batches: int  # batches of ``batch_size`` images, each optimised on its own (IntraQ: 4 groups × 5)
    batch_size: int
    steps: int  # optimiser steps per batch
    image_size: int
    num_classes: int
    synthesis: dict[str, Any] = field(default_factory=dict)  # the rest: optimiser, augmentation, loss weights
    storage: str = DEFAULT_STORAGE

    def __post_init__(self) -> None:
        check_method_name(self.method)
        check_seed("bank seed", self.seed)
        check_int("bank num_batches", self.num_batches, 1, MAX_BANK_BATCHES)
        check_int("bank batch_size", self.batch_size, 1, MAX_BANK_BATCH)
        check_int("bank steps", self.steps, 0, MAX_BANK_STEPS)
        check_int("bank image_size", self.image_size, 1, 4096)
        check_int("bank num_classes", self.num_classes, 1, 1_000_000)
        check_finite("bank synthesis", self.synthesis)
        if self.storage not in STORAGES:
            raise DfqbenchError(unknown_choice("bank storage", self.storage, list(STORAGES)))
        if not isinstance(self.teacher, dict) or not self.teacher:
            raise DfqbenchError(f"invalid bank teacher {self.teacher!r}: a bank needs the teacher's identity (a "
                                "pytorchcv teacher must be downloaded first)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "BankKey":
        """The key a manifest recorded; anything else is a one-line DfqbenchError."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise DfqbenchError(f"not a bank key: expected the fields {sorted(names)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise DfqbenchError(f"not a bank key: {exc}") from None

    @property
    def bank_id(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return f"{self.method}_{self.model}_s{self.seed}_{self.bank_id}"

    @property
    def images(self) -> int:
        return self.num_batches * self.batch_size

    def stored_bytes(self) -> int:
        """Bytes of the stored images (labels and per-batch metadata aside)."""
        return stored_image_bytes(self.images, self.image_size, self.storage)


def stored_image_bytes(images: int, size: int, storage: str, channels: int = 3) -> int:
    """Bytes that ``images`` images of ``channels × size × size`` take in ``storage`` (uint8 adds its per image
    and channel offset and scale, two float32 each)."""
    pixels = images * channels * size * size
    if storage == "fp32":
        return 4 * pixels
    if storage == "fp16":
        return 2 * pixels
    if storage == "uint8":
        return pixels + 8 * images * channels
    raise DfqbenchError(unknown_choice("bank storage", storage, list(STORAGES)))
