"""The Slurm executor: pending runs grouped by resource profile, one submitit job array per profile.

Always submitit's ``SlurmExecutor`` (never ``AutoExecutor``, which picks Slurm whenever ``srun`` is on the
PATH). Each array task is a :class:`SlurmGridTask` (a ``Checkpointable``): on
preemption or timeout (Slurm's ``--signal=USR2@signal_delay_s``) submitit requeues it and the run resumes
from its epoch checkpoint. Arrays are cut into chunks no larger than the cluster's ``MaxArraySize``
(``scontrol show config``; Slurm's default 1001 when it cannot be read) or the profile's own
``max_array_size``. One ``sbatch`` per chunk: a 1,000-run grid is one submission per profile.

Profiles come from a YAML file (``--profiles FILE``, else ``$DFQBENCH_SLURM_PROFILES``, else
``./slurm/profiles.yaml``, else the default shipped in the package, :data:`DEFAULT_PROFILES`)::

    select:                       # the first rule matching a run's cell picks its profile
      - {dataset: imagenet, profile: imagenet}
      - {profile: cifar}          # no keys: matches every run
    profiles:
      cifar: {partition: gpu, gpus: 1, cpus: 8, mem_gb: 32, time_min: 240, array_parallelism: 64,
              max_timeouts: 3, signal_delay_s: 120, setup: ["module load cuda"], sbatch: {qos: normal},
              runs_per_gpu: 1}

A grid cell's own ``profile`` (grid key or preset) beats the rules; ``--profile NAME`` beats both.
``runs_per_gpu: N`` (``--runs-per-gpu N`` overrides it) packs N runs into each array task, trained at once as
worker processes sharing its GPU and CPUs (:class:`SlurmTaskGroup`); the manifest still
has one entry per run, with its array task's job id.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import submitit
import yaml

from dfqbench.errors import DfqbenchError
from dfqbench.launch.grid import CELL_KEYS, MATCH_ONLY_KEYS, matches
from dfqbench.launch.local import GRACE_S, run_local
from dfqbench.launch.plan import PlannedCell
from dfqbench.launch.task import GridTask
from dfqbench.registry import unknown_choice

PROFILES_ENV = "DFQBENCH_SLURM_PROFILES"
DEFAULT_PROFILES = Path(__file__).with_name("slurm_profiles.yaml")  # package data: found installed too
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize


@dataclass(frozen=True)
class Profile:
    """Resources of one job array (names follow sbatch: gpus per node, cpus per task, time in minutes)."""

    name: str
    partition: str | None = None
    gpus: int = 0
    cpus: int = 1
    mem_gb: float | None = None
    time_min: int = 60
    array_parallelism: int = 256  # array tasks running at once (sbatch --array=…%N)
    max_array_size: int | None = None  # cap below the cluster's MaxArraySize
    max_timeouts: int = 3  # requeues after a timeout (preemptions are not counted)
    signal_delay_s: int = 90  # USR2 this long before the time limit: requeue with a checkpoint
    setup: tuple[str, ...] = ()  # shell lines before the run (module load …, source venv)
    sbatch: dict[str, Any] = field(default_factory=dict)  # any other sbatch option, e.g. {qos: high}
    runs_per_gpu: int = 1  # runs per array task, trained at once on its GPU (each in its own process)

    def parameters(self, job_name: str, parallelism: int | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "job_name": job_name, "time": self.time_min, "cpus_per_task": self.cpus,
            "signal_delay_s": self.signal_delay_s, "array_parallelism": parallelism or self.array_parallelism,
        }
        if self.partition:
            params["partition"] = self.partition
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        if self.mem_gb:
            params["mem"] = f"{int(self.mem_gb * 1024)}MB"
        if self.setup:
            params["setup"] = list(self.setup)
        if self.sbatch:
            params["additional_parameters"] = dict(self.sbatch)
        return params


@dataclass
class Profiles:
    path: Path
    profiles: dict[str, Profile]
    select: list[dict[str, Any]]

    def get(self, name: str) -> Profile:
        if name not in self.profiles:
            raise DfqbenchError(unknown_choice(f"Slurm profile (in {self.path})", name, sorted(self.profiles)))
        return self.profiles[name]

    def for_cell(self, planned: PlannedCell, forced: str | None) -> Profile:
        name = forced or planned.cell.profile
        if name is None:
            for rule in self.select:
                if matches({k: v for k, v in rule.items() if k != "profile"}, planned.cell.values):
                    name = rule["profile"]
                    break
        if name is None:
            raise DfqbenchError(f"no Slurm profile for {planned.name}: no select rule in {self.path} matches it; "
                                "add one or pass --profile NAME")
        return self.get(name)


def find_profiles(explicit: str | None) -> Path:
    """The profiles file: ``explicit``, else ``$DFQBENCH_SLURM_PROFILES`` (either must exist), else
    ``./slurm/profiles.yaml`` when there is one, else the shipped :data:`DEFAULT_PROFILES`."""
    for text in (explicit, os.environ.get(PROFILES_ENV)):
        if text:
            if not Path(text).expanduser().is_file():
                raise DfqbenchError(f"Slurm profiles file '{text}' not found")
            return Path(text).expanduser()
    for path in (Path("slurm/profiles.yaml"), DEFAULT_PROFILES):
        if path.is_file():
            return path
    raise DfqbenchError(f"no Slurm profiles file: the shipped default {DEFAULT_PROFILES} is missing (a broken "
                        "install); pass --profiles FILE or set DFQBENCH_SLURM_PROFILES")


def load_profiles(explicit: str | None = None) -> Profiles:
    path = find_profiles(explicit)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DfqbenchError(f"Slurm profiles file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or set(raw) - {"profiles", "select"}:
        extra = sorted(set(raw) - {"profiles", "select"}) if isinstance(raw, dict) else ["(not a mapping)"]
        raise DfqbenchError(f"Slurm profiles file '{path}': unknown key {extra[0]!r}; choices: profiles, select")
    names = {f.name for f in fields(Profile)} - {"name"}
    profiles = {}
    for name, values in (raw.get("profiles") or {}).items():
        if not isinstance(values, dict):
            raise DfqbenchError(f"Slurm profiles file '{path}': profiles.{name} must be a mapping")
        for key in values:
            if key not in names:
                raise DfqbenchError(f"Slurm profiles file '{path}': "
                                    + unknown_choice(f"key in profiles.{name}:", key, sorted(names)))
        values = {**values, "setup": tuple(values.get("setup") or ()), "sbatch": dict(values.get("sbatch") or {})}
        per_gpu = values.get("runs_per_gpu", 1)
        if isinstance(per_gpu, bool) or not isinstance(per_gpu, int) or per_gpu < 1:
            raise DfqbenchError(f"Slurm profiles file '{path}': profiles.{name}.runs_per_gpu must be an integer "
                                f">= 1, not {per_gpu!r}")
        profiles[name] = Profile(name=name, **values)
    select = raw.get("select") or []
    for i, rule in enumerate(select):
        if not isinstance(rule, dict) or rule.get("profile") not in profiles:
            raise DfqbenchError(f"Slurm profiles file '{path}': select[{i}] needs profile: one of "
                                f"{', '.join(sorted(profiles))}")
        for key in rule:
            if key != "profile" and key not in CELL_KEYS + MATCH_ONLY_KEYS:
                raise DfqbenchError(f"Slurm profiles file '{path}': "
                                    + unknown_choice(f"key in select[{i}]:", key, list(CELL_KEYS + MATCH_ONLY_KEYS)))
    return Profiles(path, profiles, select)


def cluster_max_array_size() -> int:
    """The cluster's MaxArraySize (task indices run 0 … MaxArraySize − 1), Slurm's default if unreadable."""
    try:
        text = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_MAX_ARRAY_SIZE
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else DEFAULT_MAX_ARRAY_SIZE


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def submit(work: list[tuple[GridTask, Profile]], folder: Path, grid: str, parallelism: int | None = None,
           say: Callable[[str], None] = print, max_array_size: int | None = None,
           runs_per_gpu: int | None = None) -> list[dict[str, Any]]:
    """Submit every task: one array per profile, chunked; returns the manifest entries of what was submitted.

    Each array task runs ``runs_per_gpu`` runs (else the profile's). On an sbatch failure the entries
    submitted so far are attached to the raised error (``.submitted``).
    """
    limit_cluster = max_array_size or cluster_max_array_size()
    groups: dict[str, tuple[Profile, list[GridTask]]] = {}
    for task, profile in work:
        groups.setdefault(profile.name, (profile, []))[1].append(task)
    submitted: list[dict[str, Any]] = []
    for name, (profile, tasks) in groups.items():
        try:
            executor = submitit.SlurmExecutor(folder=folder / name, max_num_timeout=profile.max_timeouts)
            executor.update_parameters(**profile.parameters(f"dfq-{grid}-{name}", parallelism))
        except RuntimeError as exc:  # no srun on the PATH
            raise DfqbenchError(f"--executor slurm needs Slurm here: {exc}") from None
        except ValueError as exc:
            raise DfqbenchError(f"Slurm profile {name!r}: {str(exc).splitlines()[0]}") from None
        limit = min(limit_cluster, profile.max_array_size or limit_cluster)
        per_task = runs_per_gpu or profile.runs_per_gpu
        for chunk in chunks(chunks(tasks, per_task), limit):  # array tasks of per_task runs, arrays of them
            runs = sum(len(unit) for unit in chunk)
            try:
                with executor.batch():
                    jobs = [executor.submit(SlurmGridTask(unit[0]) if per_task == 1
                                            else SlurmTaskGroup(unit, per_task)) for unit in chunk]
            except Exception as exc:  # noqa: BLE001  (sbatch refused: report it with what did go through)
                error = DfqbenchError(f"sbatch failed for profile {name!r} ({runs} runs): "
                                      f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}")
                error.submitted = submitted  # type: ignore[attr-defined]
                raise error from None
            array_id = jobs[0].job_id.split("_")[0]
            say(f"submitted {runs} runs as Slurm job {array_id}"
                + (f" (array 0-{len(chunk) - 1})" if len(chunk) > 1 else "")
                + (f", {per_task} runs per array task" if per_task > 1 else "") + f", profile {name}")
            submitted += [{"run_id": t.spec.run_id, "run_name": t.spec.run_name, "job_id": j.job_id,
                           "profile": name, "log": str(folder / name)} for unit, j in zip(chunk, jobs) for t in unit]
    return submitted


class SlurmGridTask(submitit.helpers.Checkpointable):
    """A grid run in a Slurm array task; requeued (with itself) on preemption or timeout."""

    def __init__(self, task: GridTask) -> None:
        self.task = task
        self._preempted = False

    def __call__(self) -> dict[str, Any]:
        self._preempted = False
        env = submitit.JobEnvironment()
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and "OMP_NUM_THREADS" not in os.environ:
            import torch

            torch.set_num_threads(int(cpus))
        outcome = self.task.execute(env.job_id, "slurm", preempted=lambda: self._preempted)
        if outcome.status == "failed" and outcome.ran:
            raise RuntimeError(f"{self.task.spec.run_name} failed: {outcome.reason} (see its error.json)")
        return dataclasses.asdict(outcome)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's signal handler before requeueing: the trainer's epoch checkpoint is the state."""
        self._preempted = True
        return submitit.helpers.DelayedSubmission(SlurmGridTask(self.task))


class SlurmTaskGroup(submitit.helpers.Checkpointable):
    """Several grid runs in one Slurm array task (a profile's ``runs_per_gpu``), trained concurrently, each in
    its own worker process (:func:`~dfqbench.launch.local.run_local`) sharing the task's GPU and CPUs.

    Fails (raises) when any run failed; the others still finish. On preemption or timeout submitit calls
    :meth:`checkpoint`: the workers get SIGINT (each ends its attempt and releases its lease; its run keeps
    its last epoch checkpoint) and a fresh group with the same runs is requeued.
    """

    def __init__(self, tasks: list[GridTask], runs_per_gpu: int | None = None) -> None:
        self.tasks = list(tasks)
        self.runs_per_gpu = runs_per_gpu or len(self.tasks)
        self._procs: list[Any] = []

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_procs": []}  # worker processes are not pickled (requeue, result)

    def __call__(self) -> dict[str, Any]:
        self._procs = []
        env = submitit.JobEnvironment()
        extra = {"DFQBENCH_WORKER_JOB_ID": str(env.job_id), "DFQBENCH_WORKER_EXECUTOR": "slurm"}
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and "OMP_NUM_THREADS" not in os.environ:  # the task's CPUs, shared by its workers
            extra["OMP_NUM_THREADS"] = str(max(1, int(cpus) // len(self.tasks)))
        result = run_local(self.tasks, jobs=len(self.tasks), device=self.tasks[0].request.device, out=sys.stdout,
                           runs_per_gpu=self.runs_per_gpu, extra_env=extra, started=self._procs.append)
        if result.failed:
            raise RuntimeError(f"{len(result.failed)} of {len(self.tasks)} runs failed: "
                               + "; ".join(f"{name}: {reason}" for name, reason in result.failed)
                               + " (see their error.json)")
        return dataclasses.asdict(result)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's signal handler before requeueing: stop the workers, requeue the same runs."""
        live = [p for p in self._procs if p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGINT)
        deadline = time.time() + GRACE_S
        for proc in live:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return submitit.helpers.DelayedSubmission(SlurmTaskGroup(self.tasks, self.runs_per_gpu))
