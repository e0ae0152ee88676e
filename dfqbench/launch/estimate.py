"""Device-time estimates for `dfqbench run --grid … --dry-run` and `status`: assumptions, not measurements.

A run costs  iterations × (per-iteration overhead + images per iteration × training cost per image)
           + evaluations × evaluated images × evaluation cost per image,
from its resolved schedule (epochs, iterations per epoch, batch, Q steps per iteration, evaluation start,
evaluation subset) and the constants below. The constants are rough wall-clock assumptions for one H100,
derived from the run times the papers and their repositories mention, NOT measured by dfqbench on any GPU (no
official repository states a GPU time for these methods); the dry run says so (:meth:`Estimate.basis`):

* overhead 10 ms per iteration: AdaSG/AdaDFQ CIFAR at batch 16 (80k iterations in 10-20 min) is launch-bound;
* ResNet-20 training 0.05 ms per generated image: GDFQ CIFAR at batch 200 ≈ 20 ms per iteration;
* ResNet-18 training 2.2 ms per image: ImageNet at batch 16 ≈ 45 ms per iteration (80k iterations ≈ 1 h);
  other ImageNet models scale with their forward GFLOPs (ResNet-50 4.1, MobileNetV2 0.3, ResNet-18 1.82);
* evaluation 0.11 ms per CIFAR test image (400 passes over 10k images ≈ 7.5 min) and 0.6 ms per ImageNet
  validation image (≈ 350 passes over 50k images ≈ 3 h; decoding-bound, so not scaled by model size).

A method whose iteration costs more or less than GDFQ's per image (the direct family's fine-tuning step: no
generator, but HAST's FGSM-perturbed batch and SynQ's Grad-CAM add forwards and input-gradient backwards) has its
training term multiplied by :data:`STEP_COST_FACTOR`: its fine-tuning time per image over GDFQ's, measured on
ONE CPU THREAD by ``benchmarks/bench_step.py`` (ResNet-20, paper batch, W3A3 student, eager engine), NOT on a GPU,
where launch overhead and memory bandwidth weigh differently; the dry run says "assumed, CPU-ratio based". The
direct family's 4 calibration epochs (GDFQ-like G + Q steps at batch 16) are priced as fine-tuning ones (errs high).

When the plan holds finished runs of the same method, model and schedule measured on a GPU, their mean
``wall_time_s`` replaces the formula for the pending ones (reported as "measured"). Figures are GPU-hours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dfqbench.request import RunRequest

ITER_OVERHEAD_S = 0.010
CIFAR_TRAIN_S_PER_IMAGE = 0.05e-3
R18_TRAIN_S_PER_IMAGE = 2.2e-3
GFLOPS = {"resnet18": 1.82, "resnet50": 4.1, "mobilenetv2_w1": 0.3}
EVAL_S_PER_IMAGE = {"cifar10": 0.11e-3, "cifar100": 0.11e-3, "imagenet": 0.6e-3}
TEST_IMAGES = {"cifar10": 10_000, "cifar100": 10_000, "imagenet": 50_000}
TINY_S_PER_IMAGE = 0.01e-3
# A method's training time per image over GDFQ's (module docstring): assumed, CPU-ratio based. Measured by
# benchmarks/bench_step.py --device cpu --methods gdfq,intraq,hast,synq --iters 5 --warmup 2 (OMP_NUM_THREADS=1, a
# shared 2-core machine, 2026-12-06): W3A3 student, eager engine, median ms per iteration over the paper batch,
# GDFQ 6785 / 200 = 33.9 ms per image; IntraQ 2337 / 256 = 9.1 (0.27x), HAST 5843 / 256 = 22.8 (0.67x), SynQ
# 5761 / 256 = 22.5 (0.66x). real_kd runs IntraQ's fine-tuning step (KD + CE), so it takes IntraQ's factor (not
# measured on its own). Unlisted methods: 1.
STEP_COST_FACTOR = {"intraq": 0.27, "hast": 0.67, "synq": 0.66, "real_kd": 0.27}


def step_cost_factor(method: str) -> float:
    """The method's training-cost factor relative to GDFQ (:data:`STEP_COST_FACTOR`; 1 for an unlisted method)."""
    return STEP_COST_FACTOR.get(method, 1.0)


def train_cost_per_image(model: str, dataset: str) -> float:
    if model == "tiny_cifar10":
        return TINY_S_PER_IMAGE
    if dataset != "imagenet":
        return CIFAR_TRAIN_S_PER_IMAGE
    return R18_TRAIN_S_PER_IMAGE * GFLOPS.get(model, GFLOPS["resnet18"]) / GFLOPS["resnet18"]


def evaluations(train: dict[str, Any]) -> int:
    """Epochs the trainer evaluates: from eval_start_epoch on, plus the calibration epoch and the last (counted in
    closed form: a schedule's length never becomes a loop or a set)."""
    epochs, first = train["epochs"], max(0, train["eval_start_epoch"])
    if epochs < 1:
        return 0
    count = max(0, epochs - first)  # epochs first .. epochs - 1
    if first > epochs - 1:
        count += 1  # the last epoch is always evaluated
    calibration = train["warmup_epochs"] - 1
    if 0 <= calibration < min(first, epochs - 1):
        count += 1  # the calibration epoch, when not already counted
    return count


def formula_seconds(model: str, dataset: str, train: dict[str, Any], q_steps_per_iter: int, method: str = "") -> float:
    """The cost model of the module docstring, in seconds (Q steps after the first generate a fresh batch; the
    training term scaled by ``method``'s :func:`step_cost_factor`)."""
    iterations = train["epochs"] * train["iters_per_epoch"]
    images_per_iter = train["batch_size"] * max(1, q_steps_per_iter)
    training = iterations * (ITER_OVERHEAD_S + images_per_iter * train_cost_per_image(model, dataset))
    training *= step_cost_factor(method)
    test_images = TEST_IMAGES.get(dataset, 10_000)
    if train.get("eval_max_images"):
        test_images = min(test_images, train["eval_max_images"])
    evaluation = evaluations(train) * test_images * EVAL_S_PER_IMAGE.get(dataset, EVAL_S_PER_IMAGE["cifar10"])
    return training + evaluation


@dataclass
class Estimate:
    hours: float = 0.0
    measured_runs: int = 0
    formula_runs: int = 0
    unknown_runs: int = 0
    scaled: dict[str, int] = field(default_factory=dict)  # formula runs per method with a STEP_COST_FACTOR

    def add_formula_run(self, method: str, model: str, dataset: str, train: dict[str, Any], q_steps: int) -> None:
        """Count one run priced by the cost model (:func:`formula_seconds`)."""
        self.hours += formula_seconds(model, dataset, train, q_steps, method) / 3600
        self.formula_runs += 1
        if method in STEP_COST_FACTOR:
            self.scaled[method] = self.scaled.get(method, 0) + 1

    def basis(self) -> str:
        """What the figure rests on, in one line: how many runs come from the cost model (assumed, not measured)
        and how many from the measured GPU wall times of finished runs like them."""
        parts = []
        if self.formula_runs:
            parts.append(f"{self.formula_runs} runs from a cost model whose per-iteration and per-image costs are "
                         "assumptions for one H100, not measurements (dfqbench/launch/estimate.py)")
        if self.scaled:
            factors = ", ".join(f"{m} {STEP_COST_FACTOR[m]:.2f}x" for m in sorted(self.scaled))
            parts.append(f"{sum(self.scaled.values())} of them with a per-method step-cost factor over GDFQ's "
                         f"({factors}; assumed, CPU-ratio based: benchmarks/bench_step.py on one CPU thread)")
        if self.measured_runs:
            parts.append(f"{self.measured_runs} runs from the mean GPU wall time of finished runs of the same "
                         "method, model and schedule in these results")
        if self.unknown_runs:
            parts.append(f"{self.unknown_runs} runs unknown (schedule not resolved)")
        return "; ".join(parts) or "nothing to run"

    def text(self) -> str:
        return f"{amount(self.hours)} ({self.basis()}; docs/hardware.md for GPU memory and sizing)"


def amount(hours: float) -> str:
    return f"{hours:,.1f} GPU-hours" if hours >= 1 else f"{hours * 60:.1f} GPU-minutes"


def protocol_notice(request: "RunRequest") -> str:
    """One line for a single run started without ``--protocol``: it trains the paper protocol (the faithful
    default), on which schedule, about how long by the cost model, and how to pick the quick one instead."""
    from dfqbench.plugins import load_methods
    from dfqbench.runner import request_settings
    from dfqbench.zoo import model_info

    method_cls = load_methods().get(request.method)
    train = request_settings(method_cls, request)[0]
    info = model_info(request.model)
    hours = formula_seconds(info.name, info.dataset, train, method_cls.q_steps_per_iter, request.method) / 3600
    return (f"protocol paper (the default): {train['epochs']:,} epochs x {train['iters_per_epoch']:,} iterations of "
            f"batch {train['batch_size']:,}, about {amount(hours)} on one H100 by the unmeasured cost model; "
            "--protocol quick trains a short schedule (minutes on CPU)")
