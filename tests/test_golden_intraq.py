"""Golden tests: dfqbench's IntraQ terms (dfqbench/blocks/direct_*.py) against the official IntraQ code.

Fixtures: tests/golden/intraq/synthesis_{hocon,perturbed}.pt and iteration.pt (maker: tests/golden/make/
make_intraq.py; README there). Everything is float64 (official and ours), where CPU kernel differences stay
~1e-16 relative. A failure means our numbers moved away from the official code's: find out why before touching a
tolerance.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden" / "make"))
from golden_b_helpers import check_close, default_dtype, load_fixture, resnet20  # noqa: E402
from golden_direct_common import fixed_digest  # noqa: E402
from golden_b_common import digest  # noqa: E402
from golden_common import portable_randn  # noqa: E402
from dfqbench.blocks import direct_finetune as dft  # noqa: E402
from dfqbench.blocks import direct_synthesis as ds  # noqa: E402
from dfqbench.blocks.features import FeatureTap  # noqa: E402
from dfqbench.blocks.hooks import BNStatisticsLoss  # noqa: E402

NET_SEED, RANGE_SEED = 40, 41  # as in tests/golden/make/golden_direct_common.py
LOSS_RTOL, LOSS_ATOL = 1e-10, 1e-14
GRAD_RTOL, GRAD_ATOL = 1e-8, 1e-16  # pixel / parameter gradients (digests: sum to atol + rtol × abs-sum)
X_RTOL, X_ATOL = 1e-12, 1e-14  # pixels, exact up to the resize's rounding


def check_digest(name: str, ours: torch.Tensor, theirs: torch.Tensor, rtol: float, atol: float) -> None:
    """A golden_b_common.digest (sum, abs-sum, sampled values): the sum to atol + rtol × abs-sum."""
    mine = digest(ours)
    check_close(f"{name} (sum)", mine[0], theirs[0], 0.0, atol + rtol * float(theirs[1]))
    check_close(f"{name} (abs-sum, samples)", mine[1:], theirs[1:], rtol, atol)


def check_packed(fx: dict, prefix: str, tensors: dict[str, torch.Tensor], rtol: float, atol: float) -> int:
    names = bytes(fx[prefix + "names"].tolist()).decode().split("\n")
    rows = fx[prefix + "digests"]
    for name, theirs in zip(names, rows):
        ours = fixed_digest(tensors[name])
        check_close(f"{prefix}{name} (sum)", ours[0], theirs[0], 0.0, atol + rtol * float(theirs[1]))
        check_close(f"{prefix}{name} (abs-sum, samples)", ours[1:], theirs[1:], rtol, atol)
    return len(names)


def _initial_pixels(fx: dict, b: int) -> torch.Tensor:
    rng = torch.Generator()
    rng.set_state(fx[f"b{b}/rng_state"])
    x0 = torch.randn(64, 3, 32, 32, generator=rng, dtype=torch.float64)
    check_close(f"b{b}/x0", digest(x0), fx[f"b{b}/x0"], 0.0, 0.0)
    return x0


@pytest.mark.parametrize("setting", ["hocon", "perturbed"])
def test_intraq_synthesis_steps_match_official(setting):
    """Two batches of one step each (the second against the centroids of the first): local object
    reinforcement, soft inception loss, marginal distance, BNS, the pixel gradient and the centroid store."""
    fx = load_fixture("intraq", f"synthesis_{setting}")
    target_min, m_l, m_u, _ = fx["settings"].tolist()  # the fourth: augMargin (boxes come from the fixture)
    cfg = ds.IntraQSynthesis(target_min, m_l, m_u)
    with default_dtype(torch.float64):
        teacher = resnet20(NET_SEED, fx)
        bns = BNStatisticsLoss(teacher)
        tap = FeatureTap(teacher, ["features.final_pool"])
        store = ds.ClassCentroids(10, 64, dtype=torch.float64)
        for b in range(2):
            p = f"b{b}/"
            x0 = _initial_pixels(fx, b).requires_grad_(True)
            labels = fx[p + "labels"]
            if bool(fx[p + "augmented"]):
                x_in = ds.local_object_reinforcement(x0, fx[p + "boxes"], fx[p + "flips"], torch.tensor(True))
            else:
                x_in = ds.local_object_reinforcement(x0, torch.tensor([[0, 0, 32, 32]]).repeat(64, 1),
                                                     torch.zeros(64, dtype=torch.bool), torch.tensor(False))
            check_digest(p + "teacher_input", x_in.detach(), fx[p + "teacher_input"], X_RTOL, X_ATOL)
            centroids, mask = store.lookup(labels)
            check_close(p + "mask", mask, fx[p + "mask"], 0.0, 0.0)
            check_close(p + "centroids", centroids[mask.bool()], fx[p + "centroids"][labels][mask.bool()],
                        1e-12, 1e-15)
            bns.start()
            logits, (pooled,) = tap(x_in)
            bns_value = bns.stop()
            total, terms = ds.intraq_synthesis_objective(logits, pooled, labels, fx[p + "targets"], centroids, mask,
                                                         bns_value, cfg)
            check_close(p + "bns", terms["bns"], fx[p + "mean_loss"] + fx[p + "var_loss"], LOSS_RTOL, LOSS_ATOL)
            check_close(p + "soft_inception", terms["soft_inception"], fx[p + "loss_target"], LOSS_RTOL, LOSS_ATOL)
            check_close(p + "margin_lower", terms["margin_lower"], fx[p + "loss_cosineDistance"], LOSS_RTOL,
                        LOSS_ATOL)
            check_close(p + "margin_upper", terms["margin_upper"], fx[p + "loss_cosineDistance_upper"], LOSS_RTOL,
                        LOSS_ATOL)
            (grad,) = torch.autograd.grad(total, x0)
            check_digest(p + "grad", grad, fx[p + "grad"], GRAD_RTOL, GRAD_ATOL)
            # the official Adam step (lr 0.5), then the batch's features join the centroid store
            x = x0.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([x], lr=0.5)
            x.grad = grad
            opt.step()
            check_digest(p + "x_after", x.detach(), fx[p + "x_after"], 1e-12, 1e-13)
            with torch.no_grad():
                _, (final,) = tap(x.detach())
            store.update(final.flatten(1), labels)
        tap.remove()
        bns.remove()
    assert float(fx["b1/mask"].sum()) > 0  # the second batch met centroids
    assert any(bool(fx[f"b{b}/augmented"]) for b in range(2))  # and one step was augmented


def test_intraq_whole_finetune_loss_matches_official():
    """One official fine-tuning iteration (epoch 4: bank batch, KD + CE, SGD): our intraq_student_loss on dfqbench's
    quantized student (the official ranges loaded and frozen) gives the same loss, logits and parameter gradients."""
    fx = load_fixture("intraq", "iteration")
    with default_dtype(torch.float64):
        teacher, student = teacher_and_student(fx)
        x = fixture_batch(fx, 16)
        y = fx["y"]
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        check_close("student_logits", s_logits, fx["student_logits"], 1e-10, 1e-13)
        check_close("teacher_logits", t_logits, fx["teacher_logits"], 1e-10, 1e-13)
        loss, _ = dft.intraq_student_loss(t_logits, s_logits, y)
        check_close("loss", loss, fx["loss"], LOSS_RTOL, LOSS_ATOL)
        loss.backward()
        grads = {n: p.grad for n, p in student.named_parameters()}
        assert check_packed(fx, "grad/", grads, GRAD_RTOL, GRAD_ATOL) == len(grads)


def load_ranges(student: torch.nn.Module, fx: dict) -> None:
    """The official activation ranges (``ranges/<module>.x_min|x_max``) into dfqbench's quantizers, frozen."""
    from dfqbench.quant import set_range_update

    state = student.state_dict()
    keys = [k for k in fx if k.startswith("ranges/")]
    assert keys
    for key in keys:
        name = key[len("ranges/"):]
        assert name in state, name
        state[name].copy_(fx[key].reshape(state[name].shape))
    set_range_update(student, False)


def teacher_and_student(fx: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The seeded teacher and dfqbench's W4A4 student of it with the official activation ranges, frozen (the
    fine-tuning iterations of IntraQ, HAST and SynQ start from these)."""
    from dfqbench.quant import QuantConfig, quantize_model

    teacher = resnet20(NET_SEED, fx)
    student = quantize_model(teacher, QuantConfig(4, 4, "ema_gdfq"))
    student.requires_grad_(True)
    load_ranges(student, fx)
    return teacher, student


def fixture_batch(fx: dict, n: int) -> torch.Tensor:
    """The iteration's input batch of ``n`` images, drawn after the range batch as the maker draws it, checked
    against the fixture's digest."""
    gen = torch.Generator().manual_seed(RANGE_SEED)
    portable_randn((32, 3, 32, 32), gen, torch.float64)  # the range batch, drawn first by the maker
    x = portable_randn((n, 3, 32, 32), gen, torch.float64)
    check_close("x", digest(x), fx["x"], 0.0, 0.0)
    return x


class _NoBank(list):
    """Stands in for the plugin's image bank: the golden tests feed the fixture's batch to the student step."""


def plugin_trainer(name: str, teacher: torch.nn.Module, student: torch.nn.Module, batch_size: int, lr: float,
                   method: dict | None = None):
    """The ``name`` plugin's Trainer (its paper presets for CIFAR-10 ResNet-20 W4A4, ``method`` overrides) on the
    fixture's teacher and student, in the fine-tuning phase of epoch 4 (the official ``train(epoch=4)``): ranges
    frozen by the plugin's schedule, student BN in eval mode. No bank is synthesised (``setup`` is skipped)."""
    from dfqbench.core.phases import start_training_epoch
    from dfqbench.core.trainer import PreparedRun, Trainer
    from dfqbench.plugins import load_methods
    from dfqbench.runner import resolve_settings
    from dfqbench.specs import RunSpec
    from conftest import RecordingProgress

    cls = load_methods().get(name)
    overrides = [f"train.batch_size={batch_size}"] + [f"method.{k}={v}" for k, v in (method or {}).items()]
    train, method_config, quant = resolve_settings(cls, "cifar10", "resnet20_cifar10", "w4a4", "paper", overrides)
    # the official optimizer (SGD-Nesterov, momentum 0.9, weight decay 1e-4, the hocon's lr) is the preset's
    assert (train["lr_q"], train["q_momentum"], train["q_nesterov"], train["q_weight_decay"]) == (lr, 0.9, True, 1e-4)
    assert train["range_update_epochs"] == train["warmup_epochs"] == 4 and quant["tracker"] == "ema_gdfq"
    assert (method_config["temperature"], method_config["kd_weight"]) == (20.0, 20.0)
    spec = RunSpec(method=name, method_version=cls.version, model="resnet20_cifar10", dataset="cifar10", bits="w4a4",
                   seed=0, teacher={}, normalization={}, quant=quant, train=train, method_config=method_config)
    plugin = cls(cls.config_class(**method_config), 10, 32, "cifar10")
    plugin.setup = lambda teacher, device: None  # no bank: the fixture's batch is fed to the student step
    plugin.bank = _NoBank([None] * batch_size)
    run = PreparedRun(spec=spec, method=plugin, teacher=teacher, student=student, evaluate=None, folder=None,
                      device=torch.device("cpu"), log_every=1, engine="eager")
    trainer = Trainer(run, RecordingProgress())
    start_training_epoch(trainer.method, trainer.generator, trainer.student, 4, trainer.cfg)
    assert not trainer.student.training and not any(q.update_ranges for q in trainer.quantizers)
    return trainer


def student_inputs(student: torch.nn.Module, batch_size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Records the inputs and logits of the student's forwards on whole batches (hook handles are not kept: the
    student is the test's own)."""
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def hook(module, args, output):
        if args[0].shape[0] == batch_size:
            inputs.append(args[0].detach().clone())
            outputs.append(output.detach().clone())

    student.register_forward_hook(hook)
    return inputs, outputs


def sgd_step_delta(trainer, batch) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The plugin's student step (train=True) on ``batch``: its logged terms, the student's gradients and the
    parameter changes of its SGD step."""
    student = trainer.student
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    terms = trainer.step.student_step(batch, train=True)
    grads = {n: p.grad.detach().clone() for n, p in student.named_parameters()}
    delta = {n: p.detach() - before[n] for n, p in student.named_parameters()}
    return terms, grads, delta


DELTA_RTOL, DELTA_ATOL = GRAD_RTOL, 5e-16  # the SGD step's parameter changes (digests; ~lr × gradients)


def test_intraq_plugin_iteration_matches_official():
    """The ``intraq`` plugin's student step (its Trainer, paper presets: lr 1e-4, SGD-Nesterov, wd 1e-4) on
    iteration.pt's batch and the teacher's logits, ranges loaded and frozen: the student's logits, L_Q, every
    gradient and the SGD step's parameter changes ``delta/``."""
    from dfqbench.blocks.interface import Sample
    from dfqbench.core.step import Batch

    fx = load_fixture("intraq", "iteration")
    with default_dtype(torch.float64):
        teacher, student = teacher_and_student(fx)
        x = fixture_batch(fx, 16)
        trainer = plugin_trainer("intraq", teacher, student, 16, 1e-4)
        inputs, logits = student_inputs(trainer.student, 16)
        with torch.no_grad():
            t_logits = trainer.teacher(x)
        check_close("teacher_logits", t_logits, fx["teacher_logits"], 1e-10, 1e-13)
        terms, grads, delta = sgd_step_delta(trainer, Batch(Sample(x, fx["y"]), x, t_logits, None))
        assert len(logits) == 1
        check_close("student_logits", logits[0], fx["student_logits"], 1e-10, 1e-13)
        check_close("loss", terms["loss"], fx["loss"], LOSS_RTOL, LOSS_ATOL)
        check_close("kd + ce", terms["kd"] + terms["ce"], fx["loss"], LOSS_RTOL, LOSS_ATOL)
        assert check_packed(fx, "grad/", grads, GRAD_RTOL, GRAD_ATOL) == len(grads)
        assert check_packed(fx, "delta/", delta, DELTA_RTOL, DELTA_ATOL) == len(delta)
