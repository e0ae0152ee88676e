"""One training iteration as a public unit: the method's generator and student steps, in its order.

A :class:`TrainStep` owns the networks, their optimizers and the engine that runs them. ``iteration()``
draws the iteration's samples up front (all random numbers of an iteration come from the samplers, so
the stream is the same whatever runs the steps), then runs the method's ``steps`` (see
:class:`~dfqbench.blocks.interface.Method`):

- "G" (GDFQ trainer.py L200-250): x = G(z, y) → teacher forward (BNS hooks, features) → the student forward
  when the G loss needs it → L_G → backward into G's parameters only → G's optimizer step. Its batch (x,
  the teacher's outputs, all detached) is what a following "Q" step trains on.
- "Q" (L100-130): the student forward on that batch → L_Q → SGD step (forward and loss only, no step, in
  the warm-up epochs).
- "Q+" (ZAQ ``main.py`` train()): a fresh batch G(z) and the teacher's outputs without gradients, then "Q".

A method may run other steps in its warm-up epochs than after them (:meth:`Method.phase_steps`: the direct family
calibrates on a GDFQ generator, "G", "Q", then fine-tunes on its image bank, "Q+"). A ``student_runs_networks``
method's student loss runs the networks itself (``ctx.networks``: HAST/SynQ's perturbed forwards, SynQ's Grad-CAM
through ``torch.autograd.grad``): the step runs no student forward for it, and no teacher forward for a fresh batch;
in a step that trains the student, x is handed over as a leaf that requires grad (the input gradient's target).

Each step is capture-safe: tensor operations on the device only, no ``.item()``, no Python branch on a
tensor's value, static shapes; phase changes (warm-up, the range window, learning-rate milestones, the
student's train/eval mode) happen between steps. The forward-and-loss functions trace as one graph each
(``torch.compile(fullgraph=True)``, tests/test_engine.py), so an engine (:mod:`dfqbench.core.engine`) can
replay each whole step (forward, backward, optimizer) as one CUDA graph. Diagnostics are not part of the step: a probe
(:class:`~dfqbench.core.probe.GameProbe`) is called between the steps on logging iterations only.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from dfqbench.core.engine import Engine, EagerEngine
from dfqbench.blocks.features import FeatureTap
from dfqbench.blocks.hooks import BNStatisticsLoss
from dfqbench.blocks.interface import (G_STEP, Q_FRESH_STEP, Q_STEP, LossTerms, Method, Sample, StepContext,
                                       StepNetworks, check_steps)
from dfqbench.quant import activation_quantizers

Features = list[torch.Tensor] | None  # a uses_features method's per-layer outputs, else None


@dataclass
class Batch:
    """A generated batch a student step trains on: the sample, x, and the teacher's outputs on x (detached; None in
    a fresh batch of a ``student_runs_networks`` method, whose loss runs the teacher itself)."""

    sample: Sample
    x: torch.Tensor
    teacher_logits: torch.Tensor | None
    teacher_features: Features = None


pytree.register_pytree_node(
    Batch, lambda b: ([b.sample, b.x, b.teacher_logits, b.teacher_features], None),
    lambda children, _: Batch(*children))


class StepObserver:
    """Called by :meth:`TrainStep.iteration` between steps (the trainer's diagnostics probe implements it)."""

    def begin(self, sample: Sample) -> None:
        """Before the first step, with the iteration's first sample."""

    def after_generator(self, batch: Batch) -> None:
        """After a G step, with the batch it generated (images, the teacher's logits and features, detached)."""

    def after_students(self) -> None:
        """After a run of consecutive Q steps."""


class TrainStep:
    """The G and Q steps of one method on one set of networks, run by an engine (eager by default)."""

    def __init__(self, method: Method, generator: nn.Module, teacher: nn.Module, student: nn.Module,
                 opt_g: torch.optim.Optimizer, opt_q: torch.optim.Optimizer, batch_size: int, device: torch.device,
                 engine: Engine | None = None) -> None:
        self.method = method
        self.generator, self.teacher, self.student = generator, teacher, student
        self.opt_g, self.opt_q = opt_g, opt_q
        self.batch_size = batch_size
        self.device = device
        self.engine = engine or EagerEngine()
        self.bns = BNStatisticsLoss(teacher)
        self.teacher_tap: FeatureTap | None = None
        self.student_tap: FeatureTap | None = None
        if method.uses_features:
            layers = method.feature_layers(teacher)
            self.teacher_tap = FeatureTap(teacher, layers)
            self.student_tap = FeatureTap(student, layers)
        self.quantizers = activation_quantizers(student)
        self.phases = {warmup: method.phase_steps(warmup) for warmup in (True, False)}
        for warmup, steps in self.phases.items():
            check_steps(f"{type(method).__name__}.phase_steps({warmup})", steps)
        self.images_last_iteration = 0
        self._g_params = [p for p in generator.parameters() if p.requires_grad]
        self._q_params = [p for p in student.parameters() if p.requires_grad]
        self.engine.prepare(student, [opt_g, opt_q])

    # -- the iteration -------------------------------------------------------------------------------
    @property
    def images_per_iteration(self) -> int:
        """Images generated by one fine-tuning iteration at the run's batch size: a batch per "G" and "Q+" step."""
        return self.batch_size * sum(kind != Q_STEP for kind in self.phases[False])

    def draw_samples(self, warmup: bool = False) -> list[Sample]:
        """One sample per step that generates a batch ("G", "Q+"), in the order of the phase's steps."""
        return [self.method.phase_sample(warmup, self.batch_size, self.device)
                for kind in self.phases[warmup] if kind != Q_STEP]

    def iteration(self, train_q: bool, observer: StepObserver | None = None) -> list[tuple[str, LossTerms]]:
        """Run the method's steps once; returns each step's logged loss terms as ("g/" | "q/", terms).

        ``train_q`` False (warm-up epochs): the Q steps compute their loss without a backward or an SGD step.
        The terms are detached device tensors (read them once per logging window to avoid host syncs).
        """
        warmup = not train_q
        # after warm-up draw_samples() is called without an argument: the golden tests replace it with one that
        # takes none (tests/golden_b_helpers.py)
        drawn = self.draw_samples(warmup=True) if warmup else self.draw_samples()
        self.images_last_iteration = sum(sample.labels.shape[0] for sample in drawn)  # static shapes: no sync
        samples = iter(drawn)
        steps = self.phases[warmup]
        if observer is not None:
            observer.begin(drawn[0])
        logged: list[tuple[str, LossTerms]] = []
        batch: Batch | None = None
        for index, kind in enumerate(steps):
            if kind == G_STEP:
                terms, batch = self.generator_step(next(samples))
                logged.append(("g/", terms))
                if observer is not None:
                    observer.after_generator(batch)
                continue
            if kind == Q_STEP:
                assert batch is not None  # check_steps: a "Q" follows a "G"
                terms = self.student_step(batch, train_q)
            else:
                terms = self.fresh_student_step(next(samples), train_q)
            logged.append(("q/", terms))
            if observer is not None and (index + 1 == len(steps) or steps[index + 1] == G_STEP):
                observer.after_students()
        return logged

    # -- the steps (each one engine call: on CUDA with the compiled engine, one graph replay) ----------
    def generator_step(self, sample: Sample) -> tuple[LossTerms, Batch]:
        """The G step on ``sample``; returns its loss terms and its batch (detached) for a following Q step."""
        return self.engine.run(self._phase(G_STEP), self._generator_step_body, sample)

    def student_step(self, batch: Batch, train: bool) -> LossTerms:
        """A Q step on ``batch`` (an SGD step only when ``train``)."""
        return self.engine.run(self._phase(Q_STEP, train), functools.partial(self._student_step_body, train=train),
                               batch)

    def fresh_student_step(self, sample: Sample, train: bool) -> LossTerms:
        """A Q step on a fresh batch generated from ``sample`` without gradients."""
        return self.engine.run(self._phase(Q_FRESH_STEP, train),
                               functools.partial(self._fresh_student_step_body, train=train), sample)

    def _phase(self, kind: str, train: bool = True) -> tuple[Any, ...]:
        """What a captured step depends on besides its tensor inputs: set between steps, never inside one."""
        ranges = tuple(q.update_ranges for q in self.quantizers)
        lrs = tuple(group["lr"] for opt in (self.opt_g, self.opt_q) for group in opt.param_groups)
        return (kind, train, ranges, lrs, self.generator.training, self.student.training)

    def _generator_step_body(self, sample: Sample) -> tuple[LossTerms, Batch]:
        loss, terms, batch = self.generator_forward(sample)
        self.opt_g.zero_grad(set_to_none=True)  # after the forward: the freed gradients' memory is reused at once
        loss.backward(inputs=self._g_params)  # G's gradients only; the student's are not G's to keep
        self.opt_g.step()
        return {"loss": loss.detach(), **_detached_terms(terms)}, batch

    def _student_step_body(self, batch: Batch, train: bool) -> LossTerms:
        if not train:
            with torch.no_grad():
                loss, terms = self.student_forward(batch, train=False)
            return {"loss": loss, **terms}
        if self.method.student_runs_networks:  # the target of an input gradient (HAST/SynQ's perturbation)
            batch = dataclasses.replace(batch, x=batch.x.detach().requires_grad_(True))
        loss, terms = self.student_forward(batch)
        self.opt_q.zero_grad(set_to_none=True)
        loss.backward(inputs=self._q_params)
        self.opt_q.step()
        return {"loss": loss.detach(), **_detached_terms(terms)}

    def _fresh_student_step_body(self, sample: Sample, train: bool) -> LossTerms:
        with torch.no_grad():
            batch = self.fresh_batch(sample)
        return self._student_step_body(batch, train)

    # -- forward and loss: traceable as one graph each (no host synchronisation) -----------------------
    def generator_forward(self, sample: Sample) -> tuple[torch.Tensor, LossTerms, Batch]:
        """L_G on G(sample) with gradients to G (and through Q when the loss reads it), and the detached batch."""
        method = self.method
        x = method.generate(self.generator, sample)
        self.bns.start()
        t, t_feats = self._teacher_pass(x)
        bns = self.bns.stop()
        s, s_feats = self._student_pass(x) if method.student_in_generator_loss else (None, None)
        loss, terms = method.generator_loss(StepContext(x, sample, t, s, bns, method.num_classes, t_feats, s_feats))
        batch = Batch(sample, x.detach(), t.detach(), None if t_feats is None else [f.detach() for f in t_feats])
        return loss, terms, batch

    def student_forward(self, batch: Batch, train: bool = True) -> tuple[torch.Tensor, LossTerms]:
        """L_Q of the student on ``batch`` (``train`` False: a forward whose loss is only logged)."""
        method = self.method
        if method.student_runs_networks:
            networks = StepNetworks(self._teacher_pass, self._student_pass, train)
            ctx = StepContext(batch.x, batch.sample, batch.teacher_logits, None, None, method.num_classes,
                              batch.teacher_features, None, networks)
            return method.student_loss(ctx)
        s, s_feats = self._student_pass(batch.x)
        ctx = StepContext(batch.x, batch.sample, batch.teacher_logits, s, None, self.method.num_classes,
                          batch.teacher_features, s_feats)
        return self.method.student_loss(ctx)

    def fresh_batch(self, sample: Sample) -> Batch:
        """G(sample) and the teacher's outputs on it (call without gradients); x alone for a
        ``student_runs_networks`` method, whose loss runs the teacher as it needs."""
        x = self.method.generate(self.generator, sample)
        if self.method.student_runs_networks:
            return Batch(sample, x, None, None)
        t, t_feats = self._teacher_pass(x)
        return Batch(sample, x, t, t_feats)

    def _teacher_pass(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        return self.teacher_tap(x) if self.teacher_tap is not None else (self.teacher(x), None)

    def _student_pass(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        return self.student_tap(x) if self.student_tap is not None else (self.student(x), None)


def _detached_terms(terms: LossTerms) -> LossTerms:
    return {name: value.detach() for name, value in terms.items()}

