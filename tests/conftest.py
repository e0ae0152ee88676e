"""Shared fixtures: a tiny GDFQ run that finishes in about a second on CPU."""

from __future__ import annotations

import pytest

from dfqbench.runner import RunRequest

TINY_OVERRIDES = [
    "train.epochs=3",
    "train.iters_per_epoch=4",
    "train.batch_size=8",
    "train.warmup_epochs=1",
    "train.range_update_epochs=1",
]


@pytest.fixture
def tiny_request(tmp_path):
    """A factory of tiny GDFQ run requests writing under tmp_path (kwargs replace fields)."""

    def make(**changes) -> RunRequest:
        fields = dict(method="gdfq", model="tiny_cifar10", bits="w4a4", seed=0, protocol="quick",
                      overrides=list(TINY_OVERRIDES), results=str(tmp_path / "results"), device="cpu", log_every=2)
        fields.update(changes)
        return RunRequest(**fields)

    return make
