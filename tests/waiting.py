"""Waiting in tests, without timing-dependent outcomes.

A test that waits for a state (a run logging epochs, a Slurm job requeued, a lease going) waits as long as
that state can still come, and fails at once when it no longer can (the process exited, the job ended, the
run finished first). Its deadline, :data:`HANG_S`, only guards against a hang: generous enough for a loaded
2-core machine training and scheduling Slurm jobs, and never the reason a healthy but slow run fails.
Durations and speeds are measured in benchmarks/, never asserted in tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from typing import Callable, TypeVar

T = TypeVar("T")

# The hang guard of every wait and every subprocess the tests start (seconds; DFQBENCH_TEST_HANG_S changes it).
HANG_S = float(os.environ.get("DFQBENCH_TEST_HANG_S", 900))


def wait_until(ready: Callable[[], T], what: str, impossible: Callable[[], str | None] = lambda: None,
               diagnose: Callable[[], str] = lambda: "", poll_s: float = 0.2, hang_s: float | None = None) -> T:
    """Poll ``ready()`` until it returns something true, and return that.

    ``impossible()`` returns why the state waited for can no longer come (or None): the wait fails at once with
    that reason. Each round asks ``impossible()`` first and ``ready()`` after it, and the reason counts only
    when ``ready()`` is still false: an end that ``impossible()`` sees (a process exited, a job left the queue)
    cannot fail a wait whose state came just before that end. ``hang_s`` (default :data:`HANG_S`) only guards
    against a hang. ``diagnose()`` adds what to look at to either failure.
    """
    hang_s = HANG_S if hang_s is None else hang_s
    started = time.monotonic()
    while True:
        reason = impossible()
        value = ready()
        if value:
            return value
        if reason:
            raise AssertionError(f"{reason}: {what} can no longer happen\n{diagnose()}")
        if time.monotonic() - started > hang_s:
            raise AssertionError(f"hang guard: still waiting for {what} after {hang_s:.0f} s "
                                 f"(set DFQBENCH_TEST_HANG_S for a slower machine)\n{diagnose()}")
        time.sleep(poll_s)


def process_exited(proc: subprocess.Popen, name: str = "the process") -> Callable[[], str | None]:
    """An ``impossible`` for :func:`wait_until`: ``proc`` exited (its output, when piped, ends the reason)."""

    def exited() -> str | None:
        if proc.poll() is None:
            return None
        out = proc.stdout.read() if proc.stdout is not None else ""
        return f"{name} exited with status {proc.returncode}" + (f"; its output:\n{out}" if out else "")

    return exited


def finish(proc: subprocess.Popen, what: str, hang_s: float | None = None) -> str:
    """Wait for ``proc`` to exit and return its output (stdout, when piped). A process fails fast by exiting;
    one still running after ``hang_s`` (default :data:`HANG_S`) is hung: it is killed and the test fails."""
    hang_s = HANG_S if hang_s is None else hang_s
    try:
        return proc.communicate(timeout=hang_s)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0] or ""
        raise AssertionError(f"hang guard: {what} still running after {hang_s:.0f} s; killed. "
                             f"The end of its output:\n{out[-5000:]}") from None


def started_before_any_ended(launcher_output: str, runs: int) -> bool:
    """In a local launcher's lines (:func:`dfqbench.launch.local.run_local`, also in a packed Slurm task's log):
    ``runs`` workers were started before the first one ended. Shows runs trained at once without comparing
    their wall-clock spans, which a loaded machine can pull apart."""
    events = re.findall(r"\[\d+/\d+\] (start|done|FAILED|interrupted|skipped) ", launcher_output)
    first_end = next((i for i, e in enumerate(events) if e != "start"), len(events))
    return events[:first_end].count("start") >= runs
