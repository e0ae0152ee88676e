"""SynQ Table 1 and IntraQ's README in published.yaml, and `report --table synq_table1` (issue 20).

The published numbers are checked against dfqbench's transcription beside the repository (the two spec files
under ../shared/spec) when it is present. The layout is checked on hand-written records (the report reads
records only: no method plugin is needed for ``intraq``, ``hast`` or ``synq``, registered or not).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dfqbench.cli import main
from dfqbench.report.load import RunRecord, Scan
from dfqbench.report.published import load_published, split_row
from dfqbench.report.render import to_csv, to_latex_document, to_markdown
from dfqbench.report.synq_table import synq_tables

SPEC_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "spec"
PYTORCHCV = {"source": "pytorchcv", "pytorchcv": "0.0.74", "file": "x.pth", "sha256": "ab" * 32}
OTHER_TEACHER = {"source": "file", "sha256": "fddb0e96" + "0" * 56}
DATASETS = {"resnet20_cifar10": "cifar10", "resnet20_cifar100": "cifar100", "resnet18": "imagenet"}


def shared_file(name: str) -> Path:
    path = SPEC_DIR / name
    if not path.is_file():
        if os.environ.get("DFQBENCH_REQUIRE_SHARED") == "1":
            pytest.fail(f"{path} missing and DFQBENCH_REQUIRE_SHARED=1")
        pytest.skip(f"{path} not present")
    return path


def record(tmp_path: Path, method: str, best: float, *, model: str = "resnet20_cifar10", bits: str = "w3a3",
           seed: int = 0, protocol: str = "paper", teacher: dict | None = None, fp: float = 93.89,
           changed: dict | None = None) -> RunRecord:
    """A finished run's record as the report reads it; ``changed`` {} = the method's default configuration."""
    changed = {} if changed is None else changed
    spec = {"method": method, "method_version": "1", "model": model, "dataset": DATASETS[model], "bits": bits,
            "seed": seed, "protocol": protocol, "teacher": teacher or PYTORCHCV, "run_id": f"{method}{seed}{bits}",
            "train": {"epochs": 151, "iters_per_epoch": 200, "batch_size": 256},
            "method_config": {"variant": "faithful", **{k.split(".", 1)[1]: v for k, v in changed.items()}},
            "quant": {}, "changed": changed}
    rec = {"run_id": spec["run_id"], "spec": spec, "best_top1": best, "final_top1": best - 0.2, "fp_top1": fp,
           "finished_at": f"2026-01-0{seed + 1}T00:00:00Z"}
    return RunRecord(tmp_path / spec["run_id"], rec)


def write(results: Path, run: RunRecord) -> None:
    """The run's folder as the trainer leaves it (spec.json, record.json)."""
    folder = results / "runs" / run.spec["run_id"]
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(run.spec))
    (folder / "record.json").write_text(json.dumps(run.record))


# -- published numbers ---------------------------------------------------------------------------------
def test_synq_table1_and_intraq_readme_parse():
    pub = load_published()
    synq = pub.tables["synq_t1"]
    assert synq.columns == ["IntraQ", "HAST", "TexQ", "SynQ"] and len(synq.rows) == 10
    assert synq.method_of == {"IntraQ": "intraq", "HAST": "hast", "SynQ": "synq"}
    assert set(synq.unsupported) == {"TexQ"} and synq.unsupported["TexQ"].startswith("code not released")
    c10 = synq.row("resnet20_cifar10", "w3a3")
    assert c10.fp == 93.89 and (c10.values["SynQ"].mean, c10.values["SynQ"].std) == (88.11, 0.15)
    assert c10.values["HAST"].mean == 86.34 and c10.values["HAST"].std is None and c10.values["TexQ"].mean == 86.47
    assert synq.row("resnet50", "w4a4").values["IntraQ"] is None
    assert synq.row("resnet50", "w3a3").values["TexQ"].mean == 25.27
    assert synq.row("mobilenetv2_w1", "w3a3").values["HAST"] is None
    assert synq.row("resnet18", "w4a4").values["SynQ"].mean == 67.90
    readme = pub.tables["intraq_readme"]
    assert readme.method_of == {"IntraQ": "intraq"} and len(readme.rows) == 8
    assert readme.row("resnet18", "w5a5").values["IntraQ"].mean == 69.94
    assert readme.row("resnet20_cifar100", "w3a3").values["IntraQ"].mean == 48.25  # the README's swap, corrected
    # AdaSG Table 1 keeps IntraQ published-only (its column's mapping is the two tables' own)
    assert "IntraQ" not in pub.tables["table1"].method_of and not pub.tables["table1"].unsupported


def test_synq_numbers_are_the_transcribed_ones():
    """SynQ, TexQ and HAST as paper-tables.md lists them ("in the same order"); IntraQ as newer-methods.md §6."""
    text = shared_file("paper-tables.md").read_text()
    synq = load_published().tables["synq_t1"]
    order = [(row.model, row.bits) for row in synq.rows]
    sentence = re.search(r"SynQ \(ICLR 2025\) Table 1, mean of 5 seeds:(.*?)\nTexQ", text, re.S).group(1)
    printed = [(float(m), float(s)) for m, s in re.findall(r"(\d+\.\d+) ± (\d+\.\d+)", sentence)]
    assert [(synq.row(*cell).values["SynQ"].mean, synq.row(*cell).values["SynQ"].std) for cell in order] == printed
    for name in ("TexQ", "HAST"):
        line = re.search(rf"^{name} \(.*?\): (.*?)\.$", text, re.M).group(1)
        listed = [None if v.strip() == "-" else float(v) for v in line.split(" in the same order")[0].split(" / ")]
        values = [synq.row(*cell).values[name] for cell in order]
        assert [None if v is None else v.mean for v in values] == listed, name
    section = shared_file("newer-methods.md").read_text().split("## 6.")[1].split("## 7.")[0]
    cells = {"C10": "resnet20_cifar10", "C100": "resnet20_cifar100", "R18": "resnet18", "MV2": "mobilenetv2_w1"}
    readme = load_published().tables["intraq_readme"]
    checked = 0
    for line in section.splitlines():
        parts = split_row(line) if line.startswith(("| C", "| R18", "| MV2")) else []
        if not parts or " / " in parts[0]:
            continue
        key, bits = parts[0].split()
        model = cells[key]
        number = re.match(r"(\d+\.\d+)\s+(.*)", parts[1])
        if number is None:
            continue
        value, tags = float(number[1]), number[2].split()
        if "S" in tags:
            assert synq.row(model, bits.lower()).values["IntraQ"].mean == value, line
            checked += 1
        if "R" in tags or (key == "C100" and "A" in tags):  # the README's C100 rows as corrected (see its notes)
            assert readme.row(model, bits.lower()).values["IntraQ"].mean == value, line
            checked += 1
    assert checked == 7 + 8


# -- the layout ----------------------------------------------------------------------------------------
def test_synq_table1_without_runs_renders_the_published_numbers(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    assert main(["report", "--table", "synq_table1", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| method"))
    assert split_row(header)[1:3] == ["CIFAR-10 ResNet-20 (93.89) W4A4", "CIFAR-10 ResNet-20 (93.89) W3A3"]
    assert len(split_row(header)) == 1 + 10
    rows = {split_row(line)[0]: split_row(line)[1:] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    assert list(rows) == ["GDFQ", "ZeroQ", "ZAQ", "Qimera", "AdaSG", "AdaDFQ", "IntraQ", "HAST", "TexQ", "SynQ"]
    assert rows["SynQ"][1] == "–ᵃ / 88.11 ± 0.15 / –" and rows["HAST"][5] == "–ᵃ / 42.58 / –"
    # the baselines: the first other table that prints the cell (AdaSG Table 1, else Qimera Table 2), named
    assert rows["GDFQ"][0] == "–ᵃ / 90.11 / –" and rows["GDFQ"][1] == "–ᵃ / 75.11† / –"
    assert rows["AdaDFQ"][1] == "–ᵃ / 84.89 / –" and rows["ZeroQ"][0] == "–ᵃ / 79.30 / –"
    assert rows["ZeroQ"][1] == "–ᵃ / – / –" and rows["Qimera"][7] == "–ᵃ / – / –"
    assert ("Published numbers of GDFQ, ZAQ, Qimera, AdaSG, AdaDFQ from AdaSG Table 1; ZeroQ from Qimera Table 2: "
            "SynQ Table 1 prints its own for these baselines") in out
    assert "† re-run by a later paper's authors" in out
    assert rows["IntraQ"][6] == "–ᵃ / – / –"  # ResNet-50: a dash in the paper
    assert all(cell.startswith("unsupportedᵇ / ") for cell in rows["TexQ"])
    assert "ᵇ TexQ: unsupported: code not released" in out
    assert "Published numbers: Kim et al., ICLR 2025 (SynQ)" in out
    assert "SynQ Table 1 regenerated by dfqbench under the paper protocol" in out

    out_file = tmp_path / "synq.tex"
    assert main(["report", "--table", "synq_table1", "--results", str(results), "--format", "latex",
                 "--out", str(out_file)]) == 0
    latex = out_file.read_text()
    assert r"\multicolumn{3}{c}{CIFAR-10 ResNet-20 (93.89) W3A3}" in latex and r"88.11 $\pm$ 0.15" in latex
    assert r"TexQ & unsupported\textsuperscript{b} & 92.68 & --" in latex
    assert latex.count(r"\begin{table}") == 1


def test_synq_table1_latex_document_compiles(tmp_path):
    if shutil.which("pdflatex") is None:
        if os.environ.get("DFQBENCH_REQUIRE_TEX") == "1":
            pytest.fail("pdflatex not found and DFQBENCH_REQUIRE_TEX=1")
        pytest.skip("pdflatex not installed")
    scan = Scan(tmp_path, [record(tmp_path, "synq", 88.0, seed=s) for s in range(2)]
                + [record(tmp_path, "synq", 80.0, changed={"method.lambda_cam": 0.0})])
    tables = synq_tables(scan, load_published(), all_configurations=True)
    (tmp_path / "t.tex").write_text(to_latex_document(tables))
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 0


def test_our_runs_sit_beside_the_published_numbers(tmp_path):
    """Paper protocol: Δ with the reproduced mark; quick: its own table, no marks; another teacher: Δ of drops;
    a baseline: another table's published number; a method no table prints: its own row (published –); an
    unprinted cell: an extra column."""
    records = [record(tmp_path, "synq", best, seed=s) for s, best in enumerate([88.0, 88.2, 87.9])]  # drop 5.86
    records += [record(tmp_path, "intraq", 70.0, seed=0)]  # 7 pp below 77.07: not reproduced
    records += [record(tmp_path, "hast", 80.0, protocol="quick", seed=0)]
    records += [record(tmp_path, "synq", 85.5, model="resnet20_cifar10", bits="w4a4", teacher=OTHER_TEACHER,
                       fp=91.73)]
    records += [record(tmp_path, "gdfq", 75.0), record(tmp_path, "synq", 93.0, bits="w5a5")]
    records += [record(tmp_path, "zeroq_kd", 70.0)]
    records += [record(tmp_path, "gdfq", 60.0, model="resnet20_cifar100", bits="w5a5", fp=70.33)]  # outside
    tables = synq_tables(Scan(tmp_path, records), load_published())
    assert [t.title for t in tables] == ["SynQ Table 1 — protocol paper", "SynQ Table 1 — protocol quick"]
    paper, quick = tables
    titles = [g.title for g in paper.groups]
    w3 = titles.index("CIFAR-10 ResNet-20 (93.89 / 93.89) W3A3")
    other = next(i for i, t in enumerate(titles) if "teacher file:fddb0e96" in t)
    assert titles[other].startswith("CIFAR-10 ResNet-20 (91.73 / 93.89) W4A4")
    assert titles[-1] == "CIFAR-10 ResNet-20 (93.89 / 93.89) W5A5"  # ours only: after the printed cells
    rows = {row.labels[0]: row.cells for row in paper.rows}
    assert list(rows) == ["GDFQ", "ZeroQ", "ZAQ", "Qimera", "AdaSG", "AdaDFQ", "IntraQ", "HAST", "TexQ", "SynQ",
                          "ZeroQ+KD"]
    synq = [t.text for t in rows["SynQ"][w3]]
    assert synq[0].startswith("88.03 ± 0.15 (n=3)") and synq[1] == "88.11 ± 0.15" and synq[2] == "−0.08 ✓"
    assert rows["SynQ"][w3][0].bold and not rows["IntraQ"][w3][0].bold
    assert [t.text for t in rows["IntraQ"][w3]][2] == "−7.07 ✗"
    # another teacher: (85.5 − 91.73) − (92.76 − 93.89) = −5.10, the drop rule decides the mark
    assert [t.text for t in rows["SynQ"][other]][2] == "−5.10 ✗"
    assert [t.text for t in rows["GDFQ"][w3]][1:] == ["75.11†", "−0.11 ✓"]  # AdaSG Table 1's number
    assert [t.text for t in rows["ZeroQ+KD"][w3]][1:] == ["–", "–"]
    assert [t.text for t in rows["SynQ"][-1]][1:] == ["–", "–"]
    md = to_markdown(tables)
    assert "ZeroQ+KD: runs here, but not among the transcribed columns of SynQ Table 1" in md
    assert "1 finished run(s) of GDFQ in cells SynQ Table 1 does not print are not shown here" in md
    assert "Reproduced (✓): 2 cells; not reproduced (✗): 2 cells" in md
    quick_hast = next(row.cells for row in quick.rows if row.labels[0] == "HAST")
    w3_quick = [g.title for g in quick.groups].index("CIFAR-10 ResNet-20 (93.89 / 93.89) W3A3")
    assert [t.text for t in quick_hast[w3_quick]] == ["80.00 (n=1)", "86.34", "−6.34"]  # no mark: quick protocol
    assert "not comparable with the published numbers" in quick.caption
    csv_text = to_csv(tables)
    assert "synq_t1,paper,cifar10,resnet20_cifar10" in csv_text and ",synq," in csv_text


def test_other_configurations_are_labelled_rows(tmp_path):
    records = [record(tmp_path, "synq", 88.0, seed=s) for s in range(2)]
    records += [record(tmp_path, "synq", 80.0, changed={"method.lambda_cam": 0.0})]
    scan = Scan(tmp_path, records)
    plain = synq_tables(scan, load_published())[0]
    assert plain.label_columns == ["method"] and "method.lambda_cam=0.0 (--all-configurations" in to_markdown([plain])
    labelled = synq_tables(scan, load_published(), all_configurations=True)[0]
    assert labelled.label_columns == ["method", "configuration"]
    row = next(r for r in labelled.rows if r.labels == ["SynQ", "method.lambda_cam=0.0"])
    filled = [c for c in row.cells if c[0].text]
    assert len(filled) == 1 and filled[0][0].text.startswith("80.00 (n=1)") and not filled[0][0].bold


def test_table_all_shows_synq_table1_only_with_runs_of_its_methods(tmp_path, capsys):
    results = tmp_path / "results"
    write(results, record(tmp_path, "gdfq", 75.0))
    assert main(["report", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "### AdaSG Table 1" in out and "SynQ Table 1" not in out
    assert main(["report", "--results", str(results), "--table", "synq_table1"]) == 0
    out = capsys.readouterr().out
    assert "### SynQ Table 1 — protocol paper" in out and "| GDFQ | " in out
    write(results, record(tmp_path, "hast", 85.0, seed=1))
    assert main(["report", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "### SynQ Table 1 — protocol paper" in out
    assert "| HAST | –ᵃ / 92.36 / – | **85.00 (n=1)** / 86.34 / −1.34 ✗ |" in out
    assert synq_tables(Scan(tmp_path, [record(tmp_path, "gdfq", 75.0)]), load_published(), only_with_runs=True) == []
