"""``python -m dfqbench.launch.worker TASK_JSON``: one grid run in its own process (the local executor's unit).

Exit status: 0 done, 1 failed, 3 held by another live task, 130 interrupted (Ctrl-C / SIGINT / SIGTERM; the
run resumes from its checkpoint next time). A separate process per run keeps a crash, a CUDA context or a
host out-of-memory kill of one run from taking the others down.

A Slurm array task that trains several runs (:class:`dfqbench.launch.slurm.SlurmTaskGroup`) starts these
workers too; it names its job in ``DFQBENCH_WORKER_JOB_ID`` and ``DFQBENCH_WORKER_EXECUTOR=slurm`` (for the
lease and ``attempts.json``). SIGUSR2, Slurm's warning before a time limit or a preemption, is ignored: the
array task decides (it stops its workers with SIGINT and requeues itself).
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = 130  # EXIT_CODES["interrupted"]; the heavy imports (torch) come after the handlers, inside main()


def _interrupt(signum: int, frame: object) -> None:
    """The first SIGINT/SIGTERM stops the run; later ones are ignored so that the clean-up (lease, attempts)
    finishes even when both the terminal and the launcher deliver a SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    """Run the task; Ctrl-C at any point, while importing torch too, ends with one line and status 130."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("dfqbench worker: interrupted; the run resumes from its last checkpoint next time", file=sys.stderr)
        return INTERRUPTED


def _main(argv: list[str]) -> int:
    from dfqbench.core.progress import make_progress
    from dfqbench.launch.task import EXIT_CODES, GridTask

    task = GridTask.from_json(argv[0])
    plain = os.environ.get("DFQBENCH_WORKER_PLAIN", "1") == "1"
    job_id = os.environ.get("DFQBENCH_WORKER_JOB_ID") or f"local-{os.getpid()}"
    executor = os.environ.get("DFQBENCH_WORKER_EXECUTOR") or "local"
    try:
        outcome = task.execute(job_id, executor, progress=make_progress(force_plain=plain))
    except KeyboardInterrupt:
        return EXIT_CODES["interrupted"]  # the task cleaned up (lease, attempts); nothing more to say
    if outcome.reason:
        print(f"dfqbench worker: {task.spec.run_name}: {outcome.status}: {outcome.reason}", file=sys.stderr)
    return EXIT_CODES[outcome.status]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
