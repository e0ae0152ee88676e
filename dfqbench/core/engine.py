"""How a run executes its training step: ``eager`` PyTorch, or ``compiled`` (torch.compile + CUDA graphs).

The engine changes how the step's kernels are launched, never what the step computes, so it is recorded
in ``record.json`` but is not part of the run hash (like the device). ``auto`` picks ``compiled`` on CUDA
(the eager loop is host-bound there: thousands of small kernels per iteration launched one by one from
Python) and ``eager`` on the CPU, where ``benchmarks/bench_step.py`` shows compilation does not pay for itself
within a run (see docs/engines.md for the measured figures).
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Callable, Hashable

import torch
from torch import nn
from torch.utils import _pytree as pytree

from dfqbench.core.engine_names import ENGINES, check_engine
from dfqbench.errors import DfqbenchError
from dfqbench.quant import configure_inductor_numerics, set_fused_fake_quant
from dfqbench.registry import unknown_choice

__all__ = ["ENGINES", "CompiledEngine", "EagerEngine", "Engine", "check_engine", "make_engine", "resolve_engine"]

CUDA_GRAPHS_ENV = "DFQBENCH_CUDA_GRAPHS"


def resolve_engine(name: str, device: torch.device) -> str:
    """The concrete engine (``eager`` or ``compiled``) for a requested one on ``device``."""
    if check_engine(name) != "auto":
        return name
    return "compiled" if device.type == "cuda" else "eager"


class Engine:
    """Runs a :class:`~dfqbench.core.step.TrainStep`: ``prepare`` adapts the student and the optimizers once;
    ``run(phase, body, *inputs)`` executes one whole step (forward, backward, optimizer step)."""

    name = "eager"

    def __init__(self) -> None:
        self.compile_seconds = 0.0  # time spent in first calls that compiled or captured

    def prepare(self, student: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
        """Adapt the student (fused quantizers) and optimizer options (capturable state) to the engine."""

    def run(self, phase: Hashable, body: Callable[..., Any], *inputs: Any) -> Any:
        return body(*inputs)

    def describe(self) -> dict[str, Any]:
        """What the record says about the engine."""
        return {"engine": self.name, "compile_s": round(self.compile_seconds, 3)}


class EagerEngine(Engine):
    """Plain PyTorch: every operation dispatched from Python as written."""


class CompiledEngine(Engine):
    """The student's quantizers compiled by inductor into fused kernels (:mod:`dfqbench.quant.fused`,
    bit-identical to eager) and, on CUDA with ``cuda_graphs``, each whole step (forward, backward, optimizer
    step) captured once per phase and input structure as a CUDA graph and replayed (:class:`StepGraphs`):
    one launch per step instead of thousands. Everything else runs the eager kernels, so the compiled
    engine computes exactly what the eager one computes (up to Adam's capturable arithmetic on CUDA).

    Why not compile the whole step with inductor: its fused BatchNorm, softmax and reductions round
    differently from eager by an ulp, and Adam's first steps (≈ lr·sign(g)) turn ulp-level gradient
    differences into lr-sized weight differences within an iteration, so runs would stop being comparable
    across engines. The step is still traceable as one graph (tests/test_engine.py compiles it with
    ``fullgraph=True``), which is what guarantees it has no host synchronisation.
    """

    name = "compiled"

    def __init__(self, device: torch.device, cuda_graphs: bool | None = None, warmup_calls: int = 2,
                 graphs: "StepGraphs | None" = None) -> None:
        super().__init__()
        configure_inductor_numerics()
        self.device = device
        if cuda_graphs is None:  # DFQBENCH_CUDA_GRAPHS=0 keeps the fused quantizers but launches steps uncaptured
            cuda_graphs = os.environ.get(CUDA_GRAPHS_ENV, "1") != "0"
        self.graphs = graphs or (StepGraphs(device, warmup_calls) if cuda_graphs and device.type == "cuda" else None)
        self._seen: set[Hashable] = set()

    @property
    def cuda_graphs(self) -> bool:
        """Whether steps are captured and replayed as graphs."""
        return self.graphs is not None

    def prepare(self, student: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
        set_fused_fake_quant(student, True)
        if self.device.type != "cuda":
            return
        for opt in optimizers:  # Adam/AdamW keep their step count on the device, as capture requires
            for group in opt.param_groups:
                if "capturable" not in group:
                    continue
                group["capturable"] = True
                for param in group["params"]:  # state loaded from an eager run's checkpoint has a CPU count
                    state = opt.state.get(param, {})
                    if isinstance(state.get("step"), torch.Tensor):
                        state["step"] = state["step"].to(param.device)

    def run(self, phase: Hashable, body: Callable[..., Any], *inputs: Any) -> Any:
        leaves, spec = pytree.tree_flatten(inputs)  # once per call: the key and the graph's input copies use it
        key = (phase, input_signature(leaves, spec))
        first = key not in self._seen
        started = time.perf_counter()
        result = self.graphs.run(key, body, inputs, leaves) if self.graphs is not None else body(*inputs)
        if first:
            self._seen.add(key)
            self.compile_seconds += time.perf_counter() - started
        elif self.graphs is not None and self.graphs.just_captured:
            self.compile_seconds += time.perf_counter() - started
        return result

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["cuda_graphs"] = self.cuda_graphs
        if self.graphs is not None:
            info["graphs_captured"] = sum(entry is not None for entry in self.graphs.entries.values())
            if self.graphs.failures:
                info["graph_failures"] = self.graphs.failures
        return info


def make_engine(name: str, device: torch.device) -> Engine:
    """The engine called ``name`` (``eager`` or ``compiled``; resolve ``auto`` first) for ``device``."""
    if name == "compiled":
        return CompiledEngine(device)
    if name == "eager":
        return EagerEngine()
    raise DfqbenchError(unknown_choice("engine", name, ["eager", "compiled"]))


def input_signature(leaves: list[Any], spec: pytree.TreeSpec) -> tuple[Any, ...]:
    """The structure of a step's flattened inputs: shapes, dtypes and devices of the tensors, values of the rest."""
    return (str(spec),) + tuple(
        (tuple(leaf.shape), leaf.dtype, leaf.device.type) if isinstance(leaf, torch.Tensor) else repr(leaf)
        for leaf in leaves)


class StepGraphs:
    """Whole-step CUDA graphs, one per (phase, input structure) key.

    The first ``warmup_calls`` calls of a key run the step normally on a side stream (they are real steps:
    they compile, create optimizer state and pick kernels); the next call captures the step into a graph
    whose inputs are static copies and then replays it; later calls copy their inputs into those copies
    and replay. Replay runs exactly the captured kernels, so it computes what the uncaptured step computes.
    A replay returns copies of the graph's static outputs, so they survive the next replay.
    ``graph_factory`` makes the graphs (default :class:`torch.cuda.CUDAGraph` through :class:`CudaGraph`;
    tests use :class:`ReplayingGraph`, a CPU stand-in with the same calling pattern).
    """

    def __init__(self, device: torch.device, warmup_calls: int = 2,
                 graph_factory: Callable[[torch.device], "CudaGraph | ReplayingGraph"] | None = None) -> None:
        self.device = device
        self.warmup_calls = warmup_calls
        self.graph_factory = graph_factory or CudaGraph
        self.entries: dict[Hashable, _CapturedStep | None] = {}  # None: capture failed, the step runs uncaptured
        self.failures: list[str] = []
        self._calls: dict[Hashable, int] = {}
        self.just_captured = False

    def run(self, key: Hashable, body: Callable[..., Any], inputs: tuple[Any, ...], leaves: list[Any]) -> Any:
        """One step; ``leaves`` are ``inputs`` flattened (``pytree.tree_flatten``), what a graph copies in."""
        self.just_captured = False
        if key in self.entries:
            entry = self.entries[key]
            return entry.replay(leaves) if entry is not None else body(*inputs)
        calls = self._calls.get(key, 0)
        if calls < self.warmup_calls:
            self._calls[key] = calls + 1
            return self._side_stream(body, inputs)
        self.just_captured = True
        try:
            entry = _CapturedStep(body, inputs, self.device, self.graph_factory(self.device))
        except RuntimeError as exc:  # a step that cannot be captured still runs, uncaptured (and is reported)
            message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            warnings.warn(f"CUDA graph capture failed; this step runs uncaptured: {message}", RuntimeWarning)
            self.failures.append(message)
            self.entries[key] = None
            _synchronize(self.device)
            return body(*inputs)
        self.entries[key] = entry
        return entry.replay(leaves)

    def _side_stream(self, body: Callable[..., Any], inputs: tuple[Any, ...]) -> Any:
        if self.device.type != "cuda":
            return body(*inputs)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            result = body(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        return result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CudaGraph:
    """``capture(fn)`` records fn's kernels without running them and returns its (static) outputs; ``replay()``
    runs them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable[[], Any]) -> Any:
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(self.graph):
            outputs = fn()
        torch.cuda.synchronize(self.device)
        return outputs

    def replay(self) -> None:
        self.graph.replay()


class ReplayingGraph:
    """A CPU stand-in for :class:`CudaGraph` with the same calling pattern, for tests of :class:`StepGraphs`:
    ``capture`` runs the step (standing for the replay that follows a real capture, which it then skips) and
    keeps its outputs as the static outputs; ``replay`` runs the step again on the static inputs and writes
    its results into those same output tensors, as a replayed graph does."""

    def __init__(self, device: torch.device) -> None:
        self._fn: Callable[[], Any] | None = None
        self._outputs: Any = None
        self._skip_next = False

    def capture(self, fn: Callable[[], Any]) -> Any:
        self._fn, self._outputs, self._skip_next = fn, fn(), True
        return self._outputs

    def replay(self) -> None:
        if self._skip_next:
            self._skip_next = False
            return
        assert self._fn is not None
        fresh = pytree.tree_leaves(self._fn())
        for static, value in zip(pytree.tree_leaves(self._outputs), fresh):
            if isinstance(static, torch.Tensor) and static is not value:
                static.copy_(value)


class _CapturedStep:
    """One captured step: static input copies, the graph and its static outputs."""

    def __init__(self, body: Callable[..., Any], inputs: tuple[Any, ...], device: torch.device,
                 graph: CudaGraph | ReplayingGraph) -> None:
        leaves, self.spec = pytree.tree_flatten(inputs)
        # On the device: a captured step cannot copy from host memory (e.g. ZeroQ-KD's crop boxes)
        self.static = [leaf.detach().to(device, copy=True) if isinstance(leaf, torch.Tensor) else leaf
                       for leaf in leaves]
        static_inputs = pytree.tree_unflatten(self.static, self.spec)
        self.graph = graph
        self.outputs = graph.capture(lambda: body(*static_inputs))

    def replay(self, leaves: list[Any]) -> Any:
        """Copy this call's flattened inputs into the static ones, replay, return copies of the outputs."""
        for static, leaf in zip(self.static, leaves):
            if isinstance(leaf, torch.Tensor) and leaf.data_ptr() != static.data_ptr():
                static.copy_(leaf, non_blocking=True)
        self.graph.replay()
        # Copies: the next replay overwrites the static outputs (ZAQ replays its Q step five times an iteration)
        return pytree.tree_map_only(torch.Tensor, torch.clone, self.outputs)
