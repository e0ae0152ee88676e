"""The export check: the exported model's top-1 on the run's own test subset against the recorded top-1.

The images, their order, the normalisation and the subset (``train.eval_max_images``, seeded) are those of the
run's evaluation: the exported model is evaluated by the same :class:`dfqbench.zoo.Evaluator`, wrapped as a
module. Alongside it runs the PyTorch student (loaded as ``dfqbench.load_student`` loads it), so the check also
says on how many images the two predict the same class and how far apart their logits are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from dfqbench.export.source import ExportSource
from dfqbench.zoo import Evaluator, Normalization, load_test_set, model_info

# The stated tolerance: |exported top-1 − recorded top-1| <= max(TOLERANCE_POINTS, one image of the subset).
# What moves the exported model's predictions (docs/export.md): near-ties that ONNX rounds differently
# (x / scale against x·s − z) and float32 kernels of another library. Measured: 0 and 1 image of 10,000 (ResNet-20
# W4A4 quick run, best and final students), 0 of 256 (tiny runs, 7 bit-widths).
TOLERANCE_POINTS = 0.1


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check (top-1 values in percent)."""

    exported_top1: float
    recorded_top1: float
    tolerance: float
    images: int
    agree: int  # images where the exported model and the PyTorch student predict the same class
    max_logit_diff: float

    @property
    def passed(self) -> bool:
        return abs(self.exported_top1 - self.recorded_top1) <= self.tolerance + 1e-9


def tolerance(images: int) -> float:
    """The stated tolerance in percentage points for a subset of ``images`` images."""
    return max(TOLERANCE_POINTS, 100.0 / images)


class _Compared(nn.Module):
    """Returns ``run(x)``'s logits, counting on the way where they pick the student's class."""

    def __init__(self, run: Callable[[Tensor], Tensor], student: nn.Module) -> None:
        super().__init__()
        self.run, self.student = run, student
        self.agree, self.max_diff = 0, 0.0

    def forward(self, x: Tensor) -> Tensor:
        logits = self.run(x)
        reference = self.student(x)
        self.agree += int((logits.argmax(1) == reference.argmax(1)).sum())
        self.max_diff = max(self.max_diff, float((logits - reference).abs().max()))
        return logits


def onnxruntime_runner(path: Path, threads: int | None = None) -> Callable[[Tensor], Tensor]:
    """A function from a float32 batch to the ONNX model's logits, on onnxruntime's CPU provider
    (``threads``: intra-op threads, default torch's thread count)."""
    from dfqbench.export.deps import require

    require("onnxruntime", "checking an ONNX export")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().contiguous().numpy()})[0])

    return run


def evaluator_for(spec: dict[str, Any], data_root: str | None = None) -> Evaluator:
    """The run's evaluator: its test set, normalisation and subset (as ``dfqbench.evaluate``)."""
    norm = spec["normalization"]
    normalization = Normalization(tuple(norm["mean"]), tuple(norm["std"]), norm.get("name", "custom"))
    test_set = load_test_set(model_info(spec["model"]), data_root)
    return Evaluator(test_set, normalization, device="cpu", max_images=spec["train"].get("eval_max_images"))


def check_model(run: Callable[[Tensor], Tensor], source: ExportSource, data_root: str | None = None) -> CheckResult:
    """Evaluate ``run`` (the exported model as a function) and the PyTorch student on the run's test subset."""
    evaluator = evaluator_for(source.spec, data_root)
    student = source.student.eval()
    compared = _Compared(run, student)
    exported = evaluator.evaluate(compared)
    images = evaluator.num_images
    return CheckResult(exported, source.recorded_top1, tolerance(images), images, compared.agree, compared.max_diff)
