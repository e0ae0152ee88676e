"""dfqbench's GDFQ against golden fixtures from the official code (tests/golden/gdfq/README.md).

The fixtures (made by tests/golden/make/make_gdfq.py from xushoukai/GDFQ a93210e) hold the official
generators' forward, ``Trainer.loss_fn_kd`` and one whole ``Trainer.train`` iteration (G step then Q step).
Here dfqbench's own code runs on the same weights (golden_common.fill_, keyed by the official names) and
inputs: the GDFQ plugin's generators and losses, and for the iteration the real :class:`Trainer` (its
optimizers from the run settings, its epoch preamble, :class:`TrainStep` and the diagnostics probe).

The generator forwards and the iteration were recorded in float64 and run here in float64: convolutions and
reductions differ from one CPU's kernels to another's in their last bits, which in float32 flips 4-bit
roundings and Adam's first steps, and in float64 stays ~1e-16 relative. Every comparison goes through
tests/golden_compare.py; the tolerances below are set from the spread measured under every CPU kernel setting
(tests/golden/spread.py; the table is in tests/golden/gdfq/README.md).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dfqbench.blocks.interface import Sample, StepContext
from dfqbench.core.trainer import PreparedRun, Trainer
from dfqbench.plugins import load_methods
from dfqbench.quant import QuantConfig, activation_quantizers, quantize_model, set_range_update
from dfqbench.runner import resolve_settings
from dfqbench.specs import RunSpec
from dfqbench.zoo.models import build_model

from conftest import RecordingProgress
from golden_compare import assert_golden_close, assert_golden_equal

sys.path.insert(0, str(Path(__file__).parent / "golden" / "make"))
from golden_common import FORMAT, fill_, random_batches, state_pairs  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "gdfq"

# Tolerances (measured spread across CPU kernels in tests/golden/gdfq/README.md).
RTOL64 = 1e-9  # float64 values: generator outputs, BN buffers, logits, losses, parameters after the step
ATOL64 = 1e-12  # float64 values near 0 (e.g. the BN-cancelled conv-bias gradients: round-off, ≤ 1e-13)
RANGE_RTOL64 = 1e-12  # float64 activation ranges (min/max of conv outputs, then elementwise EMA arithmetic)
LOSS32_RTOL, LOSS32_ATOL = 2e-6, 1e-6  # float32 L_Q (softmax, log_softmax, sums; L_Q ~ 10: a few ulp)
LOSS64_RTOL = 1e-13  # the same L_Q in float64
SUM_RTOL = 1e-13  # digest sums (float64 reductions themselves): within this share of the abs-sum
LOGGED_RTOL = 1e-7  # the trainer's logged metrics: float64 losses rounded to float32 (half an ulp: 6e-8)

# Official module names → dfqbench's (dfqbench.blocks.generators), longest prefix first.
CIFAR_NAMES = {"label_emb.": "label_emb.", "l1.0.": "l1.", "conv_blocks0.0.": "bn0.", "conv_blocks1.0.": "conv1.",
               "conv_blocks1.1.": "bn1.", "conv_blocks2.0.": "conv2.", "conv_blocks2.1.": "bn2.",
               "conv_blocks2.3.": "conv3.", "conv_blocks2.5.": "out_bn."}
IMAGENET_NAMES = {"l1.0.": "l1.", "conv_blocks1_0.": "conv1.", "conv_blocks2_0.": "conv2.",
                  "conv_blocks2_3.": "conv3.", "conv_blocks2_5.": "out_bn."}
for _i, _j in (("0_0", 0), ("1_1", 1), ("2_1", 2)):
    IMAGENET_NAMES.update({f"conv_blocks{_i}.weights.": f"cbn{_j}.gamma.", f"conv_blocks{_i}.biases.": f"cbn{_j}.beta.",
                           f"conv_blocks{_i}.": f"cbn{_j}.bn."})


@contextlib.contextmanager
def float64() -> Iterator[None]:
    """dfqbench's side as the fixture's official side ran: float64 default dtype (networks built inside)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _load(name: str) -> dict:
    data = torch.load(GOLDEN / name, weights_only=True)
    assert data["format"] == FORMAT, f"{name}: made with golden_common format {data['format']}, tests use {FORMAT}"
    return data


def _rename(name: str, table: dict[str, str]) -> str:
    for prefix in sorted(table, key=len, reverse=True):
        if name.startswith(prefix):
            return table[prefix] + name[len(prefix):]
    raise KeyError(f"no dfqbench name for official {name!r}")


def _check_digest(actual: torch.Tensor, d: dict, what: str, rtol: float = RTOL64, atol: float = ATOL64) -> None:
    """Compare a tensor with golden_common.digest of the official one: whole, or a fixed sample of its values
    plus its float64 sum and abs-sum (reductions: within SUM_RTOL·abs-sum). rtol = atol = 0: the values bit
    for bit."""
    flat = actual.detach().reshape(-1)
    if "full" in d:
        expected = d["full"]
        if not expected.is_floating_point() or rtol == atol == 0.0:
            assert_golden_equal(what, flat, expected)
        else:
            assert_golden_close(what, flat, expected, rtol, atol)
        return
    if rtol == atol == 0.0:
        assert_golden_equal(f"{what} (sampled values)", flat[d["idx"]], d["vals"])
    else:
        assert_golden_close(f"{what} (sampled values)", flat[d["idx"]], d["vals"], rtol, atol)
    slack = SUM_RTOL * float(d["abs"])
    assert_golden_close(f"{what} (sum)", flat.double().sum(), d["sum"], rtol=0.0, atol=slack)
    assert_golden_close(f"{what} (abs sum)", flat.double().abs().sum(), d["abs"], rtol=0.0, atol=slack)


def _gdfq(dataset: str = "cifar10", num_classes: int = 10, size: int = 32, **config):
    cls = load_methods().get("gdfq")
    return cls(cls.config_class(**config), num_classes, size, dataset)


def _fill_generator(gen: torch.nn.Module, official_names: list[str], table: dict[str, str]) -> None:
    state = gen.state_dict()
    mapped = {_rename(n, table) for n in official_names}
    ours = {k for k in state if not k.endswith("num_batches_tracked")}
    assert mapped == ours, f"generator structure differs: only official {mapped - ours}, only dfqbench {ours - mapped}"
    fill_([(n, state[_rename(n, table)]) for n in official_names], seed=102)


@pytest.mark.parametrize("kind", ["cifar", "imagenet"])
def test_generator_forward_matches_official(kind):
    """GDFQ Generator / Generator_imagenet (train mode, float64): images, BN buffers after the forward, parameter
    gradients (the biases of the convs before a train-mode BN have a true gradient of 0: round-off, ~1e-17,
    inside ATOL64)."""
    data = _load(f"generator_{kind}.pt")
    assert data["dtype"] == "float64" and data["out"].dtype == torch.float64
    with float64():
        method = _gdfq() if kind == "cifar" else _gdfq("imagenet", 1000, 32)  # official CBN tables: 1000 classes
        table = CIFAR_NAMES if kind == "cifar" else IMAGENET_NAMES
        gen = method.build_generator()
        _fill_generator(gen, data["fill_names"], table)
        gen.train()
        out = method.generate(gen, Sample(data["z"], data["labels"]))
        assert out.dtype == torch.float64
        assert_golden_close(f"{kind} generator output", out, data["out"], RTOL64, ATOL64)
        state = gen.state_dict()
        for name, value in data["buffers_after"].items():
            _check_digest(state[_rename(name, table)], {"full": value.reshape(-1)}, f"{kind} buffer {name}")
        (out * data["upstream"]).sum().backward()
        params = dict(gen.named_parameters())
        assert {_rename(n, table) for n in data["grads"]} == set(params)
        for name, d in data["grads"].items():
            _check_digest(params[_rename(name, table)].grad, d, f"{kind} gradient of {name}")


LOSS_Q = _load("loss_q.pt")["cases"]


@pytest.mark.parametrize("case", LOSS_Q, ids=[f"C{c['classes']}_T{c['temperature']:g}_a{c['alpha']:g}" for c in LOSS_Q])
def test_student_loss_matches_official_loss_fn_kd(case):
    """Trainer.loss_fn_kd: α·T²·KLDivLoss()(log p_Q, p_T) (element mean over B·C) + CE(Q(x), y), in float32 and
    on the same logits in float64."""
    method = _gdfq(num_classes=case["classes"], temperature=case["temperature"], kd_weight=case["alpha"])
    for suffix, rtol, atol in (("", LOSS32_RTOL, LOSS32_ATOL), ("64", LOSS64_RTOL, 0.0)):
        ctx = StepContext(torch.zeros(1), Sample(torch.zeros(1), case["labels"]), case[f"teacher{suffix}"],
                          case[f"student{suffix}"], None, case["classes"])
        loss, terms = method.student_loss(ctx)
        assert loss.dtype == case[f"loss{suffix}"].dtype
        assert_golden_close(f"L_Q{suffix}", loss, case[f"loss{suffix}"], rtol, atol)
        assert_golden_close(f"kd + ce{suffix}", terms["kd"] + terms["ce"], case[f"loss{suffix}"], rtol, atol)


ITERATION = _load("iteration.pt")


def _teacher(data: dict) -> torch.nn.Module:
    """The official teacher in float64 (call under :func:`float64`): the seeded draws, then the fixture's BN
    running statistics (recorded, not recomputed: they come from reductions)."""
    teacher = build_model("resnet20_cifar10")
    state = teacher.state_dict()
    assert [n for n in state if not n.endswith("num_batches_tracked")] == data["teacher_fill_names"]
    fill_([(n, state[n]) for n in data["teacher_fill_names"]], seed=data["seeds"]["teacher"])
    with torch.no_grad():
        for name, value in data["teacher_bn"].items():
            state[name].copy_(value)
    return teacher.eval()


def _trainer(data: dict, teacher: torch.nn.Module, student: torch.nn.Module) -> Trainer:
    """dfqbench's Trainer for the fixture's settings: GDFQ's paper protocol with batch 8, lr_q 0.01, no warm-up."""
    cls = load_methods().get("gdfq")
    opts = data["settings"]
    overrides = [f"train.batch_size={opts['batchSize']}", f"train.lr_q={opts['lr_S']}",
                 f"train.warmup_epochs={opts['warmup_epochs']}", "train.iters_per_epoch=1"]
    train, method_config, quant = resolve_settings(cls, "cifar10", "resnet20_cifar10", "w4a4", "paper", overrides)
    # What the fixture's official settings say must be what dfqbench's run settings say.
    assert (train["lr_g"], tuple(train["g_betas"]), train["q_momentum"], train["q_nesterov"], train["q_weight_decay"]) \
        == (opts["lr_G"], (opts["b1"], opts["b2"]), opts["momentum"], True, opts["weightDecay"])
    assert (method_config["temperature"], method_config["kd_weight"]) == (opts["temperature"], opts["alpha"])
    assert train["range_update_epochs"] == 4 and quant["tracker"] == "ema_gdfq"
    spec = RunSpec(method="gdfq", method_version=cls.version, model="resnet20_cifar10", dataset="cifar10",
                   bits="w4a4", seed=0, teacher={}, normalization={}, quant=quant, train=train,
                   method_config=method_config)
    method = cls(cls.config_class(**method_config), 10, 32, "cifar10")
    run = PreparedRun(spec=spec, method=method, teacher=teacher, student=student, evaluate=None, folder=None,
                      device=torch.device("cpu"), log_every=1, engine="eager")
    return Trainer(run, RecordingProgress())


def official_module_names(model: torch.nn.Module) -> dict[str, str]:
    """dfqbench module name → the official student's: GDFQ's ``quantize_model`` rebuilds every nn.Sequential
    as ``nn.Sequential(*children)``, so children of a Sequential are named by their index there."""
    names: dict[str, str] = {}

    def walk(module: torch.nn.Module, ours: str, theirs: str) -> None:
        names[ours] = theirs
        for index, (name, child) in enumerate(module.named_children()):
            key = str(index) if isinstance(module, torch.nn.Sequential) else name
            walk(child, f"{ours}.{name}" if ours else name, f"{theirs}.{key}" if theirs else key)

    walk(model, "", "")
    return names


def official_state_names(model: torch.nn.Module) -> dict[str, str]:
    """dfqbench state-dict key → the official student's key (see :func:`official_module_names`)."""
    modules = official_module_names(model)
    return {key: f"{modules[key.rsplit('.', 1)[0]]}.{key.rsplit('.', 1)[1]}" for key in model.state_dict()}


def _ranges(student: torch.nn.Module) -> dict[str, torch.Tensor]:
    """(x_min, x_max, beta_t) of every QuantAct, by the official student's module name."""
    quantizers = activation_quantizers(student)
    names = official_module_names(student)
    return {names[name]: torch.stack([m.x_min, m.x_max, m.beta_t]) for name, m in student.named_modules()
            if m in quantizers}


def _compare_ranges(student: torch.nn.Module, expected: dict[str, torch.Tensor], what: str) -> None:
    ours = _ranges(student)
    assert set(ours) == set(expected), f"{what}: QuantAct sites differ"
    for name, value in expected.items():
        assert_golden_close(f"{what} {name}", ours[name], value, RANGE_RTOL64, 0.0)


def _load_ranges(student: torch.nn.Module, ranges: dict[str, torch.Tensor]) -> None:
    """Set every QuantAct's (x_min, x_max, beta_t) to the official values (by the official module name)."""
    names = official_module_names(student)
    quantizers = activation_quantizers(student)
    with torch.no_grad():
        for name, m in student.named_modules():
            if m in quantizers:
                for buffer, value in zip((m.x_min, m.x_max, m.beta_t), ranges[names[name]]):
                    buffer.copy_(value)


class _LossRecorder:
    """Keeps the float64 losses and terms of the method's first G and Q loss (the trainer's logged metrics are
    float32 means), by wrapping the method instance's ``generator_loss`` / ``student_loss``."""

    def __init__(self, method) -> None:
        self.seen: dict[str, torch.Tensor] = {}
        for prefix, attr in (("g/", "generator_loss"), ("q/", "student_loss")):
            setattr(method, attr, self._wrap(prefix, getattr(method, attr)))

    def _wrap(self, prefix: str, loss_fn):
        def recording(ctx):
            loss, terms = loss_fn(ctx)
            for name, value in {"loss": loss, **terms}.items():
                self.seen.setdefault(prefix + name, value.detach().clone())
            return loss, terms
        return recording


@pytest.fixture(scope="module")
def iteration_run():
    """The fixture's state rebuilt in dfqbench (float64), then one epoch of one iteration of dfqbench's Trainer."""
    data = ITERATION
    assert data["dtype"] == "float64"
    with float64():
        teacher = _teacher(data)
        drawn = build_model("resnet20_cifar10")
        fill_(state_pairs(drawn), seed=data["seeds"]["teacher"])
        initial = torch.cat([v.reshape(-1) for _, v in state_pairs(drawn)])  # as the fixture's teacher_init
        student = quantize_model(teacher, QuantConfig(wbits=4, abits=4, tracker="ema_gdfq"))
        for p in student.parameters():
            p.requires_grad_(True)
        shape = (data["settings"]["batchSize"], 3, 32, 32)
        calibration = random_batches(data["seeds"]["calibration"], 2, shape, dtype=torch.float64)
        student.eval()
        set_range_update(student, True)
        with torch.no_grad():
            for x in calibration:
                student(x)
        set_range_update(student, False)
        ranges_before = _ranges(student)
        # Start the iteration from the official ranges (min/max of conv outputs: equal here to ~1e-16, compared
        # in test_iteration_starts_from_the_official_state), as from the official BN statistics.
        _load_ranges(student, data["ranges_before"])
        trainer = _trainer(data, teacher, student)
        _fill_generator(trainer.generator, data["generator_fill_names"], CIFAR_NAMES)
        sample = Sample(data["z"], data["labels"])
        trainer.method.sample = lambda batch_size, device: sample  # the official draw, recorded in the fixture
        losses = _LossRecorder(trainer.method)
        seen: dict[str, torch.Tensor] = {}

        def keep(key):
            def hook(module, inputs, output):
                if torch.is_grad_enabled():  # the steps' forwards, not the (no-grad) diagnostics probe
                    seen.setdefault(key, output.detach().clone())
                    seen.setdefault(f"{key}_input", inputs[0].detach().clone())
            return hook

        handles = [trainer.teacher.register_forward_hook(keep("teacher")),
                   trainer.student.register_forward_hook(keep("student"))]
        trainer._train_epoch(0)
        for h in handles:
            h.remove()
    return {"data": data, "trainer": trainer, "seen": seen, "losses": losses.seen, "ranges_before": ranges_before,
            "initial": initial, "calibration": calibration}


def test_iteration_starts_from_the_official_state(iteration_run):
    """The seeded draws (teacher weights, calibration batches) bit for bit; the ranges after the two calibration
    updates within RANGE_RTOL64."""
    data = iteration_run["data"]
    _check_digest(iteration_run["initial"], data["teacher_init"], "teacher weights as drawn", rtol=0.0, atol=0.0)
    for i, (x, d) in enumerate(zip(iteration_run["calibration"], data["calibration"], strict=True)):
        _check_digest(x, d, f"calibration batch {i}", rtol=0.0, atol=0.0)
    expected = data["ranges_before"]
    ours = iteration_run["ranges_before"]
    assert set(ours) == set(expected)
    for name, value in expected.items():
        assert_golden_close(f"ranges after calibration {name}", ours[name], value, RANGE_RTOL64, 0.0)


def test_iteration_g_step_matches_official(iteration_run):
    """The G step: G(z, y), the teacher's logits, and L_G = CE + 0.1·L_BNS with its two terms."""
    data, seen, losses = iteration_run["data"], iteration_run["seen"], iteration_run["losses"]
    assert seen["teacher_input"].dtype == torch.float64
    assert_golden_close("generated images", seen["teacher_input"], data["images"], RTOL64, ATOL64)
    assert_golden_close("teacher logits", seen["teacher"], data["teacher_logits"], RTOL64, ATOL64)
    assert_golden_close("L_G one-hot CE", losses["g/ce"], data["loss_one_hot"], RTOL64, 0.0)
    assert_golden_close("L_BNS", losses["g/bns"], data["BNS_loss"], RTOL64, 0.0)
    assert_golden_close("L_G", losses["g/loss"], data["loss_G"], RTOL64, 0.0)
    logged = next(row for row in iteration_run["trainer"].metrics if row.get("type") == "iter")
    assert_golden_close("logged L_G (a float32 metric)", logged["g/loss"], data["loss_G"], LOGGED_RTOL, 0.0)


def test_iteration_q_step_matches_official(iteration_run):
    """The Q step on the detached images of the G step: the student's logits and L_Q (KD + CE)."""
    data, seen, losses = iteration_run["data"], iteration_run["seen"], iteration_run["losses"]
    assert_golden_close("student input", seen["student_input"], data["images"], RTOL64, ATOL64)
    assert_golden_close("student logits", seen["student"], data["student_logits"], RTOL64, ATOL64)
    assert_golden_close("L_Q", losses["q/loss"], data["loss_S"], RTOL64, 0.0)
    assert_golden_close("L_Q terms", losses["q/kd"] + losses["q/ce"], data["loss_S"], RTOL64, 0.0)
    logged = next(row for row in iteration_run["trainer"].metrics if row.get("type") == "iter")
    assert_golden_close("logged L_Q (a float32 metric)", logged["q/loss"], data["loss_S"], LOGGED_RTOL, 0.0)


def test_iteration_parameters_after_the_step_match_official(iteration_run):
    """Generator (Adam) and student (SGD-Nesterov) parameters and buffers after the step; ranges after it."""
    data, trainer = iteration_run["data"], iteration_run["trainer"]
    gen_state = trainer.generator.state_dict()
    assert {_rename(n, CIFAR_NAMES) for n in data["generator_after"]} == set(gen_state)
    for name, d in data["generator_after"].items():
        if name in BN_CANCELLED:  # values decided by round-off: compared within the bound of such a step
            _check_digest(gen_state[_rename(name, CIFAR_NAMES)], d, f"generator {name}", rtol=0.0,
                          atol=ROUNDOFF_STEP * data["settings"]["lr_G"])
        else:
            _check_digest(gen_state[_rename(name, CIFAR_NAMES)], d, f"generator {name}")
    student_state = {official: trainer.student.state_dict()[ours]
                     for ours, official in official_state_names(trainer.student).items()}
    official = {n: d for n, d in data["student_after"].items() if not n.endswith(".beta")}  # a constant 0.9
    assert set(official) == set(student_state), set(official) ^ set(student_state)
    for name, d in official.items():
        ranges = name.endswith(("x_min", "x_max", "beta_t"))
        _check_digest(student_state[name], d, f"student {name}", rtol=RANGE_RTOL64 if ranges else RTOL64,
                      atol=0.0 if ranges else ATOL64)
    _compare_ranges(trainer.student, data["ranges_after"], "ranges after the iteration")


# Biases of the convs that feed a train-mode BN (G's conv1 → bn1, conv2 → bn2): the BN subtracts the batch
# mean, so their true gradient is exactly 0 and the computed one is float64 round-off (~1e-16, against ~0.1-1
# for the other tensors). Adam's first step is lr·g/(|g| + eps) with eps = 1e-8 ≫ |g|, so both codes move them
# by ~lr·|g|/eps ≈ 1e-11, a size and direction that round-off decides (measured: |g| ≤ 5e-16, steps 5e-11 apart
# under the kernel settings). Still needed in float64: these two tensors are compared within ROUNDOFF_STEP·lr,
# the largest step a gradient |g| ≤ ROUNDOFF_STEP·eps = 1e-14 gives, with that bound on their gradient and on
# both codes' step checked here.
BN_CANCELLED = ("conv_blocks1.0.bias", "conv_blocks2.0.bias")
ADAM_EPS = 1e-8  # GDFQ's (and dfqbench's) Adam eps
ROUNDOFF_STEP = 1e-6  # in units of lr_G


def test_iteration_bn_cancelled_generator_biases(iteration_run):
    data, trainer = iteration_run["data"], iteration_run["trainer"]
    lr = data["settings"]["lr_G"]
    with float64():
        initial = _gdfq().build_generator()
        _fill_generator(initial, data["generator_fill_names"], CIFAR_NAMES)
    params = dict(trainer.generator.named_parameters())
    largest = max(float(p.grad.abs().max()) for p in params.values())
    for name in BN_CANCELLED:
        ours = _rename(name, CIFAR_NAMES)
        assert float(params[ours].grad.abs().max()) <= ROUNDOFF_STEP * ADAM_EPS, f"{name}: gradient is not round-off"
        assert ROUNDOFF_STEP * ADAM_EPS < 1e-12 * largest  # far below every real gradient
        start = initial.state_dict()[ours].reshape(-1)
        for who, after in (("dfqbench", params[ours].detach()), ("official", data["generator_after"][name]["full"])):
            step = (after.reshape(-1) - start).abs()
            assert float(step.max()) <= ROUNDOFF_STEP * lr, f"{who} {name}: {step}"


def test_iteration_moved_the_parameters(iteration_run):
    """The comparison above is meaningful: the step changed both networks by far more than the tolerance."""
    data, trainer = iteration_run["data"], iteration_run["trainer"]
    with float64():
        before = _teacher(data).state_dict()
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in trainer.student.named_parameters())
    assert moved > 1e-4
