"""Hostile inputs that once hung the host, exhausted its memory or wrote outside the results folder (issue 23,
defects 1-4): each is now a one-line error, exit 2, decided before anything large is built or written. Nothing
here trains."""

from __future__ import annotations

import dataclasses
import json
import re
import socket

import pytest
import yaml

import dfqbench
from dfqbench.cli import main
from dfqbench.errors import DfqbenchError
from dfqbench.launch.estimate import evaluations
from dfqbench.launch.grid import MAX_GRID_CELLS, expand, load_grid
from dfqbench.specs import MAX_YAML_DEPTH, MAX_YAML_NODES, RunSpec, TrainConfig, YamlRefused, read_yaml
from dfqbench.launch.manifest import read_manifests
from dfqbench.store import ResultsStore, StoreError, run_state
from dfqbench.store.files import parse_json

from test_cli import TINY_ARGS


def alias_bomb(levels: int = 9, fanout: int = 10) -> str:
    """``levels`` nested anchors of ``fanout`` aliases each: a few hundred bytes that expand to fanout**levels."""
    lines = [f"l0: &l0 [{', '.join(['x'] * fanout)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]" for i in range(1, levels + 1)]
    return "\n".join(lines)


GRID_HEAD = "name: hostile\nbase: {method: gdfq, model: tiny_cifar10, bits: w4a4, protocol: quick}\n"


def _grid(tmp_path, body: str):
    path = tmp_path / "hostile.yaml"
    path.write_text(GRID_HEAD + body)
    return path


def _dry_run(path, tmp_path, capsys) -> tuple[int, str]:
    results = tmp_path / "results"
    code = main(["run", "--grid", str(path), "--dry-run", "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert not results.exists(), "a refused grid wrote something"
    return code, err


@pytest.mark.parametrize("where", ["axis", "description", "preset"])
def test_a_yaml_alias_bomb_in_a_grid_is_refused_before_it_expands(tmp_path, capsys, where):
    bomb = alias_bomb()
    body = {
        "axis": "axes:\n  seed: [0]\n  train.milestones_q: *l9\n",
        "description": "description: *l9\n",
        "preset": "presets:\n  - match: {bits: w4a4}\n    set: {train.milestones_q: *l9}\n",
    }[where]
    code, err = _dry_run(_grid(tmp_path, bomb + "\n" + body), tmp_path, capsys)  # anchors first, then their use
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "not valid YAML" in err and f"more than {MAX_YAML_NODES:,} values" in err, err


@pytest.mark.parametrize("text, reason", [
    (alias_bomb(), f"more than {MAX_YAML_NODES:,} values"),
    ("[" * 10_000 + "]" * 10_000, f"deeper than {MAX_YAML_DEPTH} levels"),
    ("a: " + "{b: " * 200 + "1" + "}" * 200, f"deeper than {MAX_YAML_DEPTH} levels"),
    ("&a [1, *a]", "recursive"),
    ("a0: &a0 [[[[[1]]]]]\n" + "".join(f"a{i}: &a{i} [[[[[*a{i - 1}]]]]]\n" for i in range(1, 20)),
     f"deeper than {MAX_YAML_DEPTH} levels"),  # depth built from aliases, each shallow
    ("base: {method: gdfq}\naxes: {seed: [0]}\nbase: {method: zaq}", "'base' is given twice"),
    ("axes: {train.epochs: [1], train.epochs: [2]}", "'train.epochs' is given twice"),
])
def test_the_yaml_reader_is_bounded(text, reason):
    with pytest.raises(YamlRefused, match=reason):
        read_yaml(text)


def test_a_grid_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GRID_HEAD.encode() + "description: caf\xe9\n".encode("latin-1"))
    code, err = _dry_run(path, tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "is not UTF-8 text" in err, err


def test_the_yaml_reader_still_reads_anchors_and_yaml12_floats():
    assert read_yaml("x: &v [1, 2]\ny: *v\nz: 1e-4") == {"x": [1, 2], "y": [1, 2], "z": 1e-4}
    assert read_yaml("") is None
    with pytest.raises(yaml.YAMLError):
        read_yaml("a: 1\n---\nb: 2")  # one document only, as before


def test_a_grid_over_the_cell_limit_is_refused_before_any_cell_is_built(tmp_path, capsys):
    values = ", ".join(str(i) for i in range(1, 1001))
    path = _grid(tmp_path, f"axes:\n  train.epochs: [{values}]\n  train.iters_per_epoch: [{values}]\n")
    with pytest.raises(DfqbenchError, match=rf"1,000,000 cells \(1000 × 1000\) exceed the limit of {MAX_GRID_CELLS:,}"):
        expand(load_grid(path))
    code, err = _dry_run(path, tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "1,000,000 cells" in err, err


@pytest.mark.parametrize("override, message", [
    ("train.epochs=1000000000000", r"train\.epochs=1000000000000: must be an integer in \[1, 100,000\]"),
    ("train.iters_per_epoch=10000000", r"train\.iters_per_epoch=10000000: must be an integer in \[1, 1,000,000\]"),
    ("train.batch_size=1000000000", r"train\.batch_size=1000000000: must be an integer in \[1, 65,536\]"),
    ("train.milestones_q=[" + ", ".join(["1"] * 1001) + "]", r"train\.milestones_q=\(1, 1, .*at most 1,000 integers"),
    ("train.eval_start_epoch=" + "9" * 100_000, r"override train\.eval_start_epoch: a value cannot be read"),
    ("train.lr_q=1e300", r"train\.lr_q=1e\+300: must be a finite number in \(0, 1e\+30\]"),
    ("train.q_weight_decay=1e300", r"train\.q_weight_decay=1e\+300: must be a finite number in \[0, 1e\+30\]"),
])
def test_every_count_a_user_sets_is_bounded(tmp_path, capsys, override, message):
    """A single run refuses the value (one line, exit 2, nothing written); a grid's dry run lists every cell as
    invalid with the same line (the plan is shown, nothing is launched) instead of building a 10^12-epoch set."""
    results = tmp_path / "results"
    code = main([*TINY_ARGS, "--seed", "0", "--results", str(results), override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    assert not results.exists()
    code = main(["run", "--grid", "smoke", "--dry-run", "--results", str(results), override])
    out = capsys.readouterr()
    if code == 0:  # a value that parses: every cell invalid, named
        assert re.search(r"\d+ × invalid " + message, out.out), out.out[-2000:]
    else:  # a value that cannot be read at all
        assert code == 2 and re.search(message, out.err), out.err
    assert not results.exists()


def test_the_evaluation_count_is_closed_form_and_matches_the_trainers_epochs():
    """What the trainer evaluates (from eval_start_epoch on, the calibration epoch, the last), counted without
    building the epochs: equal to the set it describes, and instant at the largest schedule."""
    for epochs in range(1, 12):
        for start in range(0, 14):
            for warmup in range(0, epochs + 1):
                expected = set(range(start, epochs)) | {epochs - 1} | ({warmup - 1} if warmup else set())
                train = {"epochs": epochs, "eval_start_epoch": start, "warmup_epochs": warmup}
                assert evaluations(train) == len(expected), train
    largest = dataclasses.asdict(TrainConfig(epochs=100_000, warmup_epochs=4))
    assert evaluations(largest) == 100_000


@pytest.mark.parametrize("name", ["../../../esc_tiny_cifar10_w4a4_s0_0123456789ab", "..", ".hidden", "a/b", "a\\b",
                                  "nul\0byte", "", "/abs"])
def test_the_store_refuses_a_run_folder_outside_its_runs_folder(tmp_path, name):
    """Issue 23, defect 4: whatever builds a run name (a hostile plugin's method name, a planted store file), the
    store only ever opens one folder directly inside ``<root>/runs``."""
    store = ResultsStore(tmp_path / "results")
    with pytest.raises(StoreError, match="invalid run name"):
        store.run_dir(name)
    spec = RunSpec(method=name or "x/..", method_version="1", model="tiny_cifar10", dataset="cifar10", bits="w4a4",
                   seed=0, teacher={}, normalization={}, quant={}, train={}, method_config={})
    with pytest.raises(StoreError, match="invalid run name"):
        store.folder(spec)
    assert not (tmp_path / "results").exists() and not any(p.name.startswith("esc") for p in tmp_path.parent.iterdir())


def test_ordinary_run_names_are_one_folder_inside_runs(tmp_path):
    store = ResultsStore(tmp_path / "results")
    name = "gdfq_ie_resnet20_cifar10_w4a4_s0_0123456789ab"
    assert store.run_dir(name) == tmp_path / "results" / "runs" / name


DEEP_JSON = "[" * 100_000 + "]" * 100_000  # a RecursionError for json.loads


@pytest.mark.parametrize("heartbeat", ["abc", None, True, 1e12, float("inf")])
def test_a_lease_with_a_garbage_or_future_heartbeat_is_not_alive(tmp_path, heartbeat):
    """A heartbeat no live task writes ("abc", null, a bool, the year 33658) neither breaks the state of its
    run nor holds it forever: the run shows as lost (and resumes); describing it names the bad heartbeat."""
    run = tmp_path / "run"
    run.mkdir()
    lease = {"job_id": "7_1", "host": "elsewhere", "pid": 1, "heartbeat": heartbeat}
    (run / "lease.json").write_text(json.dumps(lease))
    state = run_state(run)
    assert state.state == "lost" and "no valid heartbeat" in state.reason, state
    (run / "lease.json").write_text(json.dumps({**lease, "host": socket.gethostname(), "pid": "abc"}))
    assert run_state(run).state == "lost"


@pytest.mark.parametrize("name", ["record.json", "spec.json", "lease.json", "attempts.json", "error.json"])
def test_deeply_nested_json_in_a_run_file_costs_that_run_only(tmp_path, capsys, name):
    """One run's hostile file (JSON nested 100,000 deep, or a folder in place of the file) is that run's
    problem, named; the rest of the results folder is read, and `status` still answers."""
    results = tmp_path / "results"
    good, bad = ResultsStore(results).run_dir("good_run"), ResultsStore(results).run_dir("bad_run")
    for folder in (good, bad):
        folder.mkdir(parents=True)
    (bad / name).write_text(DEEP_JSON)
    assert run_state(good).state == "pending"
    assert run_state(bad).state in ("pending", "failed", "lost"), run_state(bad)
    (bad / name).unlink()
    (bad / name).mkdir()  # a folder where the file belongs
    assert run_state(bad).state in ("pending", "failed", "lost"), run_state(bad)
    runs = dfqbench.load_results(results)  # the report's reader: every run listed, none fatal
    assert set(runs.run_name) >= {"good_run"}, runs
    assert main(["status", "--results", str(results), "--json"]) == 0
    json.loads(capsys.readouterr().out)


def test_store_json_readers_turn_every_failure_into_a_value_error():
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json(DEEP_JSON)
    with pytest.raises(ValueError):
        parse_json(b"\xff\xfe")


def test_a_manifest_that_is_not_an_object_is_skipped(tmp_path):
    launch = tmp_path / "results" / "launch" / "g"
    launch.mkdir(parents=True)
    (launch / "a.json").write_text("[1, 2, 3]")
    (launch / "b.json").write_text(DEEP_JSON)
    (launch / "c.json").write_text('{"grid": "g", "runs": []}')
    assert [m["path"].rsplit("/", 1)[1] for m in read_manifests(tmp_path / "results", "g")] == ["c.json"]


def _spec() -> RunSpec:
    return RunSpec(method="gdfq", method_version="1", model="tiny_cifar10", dataset="cifar10", bits="w4a4", seed=0,
                   teacher={}, normalization={}, quant={}, train={}, method_config={})


@pytest.mark.parametrize("content", [b"a/b", b"\xff\xfe\x00", "folder"])
def test_a_bad_wandb_id_file_is_one_line_naming_it(tmp_path, content):
    from dfqbench.core.loggers import WandbLogger

    pytest.importorskip("wandb")
    path = tmp_path / "wandb_id"
    path.mkdir() if content == "folder" else path.write_bytes(content)
    with pytest.raises(StoreError, match=r"unreadable W&B run id '.*wandb_id'"):
        WandbLogger().open(_spec(), tmp_path, 0)


def test_a_file_where_the_tensorboard_folder_belongs_is_one_line(tmp_path):
    from dfqbench.core.loggers import TensorBoardLogger

    pytest.importorskip("tensorboard")
    (tmp_path / "tensorboard").write_text("not a folder")
    with pytest.raises(StoreError, match=r"unreadable TensorBoard folder '.*tensorboard' \(a file where"):
        TensorBoardLogger().open(_spec(), tmp_path, 0)


@pytest.mark.parametrize("flag", ["--only", "--where"])
@pytest.mark.parametrize("value, outcome", [
    ("!!python/object/apply:os.system [echo hacked]", "string"),  # a tag: a plain string, never constructed
    (".nan", "refused"), (".inf", "refused"),
])
def test_filter_values_are_read_safely(flag, value, outcome):
    """`--only` (run, status) and `--where` (report) read values one way: bounded YAML, tags as plain text,
    NaN and infinity (which match nothing) refused in one line."""
    from dfqbench.launch.grid import parse_filters
    from dfqbench.report.load import Where

    parse = (lambda text: parse_filters([text])) if flag == "--only" else Where.parse
    key = "train.epochs"
    if outcome == "refused":
        with pytest.raises(DfqbenchError, match=rf"invalid {flag} {re.escape(key)}=.*must be a finite number"):
            parse(f"{key}={value}")
    else:
        parsed = parse(f"{key}={value}")
        values = parsed[key] if flag == "--only" else parsed.values
        assert all(isinstance(v, str) for v in values), values
    if flag == "--where":  # a YAML list is one value there
        with pytest.raises(DfqbenchError, match="must be a finite number"):
            Where.parse(f"{key}=[1, .nan]")


@pytest.mark.parametrize("name", ["../../../esc", "Esc", "a/b", "x" * 49, "", "9lives", None])
def test_a_method_name_that_could_not_be_a_folder_name_is_refused_at_registration(name):
    """Issue 23, defect 4: one name rule (dfqbench.specs.validate.METHOD_NAME) for bundled methods, ``@register_method``
    and entry points (tests/test_plugins.py), checked before the method is registered."""
    from dfqbench.blocks.interface import METHODS, Method, register_method

    cls = type("Hostile", (Method,), {"name": name})
    with pytest.raises(DfqbenchError, match="invalid method name"):
        register_method(cls)
    assert name not in METHODS.names()


def test_the_test_set_cache_is_written_with_the_umask_not_0600(tmp_path):
    import os
    import stat

    import torch

    from dfqbench.zoo.data import _save_atomic

    mask = os.umask(0o022)
    try:
        path = tmp_path / "testsets" / "x.pt"
        _save_atomic({"images": torch.zeros(2, 3), "labels": torch.zeros(2)}, path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(mask)


@pytest.mark.parametrize("flags, named", [
    (["--dry-run"], "--dry-run is for grids"), (["--only", "bits=w4a4"], "--only is for grids"),
    (["--seeds", "0-2"], "--seeds is for grids"), (["--jobs", "2", "--retry-failed"], "--retry-failed, --jobs are"),
    (["--executor", "slurm"], "--executor is for grids"), (["--runs-per-gpu", "2"], "--runs-per-gpu is for grids"),
    (["--profile", "p", "--profiles", "f.yaml"], "--profile, --profiles are for grids"),
])
def test_grid_flags_given_to_a_single_run_are_refused_not_ignored(tmp_path, capsys, flags, named):
    """Issue 23: a single run read none of these, so `--dry-run` trained for real; now one line, exit 2."""
    results = tmp_path / "results"
    code = main([*TINY_ARGS, "--seed", "0", "--results", str(results), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and named in err, err
    assert not results.exists()


@pytest.mark.parametrize("flag", ["--results", "--protocol", "--bits", "--data-root"])
def test_an_empty_flag_value_is_refused_not_taken_as_the_default(tmp_path, capsys, monkeypatch, flag):
    """Issue 23: `--results ""` put runs in the current folder, `--protocol ""` meant the paper protocol."""
    monkeypatch.chdir(tmp_path)
    args = [a for a in TINY_ARGS if a != "--protocol" and a != "quick"] if flag == "--protocol" else list(TINY_ARGS)
    if flag == "--bits":
        args = args[:args.index("--bits")] + args[args.index("--bits") + 2:]
    code = main([*args, "--seed", "0", flag, ""])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"invalid {flag} '': empty" in err, err
    assert not any(tmp_path.iterdir())


def test_grid_seeds_given_empty_are_refused(capsys):
    assert main(["run", "--grid", "smoke", "--dry-run", "--seeds", ""]) == 2
    assert "invalid --seeds '': empty" in capsys.readouterr().err


def test_bits_with_spaces_name_the_same_run(tiny_request):
    """`--bits "w4a4 "` once made a second run id for the same cell."""
    from dfqbench.runner import predict_spec

    assert predict_spec(tiny_request(bits="w4a4 ")).run_id == predict_spec(tiny_request(bits="w4a4")).run_id


def test_only_takes_one_filter_so_it_never_swallows_the_overrides(tmp_path, capsys):
    """`--only bits=w4a4 train.epochs=1` once read train.epochs=1 as a second filter ("no cell has it"): now
    each --only takes one filter and what follows is an override; an undotted KEY=VALUE there (meant as a
    second filter) is one line saying to give it its own --only."""
    results = tmp_path / "results"
    base = ["run", "--grid", "smoke", "--dry-run", "--json", "--results", str(results)]
    assert main([*base, "--only", "bits=w4a4", "--only", "seed=0", "train.epochs=1"]) == 0
    (cell,) = json.loads(capsys.readouterr().out)["cells"]
    assert (cell["bits"], cell["seed"], cell["status"]) == ("w4a4", 0, "pending"), cell
    code = main([*base, "--only", "bits=w4a4", "seed=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "give each filter its own --only: --only seed=0" in err, err
    assert not results.exists()


def test_an_override_after_only_reaches_the_runs(tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["run", "--grid", "smoke", "--dry-run", "--results", str(results), "--only", "bits=w4a4",
                 "train.epochs=0"])
    out = capsys.readouterr().out
    assert code == 0 and "2 × invalid train.epochs=0: must be an integer in [1, 100,000]" in out, out[-800:]


@pytest.mark.parametrize("plots", ["/dev/null/x", "/dev/null", "file"])
def test_a_plots_folder_that_cannot_be_one_is_one_line_and_nothing_is_written(tmp_path, capsys, plots):
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    if plots == "file":
        plots = str(tmp_path / "a_file")
        (tmp_path / "a_file").write_text("")
    out = tmp_path / "tables.md"
    code = main(["report", "--results", str(results), "--plots", plots, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"invalid --plots '{plots}'" in err, err
    assert not out.exists()


def test_a_batch_that_does_not_fit_in_memory_is_a_failed_run_with_one_line(tmp_path, capsys, monkeypatch):
    """`train.batch_size=65536` (within its bound) on a host without the memory: the CPU allocator's raw
    RuntimeError became one line naming the size asked for, the batch size, what its input images alone take and
    the fix; the run is failed with that reason (error.json), single or in a grid. The allocation here is a real
    one that no host can make (2**62 bytes), where the trainer would make its first large one."""
    import torch

    from dfqbench.core import trainer
    from dfqbench.launch.plan import LaunchOptions, plan_grid
    from dfqbench.launch.task import GridTask
    from dfqbench.store import run_state

    monkeypatch.setattr(trainer.Trainer, "fit", lambda self: torch.empty(2**62, dtype=torch.uint8))
    results = tmp_path / "results"
    code = main([*TINY_ARGS, "--seed", "0", "--results", str(results), "train.batch_size=65536"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err == ("dfqbench: error: out of memory on cpu (asked for 4194304.00 TiB); lower the batch size "
                   "(train.batch_size=N) or run where more memory is free; this run's train.batch_size is 65,536: its "
                   "65,536 3×8×8 float32 input images alone are 48.00 MiB, and training keeps each layer's "
                   "activations of them too"), err
    (folder,) = (results / "runs").iterdir()
    error = json.loads((folder / "error.json").read_text())
    assert error["message"] == err.removeprefix("dfqbench: error: ") and "DefaultCPUAllocator" in error["traceback"]
    assert run_state(folder).state == "failed"

    plan = plan_grid(load_grid("smoke"), LaunchOptions(results=tmp_path / "grid", device="cpu",
                                                      overrides=["train.batch_size=65536"]), {"bits": ["w3a3"]}, [0])
    (cell,) = plan.to_launch()
    outcome = GridTask(cell.request, cell.spec, "smoke").execute("local-test", "local")
    assert outcome.status == "failed" and outcome.reason.startswith("DfqbenchError: out of memory on cpu (asked for")
    assert "train.batch_size is 65,536" in outcome.reason


@pytest.mark.parametrize("content", [DEEP_JSON, "[1, 2]", "\"text\""])
def test_bookkeeping_files_that_are_deep_or_not_objects_read_as_absent(tmp_path, content):
    """The last readers that parsed store files themselves (a grid task's attempts.json and error.json, the
    plan cache, the API's spec.json) go through the one bounded parser: a hostile file is absent or one line."""
    import torch

    from dfqbench.launch import plancache
    from dfqbench.launch.task import GridTask, _drop_error
    from dfqbench.store import RunFolder

    folder = RunFolder(tmp_path)
    for name in ("attempts.json", "error.json", "spec.json", "plan.json"):
        (tmp_path / name).write_text(content)
    assert GridTask.read_attempts(tmp_path) == []
    _drop_error(folder, "StoreError")
    assert (tmp_path / "error.json").exists()  # not an error of that type: kept
    assert plancache._load(tmp_path / "plan.json") is None
    with pytest.raises(DfqbenchError, match=r"unreadable spec\.json in '.*' \((ValueError|not a JSON object)\)"):
        dfqbench.evaluate(torch.nn.Identity(), tmp_path)
