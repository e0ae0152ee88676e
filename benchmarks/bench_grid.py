"""Grid launcher timings: `--dry-run` of paper_table1, and submitting a 1,000-run grid to Slurm.

1. ``dfqbench run --grid paper_table1 --dry-run`` as a user runs it (a fresh process: Python start-up and
   imports included), ``--repeat`` times with an empty plan cache (the full planner: imports torch, the
   methods and pytorchcv) and ``--repeat`` times with the cache primed (dfqbench/launch/plancache.py; the
   output is checked to be identical); plus the call in-process after the imports, the planner's own share
   (expansion, per-cell validation and run ids, run states, estimate, report).
2. ``dfqbench run --grid FILE --executor slurm`` (a fresh process) for a generated grid of 1,000 tiny runs
   (tiny_cifar10, seeds 0-999): planning, 1,000 task pickles, one ``sbatch`` per array. The jobs are
   submitted held (``sbatch --hold`` through the profile's ``sbatch`` options) and cancelled right after,
   so nothing runs. Against the Slurm cluster ``sinfo`` reaches (e.g. slurm/start-cluster.sh's; export its
   SLURM_CONF), or with ``--fake-sbatch`` against a script that only records the submission (says so).

    python benchmarks/bench_grid.py [--repeat 3] [--runs 1000] [--fake-sbatch] [--skip-slurm]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAKE_SBATCH = """#!/bin/sh
cp "$1" "$(dirname "$0")/submitted.sh"
echo "Submitted batch job 4242"
"""


def dfqbench(args: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds and output of ``python -m dfqbench.cli ARGS`` in a fresh process."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dfqbench.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"dfqbench {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return elapsed, proc.stdout


def bench_dry_run(repeat: int, work: Path) -> None:
    args = ["run", "--grid", "paper_table1", "--dry-run", "--results", str(work / "dry")]
    cold, warm = [], []
    for i in range(repeat):  # an empty plan cache each time: the full planner
        elapsed, out = dfqbench(args, {"DFQBENCH_PLAN_CACHE": str(work / f"cold-cache-{i}")})
        cold.append(elapsed)
    primed = {"DFQBENCH_PLAN_CACHE": str(work / "cold-cache-0")}
    for _ in range(repeat):
        elapsed, again = dfqbench(args, primed)
        warm.append(elapsed)
        assert again == out, "the cached dry run differs from the full one"
    cells = re.search(r"^cells: .*$", out, re.MULTILINE).group(0)
    print(f"dry run of paper_table1 ({cells}), a fresh process each time:")
    print(f"  plan cache empty (full planner): median {statistics.median(cold):.2f} s "
          f"(each: {', '.join(f'{t:.2f}' for t in cold)})")
    print(f"  plan cache primed (same output): median {statistics.median(warm):.2f} s "
          f"(each: {', '.join(f'{t:.2f}' for t in warm)})")

    os.environ["DFQBENCH_PLAN_CACHE"] = "off"
    started = time.perf_counter()
    from dfqbench.cli import main  # what a fresh process imports: torch, the methods, pytorchcv

    with contextlib.redirect_stdout(io.StringIO()):
        main(args)
    first = time.perf_counter() - started
    later = []
    for _ in range(repeat):
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            main(args)
        later.append(time.perf_counter() - started)
    print(f"  in-process, cache off: first call {first:.2f} s (with the imports), later calls median "
          f"{statistics.median(later):.2f} s (the planner and the report alone)")


def slurm_up() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def default_partition() -> str | None:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
    return next((p.rstrip("*") for p in out if p.endswith("*")), out[0] if out else None)


def bench_submit(runs: int, work: Path, fake: bool) -> None:
    grid = work / "bench_submit.yaml"
    grid.write_text(
        "name: bench_submit\nbase: {method: gdfq, model: tiny_cifar10, bits: w4a4, protocol: quick, "
        "train.epochs: 1, train.iters_per_epoch: 1, train.batch_size: 8}\n"
        f"axes: {{seed: {json.dumps(list(range(runs)))}}}\n")
    env: dict[str, str] = {}
    partition = None
    if fake:
        fake_bin = work / "fake-bin"
        fake_bin.mkdir()
        for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\n"),
                           ("scontrol", "#!/bin/sh\necho 'MaxArraySize = 1001'\n")):
            (fake_bin / name).write_text(text)
            (fake_bin / name).chmod(0o755)
        env["PATH"] = f"{fake_bin}{os.pathsep}{os.environ['PATH']}"
        where = "a fake sbatch that only copies the script (no Slurm here)"
    else:
        partition = default_partition()
        where = f"the Slurm cluster sinfo reaches (partition {partition}; SLURM_CONF={os.environ.get('SLURM_CONF')})"
    profile = {"cpus": 1, "time_min": 10, "array_parallelism": 8, "sbatch": {"hold": True}}
    if partition:
        profile["partition"] = partition
    profiles = work / "profiles.yaml"
    profiles.write_text(json.dumps({"profiles": {"bench": profile}, "select": [{"profile": "bench"}]}))
    results = work / "results"
    elapsed, out = dfqbench(["run", "--grid", str(grid), "--executor", "slurm", "--profiles", str(profiles),
                             "--device", "cpu", "--results", str(results)], env)
    arrays = re.findall(r"submitted (\d+) runs as Slurm job (\d+)", out)
    queued = None
    if not fake:
        jobs = ",".join(job for _, job in arrays)
        listing = subprocess.run(["squeue", "-h", "-r", "-j", jobs, "-o", "%i %T %r"], capture_output=True,
                                 text=True).stdout.splitlines()
        queued = f"; squeue -r listed {len(listing)} array tasks, e.g. {listing[0] if listing else '-'}"
        for _, job in arrays:
            subprocess.run(["scancel", job], check=False)
    submitted = sum(int(n) for n, _ in arrays)
    print(f"submitting a {runs}-run grid with --executor slurm to {where}:")
    print(f"  {elapsed:.2f} s wall in a fresh process (planning + {submitted} task pickles + "
          f"{len(arrays)} sbatch call(s): job(s) {', '.join(j for _, j in arrays)}; held, then cancelled"
          f"{queued or ''})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--fake-sbatch", action="store_true", help="time submission against a fake sbatch")
    parser.add_argument("--skip-slurm", action="store_true", help="only the dry run")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="bench_grid_") as tmp:
        work = Path(tmp)
        bench_dry_run(args.repeat, work)
        if args.skip_slurm:
            return
        if not args.fake_sbatch and not slurm_up():
            raise SystemExit("no Slurm cluster answers sinfo: start one (slurm/start-cluster.sh, then export "
                             "SLURM_CONF=…) or pass --fake-sbatch / --skip-slurm")
        bench_submit(args.runs, work, args.fake_sbatch)


if __name__ == "__main__":
    main()
