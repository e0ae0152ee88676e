"""The method interface: what a DFQ method contributes to the shared trainer, and the method registry.

A method is a :class:`Method` subclass; the bundled ones (``dfqbench.methods``) add themselves to
:data:`METHODS` with ``@register_method``, other installed packages' through their entry points. Finding and
loading them all is :mod:`dfqbench.plugins`'s (:func:`dfqbench.plugins.load_methods`), above the methods;
this module, which every method imports, imports no method.

The trainer owns the loop; a method builds its generator, samples latents and labels, and computes its
generator and student objectives (already signed for minimisation). ``steps`` says in which order one
iteration runs its generator and student steps; a few flags say how the networks take part in them.
Losses must be capture-safe (:mod:`dfqbench.core.step`): tensor operations only, no ``.item()``, no Python
branch on a tensor's value, no CPU tensors created inside.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import nn
from torch.utils import _pytree as pytree

from dfqbench.blocks.features import stage_names
from dfqbench.registry import Registry
from dfqbench.specs.validate import check_method_name

if TYPE_CHECKING:
    from dfqbench.specs import RunSpec
    from dfqbench.store.bank import BankKey

LossTerms = dict[str, torch.Tensor]

G_STEP, Q_STEP, Q_FRESH_STEP = "G", "Q", "Q+"
STEP_KINDS = (G_STEP, Q_STEP, Q_FRESH_STEP)


def check_steps(owner: str, steps: tuple[str, ...]) -> None:
    """A method's ``steps`` must be non-empty, of known kinds, with every "Q" preceded by a "G" (its batch)."""
    if not steps or any(kind not in STEP_KINDS for kind in steps):
        raise TypeError(f"{owner}.steps={steps!r}: expected a non-empty tuple of {', '.join(STEP_KINDS)}")
    if Q_STEP in steps and (G_STEP not in steps or steps.index(Q_STEP) < steps.index(G_STEP)):
        raise TypeError(f"{owner}.steps={steps!r}: a 'Q' step reuses the batch of an earlier 'G' step")


@dataclass
class Sample:
    """One batch of generator inputs: latent ``z``, hard ``labels`` (B,), and optional soft ``targets`` (B, C)."""

    z: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


pytree.register_pytree_node(  # so engines can copy a sample's tensors into a captured step's static inputs
    Sample, lambda s: ([s.z, s.labels, s.targets, s.extra], None), lambda children, _: Sample(*children))


Forward = Callable[[torch.Tensor], "tuple[torch.Tensor, list[torch.Tensor] | None]"]


@dataclass
class StepNetworks:
    """The networks of a student step, for a method whose student loss runs them itself
    (``student_runs_networks``): ``teacher(x)`` and ``student(x)`` return (logits, the outputs of the method's
    ``feature_layers`` or None), recorded inside the call only (no hook keeps anything). The teacher runs with
    gradients to x whenever x requires them (HAST/SynQ's input gradient); its parameters never get any.
    ``steps_student`` is False in a Q step that only forwards (warm-up: under ``no_grad``, nothing stepped)."""

    teacher: Forward
    student: Forward
    steps_student: bool


@dataclass
class StepContext:
    """What a loss sees: the generated batch and the networks' outputs on it.

    Built inside the (possibly compiled, graph-captured) step, so it carries tensors and static settings
    only: no epoch or other per-call Python value a loss could branch on (phase changes happen between steps).
    """

    x: torch.Tensor
    sample: Sample
    teacher_logits: torch.Tensor
    student_logits: torch.Tensor | None
    bns_loss: torch.Tensor | None
    num_classes: int
    # Intermediate outputs (e.g. ZAQ's stage features), collected only for methods with ``uses_features``;
    # in a Q step the teacher's are detached, in the G step both carry gradients to x.
    teacher_features: list[torch.Tensor] | None = None
    student_features: list[torch.Tensor] | None = None
    # Only for a ``student_runs_networks`` method's student loss (then ``student_logits`` is None, and so is
    # ``teacher_logits`` for a fresh batch: the loss runs the networks it needs; in a step that trains the
    # student ``x`` is a leaf that requires grad, for input-gradient terms via ``torch.autograd.grad``).
    networks: StepNetworks | None = None


class Method:
    """Base class of a DFQ method plugin. Subclasses register with :func:`register_method`."""

    name: ClassVar[str]
    paper: ClassVar[str]  # citation shown by `dfqbench list methods`
    version: ClassVar[str] = "1"  # bump when the numbers change on purpose
    data_free: ClassVar[bool] = True  # False: trains on real data (the real-data reference): never in data-free columns
    config_class: ClassVar[type]  # a dataclass of the method's hyperparameters

    # What one training iteration does, in order (:mod:`dfqbench.core.step`): "G" is a generator step on a
    # fresh batch, "Q" a student step on the batch of the G step before it (GDFQ's order: ("G", "Q")), "Q+"
    # a student step on a fresh batch generated without gradients (ZAQ: ("Q+",) * 5 + ("G",); ZeroQ's
    # calibration on distilled data: ("Q+",)). A method without "G" trains no generator.
    steps: ClassVar[tuple[str, ...]] = ("G", "Q")
    # Derived from ``steps`` when the class is defined (read-only conveniences).
    trains_generator: ClassVar[bool] = True
    q_steps_per_iter: ClassVar[int] = 1

    # How the networks take part in the steps.
    student_in_generator_loss: ClassVar[bool] = False  # the G loss needs Q's forward (gradient through Q)
    student_bn_train: ClassVar[bool] = False  # Q's BN in train mode (ZAQ); else frozen statistics (GDFQ)
    uses_features: ClassVar[bool] = False  # collect teacher/student outputs of :meth:`feature_layers` for the losses
    # The student loss runs the networks itself (``ctx.networks``): extra forwards such as HAST/SynQ's perturbed
    # batch or SynQ's Grad-CAM (``torch.autograd.grad``, no hooks); the step then runs no student forward.
    student_runs_networks: ClassVar[bool] = False
    default_tracker: ClassVar[str] = "ema_gdfq"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_steps(cls.__name__, cls.steps)
        cls.trains_generator = G_STEP in cls.steps
        cls.q_steps_per_iter = sum(kind != G_STEP for kind in cls.steps)

    def __init__(self, config: Any, num_classes: int, input_size: int, dataset: str) -> None:
        self.config = config
        self.num_classes = num_classes
        self.input_size = input_size
        self.dataset = dataset

    # -- configuration -------------------------------------------------------------------------------
    @classmethod
    def paper_protocol(cls, dataset: str, model: str, wbits: int, abits: int) -> dict[str, dict[str, Any]]:
        """Overrides of the default train/method/quant settings that give the paper's schedule for a cell."""
        return {"train": {}, "method": {}, "quant": {}}

    @classmethod
    def quick_protocol(cls, method: dict[str, Any]) -> dict[str, Any]:
        """The ``quick`` protocol's change to the method's own settings (e.g. fewer distillation steps)."""
        return method

    @classmethod
    def quick_train(cls, train: dict[str, Any]) -> dict[str, Any]:
        """The method's own change to the ``quick`` schedule, applied after the generic one (e.g. a smaller
        batch for a method whose iteration is much costlier than GDFQ's)."""
        return train

    @classmethod
    def unsupported_reason(cls, dataset: str, model: str, wbits: int, abits: int) -> str | None:
        """Why this method cannot run this cell (shown for skipped grid cells), or None when it can."""
        return None

    @classmethod
    def needs_bank(cls, spec: "RunSpec") -> "BankKey | None":
        """The image bank a run of ``spec`` synthesises or reads (:mod:`dfqbench.store.bank`), or None (the
        default: no bank). Planning counts one bank per distinct key, however many cells share it."""
        return None

    @classmethod
    def bank_prelude_steps(cls, spec: "RunSpec") -> int:
        """Synthesis steps (at the bank's batch size) the bank's synthesis makes before its batches, each time it
        starts or resumes (SynQ's calibration centers); counted in the bank's cost estimate. Default 0."""
        return 0

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return dataclasses.asdict(cls.config_class())

    # -- generation ----------------------------------------------------------------------------------
    def prepare_run(self, spec: "RunSpec", results: Path) -> None:
        """Called by the trainer before :meth:`setup` with the run's spec and its results folder (``<results>``:
        a method with an image bank finds it in ``<results>/banks``). Default: nothing."""

    def setup(self, teacher: nn.Module, device: torch.device) -> None:
        """Called once per run, after seeding and before :meth:`build_generator`, with the frozen teacher
        (e.g. Qimera's embedding initialised from the teacher's last layer; ZeroQ's data distillation)."""

    def setup_description(self) -> str:
        """One line for the progress display, shown before :meth:`setup` runs (when a method overrides it)."""
        return "preparing"

    def build_generator(self) -> nn.Module:
        raise NotImplementedError

    def feature_layers(self, model: nn.Module) -> list[str]:
        """Names (as in ``named_modules``) of the modules whose outputs a ``uses_features`` method receives,
        in order; the same names are tapped on the teacher and on the quantized student. Default: the
        residual stages ``features.stage1..N`` of pytorchcv models (:func:`dfqbench.blocks.features.stage_names`)."""
        return stage_names(model)

    def generator_optimizer(self, generator: nn.Module, lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
        return torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)

    def sample(self, batch_size: int, device: torch.device) -> Sample:
        raise NotImplementedError

    def phase_steps(self, warmup: bool) -> tuple[str, ...]:
        """The steps of one iteration in a warm-up epoch (``warmup``: the student is not stepped) or a fine-tuning
        epoch; ``steps`` in both by default. The direct family (IntraQ, HAST, SynQ) differs: in its warm-up epochs a
        GDFQ generator trained there feeds the range calibration ("G", "Q"), then its image bank ("Q+",)."""
        return self.steps

    def phase_sample(self, warmup: bool, batch_size: int, device: torch.device) -> Sample:
        """The sample of a generating step in a warm-up or a fine-tuning epoch (its size may differ from the run's
        ``batch_size``: IntraQ's calibration generator runs at 16); :meth:`sample` by default."""
        return self.sample(batch_size, device)

    def generate(self, generator: nn.Module, sample: Sample) -> torch.Tensor:
        return generator(sample.z, sample.labels)

    # -- objectives ----------------------------------------------------------------------------------
    def generator_loss(self, ctx: StepContext) -> tuple[torch.Tensor, LossTerms]:
        raise NotImplementedError

    def student_loss(self, ctx: StepContext) -> tuple[torch.Tensor, LossTerms]:
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method plugin to the registry under ``cls.name`` (which must follow
    :data:`dfqbench.specs.validate.METHOD_NAME`: it becomes part of run folder names)."""
    check_method_name(cls.name)
    METHODS.add(cls.name, cls)
    return cls


# Loading moved to dfqbench.plugins; plugin packages written against earlier releases import these names here.
_MOVED_TO_PLUGINS = ("load_methods", "register_entry_points", "METHOD_SOURCES", "PLUGIN_PROBLEMS")


def __getattr__(name: str) -> Any:
    """``load_methods``, ``register_entry_points``, ``METHOD_SOURCES`` and ``PLUGIN_PROBLEMS`` of
    :mod:`dfqbench.plugins` under their old module, for one release, with a DeprecationWarning."""
    if name in _MOVED_TO_PLUGINS:
        from dfqbench import plugins

        warnings.warn(f"dfqbench.core.plugin.{name} moved to dfqbench.plugins.{name}; the old name goes in the "
                      "next release", DeprecationWarning, stacklevel=2)
        return getattr(plugins, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
