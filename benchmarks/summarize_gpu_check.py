"""The tables of a benchmarks/gpu_check.sh output folder, in markdown: ``python benchmarks/summarize_gpu_check.py OUT``."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import table  # noqa: E402


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def quick_runs(out: Path) -> str:
    lines = ["| method | engine | calibrated | best | final | wall s | compile s | device |", "|---|---|---|---|---|---|---|---|"]
    records = []
    for engine in ("eager", "compiled"):
        for path in sorted((out / f"quick_{engine}" / "runs").glob("*/record.json")):
            records.append((engine, json.loads(path.read_text())))
    for engine, r in sorted(records, key=lambda item: (item[1]["spec"]["method"], item[0])):
        cells = [f"{r[k]:.2f}" if isinstance(r.get(k), float) else "-" for k in ("calibrated_top1", "best_top1", "final_top1")]
        lines.append(f"| {r['spec']['method']} | {engine} | {' | '.join(cells)} | {r['wall_time_s']:.0f} | "
                     f"{r.get('compile_s', 0):.0f} | {r['device']}{' (diverged)' if r.get('diverged') else ''} |")
    return "\n".join(lines) if records else "(no quick-run records)"


def paper_run(out: Path) -> str:
    metrics = list((out / "paper_adasg" / "runs").glob("*/metrics.jsonl"))
    if not metrics:
        return "(no paper-run metrics: the run did not finish an epoch)"
    rows = [json.loads(line) for line in metrics[0].read_text().splitlines()]
    epochs = [r for r in rows if r["type"] == "epoch"]
    spec = json.loads((metrics[0].parent / "spec.json").read_text())
    iters = spec["train"]["iters_per_epoch"]
    seconds = [r["seconds"] for r in epochs[1:]] or [r["seconds"] for r in epochs]  # epoch 0 compiles
    top1 = ", ".join(f"{r['top1']:.2f}" for r in epochs if r.get("top1") is not None)
    return (f"paper-protocol AdaSG W3A3 (batch {spec['train']['batch_size']}): {len(epochs)} epochs of {iters} "
            f"iterations finished; median epoch {statistics.median(seconds):.2f} s including its evaluation → "
            f"{iters / statistics.median(seconds):.1f} iterations/s; first epoch (compile + capture) "
            f"{epochs[0]['seconds']:.1f} s; top-1 per epoch: {top1}")


def main(out: str) -> None:
    folder = Path(out)
    gpu = (folder / "gpu.txt").read_text().strip() if (folder / "gpu.txt").exists() else "?"
    print(f"# gpu_check: {gpu}\n")
    checks = _jsonl(folder / "check_engines.log")
    if checks:
        print("## check_engines\n")
        for row in checks:
            print(f"- {json.dumps(row)}")
        print()
    print("## bench_step\n")
    print(table(_jsonl(folder / "bench_step.jsonl") + _jsonl(folder / "bench_direct.jsonl")
                + _jsonl(folder / "bench_packed.jsonl")))
    print("\n## quick runs (every method, eager vs compiled, 7 packed on the GPU)\n")
    print(quick_runs(folder))
    print("\n## paper run\n")
    print(paper_run(folder))


if __name__ == "__main__":
    main(sys.argv[1])
