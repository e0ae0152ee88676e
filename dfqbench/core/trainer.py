"""The one training loop shared by every DFQ method (GDFQ ``trainer.py`` L48-78, L181-241).

The loop owns the schedule; one iteration is :meth:`dfqbench.core.step.TrainStep.iteration` (the method's
G and Q steps in its order, see :mod:`dfqbench.core.step`), run by the run's engine (eager, or compiled and
on CUDA graph-replayed: :mod:`dfqbench.core.engine`). Phase changes happen between steps: per epoch the
generator's and the student's train/eval modes, the activation-range window and, after the epoch, the
learning-rate milestones; the warm-up epochs run the Q steps without an SGD step.

Diagnostics, on every ``log_every``-th iteration (:class:`~dfqbench.core.probe.GameProbe`, called between the
steps; AdaSG paper, Definition 3): R = E[1 − H(p_ds)/log C] before the steps, after the G step and after the Q steps,
with Δ_g, Δ_q and the Balance Gap, and the disagreement entropy after the G step (H_g) and after the Q
steps (H_q), AdaSG's Figure 6. Loss terms are summed on the device and read once per logging window, where
the divergence check happens. Methods with ``uses_features`` also get the outputs of their
``feature_layers`` for teacher and student (:class:`~dfqbench.blocks.features.FeatureTap`).

Activation ranges update during epochs [0, range_update_epochs) and are frozen after each epoch's
training, so evaluation never moves them. calibrated_top1 is Q with its pretrained weights and
calibrated ranges: the evaluation after the last warm-up epoch, or, for methods without warm-up, after
one no-grad pass of one generated batch through Q (eval mode; ranges updating if the range window is
open) before epoch 0. The student stays in eval mode (frozen BN statistics) unless the method says
otherwise; the teacher is frozen with no gradients. Every epoch ends with an evaluation, a metrics
write and a checkpoint, all atomic, so a killed run resumes from its last finished epoch; an epoch that
improves the best top-1 also writes ``best_student.pt`` (:mod:`dfqbench.core.snapshots`). What is logged
also goes to the run's experiment loggers (``--log``; :mod:`dfqbench.core.loggers`).

Divergence (a NaN/inf among the logged values) ends training at that point, as a result rather than an
error: the official loops train on through NaN and report the best epoch, which can only be one before
the NaN, so the record keeps ``best_top1`` over the evaluated epochs, has no ``final_top1`` and says
``diverged`` (epoch, iteration, values). The diverged epoch gets no evaluation and no checkpoint.
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
from dfqbench.core.engine import make_engine
from dfqbench.core.loggers import Loggers
from dfqbench.core.optimizers import build_optimizers
from dfqbench.core.phases import start_evaluation, start_training_epoch
from dfqbench.blocks.interface import Method
from dfqbench.core.probe import GameProbe
from dfqbench.core.progress import Progress
from dfqbench.core.snapshots import best_student_epoch, best_student_path, repair_best_student, save_best_student
from dfqbench.core.step import TrainStep
from dfqbench.errors import RunDiverged
from dfqbench.quant import activation_quantizers, set_range_update
from dfqbench.specs import RunSpec, TrainConfig
from dfqbench.store import RunFolder, RunRecord, StoreError, git_state, package_versions, unreadable_checkpoint
from dfqbench.store.files import unreadable


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
    engine: str = "eager"  # eager | compiled (resolved; dfqbench.core.engine)
    loggers: tuple[str, ...] = ()  # experiment loggers besides metrics.jsonl (dfqbench.core.loggers)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors, numbers, strings, lists and tuples only, so a checkpoint loads with
    ``torch.load(weights_only=True)`` (no pickled objects that could run code)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])



CHECKPOINT_PARTS = ("generator", "student", "opt_g", "opt_q", "sched_g", "sched_q", "rng", "state")


def check_checkpoint(ckpt: dict[str, Any], epochs: int) -> None:
    """A checkpoint this trainer wrote: every part present as a mapping, its epoch one of the run's
    (0 .. epochs − 1), and its state's per-epoch top-1 a mapping. Raises ``ValueError`` naming what is wrong."""
    missing = [part for part in CHECKPOINT_PARTS if not isinstance(ckpt.get(part), dict)]
    if missing:
        raise ValueError(f"no {', '.join(missing)} in it")
    epoch = ckpt.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < epochs:
        raise ValueError(f"its epoch {epoch!r} is not one of this run's epochs 0..{epochs - 1}")
    if not isinstance(ckpt["state"].get("top1"), dict):
        raise ValueError("its state has no per-epoch top-1")

class Trainer:
    """Runs one prepared run to completion (or resumes it) and returns its final record."""

    def __init__(self, run: PreparedRun, progress: Progress) -> None:
        self.run = run
        self.progress = progress
        progress.stage(f"setting up the trainer on {run.device} ({run.engine} engine): student, generator, optimisers")
        self.cfg = TrainConfig(**run.spec.train)
        self.method = run.method
        self.device = run.device
        self.teacher = run.teacher.to(self.device).eval()
        self.student = run.student.to(self.device)
        seed_everything(run.spec.seed)
        if run.folder is not None:  # None: a trainer driven without a results folder (golden tests)
            self.method.prepare_run(run.spec, run.folder.results_root)
        if type(self.method).setup is not Method.setup:
            progress.message(f"{self.method.name} setup: {self.method.setup_description()}")
        setup_started = time.perf_counter()
        self.method.setup(self.teacher, self.device)
        self.setup_seconds = time.perf_counter() - setup_started  # counted in wall_time_s (fit())
        if self.setup_seconds > 1.0:  # e.g. ZeroQ's data distillation: say where the time went
            progress.message(f"{self.method.name} setup done in {self.setup_seconds:.0f} s")
        self.generator = self.method.build_generator().to(self.device)
        optimizers = build_optimizers(self.method, self.generator, self.student, self.cfg)
        self.opt_g, self.opt_q = optimizers.opt_g, optimizers.opt_q
        self.sched_g, self.sched_q = optimizers.sched_g, optimizers.sched_q
        self.engine = make_engine(run.engine, self.device)
        self.step = TrainStep(self.method, self.generator, self.teacher, self.student, self.opt_g, self.opt_q,
                              self.cfg.batch_size, self.device, self.engine)
        self.quantizers = activation_quantizers(self.student)
        self.probe = GameProbe(self.method, self.generator, self.teacher, self.student, self.quantizers)
        self.window = WindowMeans()
        self.loggers = Loggers(run.loggers)
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
        path = self.run.folder.checkpoint_path
        try:  # anything wrong in the checkpoint is one line naming it, never a traceback halfway through loading
            check_checkpoint(ckpt, self.cfg.epochs)
            self.generator.load_state_dict(ckpt["generator"])
            self.student.load_state_dict(ckpt["student"])
            self.opt_g.load_state_dict(ckpt["opt_g"])
            self.opt_q.load_state_dict(ckpt["opt_q"])
            self.sched_g.load_state_dict(ckpt["sched_g"])
            self.sched_q.load_state_dict(ckpt["sched_q"])
            set_rng_state(ckpt["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise StoreError(unreadable_checkpoint(path, exc)) from None
        self.engine.prepare(self.student, [self.opt_g, self.opt_q])  # loaded optimizer options, e.g. capturable
        self.state = ckpt["state"]
        self.start_epoch = ckpt["epoch"] + 1
        # a crash between this epoch's checkpoint and its best_student.pt leaves the file one epoch behind
        repair_best_student(self.run.folder.path, self.run.spec.run_id, ckpt, self._best_candidates())
        best = best_student_path(self.run.folder.path)
        if self.state["top1"] and best.exists() and best_student_epoch(self.run.folder.path) is None:
            # not repairable (its epoch is not the checkpoint's): refuse now, not after the run reports success
            raise StoreError(unreadable("best student", best, "not a readable best_student.pt"))
        self.metrics = [row for row in self.run.folder.read_metrics() if row.get("epoch", -1) <= ckpt["epoch"]]
        self.progress.message(f"resuming {self.run.spec.run_name} after epoch {self.start_epoch}/{self.cfg.epochs} (checkpoint)")

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> RunRecord:
        """Train to the end (or resume) and return the record. A tiny-model run on the CPU trains on one thread
        (restored after): on 8×8 tensors intra-op threads only add synchronisation, 25-50× slower under load."""
        threads = torch.get_num_threads()
        if self.run.spec.dataset == "tiny" and self.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            return self._fit_with_loggers()
        finally:
            torch.set_num_threads(threads)

    def _fit_with_loggers(self) -> RunRecord:
        started = time.perf_counter()
        self._resume()
        record = None
        try:
            opening = time.perf_counter()  # a logger's start-up (W&B: seconds) is not the run's cost
            self.loggers.open(self.run.spec, self.run.folder.path, self.start_epoch * self.cfg.iters_per_epoch)
            started += time.perf_counter() - opening
            record = self._fit(started)
        finally:
            self.loggers.close(record)
        return record

    def _fit(self, started: float) -> RunRecord:
        self.state["sessions"] += 1
        # The method's setup (ZeroQ's distillation) is part of the run's cost; it runs again in each session.
        self.state["elapsed_s"] += self.setup_seconds
        if self.state["fp_top1"] is None:
            self.progress.stage("evaluating the FP teacher")
            self.state["fp_top1"] = self.run.evaluate(self.teacher)
            self.progress.message(f"FP teacher top-1: {self.state['fp_top1']:.2f}")
        if self.cfg.warmup_epochs == 0 and self.start_epoch == 0 and self.state["calibrated_top1"] is None:
            self.progress.stage("calibrating: activation ranges from one generated batch, then evaluating Q")
            self.state["calibrated_top1"] = self._calibrate_on_generated_batch()
            self.progress.message(f"calibrated top-1 (pretrained weights, ranges from one generated batch): "
                                  f"{self.state['calibrated_top1']:.2f}")
        self.progress.start(self.cfg.epochs, self.cfg.iters_per_epoch, self.start_epoch)
        for epoch in range(self.start_epoch, self.cfg.epochs):
            epoch_started = time.perf_counter()
            self.progress.start_epoch(epoch)
            try:
                self._train_epoch(epoch)
            except RunDiverged as exc:
                self.state["diverged"] = str(exc)
                self.progress.message(f"diverged: {exc}; training stops, the record keeps the best epoch before it")
                break
            top1 = self._evaluate_epoch(epoch)
            self.metrics.append({
                "type": "epoch", "epoch": epoch, "top1": top1, "lr_q": self.opt_q.param_groups[0]["lr"],
                "lr_g": self.opt_g.param_groups[0]["lr"], "seconds": time.perf_counter() - epoch_started,
            })
            self.loggers.log({f"epoch/{k}": v for k, v in self.metrics[-1].items() if k in EPOCH_LOGGED and v is not None},
                             (epoch + 1) * self.cfg.iters_per_epoch)
            with warnings.catch_warnings():  # during warm-up Q has no optimizer step yet; that is intended
                warnings.filterwarnings("ignore", message="Detected call of")
                self.sched_g.step()
                self.sched_q.step()
            self.state["elapsed_s"] += time.perf_counter() - started
            started = time.perf_counter()
            self._count_compile_time()
            self.run.folder.write_metrics(self.metrics)
            self.run.folder.save_checkpoint(self._checkpoint(epoch))
            best, best_epoch = self._best()
            if best_epoch == epoch:  # after the checkpoint: a resume repairs a crash in between (core.snapshots)
                save_best_student(self.run.folder.path, self.run.spec.run_id, epoch, best, self.student.state_dict())
            self.progress.end_epoch(epoch, top1, best)
        self.progress.stop()
        self.state["elapsed_s"] += time.perf_counter() - started
        return self._record()

    def _train_epoch(self, epoch: int) -> None:
        start_training_epoch(self.method, self.generator, self.student, epoch, self.cfg)
        for it in range(self.cfg.iters_per_epoch):
            log = (it + 1) % self.run.log_every == 0 or it + 1 == self.cfg.iters_per_epoch
            self.train_iteration(epoch, log)
            if log:
                values = self.window.flush()
                bad = non_finite(values)
                if bad:
                    raise RunDiverged(f"non-finite values in epoch {epoch + 1} of {self.cfg.epochs}, iteration {it + 1} "
                                      f"of {self.cfg.iters_per_epoch}: {', '.join(bad)}")
                self.metrics.append({"type": "iter", "epoch": epoch, "iter": it, **values})
                self.loggers.log(values, epoch * self.cfg.iters_per_epoch + it + 1)
                self.progress.iteration(epoch, it, values)
            else:
                self.progress.iteration(epoch, it, None)
        set_range_update(self.student, False)

    def train_iteration(self, epoch: int, log: bool) -> None:
        """One iteration of epoch ``epoch``: the method's steps (with the probe between them when ``log``)."""
        probe = self.probe if log else None
        for prefix, terms in self.step.iteration(epoch >= self.cfg.warmup_epochs, probe):
            self.window.add(prefix, terms)
        self.state["images_generated"] += self.step.images_last_iteration
        if probe is not None:
            self.window.point(probe.values())

    def _calibrate_on_generated_batch(self) -> float:
        """calibrated_top1 for methods without warm-up: one no-grad pass of one generated batch through Q in
        eval mode (pretrained BN statistics untouched; ranges update only if the range window is open),
        then the test evaluation. Replaces ZAQ's initial test() that set the ranges on the real test set."""
        sample = self.method.sample(self.cfg.batch_size, self.device)
        with probing([], self.generator):  # no grad, and G's BN buffers stay as they are
            x = self.method.generate(self.generator, sample)
        self.state["images_generated"] += x.shape[0]
        self.student.eval()
        set_range_update(self.student, self.cfg.range_update_epochs > 0)
        with torch.no_grad():
            self.student(x)
        set_range_update(self.student, False)
        return self.run.evaluate(self.student)

    # -- evaluation and the record -------------------------------------------------------------------
    def _evaluate_epoch(self, epoch: int) -> float | None:
        start_evaluation(self.student)
        calibration_epoch = epoch == self.cfg.warmup_epochs - 1
        if epoch < self.cfg.eval_start_epoch and not calibration_epoch and epoch != self.cfg.epochs - 1:
            return None
        top1 = self.run.evaluate(self.student)
        self.state["top1"][epoch] = top1
        if calibration_epoch:  # Q still has its pretrained weights; only the ranges were calibrated
            self.state["calibrated_top1"] = top1
        return top1

    def _best_candidates(self) -> dict[int, float]:
        """The evaluated epochs the best is chosen from: those from ``eval_start_epoch`` on, and the last. The
        calibration epoch is always evaluated (for ``calibrated_top1``) but, before ``eval_start_epoch``, is not a
        candidate: the official loops do not evaluate it (SynQ: epochs ≥ 5, SQ:src/main_direct.py:L558-564)."""
        last = self.cfg.epochs - 1
        return {e: t for e, t in self.state["top1"].items() if e >= self.cfg.eval_start_epoch or e == last}

    def _best(self) -> tuple[float | None, int | None]:
        candidates = self._best_candidates()
        if not candidates:
            return None, None
        epoch = max(candidates, key=lambda e: (candidates[e], -e))
        return candidates[epoch], epoch

    def _count_compile_time(self) -> None:
        """Move the engine's compile/capture seconds into the checkpointed state (summed over sessions)."""
        self.state["compile_s"] = self.state.get("compile_s", 0.0) + self.engine.compile_seconds
        self.engine.compile_seconds = 0.0

    def _engine_record(self) -> dict[str, Any]:
        """The engine of the last session and the compile/capture seconds summed over all sessions."""
        self._count_compile_time()
        return {**self.engine.describe(), "compile_s": round(self.state["compile_s"], 3)}

    def _record(self) -> RunRecord:
        best, best_epoch = self._best()
        last = self.cfg.epochs - 1
        engine = self._engine_record()
        return RunRecord(
            run_id=self.run.spec.run_id, run_name=self.run.spec.run_name, spec=self.run.spec.to_dict(),
            fp_top1=self.state["fp_top1"], calibrated_top1=self.state["calibrated_top1"],
            best_top1=best, best_epoch=best_epoch, final_top1=self.state["top1"].get(last),
            top1_per_epoch={str(k): v for k, v in sorted(self.state["top1"].items())},
            epochs=self.cfg.epochs, iterations=self.cfg.epochs * self.cfg.iters_per_epoch,
            images_generated=self.state["images_generated"], wall_time_s=round(self.state["elapsed_s"], 2),
            sessions=self.state["sessions"], device=device_name(self.device),
            engine=engine.pop("engine"), compile_s=engine.pop("compile_s"), extra=engine,
            diverged=self.state.get("diverged"), git=git_state(), versions=package_versions(),
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )


EPOCH_LOGGED = ("top1", "lr_q", "lr_g", "seconds")  # per-epoch values sent to the loggers as epoch/<name>


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads)"
