"""Grid files, their expansion and validation, the planner's per-cell statuses, run states and the dry run.

Everything here plans only (no training), on gdfq and the tiny model, except the shipped paper grids,
whose cell counts are checked from the grid files alone (whatever methods are registered).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from dfqbench.cli import main
from dfqbench.errors import DfqbenchError
from dfqbench.grids import shipped_grids
from dfqbench.launch.estimate import formula_seconds
from dfqbench.launch.grid import apply_filters, expand, load_grid, parse_filters, parse_seeds
from dfqbench.runner import predict_spec
from dfqbench.launch.plan import LaunchOptions, plan_grid
from dfqbench.store import run_state
from dfqbench.runner import RunRequest, prepare
from dfqbench.specs import TrainConfig
from dfqbench.zoo.tiny import build_tiny

from conftest import TINY_OVERRIDES
from waiting import wait_until


@pytest.fixture(autouse=True)
def private_plan_cache(tmp_path, monkeypatch):
    """Every test gets its own plan cache (dfqbench/launch/plancache.py), never the user's."""
    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", str(tmp_path / "plan-cache"))


def write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


TINY_BASE = """
base:
  method: gdfq
  model: tiny_cifar10
  protocol: quick
  train.epochs: 3
  train.iters_per_epoch: 4
  train.batch_size: 8
  train.warmup_epochs: 1
  train.range_update_epochs: 1
"""


# -- shipped grids -------------------------------------------------------------------------------------
def test_shipped_grids_load():
    assert {"paper_table1", "qimera_table2", "adasg_ablation", "quickstart", "smoke"} <= set(shipped_grids())
    for name in shipped_grids():
        assert expand(load_grid(name))


def test_paper_table1_cells_are_the_published_cells_of_our_methods():
    """AdaSG Table 1: 15 cells per method, ZAQ without W3A3 (5 dashes), Qimera without W3A3 on MV2/R50."""
    cells = expand(load_grid("paper_table1"))
    assert len(cells) == 5 * 5 * 3 * 3
    kept = [c for c in cells if not c.excluded]
    per_method = Counter(c.method for c in kept)
    assert per_method == {"zaq": 10 * 3, "gdfq": 15 * 3, "qimera": 13 * 3, "adasg": 15 * 3, "adadfq": 15 * 3}
    assert len(kept) == 68 * 3
    assert {c.seed for c in kept} == {0, 1, 2} and {c.protocol for c in kept} == {"paper"}
    excluded = {(c.method, c.model, c.bits) for c in cells if c.excluded}
    assert ("qimera", "mobilenetv2_w1", "w3a3") in excluded and ("qimera", "resnet18", "w3a3") not in excluded
    assert all("dash" in c.excluded for c in cells if c.excluded)


def test_qimera_table2_and_adasg_ablation_counts():
    assert len(expand(load_grid("qimera_table2"))) == 4 * 5 * 2 * 3
    ablation = expand(load_grid("adasg_ablation"))
    assert len(ablation) == 5 * 2 * 3
    no_ds = [c for c in ablation if c.variant == "no_ds"]
    assert no_ds and all("method.ds_weight=0.0" in c.overrides for c in no_ds)
    full = [c for c in ablation if c.variant == "full"]
    assert full and all(c.overrides == () for c in full)


def test_synq_table1_cells_are_the_published_cells_of_our_methods():
    """SynQ Table 1: the cells where IntraQ, HAST and SynQ print a number (published.yaml synq_t1), 5 seeds."""
    from dfqbench.report.published import load_published

    cells = expand(load_grid("synq_table1"))
    assert len(cells) == 3 * 5 * 2 * 5
    kept = [c for c in cells if not c.excluded]
    assert Counter(c.method for c in kept) == {"intraq": 7 * 5, "hast": 7 * 5, "synq": 10 * 5} and len(kept) == 120
    assert {c.seed for c in kept} == set(range(5)) and {c.protocol for c in kept} == {"paper"}
    table = load_published().tables["synq_t1"]
    printed = {(method, row.model, row.bits) for row in table.rows for column, method in table.method_of.items()
               if row.values[column] is not None}
    assert {(c.method, c.model, c.bits) for c in kept} == printed
    assert all("dash in SynQ Table 1" in c.excluded for c in cells if c.excluded)


def test_synq_table1_plans_its_methods_as_they_are_installed(tmp_path, monkeypatch):
    """Each of intraq, hast, synq: unregistered, its cells are invalid with the registry's one-line reason (the
    grid will not start); registered, every cell it prints plans as a run (or as one its method declares
    unsupported), so the grid can start. Planned with the papers' teachers (no local weights file: with CI's
    DFQBENCH_WEIGHTS, a ResNet-20 CIFAR-10 file, every other model's cells are skipped for want of weights)."""
    from dfqbench.plugins import load_methods

    for name in ("DFQBENCH_WEIGHTS", "DFQBENCH_WEIGHTS_NORM"):
        monkeypatch.delenv(name, raising=False)

    registry = load_methods()
    plan = plan_grid(load_grid("synq_table1"), options(tmp_path), None, [0])
    by_method = {m: [c for c in plan.cells if c.cell.method == m and c.status != "excluded"]
                 for m in ("intraq", "hast", "synq")}
    assert {m: len(cells) for m, cells in by_method.items()} == {"intraq": 7, "hast": 7, "synq": 10}
    for method, planned in by_method.items():
        for c in planned:
            if method in registry:
                assert c.status in ("pending", "unsupported"), (method, c.status, c.reason)
            else:
                assert c.status == "invalid" and c.reason.startswith(f"unknown method {method!r}"), (method, c.reason)


# -- expansion -----------------------------------------------------------------------------------------
def test_axes_together_excludes_presets_and_precedence(tmp_path):
    path = write(tmp_path, """
base: {method: gdfq, model: tiny_cifar10, protocol: quick, train.epochs: 2, overrides: ["train.batch_size=8"]}
axes:
  seed: [0, 1]
together:
  - {bits: [w4a4, w3a3], train.lr_q: [0.001, 0.002]}
exclude:
  - {bits: w3a3, seed: 1, reason: not wanted}
presets:
  - match: {bits: w3a3}
    set: {train.epochs: 5, train.lr_q: 9.0}
    profile: big
""")
    cells = expand(load_grid(path))
    assert [(c.seed, c.bits) for c in cells] == [(0, "w4a4"), (0, "w3a3"), (1, "w4a4"), (1, "w3a3")]
    w3 = cells[1]
    overrides = dict(o.split("=", 1) for o in w3.overrides)
    assert overrides == {"train.epochs": "5", "train.batch_size": "8", "train.lr_q": "0.002"}  # axis beats preset
    assert w3.profile == "big" and cells[0].profile is None
    assert cells[3].excluded == "not wanted" and not cells[2].excluded
    assert dict(o.split("=", 1) for o in cells[0].overrides)["train.epochs"] == "2"


@pytest.mark.parametrize("text, expected", [
    ("axis: {method: [gdfq]}", ["'axis'", "did you mean 'axes'", "choices:"]),
    ("axes: {methd: [gdfq]}", ["axes.'methd'", "did you mean 'method'"]),
    ("axes: {train.epoch: [3]}", ["'train.epoch'", "train.epochs"]),
    ("axes: {bits: w4a4}", ["axes.bits must be a non-empty list"]),
    ("axes: {seed: [-1]}", ["seed=-1"]),
    ("together: [{model: [a, b], bits: [w4a4]}]", ["same length"]),
    ("axes: {bits: [w4a4]}\ntogether: [[{bits: w3a3}]]", ["vary in more than one"]),
    ("presets: [{match: {bits: w4a4}, set: {bits: w3a3}}]", ["dotted override key"]),
    ("exclude: [{dataset: cifar10, colour: red}]", ["'colour'", "choices:"]),
    ("axes: [1, 2]", ["axes must be a mapping"]),
    ("axes: {seed: [0]}", ["cells have no method, model, bits"]),
    ("base: {method: gdfq\n", ["not valid YAML"]),
])
def test_grid_errors_name_file_key_and_choices(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(DfqbenchError) as info:
        expand(load_grid(path))
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for part in expected:
        assert part in message


def test_unknown_grid_name_suggests_shipped_ones():
    with pytest.raises(DfqbenchError, match="did you mean 'paper_table1'.*qimera_table2"):
        load_grid("paper_tabel1")
    with pytest.raises(DfqbenchError, match="grid file 'nope/x.yaml' not found"):
        load_grid("nope/x.yaml")


def test_filters_and_seeds():
    grid = load_grid("paper_table1")
    cells = expand(grid, seeds=[5, 6])
    assert {c.seed for c in cells} == {5, 6} and len(cells) == 5 * 5 * 3 * 2
    kept = apply_filters(cells, parse_filters(["method=adasg,adadfq", "bits=W3A3"]), grid)
    assert len(kept) == 2 * 5 * 2 and {c.method for c in kept} == {"adasg", "adadfq"}
    kept = apply_filters(cells, parse_filters(["dataset=imagenet", "seed=5"]), grid)
    assert len(kept) == 5 * 3 * 3
    with pytest.raises(DfqbenchError, match="unknown --only key 'methd'; did you mean 'method'"):
        apply_filters(cells, parse_filters(["methd=adasg"]), grid)
    with pytest.raises(DfqbenchError, match="--only method=adsg: no cell .* values: adadfq, adasg, gdfq, qimera, zaq"):
        apply_filters(cells, parse_filters(["method=adsg"]), grid)
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    for bad in ("a", "3-1", "-1", "1,,2"):
        with pytest.raises(DfqbenchError, match="invalid --seeds"):
            parse_seeds(bad)


# -- planning ------------------------------------------------------------------------------------------
def test_predicted_run_id_equals_prepare(tmp_path):
    """The planner's spec (no model loaded) is the one runner.prepare builds: builtin teacher and a file."""
    weights = tmp_path / "tiny.pth"
    torch.save(build_tiny(seed=0).state_dict(), weights)
    for extra in ({}, {"weights": str(weights), "weights_norm": "cifar10"}):
        request = RunRequest(method="gdfq", model="tiny_cifar10", bits="w3a3", seed=4, protocol="quick",
                             overrides=TINY_OVERRIDES + ["method.temperature=7", "quant.tracker=ema"],
                             results=str(tmp_path / "r"), device="cpu", **extra)
        predicted = predict_spec(request)
        assert predicted == prepare(request).spec
        assert predicted.run_id == prepare(request).spec.run_id
    assert not (tmp_path / "r").exists()


def options(tmp_path: Path) -> LaunchOptions:
    return LaunchOptions(results=tmp_path / "results", device="cpu")


def test_unregistered_invalid_and_unsupported_cells_get_reasons(tmp_path, monkeypatch):
    path = write(tmp_path, TINY_BASE + """
axes:
  method: [gdfq, nosuchmethod]
  bits: [w4a4, w3a3, w1a4]
""")
    from dfqbench.methods.gdfq import GDFQ

    monkeypatch.setattr(GDFQ, "unsupported_reason",
                        classmethod(lambda cls, d, m, w, a: "no 3-bit here" if w == 3 else None))
    plan = plan_grid(load_grid(path), options(tmp_path))
    by = {(c.cell.method, c.cell.bits): c for c in plan.cells}
    assert by[("gdfq", "w4a4")].status == "pending"
    assert by[("gdfq", "w3a3")].status == "unsupported" and "no 3-bit here" in by[("gdfq", "w3a3")].reason
    assert by[("gdfq", "w1a4")].status == "invalid" and "w1a4" in by[("gdfq", "w1a4")].reason
    bad = by[("nosuchmethod", "w4a4")]
    assert bad.status == "invalid" and "unknown method 'nosuchmethod'" in bad.reason and "gdfq" in bad.reason
    counts = plan.counts()
    assert (counts["pending"], counts["unsupported"], counts["invalid"]) == (1, 1, 4)


def test_duplicate_cells_count_once(tmp_path):
    path = write(tmp_path, TINY_BASE + """
  bits: w4a4
together:
  - [{variant: a}, {variant: b}]
""")
    plan = plan_grid(load_grid(path), options(tmp_path))
    assert len(plan.runs()) == 1 and plan.counts()["duplicate"] == 1


MINIMAL_RECORD = {"spec": {"method": "gdfq", "model": "m", "bits": "w4a4", "seed": 0, "teacher": {}},
                  "fp_top1": 90.0, "best_top1": 80.0, "final_top1": 79.0}


def test_run_states_from_the_store(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert run_state(run).state == "pending"
    (run / "checkpoint.pt").write_bytes(b"x")
    assert run_state(run).partial
    lease = {"job_id": "7_1", "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
    (run / "lease.json").write_text(json.dumps(lease))
    assert run_state(run).state == "running"
    dead = _dead_pid()
    (run / "lease.json").write_text(json.dumps({**lease, "pid": dead}))
    state = run_state(run)
    assert state.state == "lost" and "job 7_1" in state.reason
    other = {**lease, "host": "elsewhere", "pid": 1}
    (run / "lease.json").write_text(json.dumps({**other, "heartbeat": time.time() - 10}))
    assert run_state(run).state == "running"
    (run / "lease.json").write_text(json.dumps({**other, "heartbeat": time.time() - 3600}))
    assert run_state(run).state == "lost"
    (run / "error.json").write_text(json.dumps({"type": "RunDiverged", "message": "non-finite at epoch 3\nmore"}))
    assert run_state(run) .state == "failed" and run_state(run).reason == "RunDiverged: non-finite at epoch 3"
    (run / "record.json").write_text("{}")  # not a record: the run is not done, and says which file is wrong
    state = run_state(run)
    assert state.state == "failed" and state.reason == "RunDiverged: non-finite at epoch 3"
    (run / "error.json").unlink()
    state = run_state(run)
    assert state.state == "failed" and f"unreadable record '{run / 'record.json'}' (missing spec" in state.reason
    (run / "record.json").write_text(json.dumps(MINIMAL_RECORD))
    assert run_state(run).state == "done"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_lease_liveness_sees_zombies_and_reused_pids():
    """A killed worker whose launcher died stays a zombie until reaped (kill -0 still succeeds on it); a pid
    reused by another process has another start time. Neither keeps a lease alive."""
    import signal
    import subprocess
    import sys

    from dfqbench.store.lease import pid_alive, process_start

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = process_start(child.pid)
    assert started is not None and pid_alive(child.pid, started)
    assert not pid_alive(child.pid, str(int(started) + 1))
    os.kill(child.pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(child.pid, started), "the killed child to read as not alive", poll_s=0.05)
    os.kill(child.pid, 0)  # not reaped yet: a zombie, which kill -0 still reaches
    child.wait()


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_estimate_follows_its_documented_anchor():
    """GDFQ CIFAR paper schedule: 80k iterations × (10 ms + 200 × 0.05 ms) + 400 × 10k × 0.11 ms (estimate.py)."""
    from dfqbench.methods.gdfq import GDFQ
    import dataclasses

    train = {**dataclasses.asdict(TrainConfig()), **GDFQ.paper_protocol("cifar10", "resnet20_cifar10", 4, 4)["train"]}
    assert formula_seconds("resnet20_cifar10", "cifar10", train, 1) == pytest.approx(80_000 * 0.020 + 400 * 10_000 * 0.11e-3)



def test_estimate_prices_hast_above_intraq_at_the_same_cell(tmp_path):
    """HAST's fine-tuning step adds an FGSM-perturbed forward and an input-gradient backward to IntraQ's KD step:
    at the same cell (same schedule, batch and bank) its estimate is larger, by the per-method factor the basis
    names as assumed (estimate.py STEP_COST_FACTOR, from benchmarks/bench_step.py's CPU ratios)."""
    path = write(tmp_path, """
base: {model: resnet20_cifar10, bits: w4a4, protocol: paper}
axes:
  method: [intraq, hast]
""")
    plan = plan_grid(load_grid(path), options(tmp_path), None, [0])
    runs = {c.cell.method: c for c in plan.runs()}
    assert set(runs) == {"intraq", "hast"}
    assert runs["hast"].train["epochs"] == runs["intraq"].train["epochs"]
    assert runs["hast"].train["batch_size"] == runs["intraq"].train["batch_size"]
    intraq, hast = plan.estimate([runs["intraq"]]), plan.estimate([runs["hast"]])
    assert hast.hours > intraq.hours
    assert "assumed, CPU-ratio based" in hast.basis() and "hast" in hast.basis()
    gdfq_priced = formula_seconds("resnet20_cifar10", "cifar10", runs["hast"].train, runs["hast"].q_steps)
    assert formula_seconds("resnet20_cifar10", "cifar10", runs["hast"].train, runs["hast"].q_steps,
                           "hast") != gdfq_priced

# -- the command line ----------------------------------------------------------------------------------
def test_dry_run_prints_counts_and_writes_nothing(tmp_path, capsys):
    results = tmp_path / "results"
    started = time.perf_counter()
    code = main(["run", "--grid", "paper_table1", "--dry-run", "--results", str(results)])
    elapsed = time.perf_counter() - started
    out = capsys.readouterr().out
    assert code == 0
    assert "cells: 225 = " in out and "21 excluded" in out and "varying: method ×5, model ×5, bits ×3, seed ×3" in out
    assert "estimated" in out and "GPU-hours" in out
    assert not results.exists()
    print(f"dry run of paper_table1 in-process: {elapsed:.2f} s")


def test_dry_run_of_smoke_and_filters(tmp_path, capsys):
    code = main(["run", "--grid", "smoke", "--dry-run", "--only", "bits=w3a3", "--seeds", "0-2",
                 "--results", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0 and "cells: 3 = 3 runs" in out and "(3 more filtered out by --only)" in out
    assert "varying: seed ×3" in out
    assert "runs: 3 pending, 0 running, 0 done, 0 failed, 0 lost" in out


@pytest.mark.parametrize("args, expected", [
    (["--grid", "smoke", "--method", "gdfq"], "--method is for single runs"),
    (["--grid", "smok"], "did you mean 'smoke'"),
    (["--grid", "smoke", "--only", "bits=w8a8"], "no cell of grid 'smoke' has it"),
    (["--grid", "smoke", "--jobs", "0"], "invalid --jobs 0"),
    (["--grid", "smoke", "--seeds", "x"], "invalid --seeds"),
    (["--grid", "smoke", "train.epoch=3"], "train.epochs"),
    ([], "--method is required"),
])
def test_grid_cli_errors_are_one_line(tmp_path, capsys, args, expected):
    code = main(["run", *args, "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err
    assert not (tmp_path / "r").exists()


def test_grid_with_invalid_cells_refuses_to_start(tmp_path, capsys):
    path = write(tmp_path, TINY_BASE + "axes:\n  method: [gdfq, nosuchmethod]\n  bits: [w4a4]\n")
    code = main(["run", "--grid", str(path), "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "1 invalid cells" in err and "nosuchmethod" in err
    assert not (tmp_path / "r").exists()


# -- the plan cache ------------------------------------------------------------------------------------
def test_status_reads_the_store_without_torch(tmp_path, monkeypatch):
    """`dfqbench status` and a cached dry run use dfqbench.store itself, which imports torch only to checkpoint."""
    import subprocess

    from dfqbench.launch.cli import results_root
    from dfqbench.store import RunFolder, atomic_write_json, default_results_root

    probe = "import sys, dfqbench.store, dfqbench.report.load; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"
    folder = RunFolder(tmp_path / "run")
    atomic_write_json(folder.error_path, {"type": "RunDiverged", "message": "nan"})
    assert run_state(folder.path).state == "failed"
    atomic_write_json(folder.record_path, MINIMAL_RECORD)
    assert run_state(folder.path).state == "done"
    monkeypatch.setenv("DFQBENCH_RESULTS", str(tmp_path / "elsewhere"))
    assert results_root(None) == default_results_root().resolve()
    monkeypatch.delenv("DFQBENCH_RESULTS")
    assert results_root(None) == default_results_root().resolve()


def test_cached_dry_run_is_the_full_one_without_torch(tmp_path):
    """A second dry run answers from the plan cache: the same report, and torch is never imported."""
    import subprocess
    import sys

    code = ("import sys, io, contextlib\n"
            "from dfqbench.cli import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out): assert main(sys.argv[1:]) == 0\n"
            "print(out.getvalue() + 'TORCH=' + str('torch' in sys.modules))\n")
    args = ["run", "--grid", "paper_table1", "--dry-run", "--results", str(tmp_path / "r")]
    env = {**os.environ, "DFQBENCH_PLAN_CACHE": str(tmp_path / "cache")}
    first, second = (subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                                    check=True).stdout for _ in range(2))
    assert first.endswith("TORCH=True\n") and second.endswith("TORCH=False\n")
    assert first.removesuffix("TORCH=True\n") == second.removesuffix("TORCH=False\n")
    assert "cells: 225 = " in second


def test_cached_plan_reads_run_states_fresh_and_misses_on_any_change(tmp_path, monkeypatch):
    from dfqbench.launch.plancache import cached_plan, plan_dry
    from dfqbench.launch.summary import describe

    weights = tmp_path / "tiny.pth"
    torch.save(build_tiny(seed=0).state_dict(), weights)
    grid = load_grid(write(tmp_path, TINY_BASE + "axes:\n  bits: [w4a4, w3a3]\n"))
    opts = LaunchOptions(results=tmp_path / "results", device="cpu", weights=str(weights), weights_norm="cifar10")
    assert cached_plan(grid, opts) is None
    full = plan_dry(grid, opts)
    cached = cached_plan(grid, opts)
    assert cached is not None and describe(cached) == describe(full)
    assert [c.run_name for c in cached.runs()] == [c.spec.run_name for c in full.runs()]
    assert cached_plan(grid, opts, {"bits": ["w3a3"]}).runs()[0].run_name == full.runs()[1].run_name

    done = tmp_path / "results" / "runs" / full.runs()[0].run_name
    done.mkdir(parents=True)
    (done / "record.json").write_text(json.dumps(MINIMAL_RECORD))
    assert cached_plan(grid, opts).counts()["done"] == 1  # states are read, not cached

    assert cached_plan(grid, opts, seeds=[7]) is None  # a cell never planned
    assert cached_plan(grid, LaunchOptions(**{**vars(opts), "overrides": ["train.lr_q=0.5"]})) is None
    monkeypatch.setenv("DFQBENCH_SOMETHING", "1")
    assert cached_plan(grid, opts) is None
    monkeypatch.delenv("DFQBENCH_SOMETHING")
    assert cached_plan(grid, opts) is not None
    torch.save(build_tiny(seed=1).state_dict(), weights)  # other teacher weights: other run ids
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cached_plan(grid, opts) is None
    assert plan_dry(grid, opts).runs()[0].run_name != full.runs()[0].run_name


def test_cached_plan_notices_a_downloaded_pytorchcv_teacher(tmp_path, monkeypatch):
    """A pytorchcv teacher not downloaded has no run id yet; once its file appears the cached decision is stale."""
    from dfqbench.launch.plancache import cached_plan, plan_dry
    from dfqbench.zoo import models as zoo_models

    for name in ("DFQBENCH_WEIGHTS", "DFQBENCH_WEIGHTS_DIR", "DFQBENCH_WEIGHTS_NORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(zoo_models, "PYTORCHCV_CACHE", tmp_path / "torch-models")
    grid = load_grid(write(tmp_path, "base: {method: gdfq, model: resnet20_cifar10, bits: w4a4, protocol: quick}\n"))
    opts = options(tmp_path)
    first = plan_dry(grid, opts)
    assert first.runs()[0].run_name is None and "not downloaded" in first.runs()[0].reason
    assert cached_plan(grid, opts) is not None
    meta = zoo_models._pytorchcv_metainfo()["resnet20_cifar10"]
    cached_file = tmp_path / "torch-models" / f"resnet20_cifar10-{meta['error_value']}-{meta['checksum'][:8]}.pth"
    cached_file.parent.mkdir()
    cached_file.write_bytes(b"weights")
    assert cached_plan(grid, opts) is None
    second = plan_dry(grid, opts)
    assert second.runs()[0].run_name and cached_plan(grid, opts).runs()[0].run_name == second.runs()[0].run_name


def test_engine_reaches_every_run_request_but_not_run_ids_or_the_plan_cache(tmp_path):
    """--engine is a launch option: in each cell's RunRequest and in the GridTask JSON a worker or a Slurm task
    gets (a task JSON from before the field loads with "auto"), never in a run id or the plan cache's key."""
    from dfqbench.launch.plancache import cached_plan, plan_dry
    from dfqbench.launch.summary import describe
    from dfqbench.launch.task import GridTask

    grid = load_grid(write(tmp_path, TINY_BASE + "axes:\n  bits: [w4a4, w3a3]\n"))
    auto = LaunchOptions(results=tmp_path / "results", device="cpu")
    eager = LaunchOptions(results=tmp_path / "results", device="cpu", engine="eager")
    plans = [plan_grid(grid, opts) for opts in (auto, eager)]
    assert [c.request.engine for c in plans[0].runs()] == ["auto", "auto"]
    assert [c.request.engine for c in plans[1].runs()] == ["eager", "eager"]
    assert [c.run_id for c in plans[0].runs()] == [c.run_id for c in plans[1].runs()]

    cell = plans[1].runs()[0]
    task = GridTask(cell.request, cell.spec, grid.name)
    again = GridTask.from_json(task.to_json())
    assert again.request == cell.request and again.request.engine == "eager" and again.spec.run_id == cell.run_id
    old = json.loads(task.to_json())
    del old["request"]["engine"]
    assert GridTask.from_json(json.dumps(old)).request.engine == "auto"

    dry = plan_dry(grid, auto)
    cached = cached_plan(grid, eager)  # the same cache file and cells: a dry run does not depend on the engine
    assert cached is not None and describe(cached) == describe(dry)


def test_plan_cache_follows_dfqbench_cache(monkeypatch, tmp_path):
    """With DFQBENCH_CACHE set (and no DFQBENCH_PLAN_CACHE), the plan cache lives under it, not in ~/.cache."""
    from dfqbench.launch.plancache import cache_dir

    monkeypatch.delenv("DFQBENCH_PLAN_CACHE", raising=False)
    monkeypatch.setenv("DFQBENCH_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache" / "plans"
    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", "off")
    assert cache_dir() is None
