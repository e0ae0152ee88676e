"""Operations dispatched per training iteration: why the eager loop is host-bound on a GPU, and what fusing
the quantizers removes.

For each generator-based method at its paper batch (``--batch`` to override) on resnet20_cifar10, one
iteration of the run's own step (as :mod:`bench_step` times it: Q trains, ranges frozen) runs eagerly under
a dispatch counter (:class:`torch.utils._python_dispatch.TorchDispatchMode`). Counted: every ATen operation
that computes something (views, aliases and empty allocations are left out), forward, backward and optimizer
steps; and, separately, those dispatched inside the fake-quantizers (``quant_act_forward`` and
``per_channel_fake_quant``) and their calls, which the compiled engine replaces by a few inductor-fused
kernels per call (:mod:`dfqbench.quant.fused`). On a GPU each counted operation is (at least) one kernel
launched from Python.

    python benchmarks/count_ops.py [--methods gdfq,adasg] [--bits w3a3] [--batch N] [--device cpu|cuda]

Prints one JSON line per method and student, then a table. The device changes the counts only through the
optimizers: one update per parameter on the CPU, foreach (multi-tensor) updates on CUDA.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import GENERATOR_METHODS, make_trainer  # noqa: E402

NOT_COMPUTING = {"view", "_unsafe_view", "t", "reshape", "expand", "as_strided", "detach", "alias", "unsqueeze",
                 "squeeze", "permute", "transpose", "select", "slice", "_reshape_alias", "split", "unbind",
                 "lift_fresh", "empty", "empty_like", "empty_strided"}


class OpCounter(TorchDispatchMode):
    """Counts the computing ATen operations dispatched while active; ``in_quantizers`` > 0 marks those dispatched
    inside a fake-quantizer."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.quantizer_ops: collections.Counter[str] = collections.Counter()
        self.in_quantizers = 0
        self.quantizer_calls = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket.__name__
        if name not in NOT_COMPUTING:
            self.ops[name] += 1
            if self.in_quantizers:
                self.quantizer_ops[name] += 1
        return func(*args, **(kwargs or {}))


def marked(counter: OpCounter, fn: Callable) -> Callable:
    """``fn`` with its dispatched operations counted as the quantizers'."""

    def inside(*args: Any, **kwargs: Any) -> Any:
        counter.quantizer_calls += counter.in_quantizers == 0
        counter.in_quantizers += 1
        try:
            return fn(*args, **kwargs)
        finally:
            counter.in_quantizers -= 1

    return inside


def count(method: str, args: argparse.Namespace, bits: str | None) -> dict:
    from dfqbench.quant import modules

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(method, args.model, bits, args.batch, "eager", device, Path(tmp))
        epoch = trainer.cfg.warmup_epochs
        trainer.train_iteration(epoch, log=False)  # first-call allocations (optimizer state) are not counted
        counter = OpCounter()
        originals = modules.quant_act_forward, modules.per_channel_fake_quant
        modules.quant_act_forward = marked(counter, originals[0])
        modules.per_channel_fake_quant = marked(counter, originals[1])
        try:
            with counter:
                trainer.train_iteration(epoch, log=False)
        finally:
            modules.quant_act_forward, modules.per_channel_fake_quant = originals
    total, in_quantizers = sum(counter.ops.values()), sum(counter.quantizer_ops.values())
    return {"method": method, "model": args.model, "batch": trainer.cfg.batch_size, "student": bits or "fp",
            "ops_per_iter": total, "in_quantizers": in_quantizers, "outside_quantizers": total - in_quantizers,
            "quantizer_calls": counter.quantizer_calls, "top": dict(counter.ops.most_common(8))}


def table(rows: list[dict]) -> str:
    lines = ["| method | batch | student | ATen ops/iteration | inside the quantizers (calls) | outside |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['batch']} | {r['student']} | {r['ops_per_iter']} | {r['in_quantizers']} "
              f"({r['quantizer_calls']}) | {r['outside_quantizers']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default=",".join(GENERATOR_METHODS))
    parser.add_argument("--bits", default="w3a3")
    parser.add_argument("--model", default="resnet20_cifar10")
    parser.add_argument("--batch", type=int, help="override the paper batch (the counts barely depend on it)")
    args = parser.parse_args(argv)
    rows = []
    for method in [m for m in args.methods.split(",") if m]:
        for bits in (None, args.bits):
            rows.append(count(method, args, bits))
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"{args.model}: one training iteration, eager, counted with a TorchDispatchMode")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
