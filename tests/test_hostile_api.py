"""The Python API's one error boundary (issue 23, "Python API"): every public function of :mod:`dfqbench.api`
checks its arguments against its annotations before it runs (:func:`dfqbench.api.public`), so a wrong type, an
unknown or a missing argument is a :class:`DfqbenchError` with one line naming the argument, the value and what
was expected, never a raw ``TypeError``/``ValueError``/pandas error from deep inside, and nothing is written.
What passes is converted where the API promises it (a numpy integer seed, a generator of seeds, a Path)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import dfqbench
from dfqbench import api
from dfqbench.errors import DfqbenchError

RUN = ("gdfq", "tiny_cifar10", "w4a4")


def test_every_public_function_goes_through_the_one_boundary():
    boundary = api.public(lambda: None).__code__
    for name in dfqbench._API:
        function = getattr(dfqbench, name)
        assert function.__code__ is boundary, f"dfqbench.{name} is not wrapped by dfqbench.api.public"
        assert inspect.signature(function) == inspect.signature(function.__wrapped__)  # help() unchanged


def _cases(tmp_path: Path) -> list[tuple[str, object, str]]:
    results = tmp_path / "results"
    return [
        ("run seed='a'", lambda: dfqbench.run(*RUN, seed="a", results=results),
         r"invalid run\(\) argument seed='a': expected an integer$"),
        ("run bits=4", lambda: dfqbench.run("gdfq", "tiny_cifar10", 4, results=results),
         r"invalid run\(\) argument bits=4: expected a string$"),
        ("run method=None", lambda: dfqbench.run(None, "tiny_cifar10", "w4a4", results=results),
         r"argument method=None: expected a string$"),
        ("run seed=True", lambda: dfqbench.run(*RUN, seed=True, results=results),
         r"argument seed=True: expected an integer$"),
        ("run log_every='x'", lambda: dfqbench.run(*RUN, log_every="x", results=results),
         r"argument log_every='x': expected an integer$"),
        ("run overrides=5", lambda: dfqbench.run(*RUN, overrides=5, results=results),
         r"argument overrides=5: expected a list of strings or a mapping with string keys or None$"),
        ("run overrides={1: 2}", lambda: dfqbench.run(*RUN, overrides={1: 2}, results=results),
         r"argument overrides=\{1: 2\}"),
        ("run results=5", lambda: dfqbench.run(*RUN, results=5), r"argument results=5: expected a string or a path"),
        ("run log=5", lambda: dfqbench.run(*RUN, log=5, results=results),
         r"argument log=5: expected a string or a list of strings or None$"),
        ("run progress='yes'", lambda: dfqbench.run(*RUN, progress="yes", results=results),
         r"argument progress='yes': expected True or False or a dfqbench.core.progress.Progress$"),
        ("run sed=0", lambda: dfqbench.run(*RUN, sed=0, results=results),
         r"unknown run\(\) argument 'sed'; did you mean 'seed'\?"),
        ("run missing", lambda: dfqbench.run("gdfq"), r"missing a required argument: 'model'"),
        ("run_grid jobs='x'", lambda: dfqbench.run_grid("smoke", results, jobs="x"),
         r"invalid run_grid\(\) argument jobs='x': expected an integer or None$"),
        ("run_grid 123", lambda: dfqbench.run_grid(123, results), r"argument grid=123: expected a string or a path$"),
        ("run_grid seeds=['a']", lambda: dfqbench.run_grid("smoke", results, seeds=["a"], dry_run=True),
         r"argument seeds=\['a'\]: expected a string or a list of integers or None$"),
        ("run_grid only=5", lambda: dfqbench.run_grid("smoke", results, only=5, dry_run=True),
         r"argument only=5: expected a mapping with string keys or a list of strings or None$"),
        ("run_grid dry_run='yes'", lambda: dfqbench.run_grid("smoke", results, dry_run="yes"),
         r"argument dry_run='yes': expected True or False$"),
        ("run_grid errors=1", lambda: dfqbench.run_grid("smoke", results, errors=1),
         r"argument errors=1: expected a string$"),
        ("load_results 123", lambda: dfqbench.load_results(123),
         r"invalid load_results\(\) argument results_dir=123: expected a string or a path or None$"),
        ("load_results grid=5", lambda: dfqbench.load_results(results, grid=5), r"argument grid=5"),
        ("load_results protocol=5", lambda: dfqbench.load_results(results, protocol=5), r"argument protocol=5"),
        ("load_metrics None", lambda: dfqbench.load_metrics(None), r"invalid run None: expected a run folder"),
        ("load_metrics 5", lambda: dfqbench.load_metrics(5, results), r"invalid run 5: expected a run folder"),
        ("load_student None", lambda: dfqbench.load_student(None, "best", results),
         r"invalid run None: expected a run folder"),
        ("load_student which=3", lambda: dfqbench.load_student("x", 3), r"argument which=3: expected a string$"),
        ("evaluate None", lambda: dfqbench.evaluate(None, None),
         r"invalid evaluate\(\) argument model=None: expected a torch.nn.Module$"),
        ("run_dir 5", lambda: dfqbench.run_dir(5), r"invalid run 5: expected a run folder"),
        ("run_dir row without a name", lambda: dfqbench.run_dir({"run_name": float("nan")}),
         r"a run given as a mapping needs its 'path', 'run_name' or 'run_id'"),
    ]


def test_bad_arguments_are_one_line_naming_them_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a results=5 that got through would write ./5
    for name, call, message in _cases(tmp_path):
        with pytest.raises(DfqbenchError) as caught:
            call()
        text = str(caught.value)
        assert len(text.splitlines()) == 1 and re.search(message, text), (name, text)
    assert list(tmp_path.iterdir()) == [], "a refused call wrote something"


def test_an_os_error_on_a_given_path_is_one_line(tmp_path, monkeypatch):
    """What the checks cannot foresee on a path the user gave (a permission denied under it) is one line naming
    the function and the file, from the same boundary."""
    from dfqbench.report import load

    def denied(root=None):
        raise PermissionError(13, "Permission denied", str(tmp_path / "results" / "runs"))

    monkeypatch.setattr(load, "scan_results", denied)
    with pytest.raises(DfqbenchError, match=r"^load_results\(\): cannot use '.*runs' \(Permission denied\)$"):
        dfqbench.load_results(tmp_path / "results")


def test_arguments_are_converted_where_the_api_promises(tmp_path, monkeypatch):
    """A numpy integer is an integer, a Path a path, any iterable of seeds a list of them: the request the
    library gets is the one the command line would build."""
    import dfqbench.runner

    seen = []
    record = SimpleNamespace(to_dict=dict)  # what the runner returns, for the request it got

    monkeypatch.setattr(dfqbench.runner, "run", lambda request, progress, **_: seen.append(request) or record)
    assert dfqbench.run(*RUN, seed=np.int64(3), log_every=np.int32(7), results=tmp_path / "r", data_root=tmp_path,
                        progress=False) == {}
    (request,) = seen
    assert request.seed == 3 and type(request.seed) is int and request.log_every == 7
    assert request.results == str(tmp_path / "r") and request.data_root == str(tmp_path)

    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", "off")
    listed = dfqbench.run_grid("smoke", tmp_path / "g", seeds=[0], dry_run=True)
    for seeds in (np.array([0]), (s for s in [0]), range(1)):
        frame = dfqbench.run_grid("smoke", tmp_path / "g", seeds=seeds, dry_run=True)
        assert frame["run_id"].tolist() == listed["run_id"].tolist()
    assert not (tmp_path / "g").exists()
