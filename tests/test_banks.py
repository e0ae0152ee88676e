"""Image banks (dfqbench/store/bank, dfqbench/blocks/synthesis.py, dfqbench/launch/banks.py): content addressing,
kill/resume, damaged and foreign files, one synthesis for racing tasks, streaming, and banks in plans and status.

Everything runs on the tiny 8×8 network with a few steps per batch (seconds in all); no assertion depends on
timing.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import socket
import weakref
from pathlib import Path

import pytest
import torch

from dfqbench.blocks.synthesis import (BNSObjective, SynthesisSettings, bank_key, batch_generator, crop_and_flip,
                                       draw_crops, synthesise_bank)
from dfqbench.errors import DfqbenchError
from dfqbench.specs import RunSpec
from dfqbench.store import ResultsStore, StoreError
from dfqbench.store.bank import BankKey, BankReader, build_bank, codec, reader as reader_module
from dfqbench.zoo.tiny import TEACHER_ID, TINY_INPUT_SIZE, TINY_NUM_CLASSES, build_tiny

SETTINGS = SynthesisSettings(num_batches=3, batch_size=4, steps=6, aug_prob=0.5, plateau_patience=2)


def spec(bits: str = "w4a4", seed: int = 0, **changes) -> RunSpec:
    fields = dict(method="fakebank", method_version="1", model="tiny_cifar10", dataset="tiny", bits=bits, seed=seed,
                  teacher=dict(TEACHER_ID), normalization={}, quant={"tracker": "ema"}, train={"epochs": 3},
                  method_config={"lr": 0.1})
    fields.update(changes)
    return RunSpec(**fields)


def key_of(run: RunSpec, settings: SynthesisSettings = SETTINGS) -> BankKey:
    return bank_key(run, settings, TINY_INPUT_SIZE, TINY_NUM_CLASSES, loss={"bns": 1.0})


def teacher() -> torch.nn.Module:
    model = build_tiny(seed=0).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Recording(BNSObjective):
    """BNS, recording each batch it starts and each finished batch it is shown (a stateful objective's view);
    ``fail_at``: raise when that batch starts (a kill after ``fail_at`` finished batches)."""

    def __init__(self, model, fail_at: int | None = None, log: Path | None = None) -> None:
        super().__init__(model)
        self.model, self.fail_at, self.log = model, fail_at, log
        self.started: list[int] = []
        self.seen: list[tuple[int, torch.Tensor]] = []

    def begin_batch(self, index, labels, generator) -> None:
        if index == self.fail_at:
            raise RuntimeError("simulated kill")
        self.started.append(index)
        if self.log is not None:
            with open(self.log, "a") as handle:
                handle.write(f"{os.getpid()} {index}\n")

    def end_batch(self, index, images, labels) -> None:
        self.seen.append((index, images.clone()))


def synthesise(root: Path, objective=None, key: BankKey | None = None, **kwargs) -> BankReader:
    objective = objective or Recording(teacher())
    return synthesise_bank(objective.model, objective, key or key_of(spec()), SETTINGS, root, torch.device("cpu"),
                           poll_s=0.05, **kwargs)


def pixels(reader: BankReader) -> list[torch.Tensor]:
    return [b.images for b in reader.batches()]


# -- content addressing ------------------------------------------------------------------------------------------
def test_key_ignores_bits_and_schedule_but_not_seed_teacher_storage_or_loss(tmp_path):
    base = key_of(spec())
    assert key_of(spec()) == base and key_of(spec()).name == base.name
    for same in (spec(bits="w3a3"), spec(bits="w5a5"), spec(train={"epochs": 151}), spec(quant={"tracker": "x"}),
                 spec(method_config={"lr": 0.2}), spec(normalization={"mean": [0.5]})):
        assert key_of(same).name == base.name
    other_teacher = {"source": "file", "sha256": "ab" * 32}
    for different in (key_of(spec(seed=1)), key_of(spec(teacher=other_teacher)), key_of(spec(method_version="2")),
                      key_of(spec(), dataclasses.replace(SETTINGS, storage="uint8")),
                      key_of(spec(), dataclasses.replace(SETTINGS, steps=7)),
                      bank_key(spec(), SETTINGS, TINY_INPUT_SIZE, TINY_NUM_CLASSES, loss={"bns": 2.0})):
        assert different.name != base.name
    store = ResultsStore(tmp_path)
    assert store.bank(base.name).path == tmp_path / "banks" / base.name
    assert store.bank(key_of(spec(bits="w3a3")).name).path == store.bank(base.name).path
    with pytest.raises(StoreError, match="invalid bank name"):
        store.bank("../runs")
    with pytest.raises(DfqbenchError, match="bank storage"):
        dataclasses.replace(base, storage="int4")


def test_synthesis_is_deterministic_and_moves_the_pixels(tmp_path):
    a, b = pixels(synthesise(tmp_path / "a")), pixels(synthesise(tmp_path / "b"))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == SETTINGS.num_batches
    x0 = torch.randn(4, 3, TINY_INPUT_SIZE, TINY_INPUT_SIZE, generator=batch_generator(0, 0))
    assert not torch.allclose(a[0], x0.half().float(), atol=1e-2)  # optimised away from its N(0, 1) start
    other = pixels(synthesise(tmp_path / "c", key=key_of(spec(seed=1))))
    assert not torch.equal(other[0], a[0])


def test_crops_follow_the_random_resized_crop_rule_and_keep_gradients():
    g = torch.Generator().manual_seed(3)
    boxes, flips = draw_crops(500, 32, 0.5, g)
    top, left, h, w = boxes.T
    assert ((h >= 1) & (w >= 1) & (top >= 0) & (left >= 0) & (top + h <= 32) & (left + w <= 32)).all()
    area = (h * w).float() / 1024
    assert area.min() >= 0.5 * 0.9 and area.max() <= 1.0  # scale (0.5, 1) up to rounding
    assert 0.35 < flips.float().mean() < 0.65
    x = torch.randn(3, 3, 8, 8, requires_grad=True)
    full = torch.tensor([[0, 0, 8, 8]] * 3)
    out = crop_and_flip(x, full, torch.tensor([False, True, False]))
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))
    crop_and_flip(x, boxes[:3] % 4 + torch.tensor([0, 0, 4, 4]), flips[:3]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# -- kill and resume ---------------------------------------------------------------------------------------------
def test_killed_synthesis_resumes_with_the_pixels_of_an_uninterrupted_one(tmp_path):
    model = teacher()
    whole = Recording(model)
    reference = pixels(synthesise(tmp_path / "whole", whole))
    killed = Recording(model, fail_at=2)
    with pytest.raises(RuntimeError, match="simulated kill"):
        synthesise(tmp_path / "killed", killed)
    folder = ResultsStore(tmp_path / "killed").bank(key_of(spec()).name)
    assert folder.state().state == "partial" and folder.state().batches_done == 2
    with pytest.raises(StoreError, match=r"incomplete \(2/3 batches\)"):
        BankReader(folder, key_of(spec()))
    resumed = Recording(model)
    result = pixels(synthesise(tmp_path / "killed", resumed))
    assert resumed.started == [2]  # only the missing batch is synthesised
    assert all(torch.equal(x, y) for x, y in zip(result, reference))
    # a stateful objective is shown the same finished batches, in order, as in the uninterrupted synthesis
    assert [i for i, _ in resumed.seen] == [i for i, _ in whole.seen] == [0, 1, 2]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(resumed.seen, whole.seen))
    assert all(torch.equal(x, y) for (_, x), y in zip(whole.seen, reference))  # what it sees = what is stored


def test_dead_lease_shows_lost_and_is_taken_over(tmp_path):
    key = key_of(spec())
    folder = ResultsStore(tmp_path).bank(key.name)
    folder.path.mkdir(parents=True)
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that is surely dead now
    lease = {"job_id": "7", "host": socket.gethostname(), "pid": dead.pid, "heartbeat": 0.0}
    (folder.path / "lease.json").write_text(json.dumps(lease))
    (folder.path / ".batch_00000.safetensors.x.tmp").write_bytes(b"half")  # a write the kill interrupted
    assert folder.state().state == "lost"
    synthesise(tmp_path)
    assert folder.state().state == "done" and not (folder.path / "lease.json").exists()
    assert not list(folder.path.glob(".*.tmp"))


# -- damaged and foreign files -----------------------------------------------------------------------------------
def test_truncated_or_altered_batch_file_is_detected_and_rebuilt(tmp_path):
    reference = pixels(synthesise(tmp_path))
    key = key_of(spec())
    folder = ResultsStore(tmp_path).bank(key.name)
    path = next(folder.path.glob("batch_00001.*"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError) as info:
        BankReader(folder, key).read_batch(1)
    message = str(info.value)
    assert "\n" not in message and path.name in message and "truncated" in message
    with pytest.raises(StoreError, match="does not match its size and checksum"):
        BankReader(folder, key).verify()
    said: list[str] = []
    rebuilt = pixels(synthesise(tmp_path, say=said.append))
    assert any("batch 1" in line and "synthesising it again" in line for line in said)
    assert all(torch.equal(x, y) for x, y in zip(rebuilt, reference))
    altered = bytearray(path.read_bytes())
    altered[-1] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(altered))
    with pytest.raises(StoreError, match="does not match its checksum"):
        BankReader(folder, key).read_batch(1)


def test_each_batch_file_is_hashed_once_per_process(tmp_path, monkeypatch):
    """A bank just synthesised, or a finished one opened and verified, is read without hashing its files again."""
    import hashlib
    import types

    hashed: list[str] = []
    real_file_sha256 = reader_module.file_sha256

    def counted_sha256(data: bytes = b""):
        hashed.append("bytes")
        return hashlib.sha256(data)

    def counted_file_sha256(path):
        hashed.append("file")
        return real_file_sha256(path)

    # only the reader's hashing is counted (the writer and the bank key hash through the real hashlib)
    monkeypatch.setattr(reader_module, "hashlib", types.SimpleNamespace(sha256=counted_sha256))
    monkeypatch.setattr(reader_module, "file_sha256", counted_file_sha256)
    pixels(synthesise(tmp_path))  # every batch written now: nothing for the reader to hash
    assert hashed == []
    pixels(synthesise(tmp_path))  # finished: verify() hashes each file once, reading it does not again
    assert hashed == ["file"] * SETTINGS.num_batches
    hashed.clear()
    cold = BankReader(ResultsStore(tmp_path).bank(key_of(spec()).name), key_of(spec()))
    pixels(cold)  # not verified first: each file is checked as it is read
    assert hashed == ["bytes"] * SETTINGS.num_batches


def test_manifest_or_batch_of_another_configuration_is_detected(tmp_path):
    synthesise(tmp_path)
    other_key = key_of(spec(seed=1))
    synthesise(tmp_path, key=other_key)
    key = key_of(spec())
    store = ResultsStore(tmp_path)
    mine, other = store.bank(key.name), store.bank(other_key.name)
    # a batch file of the other bank, listed with its own (valid) checksum: the file says whose it is
    manifest = mine.read_manifest()
    source = next(other.path.glob("batch_00000.*"))
    (mine.path / source.name).write_bytes(source.read_bytes())
    manifest["batches"]["0"] = other.read_manifest()["batches"]["0"]
    mine.write_manifest(manifest)
    with pytest.raises(StoreError, match=f"written for bank '{other_key.bank_id}' batch 0, not '{key.bank_id}'"):
        BankReader(mine, key).read_batch(0)
    # the other bank's manifest in this folder
    mine.manifest_path.write_bytes(other.manifest_path.read_bytes())
    with pytest.raises(StoreError, match="written by another configuration") as info:
        BankReader(mine, key)
    assert "\n" not in str(info.value)
    said: list[str] = []
    synthesise(tmp_path, say=said.append)
    assert any("another configuration" in line and "rebuilding" in line for line in said)
    assert BankReader(mine, key).read_batch(0).images.shape == (4, 3, 8, 8)


def test_batch_files_are_never_unpickled(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    import io

    buffer = io.BytesIO()
    torch.save({"labels": torch.zeros(1, dtype=torch.long), "evil": Payload()}, buffer)
    with pytest.raises(ValueError, match="Unpickl|weights_only|global"):
        codec.decode_batch(buffer.getvalue(), codec.TORCH)
    with pytest.raises(ValueError):
        codec.decode_batch(b"\x08" + b"\x00" * 7 + b"not json", codec.SAFETENSORS)


def test_plain_tensor_files_when_safetensors_is_missing(tmp_path, monkeypatch):
    reference = pixels(synthesise(tmp_path / "st"))
    monkeypatch.setattr(codec, "has_safetensors", lambda: False)
    monkeypatch.setattr("dfqbench.store.bank.build.preferred_suffix", lambda: codec.TORCH)
    reader = synthesise(tmp_path / "pt")
    folder = reader.folder
    assert sorted(p.name for p in folder.path.glob("batch_*")) == [f"batch_0000{i}.pt" for i in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(pixels(reader), reference))
    images, labels = reader.load_all()
    picked, picked_labels = reader.gather(torch.tensor([11, 0, 5]))
    assert torch.equal(picked, images[[11, 0, 5]]) and torch.equal(picked_labels, labels[[11, 0, 5]])


# -- storage formats ---------------------------------------------------------------------------------------------
def test_compact_storages_round_trip_within_their_bounds():
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.equal(codec.roundtrip(x, "fp32"), x)
    half = codec.roundtrip(x, "fp16")
    assert ((half - x).abs() <= x.abs() * 2**-11 + 1e-7).all()
    q = codec.roundtrip(x, "uint8")
    step = (x.amax((2, 3)) - x.amin((2, 3))) / 255
    assert ((q - x).abs() <= step[:, :, None, None] / 2 + 1e-5).all()
    with pytest.raises(DfqbenchError, match="overflow fp16"):
        codec.encode_images(torch.full((1, 3, 2, 2), 1e6), "fp16")


# -- racing tasks ------------------------------------------------------------------------------------------------
def _race_worker(root: str, log: str, barrier, results) -> None:
    torch.set_num_threads(1)
    model = teacher()
    barrier.wait()
    reader = synthesise_bank(model, Recording(model, log=Path(log)), key_of(spec()), SETTINGS, root,
                             torch.device("cpu"), poll_s=0.05)
    results.put([b.images.sum().item() for b in reader.batches()])


def test_two_processes_racing_for_one_bank_synthesise_it_once(tmp_path):
    ctx = mp.get_context("fork")  # as tests/test_store.py: no re-import of torch per process
    barrier, results = ctx.Barrier(2), ctx.Queue()
    log = tmp_path / "synthesised.txt"
    procs = [ctx.Process(target=_race_worker, args=(str(tmp_path / "r"), str(log), barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0  # a crashed writer (e.g. two of them in one folder) fails here, not by a timeout
    sums = [results.get(timeout=10) for _ in procs]
    lines = log.read_text().split()
    batches = [int(i) for i in lines[1::2]]
    assert sorted(batches) == list(range(SETTINGS.num_batches))  # each batch synthesised once, in all
    assert len(set(lines[0::2])) == 1  # by one process
    assert sums[0] == sums[1]


# -- streaming ---------------------------------------------------------------------------------------------------
def test_streaming_reads_one_batch_file_at_a_time(tmp_path, monkeypatch):
    reader = synthesise(tmp_path)
    calls: list[int] = []
    original = reader_module.load_batch

    def counting(folder, key, index, entry, **kwargs):
        calls.append(index)
        return original(folder, key, index, entry, **kwargs)

    monkeypatch.setattr(reader_module, "load_batch", counting)
    stream = reader.batches()
    previous = None
    for k in range(SETTINGS.num_batches):
        batch = next(stream)
        assert calls == list(range(k + 1))  # batch k's file read only when batch k is asked for
        if previous is not None:
            assert previous() is None  # the stream kept no reference to the batch before
        previous = weakref.ref(batch)
        del batch
    images, labels = reader.load_all()
    assert images.shape == (12, 3, 8, 8) and labels.shape == (12,)
    picked, picked_labels = reader.gather(torch.tensor([7, 2, 11]))
    assert torch.equal(picked, images[[7, 2, 11]]) and torch.equal(picked_labels, labels[[7, 2, 11]])


# -- plans and status --------------------------------------------------------------------------------------------
@pytest.fixture
def fake_bank_method(monkeypatch):
    """``fakebank``: GDFQ that needs a tiny bank (defined here only), registered for one test."""
    from dfqbench.blocks.interface import METHODS
    from dfqbench.methods.gdfq import GDFQ
    from dfqbench.plugins import load_methods

    load_methods()

    class FakeBank(GDFQ):
        name = "fakebank"
        paper = "a GDFQ that needs an image bank (test only)"

        @classmethod
        def needs_bank(cls, run):
            return key_of(run)

    items = dict(METHODS._items)
    METHODS.add("fakebank", FakeBank)
    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", "off")
    yield FakeBank
    METHODS._items.clear()
    METHODS._items.update(items)


GRID = """
name: banks
base: {method: fakebank, model: tiny_cifar10, protocol: quick, train.epochs: 2, train.iters_per_epoch: 2,
       train.batch_size: 4, train.warmup_epochs: 1, train.range_update_epochs: 1}
axes:
  bits: [w3a3, w4a4, w5a5]
  seed: SEEDS
"""


def test_grid_of_three_bit_widths_needs_and_synthesises_one_bank(tmp_path, fake_bank_method):
    from dfqbench.launch.grid import load_grid
    from dfqbench.launch.plan import LaunchOptions, plan_grid
    from dfqbench.launch.summary import describe, plan_document

    path = tmp_path / "grid.yaml"
    path.write_text(GRID.replace("SEEDS", "[0]"))
    options = LaunchOptions(results=tmp_path / "results", device="cpu")
    plan = plan_grid(load_grid(path), options)
    assert len(plan.runs()) == 3
    document = plan_document(plan)
    assert len(document["banks"]) == 1 and document["banks_to_synthesise"] == 1
    bank = document["banks"][0]
    assert len(bank["runs"]) == 3 and bank["state"] == "pending" and document["bank_gpu_hours"] > 0
    assert {c["bank"] for c in document["cells"]} == {bank["name"]}
    text = describe(plan)
    assert "banks: 1 needed by 3 runs: 1 pending" in text and "to synthesise: 1 banks" in text

    # each run of the grid asks for its bank: one synthesis, three readers of the same pixels
    model = teacher()
    objective = Recording(model)
    read = [pixels(synthesise_bank(model, objective, fake_bank_method.needs_bank(c.spec), SETTINGS, options.results,
                                   torch.device("cpu"))) for c in plan.runs()]
    assert objective.started == list(range(SETTINGS.num_batches))
    assert all(torch.equal(x, y) for other in read[1:] for x, y in zip(read[0], other))
    after = plan_document(plan_grid(load_grid(path), options))
    assert after["banks"][0]["state"] == "done" and after["banks_to_synthesise"] == 0
    assert after["bank_gpu_hours"] == 0

    path.write_text(GRID.replace("SEEDS", "[0, 1]"))
    two = plan_document(plan_grid(load_grid(path), options))
    assert len(two["banks"]) == 2 and two["banks_to_synthesise"] == 1 and two["runs"] == 6


def test_cached_dry_run_lists_the_same_banks(tmp_path, fake_bank_method, monkeypatch):
    from dfqbench.launch.grid import load_grid
    from dfqbench.launch.plan import LaunchOptions
    from dfqbench.launch.plancache import cached_plan, plan_dry
    from dfqbench.launch.summary import plan_document

    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.replace("SEEDS", "[0]"))
    options = LaunchOptions(results=tmp_path / "results", device="cpu")
    full = plan_document(plan_dry(load_grid(path), options))
    cached = cached_plan(load_grid(path), options)
    assert cached is not None and plan_document(cached)["banks"] == full["banks"] and len(full["banks"]) == 1


def test_methods_without_a_bank_list_none(tmp_path):
    from dfqbench.launch.grid import load_grid
    from dfqbench.launch.plan import LaunchOptions, plan_grid
    from dfqbench.launch.summary import describe, plan_document

    plan = plan_grid(load_grid("smoke"), LaunchOptions(results=tmp_path, device="cpu"))
    assert plan_document(plan)["banks"] == [] and "banks:" not in describe(plan)


def test_status_lists_banks_apart_from_runs(tmp_path):
    from dfqbench.launch.status import status_document, status_report

    synthesise(tmp_path)
    with pytest.raises(RuntimeError):
        synthesise(tmp_path, Recording(teacher(), fail_at=1), key=key_of(spec(seed=1)))
    text, _ = status_report(tmp_path)
    assert "banks: 2 (1 partial, 1 done)" in text
    assert f"{key_of(spec(seed=1)).name}: partial, 1/3 batches" in text
    banks = {b["name"]: b for b in status_document(tmp_path)["banks"]}
    assert banks[key_of(spec()).name]["state"] == "done" and banks[key_of(spec(seed=1)).name]["batches_done"] == 1


def test_busy_bank_without_waiting_is_one_line(tmp_path):
    from dfqbench.store.bank import BankBusy
    from dfqbench.store.lease import Lease

    key = key_of(spec())
    folder = ResultsStore(tmp_path).bank(key.name)
    holder = Lease(folder.path, "other-task", "bank")
    assert holder.acquire() is None
    try:
        with pytest.raises(BankBusy, match="being synthesised by job other-task") as info:
            build_bank(folder, key, lambda i: None, wait=False)
        assert "\n" not in str(info.value)
    finally:
        holder.release()
