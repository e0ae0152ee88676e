"""The direct family (IntraQ, HAST, SynQ) in the trainer: two-phase sampling, the bank as a shared and resumable
artifact, kill/resume of synthesis and of fine-tuning, switches and presets (issue 20; spec newer-methods.md §8).

The loss terms themselves are checked against the official code in the golden tests; the method contract and the
capture-safety tests (tests/test_method_contract.py, tests/test_engine.py) run these methods like every other.
All runs are on the tiny network with its tiny bank preset (2 × 16 images, 20 Adam steps) and lr_q 1e-6: the
released 8000·KL at lr 1e-4 diverges there within ~10 steps (IntraQ issue #3's instability).
"""

from __future__ import annotations

import pytest
import torch

from dfqbench.blocks import synthesis
from dfqbench.errors import DfqbenchError
from dfqbench.core.trainer import Trainer
from dfqbench.core.optimizers import NoOptimizer
from dfqbench.quant import activation_quantizers, set_range_update
from dfqbench.runner import prepare, run
from dfqbench.store import ResultsStore

from conftest import CrashAfterEpoch, RecordingProgress, same_state

DIRECT = ["intraq", "hast", "synq"]
SYNTHESISE_BATCH = synthesis.synthesise_batch
STABLE = ["train.lr_q=1e-6"]


def _request(tiny_request, method: str, results, *extra: str, bits: str = "w4a4", seed: int = 0):
    return tiny_request(method=method, results=str(results), overrides=[
        "train.epochs=3", "train.iters_per_epoch=3", "train.batch_size=8", "train.warmup_epochs=1",
        "train.range_update_epochs=1", "train.eval_max_images=64", *STABLE, *extra], log_every=1, bits=bits, seed=seed)


def _trainer(tiny_request, method: str, results, *extra: str) -> Trainer:
    return Trainer(prepare(_request(tiny_request, method, results, *extra)), RecordingProgress())


def _iteration_rows(request) -> list[dict]:
    return [r for r in prepare(request).folder.read_metrics() if r["type"] == "iter"]


def _ranges(trainer: Trainer) -> list[torch.Tensor]:
    return [t.clone() for q in activation_quantizers(trainer.student) for t in q.state_dict().values()]


# -- two phases ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", DIRECT)
def test_calibration_epochs_train_a_gdfq_generator_at_16_then_the_bank_takes_over(method, tiny_request, tmp_path):
    """Faithful default (IQ:trainer_direct.py:L206-254): in a warm-up epoch a G step of the calibration generator at
    batch 16 and a student forward that moves the ranges only; after it, bank batches at train.batch_size with their
    stored labels, which step the student and leave generator and ranges alone."""
    trainer = _trainer(tiny_request, method, tmp_path)
    step, source = trainer.step, trainer.generator
    assert step.phases == {True: ("G", "Q"), False: ("Q+",)} and source.calibration is not None
    assert not isinstance(trainer.opt_g, NoOptimizer)
    weights = {k: v.clone() for k, v in trainer.student.named_parameters()}
    generator = {k: v.clone() for k, v in source.calibration.state_dict().items()}
    ranges = _ranges(trainer)

    trainer.generator.train()
    set_range_update(trainer.student, True)
    logged = dict(step.iteration(train_q=False))
    assert set(logged) == {"g/", "q/"} and step.images_last_iteration == 16
    assert all(torch.equal(p, weights[k]) for k, p in trainer.student.named_parameters())  # only forwarded
    assert any(not torch.equal(a, b) for a, b in zip(_ranges(trainer), ranges))  # ... which moved the ranges
    assert not same_state(source.calibration.state_dict(), generator)

    set_range_update(trainer.student, False)
    ranges, generator = _ranges(trainer), {k: v.clone() for k, v in source.calibration.state_dict().items()}
    cursor = int(source.stream.cursor)
    sample = trainer.method.sample(8, torch.device("cpu"))
    taken = source.stream.order[int(source.stream.cursor) - 8: int(source.stream.cursor)]
    assert torch.equal(sample.labels, trainer.method.bank.labels[taken])  # the stored sampled labels
    assert cursor != int(source.stream.cursor)
    logged = dict(step.iteration(train_q=True))
    assert set(logged) == {"q/"} and step.images_last_iteration == 8
    assert any(not torch.equal(p, weights[k]) for k, p in trainer.student.named_parameters())
    assert all(torch.equal(a, b) for a, b in zip(_ranges(trainer), ranges))
    assert same_state(source.calibration.state_dict(), generator)


def test_calibration_on_the_bank_is_a_switch(tiny_request, tmp_path):
    trainer = _trainer(tiny_request, "intraq", tmp_path, "method.calibration=bank")
    assert trainer.step.phases == {True: ("Q+",), False: ("Q+",)}
    assert trainer.generator.calibration is None and isinstance(trainer.opt_g, NoOptimizer)
    ranges = _ranges(trainer)
    set_range_update(trainer.student, True)
    assert set(dict(trainer.step.iteration(train_q=False))) == {"q/"} and trainer.step.images_last_iteration == 8
    assert any(not torch.equal(a, b) for a, b in zip(_ranges(trainer), ranges))


def test_bad_direct_settings_are_one_line(tiny_request, tmp_path):
    with pytest.raises(DfqbenchError, match=r"method\.calibration.*'gan'.*generator, bank"):
        prepare(_request(tiny_request, "intraq", tmp_path, "method.calibration=gan"))
    with pytest.raises(DfqbenchError, match=r"method\.cam_class.*argmax, label"):
        prepare(_request(tiny_request, "synq", tmp_path, "method.cam_class=logit"))
    with pytest.raises(DfqbenchError, match=r"method\.bank_batches=0"):
        prepare(_request(tiny_request, "hast", tmp_path, "method.bank_batches=0"))
    with pytest.raises(DfqbenchError, match=r"lambda_eps='hocon': no hast hocon is released for tiny"):
        prepare(_request(tiny_request, "hast", tmp_path, "method.lambda_eps=hocon"))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "banks").exists()


# -- the bank: shared, resumable ---------------------------------------------------------------------------------
def _count_batches(monkeypatch, fail_at: int | None = None) -> list[int]:
    """Count synthesised batches (and raise at the ``fail_at``-th, simulating a kill during synthesis)."""
    made: list[int] = []
    real = SYNTHESISE_BATCH

    def counted(*args, **kwargs):
        if fail_at is not None and len(made) == fail_at:
            raise RuntimeError("simulated kill during synthesis")
        made.append(len(made))
        return real(*args, **kwargs)

    monkeypatch.setattr(synthesis, "synthesise_batch", counted)
    return made


def test_three_bit_widths_of_a_grid_need_and_synthesise_one_bank(tiny_request, tmp_path, monkeypatch):
    from dfqbench.launch.grid import load_grid
    from dfqbench.launch.plan import LaunchOptions, plan_grid
    from dfqbench.launch.summary import plan_document

    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", "off")
    path = tmp_path / "grid.yaml"
    path.write_text("name: direct_banks\nbase: {method: intraq, model: tiny_cifar10, protocol: quick, train.epochs: 2, "
                    "train.iters_per_epoch: 2, train.batch_size: 8, train.warmup_epochs: 1, "
                    "train.range_update_epochs: 1, train.lr_q: 1.0e-6, train.eval_max_images: 64}\n"
                    "axes:\n  bits: [w3a3, w4a4, w5a5]\n")
    options = LaunchOptions(results=tmp_path / "results", device="cpu")
    plan = plan_grid(load_grid(path), options)
    document = plan_document(plan)
    assert len(plan.runs()) == 3 and len(document["banks"]) == 1 and len(document["banks"][0]["runs"]) == 3
    made = _count_batches(monkeypatch)
    records = [run(options.request(c.cell), RecordingProgress()) for c in plan.runs()]
    assert len(made) == 2  # the tiny bank's 2 batches, once for the three runs
    assert [b.name for b in ResultsStore(options.results).banks()] == [document["banks"][0]["name"]]
    assert len({r.run_id for r in records}) == 3
    assert plan_document(plan_grid(load_grid(path), options))["banks"][0]["state"] == "done"


def test_bank_key_ignores_bits_and_schedule_not_seed_or_synthesis(tiny_request, tmp_path):
    from dfqbench.methods.intraq import IntraQ
    from dfqbench.runner import predict_spec

    def key(*extra, **kw):
        return IntraQ.needs_bank(predict_spec(_request(tiny_request, "intraq", tmp_path, *extra, **kw)))

    base = key()
    assert key(bits="w3a3") == base and key("train.lr_q=1e-5", "method.calibration=bank") == base
    assert key(seed=1) != base and key("method.target_min=0.5") != base and key("method.synthesis_steps=3") != base


def test_killed_synthesis_resumes_and_the_run_equals_an_uninterrupted_one(tiny_request, tmp_path, monkeypatch):
    """A kill during the second of three bank batches: the rerun keeps batch 0 (IntraQ's class centroids replayed
    from it), synthesises batches 1-2 and trains to the same numbers as a run that was never interrupted."""
    extra = ("method.bank_batches=3",)
    straight_request = _request(tiny_request, "intraq", tmp_path / "straight", *extra)
    straight = run(straight_request, RecordingProgress())

    killed = _request(tiny_request, "intraq", tmp_path / "killed", *extra)
    made = _count_batches(monkeypatch, fail_at=1)
    with pytest.raises(RuntimeError, match="simulated kill during synthesis"):
        run(killed, RecordingProgress())
    assert made == [0]
    made = _count_batches(monkeypatch)
    resumed = run(killed, RecordingProgress())
    assert len(made) == 2  # batches 1 and 2 only
    assert resumed.top1_per_epoch == straight.top1_per_epoch
    assert _iteration_rows(killed) == _iteration_rows(straight_request)
    a, b = prepare(straight_request).folder.load_checkpoint(), prepare(killed).folder.load_checkpoint()
    assert same_state(a["student"], b["student"]) and same_state(a["generator"], b["generator"])
    banks = [next(ResultsStore(tmp_path / name).banks()) for name in ("straight", "killed")]
    pixels = [torch.cat([batch.images for batch in bank_batches(bank)]) for bank in banks]
    assert torch.equal(pixels[0], pixels[1])


def bank_batches(folder):
    from dfqbench.store.bank import BankKey, BankReader

    return BankReader(folder, BankKey.from_dict(folder.read_manifest()["key"])).batches()


@pytest.mark.parametrize("method", DIRECT)
@pytest.mark.parametrize("crash_epoch", [0, 1])  # after the calibration epoch; after a fine-tuning epoch
def test_killed_fine_tuning_resumes_as_if_uninterrupted(method, crash_epoch, tiny_request, tmp_path):
    straight_request = _request(tiny_request, method, tmp_path / "straight")
    straight = run(straight_request, RecordingProgress())
    crashed = _request(tiny_request, method, tmp_path / "crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(crashed, CrashAfterEpoch(crash_epoch))
    resumed = run(crashed, RecordingProgress())
    assert resumed.sessions == 2 and resumed.diverged is None
    assert resumed.top1_per_epoch == straight.top1_per_epoch
    assert resumed.images_generated == straight.images_generated == 3 * 16 + 2 * 3 * 8
    assert _iteration_rows(crashed) == _iteration_rows(straight_request)
    a, b = prepare(straight_request).folder.load_checkpoint(), prepare(crashed).folder.load_checkpoint()
    assert same_state(a["student"], b["student"]) and same_state(a["generator"], b["generator"])


# -- switches ------------------------------------------------------------------------------------------------------
def test_hast_lambda_eps_are_the_hard_coded_values_unless_asked_for_the_hocons():
    from dfqbench.methods.hast import HAST, HastConfig
    from dfqbench.methods.synq import SynQ, SynqConfig

    assert (HAST(HastConfig(), 100, 32, "cifar100").fa_weight, HAST(HastConfig(), 100, 32, "cifar100").eps) == \
        (1000.0, 0.01)  # HA:options.py:L59-61
    hocon = HAST(HastConfig(lambda_eps="hocon"), 100, 32, "cifar100")
    assert (hocon.fa_weight, hocon.eps) == (2000.0, 0.02)
    assert HAST(HastConfig(lambda_eps="hocon"), 1000, 224, "imagenet").fa_weight == 4000.0
    assert SynQ(SynqConfig(lambda_eps="hocon"), 1000, 224, "imagenet").fa_weight == 4000.0
    with pytest.raises(DfqbenchError, match="no synq hocon is released for cifar10"):
        SynQ(SynqConfig(lambda_eps="hocon"), 10, 32, "cifar10")


def test_synq_zero_image_forwards_move_the_ranges_only_while_they_update(tiny_request, tmp_path):
    """SynQ's per-iteration GradCAM constructor forwards a zero image through the student (SQ:src/gradcam.py
    L102-112): with ``zero_image_probe`` (faithful) the calibration ranges differ from a run without it; once the
    ranges are frozen the zero image changes nothing."""
    on = _trainer(tiny_request, "synq", tmp_path / "on")
    off = _trainer(tiny_request, "synq", tmp_path / "off", "method.zero_image_probe=false")
    for trainer in (on, off):
        trainer.generator.train()
        set_range_update(trainer.student, True)
        trainer.step.iteration(train_q=False)
    assert any(not torch.equal(a, b) for a, b in zip(_ranges(on), _ranges(off)))
    off.student.load_state_dict(on.student.state_dict())
    for trainer in (on, off):
        set_range_update(trainer.student, False)
        torch.manual_seed(1)
        trainer.step.iteration(train_q=True)
    assert same_state(on.student.state_dict(), off.student.state_dict())


def test_synq_filters_every_bank_batch_and_zeroes_nan_pixels(tiny_request, tmp_path):
    trainer = _trainer(tiny_request, "synq", tmp_path)
    method, source = trainer.method, trainer.generator
    sample = method.sample(4, torch.device("cpu"))
    sample.z[0, 0] = float("nan")  # a whole channel: some of it survives any crop
    x = method.generate(source, sample)
    assert torch.isfinite(x).all() and (x[0, 0] == 0).all() and (x[1:] != 0).any()  # SQ:src/trainer_direct.py:L483
    wide = _trainer(tiny_request, "synq", tmp_path / "scaled", "method.d0_reference=224").method
    sample = method.sample(4, torch.device("cpu"))
    assert not torch.allclose(method.generate(source, sample), wide.generate(source, sample))  # D0 80 → 80·8/224


# -- presets -------------------------------------------------------------------------------------------------------
def test_released_presets():
    from dfqbench.methods.hast import HAST
    from dfqbench.methods.intraq import IntraQ
    from dfqbench.methods.synq import SynQ

    c10, imagenet = IntraQ.paper_protocol("cifar10", "resnet20_cifar10", 4, 4), IntraQ.paper_protocol(
        "imagenet", "resnet18", 4, 4)
    assert {k: c10["train"][k] for k in ("epochs", "iters_per_epoch", "batch_size", "lr_q", "milestones_q")} == \
        {"epochs": 151, "iters_per_epoch": 200, "batch_size": 256, "lr_q": 1e-4, "milestones_q": (20, 40, 60)}
    assert (imagenet["train"]["batch_size"], imagenet["train"]["lr_q"]) == (16, 1e-6)
    assert (c10["method"]["target_min"], imagenet["method"]["margin_upper"]) == (0.95, 2.0)
    hast = HAST.paper_protocol("cifar10", "resnet20_cifar10", 3, 3)
    assert hast["train"]["lr_q"] == 1e-5 and hast["method"] == {"beta": 10.0, "gamma": 2.0, "aug_prob": 0.0}
    synq_in = SynQ.paper_protocol("imagenet", "resnet18", 3, 3)
    assert (synq_in["train"]["epochs"], synq_in["train"]["batch_size"], synq_in["train"]["eval_start_epoch"]) == \
        (101, 16, 5)
    assert (synq_in["method"]["lambda_ce"], synq_in["method"]["lambda_cam"], synq_in["method"]["perturbed_fa"]) == \
        (0.5, 50.0, True)
    synq_c10 = SynQ.paper_protocol("cifar10", "resnet20_cifar10", 3, 3)
    assert (synq_c10["train"]["batch_size"], synq_c10["method"]["tau"]) == (256, 0.7)
    assert "not released" in SynQ.paper
    quick = IntraQ.quick_protocol(IntraQ.default_config())
    assert (quick["bank_batches"], quick["bank_batch_size"], quick["synthesis_steps"]) == (4, 128, 250)
