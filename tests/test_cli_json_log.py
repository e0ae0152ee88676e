"""--json (list, status, run --grid --dry-run: one JSON document on stdout, nothing else) and --log's one-line
errors (unknown logger, logger package missing)."""

from __future__ import annotations

import json
import sys

import pytest

from dfqbench.cli import main

from conftest import TINY_OVERRIDES

TINY_ARGS = ["run", "--method", "gdfq", "--model", "tiny_cifar10", "--bits", "w4a4", "--protocol", "quick",
             "--device", "cpu", "--log-every", "2"]


@pytest.fixture(autouse=True)
def _plan_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", str(tmp_path / "plan-cache"))


def _json_out(args: list[str], capsys):
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)  # the whole of stdout is one document


def test_list_json(capsys):
    methods = _json_out(["list", "methods", "--json"], capsys)
    from dfqbench.plugins import load_methods

    assert [m["name"] for m in methods] == load_methods().names() and "zaq" in load_methods()
    gdfq = next(m for m in methods if m["name"] == "gdfq")
    assert "ECCV 2020" in gdfq["paper"] and gdfq["version"] and gdfq["steps"] == ["G", "Q"]
    models = {m["name"]: m for m in _json_out(["list", "models", "--json"], capsys)}
    assert {"resnet20_cifar10", "resnet18", "resnet50", "mobilenetv2_w1"} <= models.keys()
    assert models["resnet20_cifar10"]["dataset"] == "cifar10" and models["resnet20_cifar10"]["num_classes"] == 10
    assert models["resnet18"]["input_size"] == 224 and len(models["resnet18"]["normalization"]["std"]) == 3


def test_dry_run_json(tmp_path, capsys):
    results = tmp_path / "res"
    doc = _json_out(["run", "--grid", "smoke", "--dry-run", "--json", "--results", str(results)], capsys)
    assert doc["grid"] == "smoke" and doc["runs"] == 4 and doc["to_run"] == 4 and doc["counts"]["pending"] == 4
    assert doc["varying"] == {"bits": 2, "seed": 2} and doc["estimate"]["formula_runs"] == 4
    assert len(doc["cells"]) == 4 and all(c["run_id"] and c["status"] == "pending" for c in doc["cells"])
    assert {(c["bits"], c["seed"]) for c in doc["cells"]} == {("w4a4", 0), ("w4a4", 1), ("w3a3", 0), ("w3a3", 1)}
    again = _json_out(["run", "--grid", "smoke", "--dry-run", "--json", "--results", str(results),
                       "--only", "bits=w3a3"], capsys)  # from the plan cache now
    assert again["filtered_out"] == 2 and [c["run_id"] for c in again["cells"]] == \
        [c["run_id"] for c in doc["cells"] if c["bits"] == "w3a3"]
    assert not results.exists()


def test_status_json(tmp_path, capsys):
    results = tmp_path / "res"
    code = main(TINY_ARGS + ["--results", str(results), *TINY_OVERRIDES])
    capsys.readouterr()
    assert code == 0
    (folder,) = (results / "runs").iterdir()
    doc = _json_out(["status", "--json", "--results", str(results)], capsys)
    assert doc["results"] == str(results.resolve()) and doc["grid"] is None
    (single,) = doc["grids"]
    assert single["grid"] is None and single["runs"] == 1 and single["counts"]["done"] == 1
    assert single["run_states"] == [{"run_name": folder.name, "run_id": folder.name.rsplit("_", 1)[-1],
                                     "state": "done", "reason": None, "partial": False, "job_id": None,
                                     "code": "current", "code_reason": None}]
    never = _json_out(["status", "--grid", "smoke", "--json", "--results", str(results)], capsys)
    assert never["launched"] is False and never["grids"] == [] and never["plan"]["runs"] == 4


def test_json_is_for_dry_runs_only(tmp_path, capsys):
    for args in (TINY_ARGS + ["--json"], ["run", "--grid", "smoke", "--json", "--device", "cpu"]):
        code = main(args + ["--results", str(tmp_path / "res")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "--json" in lines[0] and "--dry-run" in lines[0], lines
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_missing_logger_package_is_one_line(logger, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, logger, None)  # find_spec answers None: as if not installed
    for args in (TINY_ARGS, ["run", "--grid", "smoke", "--device", "cpu"], ["run", "--grid", "smoke", "--dry-run"]):
        code = main(args + ["--log", logger, "--results", str(tmp_path / "res")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1, lines
        assert lines[0] == (f"dfqbench: error: --log {logger} needs the {logger} package, which is not installed; "
                            f"pip install 'dfqbench[{logger}]'")
    assert not (tmp_path / "res").exists()


def test_unknown_logger_is_one_line(tmp_path, capsys):
    code = main(TINY_ARGS + ["--log", "tensorbord", "--results", str(tmp_path / "res")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "unknown logger (--log) 'tensorbord'; did you mean 'tensorboard'? choices: tensorboard, wandb" in lines[0]
    assert not (tmp_path / "res").exists()
