"""Shared fixtures and helpers: a tiny GDFQ run that finishes in about a second on CPU, progress sinks that
record messages or crash after an epoch, and a bit-for-bit state-dict comparison."""

from __future__ import annotations

import os
from importlib import metadata

import pytest
import torch

from dfqbench.runner import RunRequest
from dfqbench.core.progress import SilentProgress

TINY_OVERRIDES = [
    "train.epochs=3",
    "train.iters_per_epoch=4",
    "train.batch_size=8",
    "train.warmup_epochs=1",
    "train.range_update_epochs=1",
]


EXAMPLE_PLUGIN_DIR = "examples/dfqbench-gdfq-ie"  # the example method plugin package; its method: gdfq_ie


def require_example_plugin() -> None:
    """Skip when the example plugin package is not installed (the README's test command installs it), unless
    DFQBENCH_REQUIRE_EXAMPLE=1 (CI), which turns the skip into a failure."""
    if any(ep.name == "gdfq_ie" for ep in metadata.entry_points(group="dfqbench.methods")):
        return
    message = f"the example plugin is not installed (pip install -e {EXAMPLE_PLUGIN_DIR})"
    if os.environ.get("DFQBENCH_REQUIRE_EXAMPLE") == "1":
        pytest.fail(f"DFQBENCH_REQUIRE_EXAMPLE=1 but {message}")
    pytest.skip(message)


def same_state(a: dict, b: dict) -> bool:
    """Two state dicts with the same keys and bit-for-bit equal tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


RecordingProgress = SilentProgress  # a silent progress sink that keeps the trainer's messages


class CrashAfterEpoch(RecordingProgress):
    """Raises "simulated crash" at the end of the given (0-based) epoch, after its checkpoint is written."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.crash_epoch = epoch

    def end_epoch(self, epoch, top1, best) -> None:
        if epoch == self.crash_epoch:
            raise RuntimeError("simulated crash")


@pytest.fixture
def tiny_request(tmp_path):
    """A factory of tiny GDFQ run requests writing under tmp_path (kwargs replace fields)."""

    def make(**changes) -> RunRequest:
        fields = dict(method="gdfq", model="tiny_cifar10", bits="w4a4", seed=0, protocol="quick",
                      overrides=list(TINY_OVERRIDES), results=str(tmp_path / "results"), device="cpu", log_every=2)
        fields.update(changes)
        return RunRequest(**fields)

    return make


@pytest.fixture(autouse=True, scope="module")
def golden_tests_on_one_thread(request):
    """The golden tests (tests/golden) compute on one thread, as every fixture was made (make/*.py): a
    reduction's rounding depends on how it is split across threads, and Adam's first step turns the rounding
    of near-zero gradients into visible steps."""
    if not request.module.__name__.startswith("test_golden_"):
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
