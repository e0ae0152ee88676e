"""Seconds per GDFQ iteration on ResNet-20 (batch 64): full-precision student vs W4A4 student.

Times the trainer's own iteration (generator step + student step, after warm-up, ranges frozen) so the
ratio W4A4 / FP is the cost of the shared fake-quantizer (ideal: 1.0). Weights are pytorchcv's
architecture with random initialisation (timing does not depend on them).

    python benchmarks/bench_gdfq_iteration.py [--iters 20] [--warmup 3] [--batch 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dfqbench.core.plugin import load_methods
from dfqbench.core.progress import Progress
from dfqbench.core.trainer import PreparedRun, Trainer
from dfqbench.quant import QuantConfig, quantize_model, set_range_update
from dfqbench.runner import resolve_settings
from dfqbench.specs import RunSpec
from dfqbench.store import RunFolder
from dfqbench.zoo import build_model, model_info


def make_trainer(student_bits: str | None, batch: int, device: torch.device, folder: Path) -> Trainer:
    info = model_info("resnet20_cifar10")
    method_cls = load_methods().get("gdfq")
    train, method_config, quant = resolve_settings(
        method_cls, info.dataset, info.name, "w4a4", "paper", [f"train.batch_size={batch}", "train.warmup_epochs=0",
                                                               "train.range_update_epochs=0"])
    teacher = build_model(info.name).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if student_bits is None:
        student = copy.deepcopy(teacher)
    else:
        student = quantize_model(teacher, QuantConfig(wbits=4, abits=4, **quant))
        set_range_update(student, True)
        with torch.no_grad():  # calibrate the ranges once, then freeze them as after the range window
            student(torch.randn(batch, 3, 32, 32))
    for p in student.parameters():
        p.requires_grad_(True)
    spec = RunSpec(method="gdfq", method_version="bench", model=info.name, dataset=info.dataset, bits=student_bits or "fp",
                   seed=0, teacher={}, normalization={}, quant=quant, train=train, method_config=method_config)
    method = method_cls(method_cls.config_class(**method_config), info.num_classes, info.input_size, info.dataset)
    run = PreparedRun(spec=spec, method=method, teacher=teacher, student=student, evaluate=lambda m: 0.0,
                      folder=RunFolder(folder), device=device, log_every=10**9)
    trainer = Trainer(run, Progress())
    trainer.generator.train()
    trainer.student.eval()
    set_range_update(trainer.student, False)
    return trainer


def seconds_per_iteration(trainer: Trainer, iters: int, warmup: int, device: torch.device) -> list[float]:
    times = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        trainer._iteration(epoch=1, log=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        fp = make_trainer(None, args.batch, device, Path(tmp) / "fp")
        q = make_trainer("w4a4", args.batch, device, Path(tmp) / "q")
        # interleave the two so drifts in machine load hit both alike
        fp_times, q_times = [], []
        for _ in range(2):
            fp_times += seconds_per_iteration(fp, args.iters // 2, args.warmup, device)
            q_times += seconds_per_iteration(q, args.iters // 2, args.warmup, device)
    fp_s, q_s = statistics.median(fp_times), statistics.median(q_times)
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"GDFQ iteration, ResNet-20, batch {args.batch}, device {device} (threads {threads}), "
          f"median of {len(fp_times)} iterations")
    print(f"  FP student    {fp_s:.4f} s/iter")
    print(f"  W4A4 student  {q_s:.4f} s/iter")
    print(f"  ratio W4A4/FP {q_s / fp_s:.3f}  (fake-quant overhead; ideal 1.0)")


if __name__ == "__main__":
    main()
