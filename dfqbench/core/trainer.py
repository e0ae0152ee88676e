"""The one training loop shared by every generator-based DFQ method (GDFQ trainer.py, methods.md §2.4, §11).

Diagnostics, on every ``log_every``-th iteration, on one fixed (z, y) and with probe forwards that change
nothing (methods.md §4.4; a documented re-implementation choice): R = E[1 − H(p_ds)/log C] before the G
step, after it (x regenerated from the same z, y) and after the Q step, with Δ_g, Δ_q and the Balance Gap;
H_g and H_q are the disagreement entropy H(softmax(t − s)) after the generation step and after the
calibration (Q) step, the two curves of AdaSG's Figure 6. Loss terms are means over the logging window.

Per iteration: sample (z, y) → x = G(z, y) → teacher forward with BN hooks → generator loss, Adam step →
student forward on x.detach() → student loss and SGD step once the warm-up epochs are over. Activation
ranges update during epochs [0, range_update_epochs) and are frozen after each epoch's training, so
evaluation never moves them. The student stays in eval mode (frozen BN statistics) unless the method
says otherwise; the teacher is frozen with no gradients. Every epoch ends with an evaluation, a metrics
write and a checkpoint, all atomic, so a killed run resumes from its last finished epoch.
"""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dfqbench.core.diagnostics import WindowMeans, non_finite, probing
from dfqbench.core.hooks import BNStatisticsLoss
from dfqbench.core.losses import disagreement_entropy, game_value
from dfqbench.core.plugin import Method, Sample, StepContext
from dfqbench.core.progress import Progress
from dfqbench.quant import activation_quantizers, set_range_update
from dfqbench.specs import RunSpec, TrainConfig
from dfqbench.store import RunFolder, git_state, package_versions


class RunDiverged(RuntimeError):
    """A logged loss or diagnostic became NaN or infinite."""


@dataclass
class PreparedRun:
    """Everything a run needs, already validated and built: the trainer only trains."""

    spec: RunSpec
    method: Method
    teacher: nn.Module
    student: nn.Module
    evaluate: Any  # callable(model) -> top-1 in percent
    folder: RunFolder
    device: torch.device
    log_every: int = 50


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Runs one prepared run to completion (or resumes it) and returns its final record."""

    def __init__(self, run: PreparedRun, progress: Progress) -> None:
        self.run = run
        self.progress = progress
        self.cfg = TrainConfig(**run.spec.train)
        self.method = run.method
        self.device = run.device
        self.teacher = run.teacher.to(self.device).eval()
        self.student = run.student.to(self.device)
        seed_everything(run.spec.seed)
        self.method.setup(self.teacher, self.device)
        self.generator = self.method.build_generator().to(self.device)
        self.opt_g = (self.method.generator_optimizer(self.generator, self.cfg.lr_g, tuple(self.cfg.g_betas))
                      if self.method.trains_generator else _NoOptimizer())
        self.opt_q = torch.optim.SGD(
            self.student.parameters(), lr=self.cfg.lr_q, momentum=self.cfg.q_momentum,
            nesterov=self.cfg.q_nesterov, weight_decay=self.cfg.q_weight_decay,
        )
        self.sched_g = torch.optim.lr_scheduler.MultiStepLR(self.opt_g, list(self.cfg.milestones_g), self.cfg.lr_gamma)
        self.sched_q = torch.optim.lr_scheduler.MultiStepLR(self.opt_q, list(self.cfg.milestones_q), self.cfg.lr_gamma)
        self.bns = BNStatisticsLoss(self.teacher)
        self.quantizers = activation_quantizers(self.student)
        self.window = WindowMeans()
        self.metrics: list[dict[str, Any]] = []
        self.state: dict[str, Any] = {
            "fp_top1": None, "calibrated_top1": None, "top1": {}, "images_generated": 0,
            "elapsed_s": 0.0, "sessions": 0,
        }
        self.start_epoch = 0

    # -- checkpointing -------------------------------------------------------------------------------
    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch, "run_id": self.run.spec.run_id,
            "generator": self.generator.state_dict(), "student": self.student.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_q": self.opt_q.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_q": self.sched_q.state_dict(),
            "rng": rng_state(), "state": self.state,
        }

    def _resume(self) -> None:
        ckpt = self.run.folder.load_checkpoint()
        if ckpt is None or ckpt.get("run_id") != self.run.spec.run_id:
            return
        self.generator.load_state_dict(ckpt["generator"])
        self.student.load_state_dict(ckpt["student"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_q.load_state_dict(ckpt["opt_q"])
        self.sched_g.load_state_dict(ckpt["sched_g"])
        self.sched_q.load_state_dict(ckpt["sched_q"])
        set_rng_state(ckpt["rng"])
        self.state = ckpt["state"]
        self.start_epoch = ckpt["epoch"] + 1
        self.metrics = [row for row in self.run.folder.read_metrics() if row.get("epoch", -1) <= ckpt["epoch"]]
        self.progress.message(f"resuming {self.run.spec.run_name} after epoch {self.start_epoch}/{self.cfg.epochs} (checkpoint)")

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        started = time.perf_counter()
        self._resume()
        self.state["sessions"] += 1
        if self.state["fp_top1"] is None:
            self.state["fp_top1"] = self.run.evaluate(self.teacher)
            self.progress.message(f"FP teacher top-1: {self.state['fp_top1']:.2f}")
        self.progress.start(self.cfg.epochs, self.cfg.iters_per_epoch, self.start_epoch)
        for epoch in range(self.start_epoch, self.cfg.epochs):
            epoch_started = time.perf_counter()
            self._train_epoch(epoch)
            top1 = self._evaluate_epoch(epoch)
            self.metrics.append({
                "type": "epoch", "epoch": epoch, "top1": top1, "lr_q": self.opt_q.param_groups[0]["lr"],
                "lr_g": self.opt_g.param_groups[0]["lr"], "seconds": time.perf_counter() - epoch_started,
            })
            with warnings.catch_warnings():  # during warm-up Q has no optimizer step yet; that is intended
                warnings.filterwarnings("ignore", message="Detected call of")
                self.sched_g.step()
                self.sched_q.step()
            self.state["elapsed_s"] += time.perf_counter() - started
            started = time.perf_counter()
            self.run.folder.write_metrics(self.metrics)
            self.run.folder.save_checkpoint(self._checkpoint(epoch))
            self.progress.end_epoch(epoch, top1, self._best()[0])
        self.progress.stop()
        self.state["elapsed_s"] += time.perf_counter() - started
        return self._record()

    def _train_epoch(self, epoch: int) -> None:
        self.generator.train()
        self.student.train(self.method.student_bn_train)
        set_range_update(self.student, epoch < self.cfg.range_update_epochs)
        for it in range(self.cfg.iters_per_epoch):
            log = (it + 1) % self.run.log_every == 0 or it + 1 == self.cfg.iters_per_epoch
            self._iteration(epoch, log)
            if log:
                values = self.window.flush()
                bad = non_finite(values)
                if bad:
                    raise RunDiverged(f"non-finite values at epoch {epoch} iteration {it}: {', '.join(bad)}")
                self.metrics.append({"type": "iter", "epoch": epoch, "iter": it, **values})
                self.progress.iteration(epoch, it, values)
            else:
                self.progress.iteration(epoch, it, None)
        set_range_update(self.student, False)

    def _generate(self, sample: Sample) -> torch.Tensor:
        x = self.method.generate(self.generator, sample)
        self.state["images_generated"] += x.shape[0]
        return x

    def _probe(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher and student logits on x with no side effect on the run."""
        with probing(self.quantizers, self.generator, self.student):
            return self.teacher(x), self.student(x)

    def _iteration(self, epoch: int, log: bool) -> None:
        method, cfg, num_classes = self.method, self.cfg, self.method.num_classes
        sample = method.sample(cfg.batch_size, self.device)
        x = self._generate(sample)
        self.bns.start()
        t = self.teacher(x)
        bns = self.bns.stop()
        s_g = self.student(x) if method.student_in_generator_loss else None
        if log:  # R(θ_g, θ_q): the batch before the G step
            s_before = s_g.detach() if s_g is not None else self._probe(x.detach())[1]
            r_before = game_value(t.detach(), s_before)
        if method.trains_generator:
            loss_g, terms_g = method.generator_loss(StepContext(x, sample, t, s_g, bns, num_classes, epoch))
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
            self.window.add("g/", {"loss": loss_g, **terms_g})
        if log:  # R(θ_g*, θ_q): same (z, y), regenerated after the G step
            with probing(self.quantizers, self.generator, self.student):
                x_after = method.generate(self.generator, sample)
            t_after, s_after = self._probe(x_after)
            h_after_g = disagreement_entropy(t_after, s_after).mean()
            r_after_g = game_value(t_after, s_after)

        train_q = epoch >= cfg.warmup_epochs
        for step in range(method.q_steps_per_iter):
            if step == 0:
                q_sample, xq, tq = sample, x.detach(), t.detach()
            else:
                with torch.no_grad():
                    q_sample = method.sample(cfg.batch_size, self.device)
                    xq = self._generate(q_sample)
                    tq = self.teacher(xq)
            with torch.set_grad_enabled(train_q):
                s = self.student(xq)
                loss_q, terms_q = method.student_loss(StepContext(xq, q_sample, tq, s, None, num_classes, epoch))
            if train_q:
                self.opt_q.zero_grad(set_to_none=True)
                loss_q.backward()
                self.opt_q.step()
            self.window.add("q/", {"loss": loss_q, **terms_q})

        if log:  # R(θ_g*, θ_q*) and the Balance Gap (AdaSG Definition 3)
            s_after_q = self._probe(x_after)[1]
            r_after_q = game_value(t_after, s_after_q)
            self.window.point({
                "H_g": h_after_g, "H_q": disagreement_entropy(t_after, s_after_q).mean(),
                "R_before": r_before, "R_after_g": r_after_g, "R_after_q": r_after_q, "delta_g": r_after_g - r_before,
                "delta_q": r_after_g - r_after_q, "balance_gap": r_after_q - r_before,
            })

    # -- evaluation and the record -------------------------------------------------------------------
    def _evaluate_epoch(self, epoch: int) -> float | None:
        set_range_update(self.student, False)
        self.student.eval()
        calibration_epoch = epoch == self.cfg.warmup_epochs - 1
        if epoch < self.cfg.eval_start_epoch and not calibration_epoch and epoch != self.cfg.epochs - 1:
            return None
        top1 = self.run.evaluate(self.student)
        self.state["top1"][epoch] = top1
        if calibration_epoch:  # Q still has its pretrained weights; only the ranges were calibrated
            self.state["calibrated_top1"] = top1
        return top1

    def _best(self) -> tuple[float | None, int | None]:
        if not self.state["top1"]:
            return None, None
        epoch = max(self.state["top1"], key=lambda e: (self.state["top1"][e], -e))
        return self.state["top1"][epoch], epoch

    def _record(self) -> dict[str, Any]:
        best, best_epoch = self._best()
        last = self.cfg.epochs - 1
        return {
            "run_id": self.run.spec.run_id, "run_name": self.run.spec.run_name, "spec": self.run.spec.to_dict(),
            "fp_top1": self.state["fp_top1"], "calibrated_top1": self.state["calibrated_top1"],
            "best_top1": best, "best_epoch": best_epoch, "final_top1": self.state["top1"].get(last),
            "top1_per_epoch": {str(k): v for k, v in sorted(self.state["top1"].items())},
            "epochs": self.cfg.epochs, "iterations": self.cfg.epochs * self.cfg.iters_per_epoch,
            "images_generated": self.state["images_generated"], "wall_time_s": round(self.state["elapsed_s"], 2),
            "sessions": self.state["sessions"], "device": device_name(self.device),
            "git": git_state(), "versions": package_versions(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


class _NoOptimizer(torch.optim.SGD):
    """Stands in for G's optimizer when a method trains no generator (keeps schedulers and checkpoints uniform)."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(1, requires_grad=True)], lr=0.0)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads)"
