"""Do the engines compute the same numbers? A device check for the compiled engine (CPU or CUDA).

1. Fused fake-quant: the inductor-compiled activation and weight quantizers against the eager reference
   primitive, on values at and next to the rounding ties and on random values (bits 2, 3, 4, 8): mismatches
   must be 0, and the straight-through gradient must be the identity.
2. Per method, on the tiny model: ``--iters`` iterations in the warm-up phase (ranges updating, no Q step)
   and ``--iters`` in the fine-tuning phase, from the same seed, with the eager engine, the compiled engine
   without CUDA graphs (``DFQBENCH_CUDA_GRAPHS=0``) and, on CUDA, with them. Reports the largest relative
   difference of any logged loss term or diagnostic; graph replay against the uncaptured compiled engine
   must be 0 (the same kernels), compiled against eager is 0 on the CPU and differs on CUDA only through
   Adam's capturable arithmetic. On CUDA the uncaptured compiled engine also runs twice: kernels with atomic
   accumulation (e.g. F.interpolate's backward) make two identical runs differ, and that difference is the
   floor a graph-replay difference is judged against.

    python benchmarks/check_engines.py [--device cuda] [--methods gdfq,adasg] [--iters 10] [--model tiny_cifar10]

Prints JSON lines and exits 1 when a check that must hold does not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

import torch

ALL_METHODS = ("gdfq", "qimera", "adasg", "adadfq", "zaq", "zeroq", "zeroq_kd")
METHOD_OVERRIDES = {"zaq": ["method.safe_normalize=true"], "zeroq": ["method.steps=20"],
                    "zeroq_kd": ["method.steps=20", "method.num_batches=1", "method.batch_size=16"]}


def check_fake_quant(device: torch.device) -> list[dict]:
    from dfqbench.quant.compiler import compiled as compiled_quantizer, configure_inductor_numerics
    from dfqbench.quant.modules import per_channel_fake_quant
    from dfqbench.quant.primitives import FakeQuantSTE, quant_params

    configure_inductor_numerics()
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for bits in (2, 3, 4, 8):
        lo, hi = torch.tensor(-0.75, device=device), torch.tensor(1.25, device=device)
        scale, zero = quant_params(bits, lo, hi)
        steps = torch.arange(-2 ** bits, 2 ** bits, dtype=torch.float32, device=device)
        ties = (steps + 0.5 + zero) / scale
        x = torch.cat([ties, ties.nextafter(torch.tensor(math.inf, device=device)),
                       ties.nextafter(torch.tensor(-math.inf, device=device)),
                       (torch.randn(1 << 16, generator=gen) * 2).to(device)])
        reference = FakeQuantSTE.apply(x, bits, lo, hi)
        compiled = torch.compile(lambda v, b=bits: FakeQuantSTE.apply(v, b, lo, hi), fullgraph=True)
        leaf = x.clone().requires_grad_(True)
        out = compiled(leaf)
        grad = torch.randn(x.shape, generator=gen).to(device)
        out.backward(grad)
        weight = (torch.randn(64, 32, 3, 3, generator=gen) * 0.1).to(device)
        w_ref, w_fused = per_channel_fake_quant(weight, bits), compiled_quantizer(per_channel_fake_quant)(weight, bits)
        rows.append({"check": "fake_quant", "device": str(device), "bits": bits,
                     "activation_mismatches": int((out != reference).sum()),
                     "weight_mismatches": int((w_fused != w_ref).sum()),
                     "ste_gradient_is_identity": bool(torch.equal(leaf.grad, grad)), "values": x.numel()})
    return rows


def run_method(method: str, engine: str, graphs: bool, args: argparse.Namespace) -> list[dict[str, float]]:
    from dfqbench.core.progress import Progress
    from dfqbench.core.trainer import Trainer
    from dfqbench.quant import set_range_update
    from dfqbench.runner import RunRequest, prepare

    os.environ["DFQBENCH_CUDA_GRAPHS"] = "1" if graphs else "0"
    with tempfile.TemporaryDirectory() as tmp:
        overrides = ["train.batch_size=16", "train.eval_max_images=64", *METHOD_OVERRIDES.get(method, [])]
        request = RunRequest(method=method, model=args.model, bits="w4a4", seed=0, protocol="quick",
                             overrides=overrides, results=tmp, device=args.device, engine=engine)
        trainer = Trainer(prepare(request), Progress())
        trainer.generator.train()
        trainer.student.train(trainer.method.student_bn_train)
        values = []
        for train_q, ranges in ((False, True), (True, False)):
            set_range_update(trainer.student, ranges)
            for it in range(args.iters):
                trainer.train_iteration(trainer.cfg.warmup_epochs if train_q else 0, log=it % 3 == 2)
                values.append(trainer.window.flush())
        info = trainer.engine.describe()
    return values, info


def largest_difference(a: list[dict[str, float]], b: list[dict[str, float]]) -> tuple[float, str | None]:
    worst, where = 0.0, None
    for i, (row_a, row_b) in enumerate(zip(a, b)):
        for key, value in row_a.items():
            other = row_b.get(key, math.nan)
            diff = 0.0 if value == other else abs(value - other) / max(abs(value), 1e-12)
            if not diff <= worst:
                worst, where = diff, f"iteration {i} {key}: {value} vs {other}"
    return worst, where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--model", default="tiny_cifar10")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.deterministic = True  # fewer run-to-run differences that are not the engine's
    ok = True
    for row in check_fake_quant(device):
        ok &= row["activation_mismatches"] == 0 and row["weight_mismatches"] == 0 and row["ste_gradient_is_identity"]
        print(json.dumps(row), flush=True)
    for method in [m for m in args.methods.split(",") if m]:
        try:
            eager, _ = run_method(method, "eager", False, args)
            compiled, info = run_method(method, "compiled", False, args)
            row = {"check": "engines", "method": method, "device": str(device), "iterations": len(eager),
                   "compiled_vs_eager_max_rel": largest_difference(eager, compiled)[0]}
            if device.type == "cuda":
                again, _ = run_method(method, "compiled", False, args)
                graphed, info = run_method(method, "compiled", True, args)
                floor = largest_difference(compiled, again)[0]
                diff, where = largest_difference(compiled, graphed)
                row.update(uncaptured_rerun_max_rel=floor, graphs_vs_uncaptured_max_rel=diff, first_difference=where,
                           **info)
                ok &= diff <= floor and not info.get("graph_failures")
            else:
                ok &= row["compiled_vs_eager_max_rel"] == 0.0
        except Exception as exc:  # noqa: BLE001  (report and go on to the next method)
            row = {"check": "engines", "method": method, "error": f"{type(exc).__name__}: {exc}"[:500]}
            ok = False
        print(json.dumps(row, default=str), flush=True)
    print(json.dumps({"check": "summary", "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
