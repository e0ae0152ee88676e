"""The tests' wait helper (tests/waiting.py): it returns what it waited for, fails at once when the state can no
longer come, trusts an end it saw only when the state had not come just before it, and has a hang guard."""

from __future__ import annotations

import subprocess
import sys

import pytest

from waiting import finish, process_exited, started_before_any_ended, wait_until


def test_returns_the_ready_value_and_fails_fast_when_impossible():
    calls = iter([None, None, ["x"]])
    assert wait_until(lambda: next(calls), "x", poll_s=0) == ["x"]
    with pytest.raises(AssertionError, match=r"^the run failed: the run to finish can no longer happen\ndiag$"):
        wait_until(lambda: False, "the run to finish", impossible=lambda: "the run failed", diagnose=lambda: "diag",
                   hang_s=600)


def test_an_end_seen_before_the_state_came_does_not_fail_the_wait():
    """impossible() is asked first: when it sees the end and ready() (asked after it) sees the state that came
    just before that end, the wait succeeds."""
    order = []
    assert wait_until(lambda: order.append("ready") or True, "it", impossible=lambda: order.append("end") or "ended")
    assert order == ["end", "ready"]


def test_hang_guard():
    with pytest.raises(AssertionError, match="hang guard: still waiting for nothing after 0 s"):
        wait_until(lambda: False, "nothing", poll_s=0.01, hang_s=0.05)


def test_process_exited_and_finish():
    proc = subprocess.Popen([sys.executable, "-c", "print('bye')"], stdout=subprocess.PIPE, text=True)
    with pytest.raises(AssertionError, match=r"the grid exited with status 0; its output:\nbye"):
        wait_until(lambda: False, "epoch 3", impossible=process_exited(proc, "the grid"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.PIPE,
                               text=True)
    with pytest.raises(AssertionError, match="hang guard: the sleeper still running after 0 s; killed"):
        finish(sleeper, "the sleeper", hang_s=0.1)
    assert sleeper.returncode is not None


def test_started_before_any_ended():
    both = ("12:00:00 [1/2] start a (slot 0)\n12:00:00 [2/2] start b (slot 1)\n"
            "12:00:05 [1/2] done a: best top-1 50.00 in 3 s\n12:00:06 [2/2] done b\n")
    one_after_the_other = ("12:00:00 [1/2] start a\n12:00:05 [1/2] done a\n12:00:05 [2/2] start b\n"
                           "12:00:09 [2/2] done b\n")
    assert started_before_any_ended(both, 2) and not started_before_any_ended(one_after_the_other, 2)
    assert started_before_any_ended("[1/2] start a (slot 0)\n[2/2] start b (slot 1)\n", 2)  # none ended yet
