"""The local executor: the pending runs of a grid, ``jobs`` at a time, each in its own worker process.

Devices: with CUDA (``--device auto`` or ``cuda``), ``--runs-per-gpu N`` (default 1) worker processes share
each visible GPU: the default ``jobs`` is ``#GPUs × N`` and worker slot *i* sees only GPU
``(i // N) mod #GPUs`` through ``CUDA_VISIBLE_DEVICES`` (slots 0 … N−1 share the first GPU; ``--jobs``
above ``#GPUs × N`` wraps around). Without GPUs (CPU) N changes nothing: ``--jobs`` alone sets how many
runs go at once (default 1). Every worker gets ``OMP_NUM_THREADS = cores // jobs`` unless the variable is
already set (on GPUs too when there are several workers: they share the host's cores).

A failed run is reported and the others go on; the exit status is 1 if any run failed. Ctrl-C (SIGINT, or
SIGTERM to this process) stops cleanly: every worker gets one SIGINT, finished runs stay finished, an
interrupted run keeps its last epoch checkpoint and resumes from it next time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, TextIO

from dfqbench.launch.task import EXIT_CODES, GridTask
from dfqbench.store import RunFolder, StoreError

GRACE_S = 60.0  # how long interrupted workers get to exit before they are killed


@dataclass
class LocalResult:
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    busy: list[tuple[str, str]] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    not_started: int = 0

    @property
    def exit_code(self) -> int:
        if self.interrupted or self.not_started:
            return 130
        return 1 if self.failed else 0


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def default_jobs(device: str, runs_per_gpu: int = 1) -> int:
    """``runs_per_gpu`` runs per visible GPU with ``auto``/``cuda``; one process otherwise (and without GPUs)."""
    return max(1, len(visible_gpus()) * runs_per_gpu) if device in ("auto", "cuda") else 1


def gpu_for_slot(slot: int, gpus: list[str], runs_per_gpu: int = 1) -> str | None:
    """The GPU worker slot ``slot`` uses: slots 0 … N−1 the first, N … 2N−1 the second, … (None without GPUs)."""
    return gpus[(slot // max(1, runs_per_gpu)) % len(gpus)] if gpus else None


def worker_env(slot: int, jobs: int, device: str, gpus: list[str], plain: bool, runs_per_gpu: int = 1,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker slot ``slot``: its GPU, its share of the cores, plain progress, ``extra``."""
    env = dict(os.environ)
    gpu = gpu_for_slot(slot, gpus, runs_per_gpu) if device in ("auto", "cuda") else None
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if "OMP_NUM_THREADS" not in os.environ and (gpu is None or jobs > 1):  # one GPU worker keeps torch's default
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    env["DFQBENCH_WORKER_PLAIN"] = "1" if plain else "0"
    env.update(extra or {})
    return env


def run_local(tasks: list[GridTask], jobs: int, device: str, out: TextIO | None = None,
              python: str | None = None, runs_per_gpu: int = 1, extra_env: dict[str, str] | None = None,
              started: Callable[[subprocess.Popen], None] | None = None,
              worker_logs: bool | None = None) -> LocalResult:
    """Run ``tasks`` with at most ``jobs`` workers, ``runs_per_gpu`` per GPU; returns what happened to each.

    ``extra_env`` is added to every worker's environment; ``started`` is called with each worker process
    (a Slurm array task running several runs uses both: :class:`dfqbench.launch.slurm.SlurmTaskGroup`).
    ``worker_logs``: each worker's output goes to its run folder's ``worker.log`` instead of this process's
    terminal; by default when several workers run at once (their lines would interleave). The Python API
    asks for it always, so that a quiet ``run_grid`` prints nothing.
    """
    out = out or sys.stdout
    say: Callable[[str], None] = lambda text: print(f"{time.strftime('%H:%M:%S')} {text}", file=out,  # noqa: E731
                                                    flush=True)  # timestamped, as the workers' plain lines
    gpus = visible_gpus() if device in ("auto", "cuda") else []
    plain = jobs > 1 or not sys.stdout.isatty()
    to_logs = jobs > 1 if worker_logs is None else worker_logs
    result = LocalResult()
    queue = deque(enumerate(tasks, 1))
    running: dict[int, tuple[subprocess.Popen, GridTask, int, TextIO | None]] = {}
    free = list(range(jobs))
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while queue or running:
            while queue and free:
                index, task = queue.popleft()
                if _settled_elsewhere(task, index, len(tasks), result, say):
                    continue
                slot = free.pop(0)
                env = worker_env(slot, jobs, device, gpus, plain, runs_per_gpu, extra_env)
                running[slot] = _start(task, index, to_logs, env, python)
                if started is not None:
                    started(running[slot][0])
                gpu = gpu_for_slot(slot, gpus, runs_per_gpu)
                say(f"[{index}/{len(tasks)}] start {task.spec.run_name}"
                    + (f" (slot {slot}{', GPU ' + gpu if gpu is not None else ''})" if jobs > 1 else ""))
            time.sleep(0.1)
            for slot in [s for s, (proc, *_rest) in running.items() if proc.poll() is not None]:
                proc, task, index, log = running.pop(slot)
                _finish(proc, task, index, len(tasks), log, result, say)
                free.append(slot)
    except KeyboardInterrupt:
        say(f"interrupted: stopping {len(running)} running run(s); they resume from their checkpoints next time")
        _stop_all(running, result, len(tasks), say)
        result.not_started = len(queue)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return result


def _settled_elsewhere(task: GridTask, index: int, total: int, result: LocalResult,
                       say: Callable[[str], None]) -> bool:
    """True (and reported) when another launcher finished the run or holds it with a live lease since this
    grid was planned: no worker process is started for it (the worker would check again under the lease)."""
    from dfqbench.store import run_state

    state = run_state(task.folder)
    name = task.spec.run_name
    if state.state == "done" and not task.stale_to_rerun():  # a stale run to train again is not settled
        result.done.append(name)
        say(f"[{index}/{total}] done {name}: finished elsewhere")
    elif state.state == "running":
        result.busy.append((name, state.reason or "held by another live task"))
        say(f"[{index}/{total}] skipped {name}: {state.reason}")
    else:
        return False
    return True


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _start(task: GridTask, index: int, to_log: bool, env: dict[str, str],
           python: str | None) -> tuple[subprocess.Popen, GridTask, int, TextIO | None]:
    log = None
    if to_log:
        task.folder.path.mkdir(parents=True, exist_ok=True)
        log = open(task.folder.worker_log_path, "a")  # noqa: SIM115  (closed in _finish)
    proc = subprocess.Popen(
        [python or sys.executable, "-m", "dfqbench.launch.worker", task.to_json()],
        env=env, stdout=log, stderr=subprocess.STDOUT if log else None,
    )
    return proc, task, index, log


def _finish(proc: subprocess.Popen, task: GridTask, index: int, total: int, log: TextIO | None,
            result: LocalResult, say: Callable[[str], None]) -> None:
    from dfqbench.store import run_state

    if log is not None:
        log.close()
    code = proc.returncode
    name = task.spec.run_name
    state = run_state(task.folder)
    if state.state == "done" and not task.stale_to_rerun():  # a stale run to train again is not settled
        result.done.append(name)
        say(f"[{index}/{total}] done {name}{_best(task.folder)}")
    elif code == EXIT_CODES["busy"]:
        result.busy.append((name, "held by another live task"))
        say(f"[{index}/{total}] skipped {name}: another live task holds it")
    elif code in (EXIT_CODES["interrupted"], -signal.SIGINT):
        result.interrupted.append(name)
        say(f"[{index}/{total}] interrupted {name}")
    else:
        reason = state.reason or f"worker exited with status {code} without a record or error"
        result.failed.append((name, reason))
        log_hint = f" (log: {task.folder.worker_log_path})" if log is not None else ""
        say(f"[{index}/{total}] FAILED {name}: {reason}{log_hint}")


def _best(folder: RunFolder) -> str:
    try:
        record = folder.read_record()
    except StoreError:
        return ""
    if record is None or record.best_top1 is None:
        return ""
    return f": best top-1 {record.best_top1:.2f} in {record.wall_time_s or 0:.0f} s"


def _stop_all(running: dict, result: LocalResult, total: int, say: Callable[[str], None]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon the workers half-way
    try:
        time.sleep(0.5)  # a terminal's Ctrl-C reaches the workers too; give them a moment first
        for proc, *_rest in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.time() + GRACE_S
        for proc, *_rest in running.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for proc, task, index, log in running.values():
            _finish(proc, task, index, total, log, result, say)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
