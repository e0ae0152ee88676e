"""The real ResNet-20 and CIFAR-10 test set from ../shared, loaded through the offline options a user sets.

Run with, e.g.::

    DFQBENCH_WEIGHTS=../shared/weights/resnet20_cifar10.pth DFQBENCH_WEIGHTS_NORM=imagenet \
    DFQBENCH_DATA=../shared/data pytest -m integration

Skipped when those variables are unset, unless DFQBENCH_REQUIRE_SHARED=1 (then it fails).
"""

from __future__ import annotations

import os

import pytest

from dfqbench.zoo import Evaluator, load_pretrained, load_test_set

pytestmark = pytest.mark.integration

REQUIRED = ("DFQBENCH_WEIGHTS", "DFQBENCH_WEIGHTS_NORM", "DFQBENCH_DATA")
SHARED_SHA256 = "fddb0e96e600e49984fd6ec4872feb17f3e78abcf9cd519adc75f1aa9fe9a855"  # shared/weights/README.md


def _require_shared() -> None:
    missing = [var for var in REQUIRED if not os.environ.get(var)]
    if not missing:
        return
    message = (
        f"{', '.join(missing)} not set; set DFQBENCH_WEIGHTS=<shared>/weights/resnet20_cifar10.pth "
        "DFQBENCH_WEIGHTS_NORM=imagenet DFQBENCH_DATA=<shared>/data to run the shared-asset integration test"
    )
    if os.environ.get("DFQBENCH_REQUIRE_SHARED") == "1":
        pytest.fail(f"DFQBENCH_REQUIRE_SHARED=1 but {message}")
    pytest.skip(message)


def test_shared_resnet20_fp_top1_is_91_73():
    _require_shared()
    loaded = load_pretrained("resnet20_cifar10")  # weights, normalisation and data come from the environment
    assert loaded.teacher_id == {"source": "file", "sha256": SHARED_SHA256}, "DFQBENCH_WEIGHTS is not the shared file"
    assert loaded.normalization.name == "imagenet"
    test_set = load_test_set(loaded.info)
    assert test_set.images is not None and tuple(test_set.images.shape) == (10000, 3, 32, 32)
    assert test_set.labels.bincount().tolist() == [1000] * 10
    acc = Evaluator(test_set, loaded.normalization).evaluate(loaded.model)
    assert round(acc, 2) == 91.73, f"FP top-1 {acc:.4f}, expected 91.73 (shared/weights/README.md)"
