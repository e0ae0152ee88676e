"""dfqbench's GDFQ against golden fixtures from the official code (tests/golden/gdfq/README.md).

The fixtures (made by tests/golden/make/make_gdfq.py from xushoukai/GDFQ a93210e) hold the official
generators' forward, ``Trainer.loss_fn_kd`` and one whole ``Trainer.train`` iteration (G step then Q step).
Here dfqbench's own code runs on the same weights (golden_common.fill_, keyed by the official names) and
inputs: the GDFQ plugin's generators and losses, and for the iteration the real :class:`Trainer` (its
optimizers from the run settings, its epoch preamble, :class:`TrainStep` and the diagnostics probe).

Tolerances: losses atol 1e-6 (plus rtol 1e-6); generated images and logits rtol 1e-5, atol 1e-6; parameters
after the step rtol 1e-5, atol 1e-6 (the student's SGD update is ~1e-4..1e-2, the generator's Adam update
1e-3); sums of large tensors within 1e-6 of their absolute sum; activation ranges rtol 1e-6.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dfqbench.core.plugin import Sample, StepContext, load_methods
from dfqbench.core.trainer import PreparedRun, Trainer
from dfqbench.quant import QuantConfig, activation_quantizers, quantize_model, set_range_update
from dfqbench.runner import resolve_settings
from dfqbench.specs import RunSpec
from dfqbench.zoo.models import build_model

from conftest import RecordingProgress

sys.path.insert(0, str(Path(__file__).parent / "golden" / "make"))
from golden_common import FORMAT, fill_, random_batches  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "gdfq"

# Official module names → dfqbench's (dfqbench.core.generators), longest prefix first.
CIFAR_NAMES = {"label_emb.": "label_emb.", "l1.0.": "l1.", "conv_blocks0.0.": "bn0.", "conv_blocks1.0.": "conv1.",
               "conv_blocks1.1.": "bn1.", "conv_blocks2.0.": "conv2.", "conv_blocks2.1.": "bn2.",
               "conv_blocks2.3.": "conv3.", "conv_blocks2.5.": "out_bn."}
IMAGENET_NAMES = {"l1.0.": "l1.", "conv_blocks1_0.": "conv1.", "conv_blocks2_0.": "conv2.",
                  "conv_blocks2_3.": "conv3.", "conv_blocks2_5.": "out_bn."}
for _i, _j in (("0_0", 0), ("1_1", 1), ("2_1", 2)):
    IMAGENET_NAMES.update({f"conv_blocks{_i}.weights.": f"cbn{_j}.gamma.", f"conv_blocks{_i}.biases.": f"cbn{_j}.beta.",
                           f"conv_blocks{_i}.": f"cbn{_j}.bn."})


def _load(name: str) -> dict:
    data = torch.load(GOLDEN / name, weights_only=True)
    assert data["format"] == FORMAT, f"{name}: made with golden_common format {data['format']}, tests use {FORMAT}"
    return data


def _rename(name: str, table: dict[str, str]) -> str:
    for prefix in sorted(table, key=len, reverse=True):
        if name.startswith(prefix):
            return table[prefix] + name[len(prefix):]
    raise KeyError(f"no dfqbench name for official {name!r}")


def _close(actual, expected, what: str, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    actual = torch.as_tensor(actual, dtype=expected.dtype).reshape(expected.shape)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _check_digest(actual: torch.Tensor, d: dict, what: str, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Compare a tensor with golden_common.digest of the official one (whole, or sums plus a fixed sample)."""
    flat = actual.detach().reshape(-1)
    if "full" in d:
        if not d["full"].is_floating_point():
            assert torch.equal(flat, d["full"]), what
            return
        _close(flat, d["full"], what, rtol, atol)
        return
    _close(flat[d["idx"]], d["vals"], f"{what} (sampled values)", rtol, atol)
    slack = 1e-6 * float(d["abs"])
    _close(flat.double().sum(), d["sum"], f"{what} (sum)", rtol=0.0, atol=slack)
    _close(flat.double().abs().sum(), d["abs"], f"{what} (abs sum)", rtol=0.0, atol=slack)


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
    """GDFQ Generator / Generator_imagenet (train mode): images, BN buffers after the forward, parameter grads."""
    data = _load(f"generator_{kind}.pt")
    method = _gdfq() if kind == "cifar" else _gdfq("imagenet", 1000, 32)  # official CBN tables: 1000 classes
    table = CIFAR_NAMES if kind == "cifar" else IMAGENET_NAMES
    gen = method.build_generator()
    _fill_generator(gen, data["fill_names"], table)
    gen.train()
    out = method.generate(gen, Sample(data["z"], data["labels"]))
    _close(out.detach(), data["out"], f"{kind} generator output")
    state = gen.state_dict()
    for name, value in data["buffers_after"].items():
        _check_digest(state[_rename(name, table)], {"full": value.reshape(-1)}, f"{kind} buffer {name}")
    (out * data["upstream"]).sum().backward()
    params = dict(gen.named_parameters())
    assert {_rename(n, table) for n in data["grads"]} == set(params)
    for name, d in data["grads"].items():
        _check_digest(params[_rename(name, table)].grad, d, f"{kind} gradient of {name}", rtol=1e-4, atol=1e-6)


LOSS_Q = _load("loss_q.pt")["cases"]


@pytest.mark.parametrize("case", LOSS_Q, ids=[f"C{c['classes']}_T{c['temperature']:g}_a{c['alpha']:g}" for c in LOSS_Q])
def test_student_loss_matches_official_loss_fn_kd(case):
    """Trainer.loss_fn_kd: α·T²·KLDivLoss()(log p_Q, p_T) (element mean over B·C) + CE(Q(x), y)."""
    method = _gdfq(num_classes=case["classes"], temperature=case["temperature"], kd_weight=case["alpha"])
    ctx = StepContext(torch.zeros(1), Sample(torch.zeros(1), case["labels"]), case["teacher"], case["student"],
                      None, case["classes"])
    loss, terms = method.student_loss(ctx)
    _close(loss, case["loss"], "L_Q", rtol=1e-6, atol=1e-6)
    _close(terms["kd"] + terms["ce"], case["loss"], "kd + ce", rtol=1e-6, atol=1e-6)


ITERATION = _load("iteration.pt")


def _teacher(data: dict) -> torch.nn.Module:
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
        _close(ours[name], value, f"{what} {name}", rtol=1e-6, atol=0.0)


@pytest.fixture(scope="module")
def iteration_run():
    """The fixture's state rebuilt in dfqbench, then one epoch of one iteration of dfqbench's Trainer."""
    data = ITERATION
    teacher = _teacher(data)
    student = quantize_model(teacher, QuantConfig(wbits=4, abits=4, tracker="ema_gdfq"))
    for p in student.parameters():
        p.requires_grad_(True)
    calibration = random_batches(data["seeds"]["calibration"], 2, (data["settings"]["batchSize"], 3, 32, 32))
    _close(torch.stack([x.double().sum() for x in calibration]), data["calibration_sums"], "calibration inputs",
           rtol=0.0, atol=0.0)
    student.eval()
    set_range_update(student, True)
    with torch.no_grad():
        for x in calibration:
            student(x)
    set_range_update(student, False)
    ranges_before = _ranges(student)
    trainer = _trainer(data, teacher, student)
    _fill_generator(trainer.generator, data["generator_fill_names"], CIFAR_NAMES)
    sample = Sample(data["z"], data["labels"])
    trainer.method.sample = lambda batch_size, device: sample  # the official draw, recorded in the fixture
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
    logged = next(row for row in trainer.metrics if row.get("type") == "iter")
    return {"data": data, "trainer": trainer, "seen": seen, "logged": logged, "ranges_before": ranges_before}


def test_iteration_starts_from_the_official_state(iteration_run):
    data = iteration_run["data"]
    expected = data["ranges_before"]
    ours = iteration_run["ranges_before"]
    assert set(ours) == set(expected)
    for name, value in expected.items():
        _close(ours[name], value, f"ranges after calibration {name}", rtol=1e-6, atol=0.0)


def test_iteration_g_step_matches_official(iteration_run):
    """The G step: G(z, y), the teacher's logits, and L_G = CE + 0.1·L_BNS with its two terms."""
    data, seen, logged = iteration_run["data"], iteration_run["seen"], iteration_run["logged"]
    _close(seen["teacher_input"], data["images"], "generated images")
    _close(seen["teacher"], data["teacher_logits"], "teacher logits")
    _close(logged["g/ce"], data["loss_one_hot"], "L_G one-hot CE", rtol=1e-6)
    _close(logged["g/bns"], data["BNS_loss"], "L_BNS", rtol=1e-6)
    _close(logged["g/loss"], data["loss_G"], "L_G", rtol=1e-6)


def test_iteration_q_step_matches_official(iteration_run):
    """The Q step on the detached images of the G step: the student's logits and L_Q (KD + CE)."""
    data, seen, logged = iteration_run["data"], iteration_run["seen"], iteration_run["logged"]
    _close(seen["student_input"], data["images"], "student input")
    _close(seen["student"], data["student_logits"], "student logits")
    _close(logged["q/loss"], data["loss_S"], "L_Q", rtol=1e-6)
    _close(logged["q/kd"] + logged["q/ce"], data["loss_S"], "L_Q terms", rtol=1e-6)


def test_iteration_parameters_after_the_step_match_official(iteration_run):
    """Generator (Adam) and student (SGD-Nesterov) parameters and buffers after the step; ranges after it."""
    data, trainer = iteration_run["data"], iteration_run["trainer"]
    gen_state = trainer.generator.state_dict()
    assert {_rename(n, CIFAR_NAMES) for n in data["generator_after"]} == set(gen_state)
    for name, d in data["generator_after"].items():
        if name not in BN_INVARIANT:
            _check_digest(gen_state[_rename(name, CIFAR_NAMES)], d, f"generator {name}")
    student_state = {official: trainer.student.state_dict()[ours]
                     for ours, official in official_state_names(trainer.student).items()}
    official = {n: d for n, d in data["student_after"].items() if not n.endswith(".beta")}  # a constant 0.9
    assert set(official) == set(student_state), set(official) ^ set(student_state)
    for name, d in official.items():
        rtol = 1e-6 if name.endswith(("x_min", "x_max", "beta_t")) else 1e-5
        _check_digest(student_state[name], d, f"student {name}", rtol=rtol, atol=0.0 if rtol == 1e-6 else 1e-6)
    _compare_ranges(trainer.student, data["ranges_after"], "ranges after the iteration")


# Biases of the convs that feed a train-mode BN (G's conv1 → bn1, conv2 → bn2): the BN subtracts the batch
# mean, so their true gradient is exactly 0 and the computed one is float round-off (~1e-7 against ~0.1-1 for
# the other tensors). Adam's first step is lr·g/(|g| + eps) (eps 1e-8, comparable to that round-off), so both
# codes move them by up to lr in directions and sizes that round-off decides: compared as "moved by at most
# lr", with their gradient checked to be round-off.
BN_INVARIANT = ("conv_blocks1.0.bias", "conv_blocks2.0.bias")


def test_iteration_bn_invariant_generator_biases(iteration_run):
    data, trainer = iteration_run["data"], iteration_run["trainer"]
    lr = data["settings"]["lr_G"]
    initial = _gdfq().build_generator()
    _fill_generator(initial, data["generator_fill_names"], CIFAR_NAMES)
    params = dict(trainer.generator.named_parameters())
    largest = max(float(p.grad.abs().max()) for p in params.values())
    for name in BN_INVARIANT:
        ours = _rename(name, CIFAR_NAMES)
        assert float(params[ours].grad.abs().max()) < 1e-5 * largest, f"{name}: gradient is not round-off"
        start = initial.state_dict()[ours]
        for who, after in (("dfqbench", params[ours].detach()), ("official", data["generator_after"][name]["full"])):
            step = (after.reshape(-1) - start.reshape(-1)).abs()
            assert float(step.max()) <= lr * (1 + 1e-4), f"{who} {name}: {step}"


def test_iteration_moved_the_parameters(iteration_run):
    """The comparison above is meaningful: the step changed both networks by far more than the tolerance."""
    data, trainer = iteration_run["data"], iteration_run["trainer"]
    before = _teacher(data).state_dict()
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in trainer.student.named_parameters())
    assert moved > 1e-4
