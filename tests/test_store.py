"""The results store: the layout, the typed record, and every unreadable or unwritable file in a run folder.

Unreadable files (issue 13): a truncated record.json, metrics.jsonl or checkpoint.pt, or a corrupt spec.json,
in a single run and in a grid. A single run prints one line naming the file and how to start over (exit 2;
``--restart`` does start over); a grid run records error.json and is failed (never lost, never looped).
A ``--results`` that is a file or sits under one is one line before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from dfqbench.cli import main
from dfqbench.runner import prepare, run
from dfqbench.store import (RECORD_VERSION, RecordError, ResultsStore, RunFolder, RunRecord, StoreError,
                            run_state)

from conftest import TINY_OVERRIDES, CrashAfterEpoch, RecordingProgress

TINY_ARGS = ["run", "--method", "gdfq", "--model", "tiny_cifar10", "--bits", "w4a4", "--protocol", "quick",
             "--device", "cpu", "--log-every", "2", "--plain", *TINY_OVERRIDES]

RECORD = {"spec": {"method": "gdfq", "model": "tiny_cifar10", "bits": "w4a4", "seed": 0, "teacher": {"source": "x"},
                   "run_id": "abc"},
          "fp_top1": 90.0, "best_top1": 80.5, "final_top1": 79, "calibrated_top1": None, "best_epoch": 1,
          "top1_per_epoch": {"0": 70.0, "1": 80.5, "2": 79}, "run_name": "gdfq_x", "wall_time_s": 3.5,
          "device": "cpu", "engine": "eager", "compile_s": 0.0, "cuda_graphs": False, "sessions": 1}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfqbench: error: "), err
    return lines[0]


# -- the record ----------------------------------------------------------------------------------------
def test_record_round_trips_and_keeps_unknown_keys(tmp_path):
    record = RunRecord.from_dict(RECORD)
    assert record.best_top1 == 80.5 and record.final_top1 == 79 and record.run_id == "abc"
    assert record.schema_version == RECORD_VERSION and record.extra == {"cuda_graphs": False}
    folder = RunFolder(tmp_path / "run")
    folder.write_record(record)
    data = json.loads(folder.record_path.read_text())
    assert data["schema_version"] == RECORD_VERSION and data["cuda_graphs"] is False
    assert folder.read_record() == record and folder.is_done()


@pytest.mark.parametrize("change, field", [
    ({"best_top1": "80.5"}, "field best_top1 is a string"),
    ({"fp_top1": True}, "field fp_top1 is a boolean"),
    ({"sessions": 1.5}, "field sessions is a number 1.5, expected integer"),
    ({"top1_per_epoch": {"0": "high"}}, "field top1_per_epoch['0']"),
    ({"top1_per_epoch": []}, "field top1_per_epoch is a list"),
    ({"spec": {**RECORD["spec"], "seed": "0"}}, "field spec.seed is a string"),
    ({"spec": "gdfq"}, "field spec is a string"),
    ({"device": 3}, "field device is a number"),
    ({"schema_version": "1"}, "field schema_version is a string"),
])
def test_record_with_a_wrong_type_names_the_file_and_the_field(tmp_path, change, field):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.record_path.write_text(json.dumps({**RECORD, **change}))
    with pytest.raises(RecordError) as info:
        folder.read_record()
    message = str(info.value)
    assert f"unreadable record '{folder.record_path}' ({field}" in message and "--restart" in message
    assert "\n" not in message and not folder.is_done()
    assert run_state(folder).state == "failed" and field in run_state(folder).reason


def test_record_from_a_newer_schema_says_so(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.record_path.write_text(json.dumps({**RECORD, "schema_version": RECORD_VERSION + 1}))
    with pytest.raises(RecordError, match=f"schema_version {RECORD_VERSION + 1} is newer than this dfqbench reads "
                                          f"\\(up to {RECORD_VERSION}\\); upgrade dfqbench"):
        folder.read_record()


def test_record_missing_fields_and_not_json(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.record_path.write_text(json.dumps({"spec": {"method": "gdfq"}, "fp_top1": 1.0, "best_top1": None,
                                              "final_top1": None}))
    with pytest.raises(RecordError, match=r"\(missing spec.model, spec.bits, spec.seed, spec.teacher\)"):
        folder.read_record()
    folder.record_path.write_text('{"spec": {"meth')
    with pytest.raises(RecordError, match="JSONDecodeError"):
        folder.read_record()
    folder.record_path.write_text("[]")
    with pytest.raises(RecordError, match="not a JSON object but a list"):
        folder.read_record()


# -- the layout ----------------------------------------------------------------------------------------
def test_layout_lists_run_folders_only(tmp_path):
    store = ResultsStore(tmp_path / "res")
    assert list(store.runs()) == [] and store.run_dir("a_b") == tmp_path / "res" / "runs" / "a_b"
    for name in ("b_run", "a_run", ".hidden"):
        (store.runs_dir / name).mkdir(parents=True)
    (store.runs_dir / "stray.txt").write_text("x")
    assert [f.name for f in store.runs()] == ["a_run", "b_run"]


def test_results_that_is_a_file_is_one_line_and_writes_nothing(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for results, expected in ((a_file, f"'{a_file}' is a file, not a folder (the results folder)"),
                              (a_file / "res", f"'{a_file}' is a file, not a folder (the results folder "
                                               f"'{a_file / 'res'}' would be inside it)")):
        for extra in ([], ["--grid", "smoke"], ["--grid", "smoke", "--dry-run"]):
            args = (TINY_ARGS if not extra else ["run", "--device", "cpu"]) + extra + ["--results", str(results)]
            assert main(args) == 2
            assert expected in one_error_line(capsys)
    assert main(["status", "--results", str(a_file)]) == 2 and "is a file" in one_error_line(capsys)
    assert main(["report", "--results", str(a_file)]) == 2 and "is a file" in one_error_line(capsys)
    assert a_file.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    runs_file = tmp_path / "res"
    runs_file.mkdir()
    (runs_file / "runs").write_text("")
    assert main(TINY_ARGS + ["--results", str(runs_file)]) == 2
    assert f"'{runs_file / 'runs'}' is a file, not a folder" in one_error_line(capsys)


def test_results_folder_not_writable_is_one_line(tmp_path, capsys, monkeypatch):
    """Permission bits do not stop root (these tests may run as root), so the check's answer is what is
    replaced here; the real failures of a folder that refuses writes mid-run are in the next test."""
    results = tmp_path / "shared"
    results.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == results else real_access(p, mode))
    assert main(TINY_ARGS + ["--results", str(results)]) == 2
    assert f"results folder '{results}' is not writable" in one_error_line(capsys)
    assert list(results.iterdir()) == []


class BlockWrites(RecordingProgress):
    """After epoch ``epoch``'s checkpoint, metrics.jsonl and error.json become non-empty folders: every later
    write of them fails in the filesystem (as on a folder made read-only or a full disk)."""

    def __init__(self, folder: RunFolder, epoch: int = 0) -> None:
        super().__init__()
        self.folder, self.epoch = folder, epoch

    def end_epoch(self, epoch, top1, best) -> None:
        if epoch == self.epoch:
            for path in (self.folder.metrics_path, self.folder.error_path):
                path.unlink(missing_ok=True)
                (path / "blocked").mkdir(parents=True)


def test_write_refused_mid_run_is_one_line_not_two_tracebacks(tiny_request, capsys, monkeypatch):
    request = tiny_request()
    folder = prepare(request).folder
    blocker = BlockWrites(folder)
    with pytest.raises(StoreError) as info:
        run(request, blocker)
    assert str(info.value).startswith(f"cannot write '{folder.metrics_path}' (")
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one line, no chained traceback
    assert not (folder.path / "lease.json").exists()  # the single run's lease is released
    for path in (folder.metrics_path, folder.error_path):
        shutil.rmtree(path)
    import dfqbench.core.progress

    monkeypatch.setattr(dfqbench.core.progress, "make_progress", lambda force_plain=False: BlockWrites(folder, 1))
    assert main(TINY_ARGS + ["--results", request.results]) == 2
    assert f"cannot write '{folder.metrics_path}'" in one_error_line(capsys)


# -- unreadable files: single runs ---------------------------------------------------------------------
def _interrupted(tiny_request) -> tuple[RunFolder, list[str]]:
    """A tiny run stopped after its second epoch's checkpoint, and the CLI arguments that resume it."""
    request = tiny_request()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(request, CrashAfterEpoch(1))
    folder = prepare(request).folder
    folder.error_path.unlink()
    return folder, TINY_ARGS + ["--results", request.results]


def test_truncated_record_is_not_done_and_restart_starts_over(tiny_request, capsys):
    request = tiny_request()
    run(request, RecordingProgress())
    folder = prepare(request).folder
    text = folder.record_path.read_text()
    folder.record_path.write_text(text[: len(text) // 2])
    assert not folder.is_done() and run_state(folder).state == "failed"
    args = TINY_ARGS + ["--results", request.results]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert f"unreadable record '{folder.record_path}' (JSONDecodeError" in line
    assert "start this run from scratch with `dfqbench run … --restart`" in line
    assert main(args + ["--restart"]) == 0
    assert folder.is_done() and folder.read_record().sessions == 1  # from scratch, not resumed
    assert main(args) == 0 and "already done" in capsys.readouterr().out


def test_truncated_metrics_before_resume_is_one_line(tiny_request, capsys):
    folder, args = _interrupted(tiny_request)
    text = folder.metrics_path.read_text()
    folder.metrics_path.write_text(text[:-15])
    line_number = len(text[:-15].splitlines())
    assert main(args) == 2
    line = one_error_line(capsys)
    assert f"unreadable metrics '{folder.metrics_path}' (line {line_number}: JSONDecodeError" in line
    assert "--restart" in line
    assert main(args + ["--restart"]) == 0 and folder.read_record().sessions == 1
    capsys.readouterr()


def test_corrupt_spec_of_an_unfinished_run_is_rewritten_on_resume(tiny_request, capsys):
    folder, args = _interrupted(tiny_request)
    expected = json.loads(folder.spec_path.read_text())
    folder.spec_path.write_text('{"method": "gd')
    assert folder.read_spec() is None
    assert main(args) == 0 and "after epoch 2/" in capsys.readouterr().out
    assert json.loads(folder.spec_path.read_text()) == expected and folder.read_record().sessions == 2


def test_stale_temp_files_are_removed_when_the_run_starts_under_its_lease(tiny_request):
    folder, _ = _interrupted(tiny_request)
    stale = [folder.path / ".checkpoint.pt.k1ll3d.tmp", folder.path / ".metrics.jsonl.abc.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    taker = folder.path / ".lease.x1y2.tmp"  # another launcher taking the lease right now: left alone
    taker.write_text("{}")
    other = folder.path / "notes.tmp"
    other.write_text("mine")
    run(tiny_request(), RecordingProgress())
    assert not any(p.exists() for p in stale) and taker.exists() and other.exists()
    assert folder.is_done() and folder.read_record().sessions == 2


# -- unreadable files: grids ---------------------------------------------------------------------------
GRID = """
base:
  method: gdfq
  model: tiny_cifar10
  protocol: quick
  bits: w4a4
  train.epochs: 3
  train.iters_per_epoch: 4
  train.batch_size: 8
  train.warmup_epochs: 1
  train.range_update_epochs: 1
axes:
  seed: [0, 1, 2]
"""


def test_unreadable_files_in_a_grid_fail_their_runs_once(tmp_path, capsys, monkeypatch):
    """Seed 0: a random-bytes checkpoint; seed 1: a truncated metrics.jsonl beside a good checkpoint; seed 2: a
    truncated record.json. Each is failed with error.json naming the file (not lost, not done); running the
    grid again does not run them again; --retry-failed fails them again, once each."""
    from dfqbench.launch.grid import load_grid
    from dfqbench.launch.plan import LaunchOptions, plan_grid
    from dfqbench.launch.status import status_report
    from dfqbench.launch.task import GridTask

    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", str(tmp_path / "plan-cache"))
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID)
    results = tmp_path / "results"
    plan = plan_grid(load_grid(grid), LaunchOptions(results=results, device="cpu", log_every=2))
    cells = {c.cell.seed: c for c in plan.runs()}
    folders = {seed: RunFolder(c.run_dir) for seed, c in cells.items()}
    # seed 1 and 2: real runs, then broken; seed 0: a folder with a random-bytes checkpoint only
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cells[1].request, CrashAfterEpoch(1))
    folders[1].error_path.unlink()
    folders[1].metrics_path.write_text(folders[1].metrics_path.read_text()[:-10])
    run(cells[2].request, RecordingProgress())
    folders[2].record_path.write_text(folders[2].record_path.read_text()[:40])
    folders[0].path.mkdir(parents=True)
    folders[0].checkpoint_path.write_bytes(os.urandom(256))
    for seed in (0, 1):  # run them in this process first: the outcome names the file
        outcome = GridTask(cells[seed].request, cells[seed].spec, "g").execute("local-test", "local")
        assert outcome.status == "failed" and outcome.ran
        assert outcome.reason.startswith(f"StoreError: unreadable {('checkpoint', 'metrics')[seed]} '")
        assert run_state(folders[seed]).state == "failed" and not (folders[seed].path / "lease.json").exists()
        folders[seed].error_path.unlink()  # back to unfinished: the grid below meets the same files

    args = ["run", "--grid", str(grid), "--device", "cpu", "--log-every", "2", "--results", str(results)]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "0 done, 2 failed" in out and "1 failed runs are not retried" in out  # seed 2 is failed, not done
    for seed, name in ((0, "checkpoint"), (1, "metrics"), (2, "record")):
        folder = folders[seed]
        state = run_state(folder)
        assert state.state == "failed" and f"unreadable {name} '" in state.reason, (seed, state)
        assert not (folder.path / "lease.json").exists()
    for seed in (0, 1):
        error = json.loads(folders[seed].error_path.read_text())
        assert error["type"] == "StoreError" and "--restart`, or by deleting" in error["message"]
    text, counts = status_report(results)  # seed 2 is a cell of the grid (its index) though no launch ran it
    assert counts["g"] == {"failed": 3} and "(single runs)" not in counts and "lost:" not in text

    assert main(args) == 0 and "nothing to run" in capsys.readouterr().out  # no loop: failed runs stay failed
    attempts = {seed: len(GridTask.read_attempts(folders[seed].path)) for seed in folders}
    assert main(args + ["--retry-failed"]) == 1
    capsys.readouterr()
    assert {seed: len(GridTask.read_attempts(folders[seed].path)) for seed in folders} == \
        {seed: n + 1 for seed, n in attempts.items()}
    assert all(run_state(f).state == "failed" for f in folders.values())
    assert json.loads(folders[2].error_path.read_text())["type"] == "RecordError"


# -- the lease: exactly one holder, however many take it at once ----------------------------------------
DEAD_LEASE = {"job_id": "dead", "host": "elsewhere", "pid": 1, "token": "0", "heartbeat": 0.0}


def _plant_dead(folder: Path, with_dead_claim: bool = False) -> None:
    """A lease no live task holds; with ``with_dead_claim``, also the claim of a taker that died mid-takeover."""
    import hashlib

    from dfqbench.store.lease import CLAIM_PREFIX

    folder.mkdir(parents=True, exist_ok=True)
    data = json.dumps(DEAD_LEASE).encode()
    (folder / "lease.json").write_bytes(data)
    if with_dead_claim:
        claim = {**DEAD_LEASE, "job_id": "dead-taker", "token": "1"}
        (folder / (CLAIM_PREFIX + hashlib.sha256(data).hexdigest()[:32])).write_text(json.dumps(claim))


def _race(folders: list, name: str, barrier, results) -> None:
    from dfqbench.store.lease import Lease

    for index, folder in enumerate(folders):
        barrier.wait(timeout=120)  # every taker starts the round together
        results.put((index, name, Lease(folder, name, "test").acquire() is None))
    barrier.wait(timeout=120)  # alive (so our leases are alive) until every taker has judged every round


def test_lease_acquire_has_exactly_one_winner_among_racing_processes(tmp_path):
    """Issue 23: taking over a dead lease was replace, sleep 50 ms, read back — two takers could both believe
    they held it. Processes race on fresh folders, on dead leases and on dead leases with a dead taker's claim:
    whatever the interleaving, exactly one of them holds each run, and it is the one named in lease.json."""
    import multiprocessing

    from dfqbench.store.lease import read_lease

    rounds, takers = 36, 4
    folders = [tmp_path / f"run{i}" for i in range(rounds)]
    for i, folder in enumerate(folders):
        if i % 3:
            _plant_dead(folder, with_dead_claim=i % 3 == 2)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(takers), context.Queue()
    processes = [context.Process(target=_race, args=(folders, f"taker{t}", barrier, results)) for t in range(takers)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=300) for _ in range(rounds * takers)]
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    for i, folder in enumerate(folders):
        winners = [name for index, name, won in outcomes if index == i and won]
        assert len(winners) == 1, (i, winners)
        assert read_lease(folder)["job_id"] == winners[0]
        assert [p.name for p in folder.iterdir()] == ["lease.json"], "a claim or temp file was left behind"


def test_a_taker_that_judged_a_lease_dead_loses_to_one_that_took_it_first(tmp_path, monkeypatch):
    """The window the old takeover had, made to happen: while B judges the dead lease, A takes it over. B must
    not replace A's live lease (it did: two holders), it reads A's lease and loses."""
    from dfqbench.store import lease as leases

    _plant_dead(tmp_path)
    first, second = leases.Lease(tmp_path, "A", "test"), leases.Lease(tmp_path, "B", "test")
    judge, took = leases.lease_alive, []

    def slow_judge(lease, now=None):
        if lease.get("job_id") == "dead" and not took:
            took.append("B judging")
            took.append(first.acquire())  # A takes the lease over while B is still deciding
        return judge(lease, now)

    monkeypatch.setattr(leases, "lease_alive", slow_judge)
    holder = second.acquire()
    assert took == ["B judging", None] and holder is not None and holder["job_id"] == "A"
    assert leases.read_lease(tmp_path)["job_id"] == "A"
    assert [p.name for p in tmp_path.iterdir()] == ["lease.json"]


def test_a_lease_over_a_folder_or_garbage_is_taken_over_or_one_line(tmp_path):
    from dfqbench.store.lease import Lease, read_lease

    (tmp_path / "lease.json").write_text("[" * 100_000)  # garbage no task wrote: not alive
    assert Lease(tmp_path, "A", "test").acquire() is None and read_lease(tmp_path)["job_id"] == "A"
    (tmp_path / "lease.json").unlink()
    (tmp_path / "lease.json").mkdir()
    with pytest.raises(StoreError, match=r"cannot write '.*lease\.json'"):
        Lease(tmp_path, "B", "test").acquire()
    assert [p.name for p in tmp_path.iterdir()] == ["lease.json"]


@pytest.mark.parametrize("content, reason", [(None, "FileNotFoundError"), (b"{not json", "JSONDecodeError"),
                                             (b"[" * 100_000 + b"]" * 100_000, "ValueError"),
                                             (b"[1, 2]", "not a JSON object")])
def test_a_required_spec_that_is_missing_or_unreadable_is_one_line(tmp_path, content, reason):
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    if content is not None:
        folder.spec_path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        folder.spec()
    assert str(info.value) == f"unreadable spec.json in '{folder.path}' ({reason})"
    assert folder.read_spec() is None  # the lenient reader: None, rewritten at the next start
    folder.spec_path.write_text('{"method": "gdfq"}')
    assert folder.spec() == {"method": "gdfq"}
