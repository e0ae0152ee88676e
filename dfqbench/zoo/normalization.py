"""Input normalisation presets (the official codes' and pytorchcv's) and the ``--weights-norm`` / ``--norm`` parser."""

from __future__ import annotations

from dataclasses import dataclass

from dfqbench.errors import DfqbenchError


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std applied to RGB images in [0, 1]: ``(x - mean) / std``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str = "custom"


NORMALIZATIONS: dict[str, Normalization] = {
    # ImageNet standard statistics (as in every official code); also what the shared ResNet-20 was trained with.
    "imagenet": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet"),
    # GDFQ family's CIFAR-10 evaluation normalisation: the true test std (93.89 % for pytorchcv R20).
    "cifar10": Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "cifar10"),
    # pytorchcv's own CIFAR-10 train/eval normalisation (imgclsmob cifar10_cls_dataset.py; 94.03 %).
    "cifar10_pytorchcv": Normalization((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), "cifar10_pytorchcv"),
    # GDFQ family's CIFAR-100 normalisation (70.33 % for pytorchcv R20).
    "cifar100": Normalization((0.5071, 0.4867, 0.4408), (0.2675, 0.2557, 0.2761), "cifar100"),
}

_EXPLICIT_FORM = "'m1,m2,m3/s1,s2,s3' (e.g. '0.485,0.456,0.406/0.229,0.224,0.225')"


def parse_normalization(text: str) -> Normalization:
    """A preset name (case-insensitive) or an explicit ``m1,m2,m3/s1,s2,s3`` with positive stds."""
    key = str(text).strip().lower()
    if key in NORMALIZATIONS:
        return NORMALIZATIONS[key]
    bad = (
        f"unknown normalisation {text!r}; choices: {', '.join(sorted(NORMALIZATIONS))}, "
        f"or explicit {_EXPLICIT_FORM}"
    )
    if "/" not in key:
        raise DfqbenchError(bad)
    mean_text, _, std_text = key.partition("/")
    try:
        mean = tuple(float(v) for v in mean_text.split(","))
        std = tuple(float(v) for v in std_text.split(","))
    except ValueError:
        raise DfqbenchError(bad) from None
    if len(mean) != 3 or len(std) != 3:
        raise DfqbenchError(f"normalisation {text!r} needs 3 means and 3 stds: {_EXPLICIT_FORM}")
    if not all(s > 0 for s in std) or not all(abs(v) < float("inf") for v in mean + std):
        raise DfqbenchError(f"normalisation {text!r} needs finite means and positive stds: {_EXPLICIT_FORM}")
    return Normalization(mean, std, "custom")  # type: ignore[arg-type]
