"""Bounds and validation up front (issue 13): bad numbers, seeds, grid names and axes are one-line errors
before anything is written, and spec.json is always valid JSON. Nothing here trains."""

from __future__ import annotations

import dataclasses
import math

import pytest

from dfqbench.cli import main
from dfqbench.errors import DfqbenchError
from dfqbench.launch.grid import MAX_SEEDS, load_grid, parse_seeds
from dfqbench.specs import RunSpec, TrainConfig, canonical_json
from dfqbench.store import RunFolder, atomic_write_json

from test_cli import TINY_ARGS


def _spec(**train) -> RunSpec:
    return RunSpec(method="gdfq", method_version="1", model="tiny_cifar10", dataset="cifar10", bits="w4a4", seed=0,
                   teacher={}, normalization={}, quant={}, train={**dataclasses.asdict(TrainConfig()), **train},
                   method_config={})


@pytest.mark.parametrize("overrides, key", [
    (["train.epochs=2.5"], "train.epochs=2.5"),
    (["train.epochs=.inf"], "train.epochs=inf"),
    (["train.epochs=true"], "train.epochs"),
    (["train.lr_q=-1"], "train.lr_q=-1.0"),
    (["train.lr_q=.nan"], "train.lr_q=nan"),
    (["train.lr_g=0"], "train.lr_g=0.0"),
    (["train.g_betas=[2,3]"], "train.g_betas=(2, 3)"),
    (["train.g_betas=[0.5]"], "train.g_betas"),
    (["train.warmup_epochs=5", "train.epochs=2"], "never be fine-tuned"),
    (["train.q_momentum=1"], "train.q_momentum=1.0"),
    (["train.q_weight_decay=-0.1"], "train.q_weight_decay"),
    (["train.lr_gamma=0"], "(0, 1]"),
    (["train.lr_gamma=1.5"], "(0, 1]"),
    (["train.milestones_q=[100, 2.5]"], "train.milestones_q"),
    (["train.milestones_g=[-1]"], "train.milestones_g"),
    (["train.batch_size=0"], "train.batch_size=0"),
    (["train.eval_start_epoch=-1"], "train.eval_start_epoch"),
    (["train.eval_max_images=0"], "train.eval_max_images"),
    (["train.range_update_epochs=1.5"], "train.range_update_epochs"),
    (["method.temperature=0"], "method.temperature=0.0"),
    (["method.bns_weight=.inf"], "method.bns_weight=inf"),
    (["quant.momentum=.nan"], "quant.momentum=nan"),
])
def test_bad_numbers_are_one_line_exit_2_and_write_nothing(overrides, key, tmp_path, capsys):
    code = main([*TINY_ARGS, "--results", str(tmp_path / "R"), *overrides])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("dfqbench: error:"), lines
    assert key in lines[0]
    assert not (tmp_path / "R").exists()


@pytest.mark.parametrize("seed", ["99999999999999999999", "-1"])
def test_seed_out_of_torch_range_is_one_line(seed, tmp_path, capsys):
    code = main([*TINY_ARGS, "--results", str(tmp_path / "R"), "--seed", seed])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "2**63 - 1" in err[0]
    assert not (tmp_path / "R").exists()


def test_train_config_keeps_zeroq_calibration_only_and_ranges():
    TrainConfig(epochs=1, warmup_epochs=1, range_update_epochs=1, milestones_q=(), milestones_g=())  # ZeroQ
    TrainConfig(g_betas=[0.0, 0.5], milestones_q=[0, 3], eval_max_images=None)  # lists, as read back from JSON
    with pytest.raises(DfqbenchError, match=r"train\.epochs=2\.0: must be an integer"):
        TrainConfig(epochs=2.0)


@pytest.mark.parametrize("method", ["gdfq", "qimera", "zeroq_kd", "adasg", "adadfq"])
def test_zero_temperature_rejected_for_every_method_with_one(method):
    from dfqbench.plugins import load_methods

    cls = load_methods().get(method)
    with pytest.raises(DfqbenchError, match=r"method\.temperature"):
        cls.config_class(temperature=0.0)


def test_seed_lists_are_bounded_before_they_are_built():
    assert parse_seeds("0-2,5") == [0, 1, 2, 5]
    with pytest.raises(DfqbenchError, match=f"at most {MAX_SEEDS} seeds"):
        parse_seeds("0-100000000000000")
    with pytest.raises(DfqbenchError, match=r"2\*\*63 - 1"):
        parse_seeds(f"{2**63}")


def test_dry_run_with_huge_seed_range_is_one_line(capsys):
    assert main(["run", "--grid", "smoke", "--seeds", "0-100000000", "--dry-run"]) == 2
    assert "at most 10000 seeds" in capsys.readouterr().err


def _grid(tmp_path, text: str):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return load_grid(path)


@pytest.mark.parametrize("text, expected", [
    ("name: ../../../somewhere\nbase: {method: gdfq, model: tiny_cifar10, bits: w4a4}\n", "name '../../../somewhere'"),
    ("name: ok\naxes: {method: [gdfq], model: [../x], bits: [w4a4]}\n", "model '../x'"),
    ("axes: {method: [gdfq], model: [tiny_cifar10], bits: [w4a4, W4A4]}\n", "axes.bits lists 'w4a4' more than once"),
    ("axes: {method: [gdfq, gdfq], model: [tiny_cifar10], bits: [w4a4]}\n", "axes.method lists 'gdfq'"),
    (f"base: {{method: gdfq, model: tiny_cifar10, bits: w4a4}}\naxes: {{seed: {list(range(MAX_SEEDS + 1))}}}\n",
     f"at most {MAX_SEEDS}"),
    ("base: {method: gdfq, model: tiny_cifar10, bits: w4a4, seed: 9223372036854775808}\n", "2**63 - 1"),
])
def test_grid_names_values_and_axes_are_checked(tmp_path, text, expected):
    with pytest.raises(DfqbenchError) as info:
        _grid(tmp_path, text)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_spec_json_refuses_nan(tmp_path):
    spec = _spec()
    RunFolder(tmp_path / "ok").create(spec)  # a valid spec is written as before
    assert (tmp_path / "ok" / "spec.json").exists()
    bad = dataclasses.replace(spec, method_config={"temperature": math.nan})
    with pytest.raises(DfqbenchError, match="NaN"):
        canonical_json(bad.hashed())
    with pytest.raises((DfqbenchError, ValueError)):
        RunFolder(tmp_path / "bad").create(bad)
    assert not (tmp_path / "bad" / "spec.json").exists()
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"v": math.inf}, allow_nan=False)
    assert not (tmp_path / "x.json").exists()
