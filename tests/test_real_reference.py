"""The real-data reference (issue 20): ``real_kd`` fine-tunes on a bank of real training images with the direct
family's KD recipe, and is labelled NOT data-free everywhere.

The "training split" here is a small ImageFolder of random 32×32 PNGs made in tmp_path (the layout a CIFAR train
folder has, ``<root>/cifar10-train/<class>/…``), or the tiny network's own task images; nothing is downloaded and
no test compares float32 numbers bit for bit with stored ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfqbench.errors import DfqbenchError
from dfqbench.methods.real_kd import RealKD, RealKDConfig, real_bank_key
from dfqbench.specs import RunSpec
from dfqbench.store import ResultsStore
from dfqbench.zoo import NORMALIZATIONS, model_info
from dfqbench.zoo import train_data
from dfqbench.zoo.train_data import choose_images, locate_train_split

CLASSES = [f"class{c}" for c in range(10)]
PER_CLASS = 4  # 40 images; a bank of 2 × 16 = 32 takes 3 or 4 of each class, so 8 files are left out
C10 = NORMALIZATIONS["cifar10"]


def make_folder(root: Path, per_class: int = PER_CLASS) -> Path:
    """``<root>/cifar10-train/<class>/<i>.png``: seeded random 32×32 RGB images."""
    rng = np.random.default_rng(0)
    for name in CLASSES:
        folder = root / "cifar10-train" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root / "cifar10-train"


def spec(bits: str = "w4a4", seed: int = 0, **config) -> RunSpec:
    method_config = {**RealKD.default_config(), "bank_batches": 2, "bank_batch_size": 16, **config}
    return RunSpec(method="real_kd", method_version=RealKD.version, model="resnet20_cifar10", dataset="cifar10",
                   bits=bits, seed=seed, teacher={"source": "file", "sha256": "ab" * 32},
                   normalization={"mean": list(C10.mean), "std": list(C10.std), "name": C10.name}, quant={},
                   train={}, method_config=method_config)


def key_at(root: Path, run: RunSpec | None = None):
    """The bank key of ``run`` (default :func:`spec`) with its training split under data root ``root``."""
    run = run or spec()
    split = locate_train_split(model_info(run.model), "auto", root)
    return real_bank_key(run, RealKDConfig(**run.method_config), split, 32, 10)


def rewrite(path: Path) -> None:
    """Change one image's pixels (and so its bytes)."""
    pixels = np.array(Image.open(path))
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(path)


# -- which images, and what names them ---------------------------------------------------------------------------
def test_draw_is_class_balanced_seeded_and_checked():
    labels = torch.arange(10).repeat_interleave(7)  # 10 classes × 7
    chosen = choose_images(labels, 32, 10, seed=3)
    counts = torch.bincount(labels[chosen], minlength=10)
    assert chosen.unique().numel() == 32 and sorted(counts.tolist()) == [3] * 8 + [4] * 2
    assert torch.equal(chosen, choose_images(labels, 32, 10, seed=3))
    assert not torch.equal(chosen, choose_images(labels, 32, 10, seed=4))
    assert choose_images(labels, 32, 10, seed=3, balanced=False).unique().numel() == 32
    with pytest.raises(DfqbenchError, match="needs 71 images but the training split has 70"):
        choose_images(labels, 71, 10, seed=0)
    with pytest.raises(DfqbenchError, match="class 9 of the training split has 1 images"):
        choose_images(torch.cat([labels[labels < 9], torch.tensor([9])]), 60, 10, seed=0)


def test_folder_bank_key_is_content_addressed(tmp_path):
    folder = make_folder(tmp_path / "a")
    base = key_at(tmp_path / "a")
    assert base.bank_id == key_at(tmp_path / "a").bank_id  # the same files: the same bank
    assert base.method == "real_kd" and base.steps == 0 and base.synthesis["source"]["kind"] == "folder"
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # its path is not part of it
    assert key_at(tmp_path / "b").bank_id == base.bank_id
    assert key_at(tmp_path / "a", spec(bits="w3a3")).bank_id == base.bank_id  # bits share one bank
    assert key_at(tmp_path / "a", spec(seed=1)).bank_id != base.bank_id  # another draw
    assert key_at(tmp_path / "a", spec(bank_batches=1)).bank_id != base.bank_id  # another count

    split = locate_train_split(model_info("resnet20_cifar10"), "auto", tmp_path / "b")
    chosen = set(split.choose(32, 10, seed=0).tolist())
    left_out = next(i for i in range(len(split.paths)) if i not in chosen)
    rewrite(Path(split.paths[left_out]))  # a file the bank does not hold: the same bank
    assert key_at(tmp_path / "b").bank_id == base.bank_id
    rewrite(Path(split.paths[next(iter(chosen))]))  # a file it holds: another bank
    changed = key_at(tmp_path / "b").bank_id
    assert changed != base.bank_id
    (folder / "class0" / "zzz.png").write_bytes(Path(split.paths[0]).read_bytes())  # another file list
    assert key_at(tmp_path / "a").bank_id not in (base.bank_id, changed)


def test_torchvision_split_is_named_by_its_md5_list_without_downloading(tmp_path):
    root = tmp_path / "empty"
    split = locate_train_split(model_info("resnet20_cifar10"), "auto", root)
    identity = split.identity(5120, 10, 0)
    assert split.kind == "torchvision" and identity["archive_md5"] == "c58f30108f718f92721af3b95e74349a"
    assert len(identity["files_md5"]) == 5 and not root.exists()  # nothing fetched to name it
    with pytest.raises(DfqbenchError, match="no CIFAR-10 train folder under data root"):
        locate_train_split(model_info("resnet20_cifar10"), "folder", root)
    with pytest.raises(DfqbenchError, match="no ImageNet train folder under data root"):
        locate_train_split(model_info("resnet18"), "auto", root)


def test_a_folder_split_reads_only_the_asked_images(tmp_path, monkeypatch):
    make_folder(tmp_path)
    split = locate_train_split(model_info("resnet20_cifar10"), "folder", tmp_path)
    opened = []
    real_read = train_data._read
    monkeypatch.setattr(train_data, "_read", lambda path, transform: opened.append(path) or real_read(path, transform))
    images = split.read([5, 2])
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    assert sorted(opened) == sorted([split.paths[5], split.paths[2]])
    assert torch.equal(images[1], torch.from_numpy(np.array(Image.open(split.paths[2]))).permute(2, 0, 1))


def test_bad_settings_are_one_line():
    with pytest.raises(DfqbenchError, match="never data-free; choices: false"):
        RealKDConfig(data_free=True)
    with pytest.raises(DfqbenchError, match="method.source='web'; choices: auto, folder, torchvision"):
        RealKDConfig(source="web")
    with pytest.raises(DfqbenchError, match="synthesises nothing; choices: 0"):
        RealKDConfig(synthesis_steps=10)


# -- the stored bank ---------------------------------------------------------------------------------------------
def build(run: RunSpec, results: Path) -> RealKD:
    method = RealKD(RealKDConfig(**run.method_config), 10, 32, "cifar10")
    method.prepare_run(run, results)
    method.setup(torch.nn.Linear(1, 1), torch.device("cpu"))
    return method


def test_bank_of_real_images_is_stored_once_and_rebuilt_for_changed_data(tmp_path, monkeypatch):
    make_folder(tmp_path / "data")
    monkeypatch.setenv("DFQBENCH_DATA", str(tmp_path / "data"))
    results = tmp_path / "results"
    method = build(spec(), results)
    banks = [f.name for f in ResultsStore(results).banks()]
    assert len(banks) == 1 and banks[0].startswith("real_kd_resnet20_cifar10_s0_")
    assert banks[0].endswith(RealKD.needs_bank(spec()).bank_id)

    # the bank holds the chosen files' pixels, normalised as the teacher is evaluated, with their classes
    split = method.split
    chosen = split.choose(32, 10, 0)
    images, labels = method.bank.gather(torch.arange(32))
    expected = split.read(chosen.tolist()).float() / 255
    expected = (expected - torch.tensor(C10.mean).view(1, 3, 1, 1)) / torch.tensor(C10.std).view(1, 3, 1, 1)
    assert torch.equal(labels, split.labels[chosen])
    assert torch.allclose(images, expected, atol=4e-3)  # fp16 storage: relative error ≤ 2^-11 of values ≤ 2.2
    assert torch.bincount(labels, minlength=10).min() >= 3

    manifest = (results / "banks" / banks[0] / "manifest.json").read_bytes()
    build(spec(bits="w3a3"), results)  # another bit-width: the same bank, read, not rebuilt
    assert [f.name for f in ResultsStore(results).banks()] == banks
    assert (results / "banks" / banks[0] / "manifest.json").read_bytes() == manifest

    rewrite(Path(split.paths[int(chosen[0])]))
    build(spec(), results)
    assert len(list(ResultsStore(results).banks())) == 2  # changed data: another bank, the first kept


# -- the method, its records and the report ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Finished tiny runs: gdfq and real_kd at W4A4 and real_kd at W3A3 (seed 0, quick protocol)."""
    from dfqbench.core.progress import SilentProgress
    from dfqbench.runner import RunRequest, run

    from conftest import TINY_OVERRIDES

    root = tmp_path_factory.mktemp("real") / "results"
    records = {}
    for method, bits in (("gdfq", "w4a4"), ("real_kd", "w4a4"), ("real_kd", "w3a3")):
        request = RunRequest(method=method, model="tiny_cifar10", bits=bits, seed=0, protocol="quick",
                             overrides=[*TINY_OVERRIDES, "quant.tracker=ema"], results=str(root), device="cpu",
                             log_every=2)
        records[(method, bits)] = run(request, SilentProgress())
    return root, records


def test_real_kd_runs_on_the_tiny_network_and_records_not_data_free(results):
    root, records = results
    record = records[("real_kd", "w4a4")]
    assert record.best_top1 is not None and 0 <= record.best_top1 <= 100
    assert record.spec["method"] == "real_kd" and record.spec["method_config"]["data_free"] is False
    assert record.spec["method_config"]["calibration"] == "bank"
    stored = json.loads((root / "runs" / record.run_name / "record.json").read_text())
    assert stored["spec"]["method_config"]["data_free"] is False
    assert "data_free" not in records[("gdfq", "w4a4")].spec["method_config"]
    banks = [f.name for f in ResultsStore(root).banks()]  # W3A3 and W4A4 read one bank of tiny train images
    assert len(banks) == 1 and banks[0].startswith("real_kd_tiny_cifar10_s0_")


def test_list_methods_marks_real_kd_not_data_free(capsys):
    from dfqbench.cli import main

    assert main(["list", "methods", "--json"]) == 0
    rows = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert rows["real_kd"]["data_free"] is False and "NOT DATA-FREE" in rows["real_kd"]["paper"]
    assert all(m["data_free"] for name, m in rows.items() if name != "real_kd")
    assert main(["list", "methods"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "real_kd" in line)
    assert "REAL DATA (not data-free)" in line


def _report(root: Path, table: str, where: list[str] = ()):
    from dfqbench.report.make import ReportRequest, make_report

    return make_report(ReportRequest(results=root, table=table, where=list(where)))


def _mentions(table, what: str) -> bool:
    texts = [table.title, *(g.title for g in table.groups), *(label for row in table.rows for label in row.labels),
             *(json.dumps(r, default=str) for r in table.records)]
    return any(what in text for text in texts)


@pytest.mark.parametrize("layout", ["all", "table1", "qimera_t2", "synq_table1", "ablation", "methods"])
def test_real_kd_never_enters_data_free_tables(results, layout):
    root, records = results
    report = _report(root, layout)
    data_free = [t for t in report.tables if t.key != "real_data"]
    assert not any(_mentions(t, "real_kd") for t in data_free)
    if layout in ("table1", "methods"):
        assert data_free and any(_mentions(t, "gdfq") or _mentions(t, "GDFQ") for t in data_free)
    if layout == "all":
        assert [t.key for t in report.tables].count("real_data") == 1
    else:
        assert "2 not-data-free runs (real training images) kept out of this table" in report.text


def test_real_data_table_shows_the_reference_beside_the_best_data_free_method(results):
    root, records = results
    report = _report(root, "real_data")
    (table,) = report.tables
    assert table.key == "real_data" and "not data-free" in table.title
    assert [g.title for g in table.groups] == ["real_kd (not data-free)", "best data-free method here"]
    rows = {r["bits"]: r for r in table.records}
    assert set(rows) == {"w3a3", "w4a4"} and all(r["data_free"] is False for r in rows.values())
    real, gdfq = records[("real_kd", "w4a4")], records[("gdfq", "w4a4")]
    assert rows["w4a4"]["mean"] == real.best_top1 and rows["w4a4"]["best_data_free"] == "gdfq"
    assert rows["w4a4"]["gap"] == pytest.approx(real.best_top1 - gdfq.best_top1)
    assert rows["w3a3"]["best_data_free"] is None and rows["w3a3"]["gap"] is None  # no data-free run at W3A3
    assert "Not data-free: fine-tuned on real training images" in report.text
    latex = _latex(root)
    assert "not data-free" in latex


def _latex(root: Path) -> str:
    from dfqbench.report.make import ReportRequest, make_report

    return make_report(ReportRequest(results=root, table="real_data", format="latex")).text


def test_methods_view_shows_real_kd_only_when_named(results):
    root, _ = results
    report = _report(root, "methods", ["method=gdfq,real_kd"])
    titles = [g.title for t in report.tables for g in t.groups]
    assert "real_kd (not data-free)" in titles and "GDFQ" in titles
    assert "kept out of this table" not in report.text


# -- the grid dry run --------------------------------------------------------------------------------------------
GRID = """
name: reference
base: {model: tiny_cifar10, protocol: quick, bits: w4a4, train.epochs: 2, train.iters_per_epoch: 2,
       train.batch_size: 4, train.warmup_epochs: 1, train.range_update_epochs: 1}
axes:
  method: [gdfq, real_kd]
"""


def test_dry_run_says_a_grid_holds_runs_that_are_not_data_free(tmp_path, monkeypatch):
    from dfqbench.launch.grid import load_grid
    from dfqbench.launch.plan import LaunchOptions, plan_grid
    from dfqbench.launch.summary import describe, plan_document

    monkeypatch.setenv("DFQBENCH_PLAN_CACHE", "off")
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    plan = plan_grid(load_grid(path), LaunchOptions(results=tmp_path / "results", device="cpu"))
    text = describe(plan)
    assert "NOT data-free: 1 runs of real_kd fine-tune on real training images" in text
    document = plan_document(plan)
    assert document["not_data_free"] == {"methods": ["real_kd"], "runs": 1}
    (bank,) = document["banks"]
    assert bank["name"].startswith("real_kd_tiny_cifar10_s0_") and bank["steps"] == 0
    path.write_text(GRID.replace("[gdfq, real_kd]", "[gdfq]"))
    only_gdfq = plan_grid(load_grid(path), LaunchOptions(results=tmp_path / "results", device="cpu"))
    assert "data-free" not in describe(only_gdfq) and plan_document(only_gdfq)["not_data_free"]["runs"] == 0
