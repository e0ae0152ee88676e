"""Seconds for `dfqbench report` over a synthetic results folder of 10,000 finished runs (printed, not asserted).

Writes N run folders (spec.json, record.json in the trainer's format, a short metrics.jsonl) into a temp dir:
7 methods × 5 models × 3 bit-widths × 2 protocols × as many seeds as needed, plus ``--unfinished`` folders
with a spec and metrics but no record (a grid still running: these make the report ask the launcher for
their state), then times the command as a user runs it (a fresh interpreter, so imports are included), for
markdown, LaTeX and CSV output. The target is under 10 s on 2 cores; the machine's load average is printed
beside the figures.

    python benchmarks/bench_report.py [--runs 10000] [--unfinished 0] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dfqbench.specs import RunSpec

METHODS = ("gdfq", "zeroq", "zeroq_kd", "zaq", "qimera", "adasg", "adadfq")
MODELS = {"resnet20_cifar10": ("cifar10", 93.89), "resnet20_cifar100": ("cifar100", 70.33),
          "resnet18": ("imagenet", 71.47), "mobilenetv2_w1": ("imagenet", 73.03), "resnet50": ("imagenet", 77.73)}
BITS = {"w3a3": 25.0, "w4a4": 6.0, "w5a5": 1.5}
TRAIN = {"batch_size": 64, "epochs": 8, "eval_max_images": 10000, "eval_start_epoch": 0, "g_betas": [0.5, 0.999],
         "iters_per_epoch": 50, "lr_g": 0.001, "lr_gamma": 0.1, "lr_q": 0.0001, "milestones_g": [],
         "milestones_q": [], "q_momentum": 0.9, "q_nesterov": True, "q_weight_decay": 0.0001,
         "range_update_epochs": 4, "warmup_epochs": 4}
PAPER_TRAIN = {**TRAIN, "epochs": 400, "iters_per_epoch": 200, "batch_size": 200, "eval_max_images": None,
               "milestones_g": [100, 200, 300], "milestones_q": [100, 200, 300]}
CONFIG = {"bns_weight": 0.1, "kd_reduction": "element_mean", "kd_weight": 1.0, "latent_dim": 100, "temperature": 20.0}


def cells():
    seed = 0
    while True:
        for protocol in ("paper", "quick"):
            for method in METHODS:
                for model in MODELS:
                    for bits in BITS:
                        yield protocol, method, model, bits, seed
        seed += 1


def write_store(root: Path, n: int, unfinished: int = 0) -> None:
    """``n`` finished run folders, then ``unfinished`` folders without a record (the next cells' seeds)."""
    rng = random.Random(0)
    runs = root / "runs"
    runs.mkdir(parents=True)
    for index, (protocol, method, model, bits, seed) in zip(range(n + unfinished), cells()):
        dataset, fp = MODELS[model]
        spec = RunSpec(method=method, method_version="1", model=model, dataset=dataset, bits=bits, seed=seed,
                       teacher={"source": "pytorchcv", "pytorchcv": "0.0.74", "file": f"{model}.pth", "sha256": "ab" * 32},
                       normalization={"mean": [0.485, 0.456, 0.406], "name": "imagenet", "std": [0.229, 0.224, 0.225]},
                       quant={"first_last_wbits": None, "momentum": 0.9, "tracker": "ema_gdfq"},
                       train=TRAIN if protocol == "quick" else PAPER_TRAIN,
                       method_config=CONFIG, protocol=protocol)
        folder = runs / spec.run_name
        folder.mkdir()
        best = fp - BITS[bits] - rng.random() * 3
        top1 = {str(e): round(best - (7 - e) * 0.3, 2) for e in range(8)}
        record = {"run_id": spec.run_id, "run_name": spec.run_name, "spec": json.loads(json.dumps(spec.to_dict(), default=list)),
                  "fp_top1": fp, "calibrated_top1": best - 5, "best_top1": round(best, 2), "best_epoch": 7,
                  "final_top1": top1["7"], "top1_per_epoch": top1, "epochs": 8, "iterations": 400,
                  "images_generated": 25600, "wall_time_s": 226.0, "sessions": 1, "device": "cpu (2 threads)",
                  "git": {"commit": "0" * 40, "dirty": False}, "versions": {"dfqbench": "0.1.0"},
                  "finished_at": "2026-11-23T07:05:38Z"}
        (folder / "spec.json").write_text(json.dumps(record["spec"], indent=2, sort_keys=True))
        if index < n:
            (folder / "record.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        (folder / "metrics.jsonl").write_text("".join(
            json.dumps({"type": "iter", "epoch": e, "iter": 49, "H_g": 1.0, "H_q": 1.1, "balance_gap": 0.01}) + "\n"
            + json.dumps({"type": "epoch", "epoch": e, "top1": top1[str(e)]}) + "\n" for e in range(8)))


def time_report(root: Path, fmt: str, repeat: int) -> list[float]:
    dfqbench = [sys.executable, "-m", "dfqbench.cli"]
    times = []
    for _ in range(repeat):
        out = root / f"report.{fmt}"
        start = time.perf_counter()
        subprocess.run(dfqbench + ["report", "--results", str(root), "--format", fmt, "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="finished run folders")
    parser.add_argument("--unfinished", type=int, default=0, help="extra folders without a record (still running)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", help="write the store here and keep it (default: a temp dir, removed)")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dfqbench-bench-report-"))
    try:
        start = time.perf_counter()
        write_store(root, args.runs, args.unfinished)
        print(f"wrote {args.runs} finished + {args.unfinished} unfinished run folders in "
              f"{time.perf_counter() - start:.1f} s under {root}")
        print(f"machine: {os.cpu_count()} CPUs, load average before timing {os.getloadavg()[0]:.2f} "
              f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")
        for fmt in ("markdown", "latex", "csv"):
            times = time_report(root, fmt, args.repeat)
            print(f"dfqbench report --format {fmt:8s}: median {statistics.median(times):.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f}, {args.repeat} runs, fresh interpreter each)")
        print(f"load average after: {os.getloadavg()[0]:.2f}; target: < 10 s for {args.runs} runs on 2 cores")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
