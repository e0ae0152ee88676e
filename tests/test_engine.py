"""Engines: the compiled engine computes what the eager one computes (issue: GPU-fast trainer).

On the CPU (CI has no GPU) the compiled engine runs the student's quantizers as inductor-fused kernels:
for every registered method on the tiny model, 21 iterations from the same seed give the same logged
losses and diagnostics as eager (asserted bit for bit, stronger than the 1e-5 relative asked for) and the
same top-1 per epoch. Each step's forward-and-loss functions compile with ``torch.compile(fullgraph=True)``
(a graph break, e.g. at a host synchronisation, would be an error). Kill and resume with the compiled
engine equals an uninterrupted run. The fused fake-quant that inductor generates is bit-identical to the
reference primitive, ties included. CUDA-graph replay is checked on a GPU by benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import math

import pytest
import torch

from dfqbench.core.engine import CompiledEngine, EagerEngine, check_engine, make_engine, resolve_engine
from dfqbench.errors import DfqbenchError
from dfqbench.plugins import load_methods
from dfqbench.quant import QuantAct
from dfqbench.quant.primitives import FakeQuantSTE, fake_quantize, quant_params
from dfqbench.runner import prepare, run

from conftest import CrashAfterEpoch, RecordingProgress, same_state
from waiting import HANG_S

METHODS = sorted(load_methods().names())
ENGINE_OVERRIDES = ["train.epochs=3", "train.iters_per_epoch=7", "train.batch_size=8", "train.warmup_epochs=1",
                    "train.range_update_epochs=1", "train.eval_max_images=128"]
METHOD_OVERRIDES = {  # keep ZeroQ's distillation short; its result is what both engines then train on
    "zaq": ["method.safe_normalize=true"],  # faithful SCRM diverges at 4 bits within ~14 iterations (zaq.py)
    "zeroq": ["method.steps=20"], "zeroq_kd": ["method.steps=20", "method.num_batches=1", "method.batch_size=16"],
    # the direct family's 8000·KL (and HAST/SynQ's λ_FA = 1000, SynQ's λ_CAM) diverge on the tiny network at the
    # released lr 1e-4 within ~10 steps (the instability of IntraQ issue #3); their bank is the tiny preset's 2 × 16
    **{name: ["train.lr_q=1e-6"] for name in ("intraq", "hast", "synq", "real_kd")},  # real_kd: IntraQ's recipe
}


def _request(tiny_request, method: str, engine: str, results):
    overrides = ENGINE_OVERRIDES + METHOD_OVERRIDES.get(method, [])
    if method == "zeroq":
        overrides = [o for o in overrides if not o.startswith(("train.epochs", "train.warmup", "train.range"))]
    return tiny_request(method=method, engine=engine, overrides=overrides, results=str(results), log_every=1)


def _iteration_rows(request) -> list[dict]:
    return [r for r in prepare(request).folder.read_metrics() if r["type"] == "iter"]


@pytest.mark.parametrize("method", METHODS)
def test_compiled_engine_equals_eager(method, tiny_request, tmp_path):
    import torch._dynamo.utils

    torch._dynamo.utils.counters.clear()
    eager_request = _request(tiny_request, method, "eager", tmp_path / "eager")
    compiled_request = _request(tiny_request, method, "compiled", tmp_path / "compiled")
    eager = run(eager_request, RecordingProgress())
    compiled = run(compiled_request, RecordingProgress())
    assert dict(torch._dynamo.utils.counters["graph_break"]) == {}
    assert compiled.run_id == eager.run_id  # the engine is not part of the run's identity
    assert (eager.engine, compiled.engine) == ("eager", "compiled")
    assert compiled.compile_s > 0 and eager.compile_s == 0
    rows_e, rows_c = _iteration_rows(eager_request), _iteration_rows(compiled_request)
    assert len(rows_e) == len(rows_c) >= (1 if method == "zeroq" else 20)
    assert rows_c == rows_e  # every loss term and diagnostic of every iteration, bit for bit
    assert compiled.top1_per_epoch == eager.top1_per_epoch
    assert compiled.images_generated == eager.images_generated


@pytest.mark.parametrize("method", METHODS)
def test_step_traces_as_one_graph_per_function(method, tiny_request, tmp_path):
    """The step's forward-and-loss functions compile with fullgraph=True (no graph break, so no .item() or
    other host synchronisation) in every phase: warm-up (no Q step, ranges updating) and fine-tuning. The input
    gradients of HAST/SynQ's perturbation and SynQ's Grad-CAM (``torch.autograd.grad`` inside the student loss)
    are traced too (dynamo's ``trace_autograd_ops``)."""
    import torch._dynamo.config

    from dfqbench.core.trainer import Trainer
    from dfqbench.quant import set_range_update

    torch._dynamo.reset()  # the step functions' code is shared by all methods: no recompile limit carried over
    trainer = Trainer(prepare(_request(tiny_request, method, "eager", tmp_path)), RecordingProgress())
    step = trainer.step
    for name in ("generator_forward", "student_forward", "fresh_batch"):
        setattr(step, name, torch.compile(getattr(step, name), fullgraph=True, backend="eager"))
    trainer.generator.train()
    trainer.student.train(trainer.method.student_bn_train)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        for train_q, ranges in ((False, True), (True, False)):
            set_range_update(trainer.student, ranges)
            for prefix, terms in step.iteration(train_q, trainer.probe):
                assert all(torch.isfinite(v) for v in terms.values()), (prefix, terms)


# Operations that read a tensor's value on the host (a CUDA graph cannot capture them): .item(), bool(tensor),
# and those whose output shape depends on the data.
HOST_SYNCING = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
                "equal", "repeat_interleave", "bincount"}


@pytest.mark.parametrize("method", METHODS)
def test_whole_steps_read_nothing_back_to_the_host(method, tiny_request, tmp_path):
    """Each whole step as an engine runs it (forward, loss and backward; the fullgraph test above covers only
    forward and loss) dispatches no operation that reads a value back to the host, in every phase, outside
    the optimizers' step() (PyTorch's own: the CPU Adam reads its step count there, which the compiled engine
    keeps on the device on CUDA): so a custom backward or a loss cannot bring a host synchronisation in."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    from torch.utils._python_dispatch import TorchDispatchMode

    from dfqbench.core.trainer import Trainer
    from dfqbench.quant import set_range_update

    class HostReads(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.in_step = self.in_optimizer = 0
            self.outside_optimizers: list[str] = []
            self.steps = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if self.in_step and not self.in_optimizer and name in HOST_SYNCING:
                self.outside_optimizers.append(name)
            return func(*args, **(kwargs or {}))

    reads = HostReads()

    class WatchedEngine(EagerEngine):
        def run(self, phase, body, *inputs):
            reads.in_step += 1
            reads.steps += 1
            try:
                return body(*inputs)
            finally:
                reads.in_step -= 1

    def enter_optimizer(*_):
        reads.in_optimizer += 1

    def leave_optimizer(*_):
        reads.in_optimizer -= 1

    trainer = Trainer(prepare(_request(tiny_request, method, "eager", tmp_path)), RecordingProgress())
    trainer.step.engine = WatchedEngine()
    trainer.generator.train()
    trainer.student.train(trainer.method.student_bn_train)
    hooks = [register_optimizer_step_pre_hook(enter_optimizer),
             register_optimizer_step_post_hook(leave_optimizer)]
    try:
        with reads:
            for train_q, ranges in ((False, True), (True, True), (True, False)):
                set_range_update(trainer.student, ranges)
                trainer.step.iteration(train_q, trainer.probe)
    finally:
        for hook in hooks:
            hook.remove()
    assert reads.steps >= 3 and reads.in_optimizer == 0
    assert reads.outside_optimizers == []


def test_compiled_engine_resumes_as_if_uninterrupted(tiny_request, tmp_path):
    straight_request = _request(tiny_request, "adasg", "compiled", tmp_path / "straight")
    straight = run(straight_request, RecordingProgress())
    crashed = _request(tiny_request, "adasg", "compiled", tmp_path / "crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(crashed, CrashAfterEpoch(1))
    resumed = run(crashed, RecordingProgress())
    assert resumed.sessions == 2
    assert resumed.top1_per_epoch == straight.top1_per_epoch
    assert _iteration_rows(crashed) == _iteration_rows(straight_request)
    a = prepare(straight_request).folder.load_checkpoint()
    b = prepare(crashed).folder.load_checkpoint()
    assert same_state(a["student"], b["student"]) and same_state(a["generator"], b["generator"])


@pytest.mark.parametrize("method", ["gdfq", "qimera", "zaq", "zeroq_kd", "intraq", "hast", "synq"])
def test_graph_replay_logic_equals_eager(method, tiny_request, tmp_path):
    """StepGraphs' control flow (warm-up calls per phase, static input copies refreshed every call, outputs
    copied before the next replay, one graph per phase and sample structure) with a CPU stand-in for the CUDA
    graph: a whole run equals the eager run bit for bit. Covers ZAQ's five replays of one Q+ graph per
    iteration, Qimera's superposed/plain graphs, ZeroQ-KD's host-side crop boxes, and the direct family's two
    phases (calibration generator "G", "Q" at batch 16, then bank batches "Q+") with HAST/SynQ's extra forwards
    and input gradients inside the step."""
    from dfqbench.core.engine import ReplayingGraph, StepGraphs
    from dfqbench.core.trainer import Trainer

    eager_request = _request(tiny_request, method, "eager", tmp_path / "eager")
    eager = run(eager_request, RecordingProgress())
    request = _request(tiny_request, method, "compiled", tmp_path / "graphs")
    prepared = prepare(request)
    prepared.folder.create(prepared.spec)
    trainer = Trainer(prepared, RecordingProgress())
    trainer.engine.graphs = StepGraphs(torch.device("cpu"), warmup_calls=2, graph_factory=ReplayingGraph)
    record = trainer.fit()
    prepared.folder.write_record(record)
    assert _iteration_rows(request) == _iteration_rows(eager_request)
    assert record.top1_per_epoch == eager.top1_per_epoch
    captured = [entry for entry in trainer.engine.graphs.entries.values() if entry is not None]
    assert len(captured) >= 2 and record.extra["graphs_captured"] == len(captured)  # e.g. warm-up and fine-tuning phases


def test_engine_choice_and_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_engine("auto", cpu) == "eager" and resolve_engine("auto", cuda) == "compiled"
    assert resolve_engine("compiled", cpu) == "compiled" and resolve_engine("eager", cuda) == "eager"
    with pytest.raises(DfqbenchError, match="unknown engine 'fast'.*auto, eager, compiled"):
        check_engine("fast")
    assert isinstance(make_engine("eager", cpu), EagerEngine)
    engine = make_engine("compiled", cpu)
    assert isinstance(engine, CompiledEngine) and not engine.cuda_graphs  # graphs only on CUDA


def _tie_inputs(bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs on and next to the half-steps of s·x − z (ties; the zero point is odd at 3 bits), plus random values."""
    lo, hi = torch.tensor(-0.75), torch.tensor(1.25)  # s = (2^k - 1) / 2, exactly representable
    scale, zero = quant_params(bits, lo, hi)
    steps = torch.arange(-2 ** bits, 2 ** bits, dtype=torch.float32)
    ties = (steps + 0.5 + zero) / scale  # s·x − z lands on k + 0.5 (up to the float rounding of x)
    rand = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 2
    return torch.cat([ties, ties.nextafter(torch.tensor(math.inf)), ties.nextafter(torch.tensor(-math.inf)), rand]), lo, hi


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_compiled_fake_quant_is_bit_identical_to_the_reference(bits):
    from dfqbench.quant.compiler import configure_inductor_numerics

    configure_inductor_numerics()
    x, lo, hi = _tie_inputs(bits)
    reference = fake_quantize(x, bits, lo, hi)

    def activation_path(v: torch.Tensor) -> torch.Tensor:  # the QuantAct/QuantConv path: STE, in-place hot path
        return FakeQuantSTE.apply(v, bits, lo, hi)

    compiled = torch.compile(activation_path, fullgraph=True)
    leaf = x.clone().requires_grad_(True)
    out = compiled(leaf)
    assert torch.equal(out, reference)
    out.backward(torch.arange(x.numel(), dtype=torch.float32))
    assert torch.equal(leaf.grad, torch.arange(x.numel(), dtype=torch.float32))  # identity straight-through
    with torch.no_grad():
        assert torch.equal(compiled(x), reference)


def test_compiled_quant_act_updates_ranges_like_eager():
    torch.manual_seed(0)
    eager, compiled_act = QuantAct(3, "ema_gdfq"), QuantAct(3, "ema_gdfq")
    compiled = torch.compile(compiled_act, fullgraph=True)
    for _ in range(4):
        x = torch.randn(8, 4, 5, 5) * 3
        assert torch.equal(compiled(x), eager(x))
    assert same_state(compiled_act.state_dict(), eager.state_dict())


def test_benchmarks_run_on_the_tiny_model(tmp_path):
    """benchmarks/count_ops.py and bench_step.py run (small, on the CPU) and measure what they say: quantizing the
    student adds operations only inside the fake-quantizers (what the compiled engine fuses); bench_step gives
    one timing per student and engine."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"

    def json_lines(script: str, *args: str) -> list[dict]:
        done = subprocess.run([sys.executable, str(benchmarks / script), "--model", "tiny_cifar10", *args],
                              capture_output=True, text=True, timeout=HANG_S, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    fp, quantized = json_lines("count_ops.py", "--methods", "gdfq", "--batch", "8")
    assert (fp["student"], quantized["student"]) == ("fp", "w3a3")
    assert fp["in_quantizers"] == fp["quantizer_calls"] == 0
    assert quantized["outside_quantizers"] == fp["ops_per_iter"] > 0
    assert quantized["quantizer_calls"] > 0 and quantized["in_quantizers"] >= 5 * quantized["quantizer_calls"]
    rows = json_lines("bench_step.py", "--methods", "gdfq", "--engines", "eager", "--iters", "2", "--warmup", "1",
                      "--batch", "8", "--device", "cpu")
    assert [(r["student"], r["engine"]) for r in rows] == [("fp", "eager"), ("w3a3", "eager")]
    assert all(r["ms_per_iter"] > 0 for r in rows)
