"""Protocols: named transformations of a method's paper schedule.

``paper`` is the method's published schedule (its presets per dataset/model/bit-width). ``quick`` keeps
everything that defines the method (losses, optimisers, learning rates, warm-up of 4 epochs and the 4-epoch
range-calibration window, hence the compounding EMA's full ~200 updates) but shortens the run to
at most 8 epochs × 50 iterations at batch ≤ 64 without LR decay, evaluated on at most 10,000 fixed test images,
so that a CIFAR ResNet-20 run finishes in minutes on 2 CPU cores. Any field stays overridable.
"""

from __future__ import annotations

from typing import Any, Callable

from dfqbench.registry import Registry

Protocol = Callable[[dict[str, Any]], dict[str, Any]]
PROTOCOLS: Registry[Protocol] = Registry("protocol")

QUICK_ITERS = 50
QUICK_WARMUP = 4
QUICK_FINETUNE_EPOCHS = 4
QUICK_MAX_BATCH = 64
QUICK_MAX_EVAL_IMAGES = 10_000


@PROTOCOLS.register("paper")
def paper(train: dict[str, Any]) -> dict[str, Any]:
    """The published schedule, unchanged."""
    return dict(train)


@PROTOCOLS.register("quick")
def quick(train: dict[str, Any]) -> dict[str, Any]:
    """A short schedule for a first look and for CPU machines (not comparable with the papers' numbers)."""
    warmup = min(train["warmup_epochs"], QUICK_WARMUP)
    never_frozen = train["range_update_epochs"] >= train["epochs"]  # e.g. ZAQ: ranges update in every epoch
    ranges = min(train["range_update_epochs"], QUICK_WARMUP)
    epochs = min(train["epochs"], max(warmup, 0 if never_frozen else ranges) + QUICK_FINETUNE_EPOCHS)
    ranges = epochs if never_frozen else ranges
    max_images = train["eval_max_images"]
    return {
        **train,
        "epochs": epochs,
        "iters_per_epoch": min(train["iters_per_epoch"], QUICK_ITERS),
        "batch_size": min(train["batch_size"], QUICK_MAX_BATCH),
        "warmup_epochs": warmup,
        "range_update_epochs": ranges,
        "milestones_q": (),
        "milestones_g": (),
        "eval_start_epoch": 0,
        "eval_max_images": QUICK_MAX_EVAL_IMAGES if max_images is None else min(max_images, QUICK_MAX_EVAL_IMAGES),
    }
