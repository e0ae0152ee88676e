"""Image-bank synthesis: milliseconds per synthesis step, bank memory per storage format, and the loss change the
compact storage causes (dfqbench/blocks/synthesis.py, dfqbench/store/bank; docs/banks.md quotes the results).

1. ``step``: one synthesis step (BNS forward, gradient to the pixels, Adam, plateau scheduler) at ``--batch``
   (default 256) on ``--model`` (default resnet20_cifar10), with the augmentation coin forced to heads and to
   tails; the median over ``--iters`` steps after ``--warmup``.
2. ``memory``: the bytes of the images of a CIFAR bank (5,120 × 3 × 32²: IntraQ/HAST/SynQ's 4 groups × 5
   batches of 256, spec newer-methods.md §8.1) and an ImageNet bank (5,120 × 3 × 224²) in fp32, fp16 and uint8,
   and the size of one encoded CIFAR batch file (labels, loss trace and file header included).
3. ``compaction``: ``--compaction-batches`` batches synthesised for ``--compaction-steps`` steps under BNS with
   the teacher's own weights, then the synthesis loss (BNS) and the fine-tuning loss (IntraQ's
   8000·KL_batchmean(T = 20) + CE on the sampled labels, teacher vs a W4A4 student calibrated on the
   fp32 images) on the fp32 images and on their fp16 and uint8 round trips.

    python benchmarks/bench_synthesis.py [--device cpu|cuda] [--weights FILE] [--batch 256] [--iters 5]
        [--warmup 1] [--compaction-batches 1] [--compaction-steps 200] [--only step,memory,compaction] [--json FILE]

The teacher's weights: ``--weights``, else ``$DFQBENCH_WEIGHTS``, else ../shared/weights/<model>.pth when present
(offline: nothing is downloaded); without any, random weights (the step time does not depend on them; the
compaction figures then say ``random weights``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from dfqbench.blocks.synthesis import BNSObjective, SynthesisSettings, initial_batch, synthesise_batch
from dfqbench.store.bank import STORAGES, stored_image_bytes
from dfqbench.store.bank.codec import encode_batch, preferred_suffix, roundtrip

BANK_IMAGES = 5_120  # 4 groups × 5 batches × 256 (IQ:data_generate/distill_data.py:L237-241)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "weights"


def load_teacher(model: str, weights: str | None, device: torch.device) -> tuple[torch.nn.Module, str]:
    from dfqbench.zoo import build_model, model_info
    from dfqbench.zoo.teacher import load_pretrained

    path = weights or os.environ.get("DFQBENCH_WEIGHTS") or (str(SHARED / f"{model}.pth")
                                                             if (SHARED / f"{model}.pth").exists() else None)
    if path:
        teacher, source = load_pretrained(model, weights=path).model, path
    else:
        torch.manual_seed(0)
        teacher, source = build_model(model_info(model).name).eval(), "random weights"
        for p in teacher.parameters():
            p.requires_grad_(False)
    return teacher.to(device).eval(), source


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_step(teacher, size: int, classes: int, args, device: torch.device) -> list[dict]:
    """Median ms per synthesis step with the coin always heads (crop + flip) and always tails."""
    rows = []
    objective = BNSObjective(teacher)
    for prob, label in ((1.0, "augmented"), (0.0, "plain")):
        settings = SynthesisSettings(num_batches=1, batch_size=args.batch, steps=1, aug_prob=prob)
        x0, labels, generator = initial_batch(0, 0, args.batch, size, classes)
        x0, labels = x0.to(device), labels.to(device)
        times = []
        for i in range(args.warmup + args.iters):
            _sync(device)
            start = time.perf_counter()
            x0, _ = synthesise_batch(teacher, objective, x0, labels, settings, generator)
            _sync(device)
            if i >= args.warmup:
                times.append((time.perf_counter() - start) * 1e3)
        rows.append({"bench": "step", "model": args.model, "batch": args.batch, "coin": label, "device": str(device),
                     "threads": torch.get_num_threads(), "ms_per_step": statistics.median(times),
                     "ms_min": min(times), "iters": args.iters})
    objective.remove()
    return rows


def bench_memory() -> list[dict]:
    rows = []
    for name, size in (("cifar", 32), ("imagenet", 224)):
        for storage in STORAGES:
            rows.append({"bench": "memory", "bank": name, "images": BANK_IMAGES, "size": size, "storage": storage,
                         "MiB": stored_image_bytes(BANK_IMAGES, size, storage) / 2**20})
    x = torch.randn(256, 3, 32, 32)
    for storage in STORAGES:
        data = encode_batch(x, torch.zeros(256, dtype=torch.long), torch.zeros(1000), storage, "0" * 16, 0,
                            preferred_suffix())
        rows.append({"bench": "memory", "bank": "cifar batch file", "images": 256, "size": 32, "storage": storage,
                     "MiB": len(data) / 2**20, "file": preferred_suffix()})
    return rows


def bench_compaction(teacher, source: str, size: int, classes: int, args, device: torch.device) -> list[dict]:
    """Synthesis and fine-tuning losses on fp32 bank images and on their compact round trips."""
    from dfqbench.blocks.losses import kd_kl_batchmean
    from dfqbench.quant import QuantConfig, quantize_model, set_range_update

    objective = BNSObjective(teacher)
    settings = SynthesisSettings(num_batches=1, batch_size=args.batch, steps=args.compaction_steps)
    batches, labels = [], []
    for index in range(args.compaction_batches):
        x0, y, generator = initial_batch(0, index, args.batch, size, classes)
        x, _ = synthesise_batch(teacher, objective, x0.to(device), y.to(device), settings, generator)
        batches.append(x)
        labels.append(y.to(device))
    student = quantize_model(teacher, QuantConfig(wbits=4, abits=4, tracker="minmax")).eval()
    set_range_update(student, True)
    with torch.no_grad():
        for x in batches:
            student(x)
    set_range_update(student, False)
    rows = []
    reference: dict[str, float] = {}
    for storage in ("fp32", "fp16", "uint8"):  # fp32 first: the reference
        bns, kd, ce, err = [], [], [], []
        with torch.no_grad():
            for x, y in zip(batches, labels):
                stored = roundtrip(x, storage)
                bns.append(objective(teacher, stored, y, 0).item())
                t, s = teacher(stored), student(stored)
                kd.append((8000 * kd_kl_batchmean(t, s, 20.0)).item())
                ce.append(torch.nn.functional.cross_entropy(s, y).item())
                err.append((stored - x).abs().max().item())
        row = {"bench": "compaction", "model": args.model, "weights": source, "storage": storage,
               "images": args.batch * args.compaction_batches, "steps": args.compaction_steps,
               "bns": statistics.mean(bns), "kd_8000": statistics.mean(kd), "ce": statistics.mean(ce),
               "max_pixel_error": max(err)}
        if storage == "fp32":
            reference = row
        for name in ("bns", "kd_8000", "ce"):
            row[f"{name}_rel_change"] = (row[name] - reference[name]) / abs(reference[name])
        rows.append(row)
    objective.remove()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="resnet20_cifar10")
    parser.add_argument("--weights")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compaction-batches", type=int, default=1)
    parser.add_argument("--compaction-steps", type=int, default=200)
    parser.add_argument("--only", default="step,memory,compaction")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    from dfqbench.zoo import model_info

    info = model_info(args.model)
    device = torch.device(args.device)
    only = set(args.only.split(","))
    rows: list[dict] = []
    teacher, source = load_teacher(info.name, args.weights, device) if only - {"memory"} else (None, "")
    if "step" in only:
        rows += bench_step(teacher, info.input_size, info.num_classes, args, device)
    if "memory" in only:
        rows += bench_memory()
    if "compaction" in only:
        rows += bench_compaction(teacher, source, info.input_size, info.num_classes, args, device)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
