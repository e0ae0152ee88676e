"""Milliseconds per training iteration, per method and engine, and packed throughput on one GPU.

For each method at its paper batch on resnet20_cifar10 (random weights: the time does not depend on them): one
iteration of the run's own step (:meth:`dfqbench.core.step.TrainStep.iteration`, as the trainer runs it after the
warm-up: Q trains, activation ranges frozen) for a full-precision student and a fake-quantized one, with the
``eager`` and the ``compiled`` engine; the median over ``--iters`` iterations after ``--warmup`` (compilation and
graph capture happen in the warm-up). The generator methods (:data:`GENERATOR_METHODS`) time their G + Q steps.
The direct methods (:data:`DIRECT_METHODS`: IntraQ, HAST, SynQ) time their fine-tuning iteration: one student step
on a cropped bank batch (HAST/SynQ with their extra forwards and input-gradient backwards), after the calibration
epochs. Their bank is not synthesised: a bank of random N(0, 1) pixels and random labels is written through the
bank store under the run's own key (:meth:`~dfqbench.blocks.interface.Method.needs_bank`, ``2 × batch`` images),
so the method's ``setup`` finds it finished and reads it as it would a synthesised one (the step's cost does not
depend on the pixels). On CUDA, ``--packed 1,2,4,8`` also runs N processes of one method at once on the GPU (as
``--runs-per-gpu N`` does) and reports their summed iterations per second.

    python benchmarks/bench_step.py [--device cpu|cuda] [--iters 20] [--warmup 3] [--methods gdfq,adasg,intraq]
        [--engines eager,compiled] [--bits w3a3] [--model resnet20_cifar10] [--batch N] [--packed 1,2,4,8]
        [--packed-method adasg] [--json FILE]

Prints one JSON line per measurement, then a table (fake-quant overhead = quantized / FP student time; "× first":
the quantized student's time over the first listed method's, same engine, measured in the same run, per iteration
and per image, i.e. divided by each one's batch; the per-image ratio to gdfq is what
:data:`dfqbench.launch.estimate.STEP_COST_FACTOR` holds).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

GENERATOR_METHODS = ("gdfq", "qimera", "adasg", "adadfq", "zaq")
DIRECT_METHODS = ("intraq", "hast", "synq")


def random_bank(method_cls: Any, spec: Any, results: Path) -> None:
    """A finished bank of random pixels (N(0, 1)) and labels under the bank key of ``spec``, in ``results``'s bank
    store: the method's ``setup`` then reads it instead of synthesising one (the fine-tuning step's cost does not
    depend on the pixels)."""
    from dfqbench.store import ResultsStore
    from dfqbench.store.bank import build_bank

    key = method_cls.needs_bank(spec)
    generator = torch.Generator().manual_seed(0)

    def produce(index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = torch.randn(key.batch_size, 3, key.image_size, key.image_size, generator=generator)
        labels = torch.randint(0, key.num_classes, (key.batch_size,), generator=generator)
        return images, labels, torch.zeros(key.steps)

    build_bank(ResultsStore(results).bank(key.name), key, produce)


def make_trainer(method: str, model: str, bits: str | None, batch: int | None, engine: str, device: torch.device,
                 folder: Path):
    """A Trainer of ``method`` on ``model`` (random weights) in its first fine-tuning epoch; ``bits=None``: FP student.
    A method with an image bank gets a random one (:func:`random_bank`) in ``folder``."""
    from dfqbench.blocks.interface import Method
    from dfqbench.plugins import load_methods
    from dfqbench.core.progress import Progress
    from dfqbench.core.trainer import PreparedRun, Trainer
    from dfqbench.quant import QuantConfig, parse_bits, quantize_model, set_range_update
    from dfqbench.runner import resolve_settings
    from dfqbench.specs import RunSpec
    from dfqbench.store import RunFolder
    from dfqbench.zoo import build_model, model_info

    info = model_info(model)
    method_cls = load_methods().get(method)
    overrides = [f"train.batch_size={batch}"] if batch else []
    train, method_config, quant = resolve_settings(method_cls, info.dataset, info.name, bits or "w8a8", "paper",
                                                   overrides)
    torch.manual_seed(0)
    teacher = build_model(info.name).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if bits is None:
        student = copy.deepcopy(teacher)
    else:
        wbits, abits = parse_bits(bits)
        student = quantize_model(teacher, QuantConfig(wbits=wbits, abits=abits, **quant))
        set_range_update(student, True)
        with torch.no_grad():  # calibrate the ranges once, then freeze them as after the range window
            student(torch.randn(train["batch_size"], 3, info.input_size, info.input_size))
    for p in student.parameters():
        p.requires_grad_(True)
    direct = method_cls.needs_bank.__func__ is not Method.needs_bank.__func__  # the method has a bank
    if direct:  # a bank of 2 × batch images: enough for the fine-tuning batches, small to write
        per_batch = method_config["bank_batch_size"]
        method_config["bank_batches"] = max(1, -(-2 * train["batch_size"] // per_batch))
    spec = RunSpec(method=method, method_version="bench", model=info.name, dataset=info.dataset, bits=bits or "fp",
                   seed=0, teacher={"weights": "random (benchmark)"}, normalization={}, quant=quant, train=train,
                   method_config=method_config)
    run_folder = folder / "runs" / "bench"  # RunFolder.results_root is two levels up: ``folder`` holds the banks
    run_folder.mkdir(parents=True)
    if direct:
        random_bank(method_cls, spec, folder)
    instance = method_cls(method_cls.config_class(**method_config), info.num_classes, info.input_size, info.dataset)
    run = PreparedRun(spec=spec, method=instance, teacher=teacher, student=student, evaluate=lambda m: 0.0,
                      folder=RunFolder(run_folder), device=device, log_every=10**9, engine=engine)
    trainer = Trainer(run, Progress())
    trainer.generator.train()
    trainer.student.train(instance.student_bn_train)
    set_range_update(trainer.student, False)
    return trainer


def time_iterations(trainer, iters: int, warmup: int, device: torch.device) -> tuple[list[float], float]:
    """Seconds per iteration after ``warmup`` iterations, and the seconds the warm-up took."""
    epoch = trainer.cfg.warmup_epochs  # Q trains from this epoch on
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    started = time.perf_counter()
    for _ in range(warmup):
        trainer.train_iteration(epoch, log=False)
    sync()
    warmup_s = time.perf_counter() - started
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        trainer.train_iteration(epoch, log=False)
        sync()
        times.append(time.perf_counter() - start)
    trainer.window.flush()
    return times, warmup_s


def measure(method: str, args: argparse.Namespace, device: torch.device, engine: str, bits: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(method, args.model, bits, args.batch, engine, device, Path(tmp))
        times, warmup_s = time_iterations(trainer, args.iters, args.warmup, device)
    return {"kind": "step", "method": method, "model": args.model, "batch": trainer.cfg.batch_size,
            "student": bits or "fp", "engine": engine, "device": str(device), "iters": args.iters,
            "ms_per_iter": 1000 * statistics.median(times), "ms_min": 1000 * min(times),
            "warmup_s": round(warmup_s, 2), "threads": torch.get_num_threads()}


def _packed_worker(method: str, args: argparse.Namespace, engine: str, barrier: Any, queue: Any) -> None:
    torch.set_num_threads(1)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(method, args.model, args.bits, args.batch, engine, device, Path(tmp))
        time_iterations(trainer, 0, args.warmup, device)
        barrier.wait()
        times, _ = time_iterations(trainer, args.iters, 0, device)
    queue.put(sum(times))


def measure_packed(method: str, args: argparse.Namespace, engine: str, n: int) -> dict:
    """N processes on one device, started together after their warm-up: summed iterations per second."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_packed_worker, args=(method, args, engine, barrier, queue)) for _ in range(n)]
    for proc in procs:
        proc.start()
    seconds = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    return {"kind": "packed", "method": method, "model": args.model, "student": args.bits, "engine": engine,
            "device": args.device, "processes": n, "iters_per_process": args.iters,
            "iters_per_s": n * args.iters / max(seconds)}


def table(rows: list[dict]) -> str:
    steps = [r for r in rows if r["kind"] == "step"]
    methods = list(dict.fromkeys(r["method"] for r in steps))
    first = methods[0] if methods else "-"
    lines = ["| method | batch | engine | FP student ms/it | quantized ms/it | fake-quant overhead | "
             f"quantized ms/it × {first} | per image × {first} |", "|---|---|---|---|---|---|---|---|"]

    def quantized(method: str, engine: str) -> dict | None:
        return next((r for r in steps if r["method"] == method and r["engine"] == engine and r["student"] != "fp"),
                    None)

    for method in methods:
        for engine in dict.fromkeys(r["engine"] for r in steps):
            found = {r["student"]: r for r in steps if r["method"] == method and r["engine"] == engine}
            fp, q = found.get("fp"), quantized(method, engine)
            cells = [f"{r['ms_per_iter']:.2f}" if r else "-" for r in (fp, q)]
            ratio = f"{q['ms_per_iter'] / fp['ms_per_iter']:.2f}×" if fp and q else "-"
            base = quantized(methods[0], engine)
            vs_first = per_image = "-"
            if q and base:
                vs_first = f"{q['ms_per_iter'] / base['ms_per_iter']:.2f}×"
                per_image = f"{q['ms_per_iter'] / q['batch'] / (base['ms_per_iter'] / base['batch']):.2f}×"
            batch = (fp or q or {}).get("batch", "-")
            lines.append(f"| {method} | {batch} | {engine} | {cells[0]} | {cells[1]} | {ratio} | {vs_first} | "
                         f"{per_image} |")
    packed = [r for r in rows if r["kind"] == "packed"]
    if packed:
        lines += ["", "| method | engine | processes | iterations/s (all processes) |", "|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['engine']} | {r['processes']} | {r['iters_per_s']:.1f} |" for r in packed]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="iterations before timing (compile + capture)")
    parser.add_argument("--methods", default=",".join(GENERATOR_METHODS))
    parser.add_argument("--engines", default="eager,compiled")
    parser.add_argument("--bits", default="w3a3", help="the quantized student's bits (the FP student is timed too)")
    parser.add_argument("--no-fp", action="store_true", help="time the quantized student only")
    parser.add_argument("--model", default="resnet20_cifar10")
    parser.add_argument("--batch", type=int, help="override the paper batch")
    parser.add_argument("--packed", default="", help="CUDA: process counts to pack on one GPU, e.g. 1,2,4,8")
    parser.add_argument("--packed-method", default="adasg")
    parser.add_argument("--packed-engine", default="compiled")
    parser.add_argument("--json", help="also write the JSON lines to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows: list[dict] = []
    out = open(args.json, "w") if args.json else None  # noqa: SIM115

    def emit(row: dict) -> None:
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    for method in [m for m in args.methods.split(",") if m]:
        for engine in [e for e in args.engines.split(",") if e]:
            for bits in ([args.bits] if args.no_fp else [None, args.bits]):
                emit(measure(method, args, device, engine, bits))
    for n in [int(v) for v in args.packed.split(",") if v]:
        emit(measure_packed(args.packed_method, args, args.packed_engine, n))
    print()
    print(f"{args.model}, {device}" + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else
                                       f" ({torch.cuda.get_device_name(device)})")
          + f", median of {args.iters} iterations after {args.warmup}")
    print(table(rows))
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
