"""`dfqbench report`: tables against recorded snapshots, LaTeX that compiles, plots, comparisons, partial data.

Fixture records are written by :func:`write_run` in the format the trainer writes (record.json with the
full spec, metrics.jsonl with "iter" and "epoch" rows). Snapshots live in tests/fixtures/report/; after an
intended change of the layout, regenerate them with DFQBENCH_UPDATE_SNAPSHOTS=1 and review the diff.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dfqbench.cli import main
from dfqbench.report.ablation import ablation_terms, is_full
from dfqbench.report.compare import compare_scans
from dfqbench.report.load import RESULTS_ENV, Where, filter_scan, scan_results
from dfqbench.report.published import load_published, parse_value, split_row
from dfqbench.report.render import latex_escape, to_csv, to_latex, to_latex_document, to_markdown
from dfqbench.report.stats import student_t_two_sided_p, summarize, welch_test
from dfqbench.report.tables import build_tables
from dfqbench.specs import RunSpec

from conftest import TINY_OVERRIDES
from waiting import HANG_S

SNAPSHOTS = Path(__file__).parent / "fixtures" / "report"
SPEC_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "spec" / "paper-tables.md"
FILE_TEACHER = {"source": "file", "sha256": "fddb0e96e600e49984fd6ec4872feb17f3e78abcf9cd519adc75f1aa9fe9a855"}
PYTORCHCV_TEACHER = {"source": "pytorchcv", "pytorchcv": "0.0.74", "file": "resnet18-0952-0817d058.pth",
                     "sha256": "0817d058" + "0" * 56}
ADASG_TERM_OFF = {"ds_weight": "method.ds_weight=0", "as_weight": "method.as_weight=0",
                  "bound_weight": "method.bound_weight=0", "bns_weight": "method.bns_weight=0"}


def make_spec(method: str, model: str = "resnet20_cifar10", bits: str = "w4a4", seed: int = 0,
              protocol: str = "quick", teacher: dict | None = None, overrides: list[str] | tuple = (),
              legacy: bool = False) -> dict:
    """The spec `dfqbench run` builds for this cell (the method's defaults, presets and protocol, then the
    overrides), with the given teacher identity: without overrides, the cell's default configuration.
    ``legacy``: without the recorded ``changed`` (specs written before it existed)."""
    from dfqbench.specs.configuration import changes

    from dfqbench.plugins import load_methods
    from dfqbench.runner import resolve_settings
    from dfqbench.zoo import model_info

    method_cls = load_methods().get(method)
    info = model_info(model)
    train, method_config, quant = resolve_settings(method_cls, info.dataset, info.name, bits, protocol, list(overrides))
    spec = RunSpec(method=method, method_version=method_cls.version, model=model, dataset=info.dataset, bits=bits,
                   seed=seed, teacher=teacher or FILE_TEACHER,
                   normalization={"mean": [0.485, 0.456, 0.406], "name": "imagenet", "std": [0.229, 0.224, 0.225]},
                   quant=quant, train=train, method_config=method_config, protocol=protocol)
    default = resolve_settings(method_cls, info.dataset, info.name, bits, protocol, [])
    changed = None if legacy else changes({"train": train, "method_config": method_config, "quant": quant},
                                          dict(zip(("train", "method_config", "quant"), default)))
    return json.loads(json.dumps({**spec.to_dict(), "changed": changed}, default=list))


def write_run(root: Path, method: str, best: float | None, final: float | None = None, fp: float = 91.73,
              metrics: bool = True, **spec_kwargs) -> Path:
    """A finished run folder as the trainer writes it; top-1 rises to ``best`` at epoch 5 then ends at ``final``."""
    spec = make_spec(method, **spec_kwargs)
    folder = root / "runs" / f"{spec['method']}_{spec['model']}_{spec['bits']}_s{spec['seed']}_{spec['run_id']}"
    folder.mkdir(parents=True)
    epochs = spec["train"]["epochs"] if spec["train"]["epochs"] <= 8 else 8
    final = best if final is None else final
    top1 = {str(e): None if best is None else round(best - 3.0 + 0.5 * e, 2) for e in range(epochs)}
    if best is not None:
        top1[str(epochs - 3)], top1[str(epochs - 1)] = best, final
    record = {
        "best_epoch": None if best is None else epochs - 3, "best_top1": best, "calibrated_top1": None,
        "device": "cpu (2 threads)", "epochs": spec["train"]["epochs"], "final_top1": final,
        "finished_at": f"2026-11-23T07:0{spec['seed']}:00Z", "fp_top1": fp, "git": {"commit": "0" * 40, "dirty": False},
        "images_generated": 25600, "iterations": 400, "run_id": spec["run_id"], "run_name": folder.name,
        "sessions": 1, "spec": spec, "top1_per_epoch": top1 if best is not None else {},
        "versions": {"dfqbench": "0.1.0"}, "wall_time_s": 226.07,
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    (folder / "record.json").write_text(json.dumps(record))
    if metrics:
        write_metrics(folder, spec, epochs, offset=(best or 50.0) / 100.0)
    return folder


def write_metrics(folder: Path, spec: dict, epochs: int, offset: float = 0.5) -> None:
    iters = spec["train"]["iters_per_epoch"]
    rows = []
    for e in range(epochs):
        for it in (iters // 2 - 1, iters - 1):
            h = 0.3 + 0.1 * e + offset
            rows.append({"type": "iter", "epoch": e, "iter": it, "H_g": h, "H_q": h + 0.02,
                         "balance_gap": 0.2 / (e + 1) - 0.01 * offset, "R_before": 0.5, "g/loss": 1.0})
        rows.append({"type": "epoch", "epoch": e, "top1": 80.0 + e, "lr_q": 1e-4, "lr_g": 1e-3, "seconds": 1.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def unfinished(root: Path, method: str, state: str, **spec_kwargs) -> Path:
    spec = make_spec(method, **spec_kwargs)
    folder = root / "runs" / f"{method}_{spec['model']}_{spec['bits']}_s{spec['seed']}_{spec['run_id']}"
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(spec))
    if state in ("running", "failed"):
        write_metrics(folder, spec, 2)
    if state == "running":  # a live lease of this process (what dfqbench.launch writes while a task runs)
        lease = {"job_id": "local-1", "host": socket.gethostname(), "pid": os.getpid(), "token": "t",
                 "heartbeat": time.time(), "executor": "local"}
        (folder / "lease.json").write_text(json.dumps(lease))
    if state == "failed":
        (folder / "error.json").write_text(json.dumps({"type": "RunDiverged", "message": "nan", "traceback": ""}))
    return folder


@pytest.fixture
def results(tmp_path) -> Path:
    """Quick CIFAR-10 runs on the offline teacher plus one paper-protocol run, and unfinished/broken folders."""
    root = tmp_path / "results"
    for seed, best in enumerate([86.0, 87.0, 88.0]):
        write_run(root, "gdfq", best, best - 0.5, seed=seed)
    for seed, best in enumerate([88.5, 89.5]):
        write_run(root, "qimera", best, seed=seed)
    write_run(root, "adasg", 89.0)
    write_run(root, "adasg", 60.0, overrides=["method.ds_weight=0"])  # an ablation: not in Table 1
    write_run(root, "zeroq", 80.0)  # a method outside AdaSG Table 1: an extra column
    write_run(root, "gdfq", 59.0, bits="w3a3")
    write_run(root, "gdfq", 89.9, protocol="paper", teacher=PYTORCHCV_TEACHER, fp=93.89)
    unfinished(root, "zaq", "running")
    unfinished(root, "adadfq", "pending")
    unfinished(root, "gdfq", "failed", bits="w5a5")
    broken = root / "runs" / "qimera_resnet20_cifar10_w4a4_s9_deadbeef0000"
    broken.mkdir()
    (broken / "record.json").write_text('{"run_id": "deadbeef0000", "spec": {"method": "qim')  # half-written
    return root


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("DFQBENCH_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"snapshot {path} missing; run with DFQBENCH_UPDATE_SNAPSHOTS=1 and review it"
    assert text == path.read_text(), f"{name} differs from its snapshot (DFQBENCH_UPDATE_SNAPSHOTS=1 to accept)"


# -- published numbers ---------------------------------------------------------------------------------
def test_published_numbers_parse():
    pub = load_published()
    t1, q2 = pub.tables["table1"], pub.tables["qimera_t2"]
    assert len(t1.rows) == 15 and t1.columns == ["ZAQ", "IntraQ", "ARC+AIT", "GDFQ", "ARC", "Qimera", "AdaSG", "AdaDFQ"]
    row = t1.row("resnet20_cifar10", "w3a3")
    assert row.fp == 93.89 and row.values["GDFQ"].mean == 75.11 and row.values["GDFQ"].mark == "†"
    assert row.values["ZAQ"] is None and t1.row("resnet50", "w5a5").values["AdaDFQ"].mean == 76.03
    assert q2.row("resnet20_cifar10", "w4a4").values["Qimera (mean ± std)"].std == 0.49
    assert q2.row("mobilenetv2_w1", "w4a4").values["ZAQ"].note == "did not converge"
    assert t1.method_of == {"ZAQ": "zaq", "GDFQ": "gdfq", "Qimera": "qimera", "AdaSG": "adasg", "AdaDFQ": "adadfq"}
    ablation = pub.ablations["adasg_t2"]
    assert ablation.model == "resnet18" and ablation.bits == ["w3a3", "w5a5"] and len(ablation.rows) == 6
    assert ablation.rows[0][0] == (False, True, True, True) and ablation.rows[0][1]["w3a3"].mean == 14.86
    assert ablation.rows[5] == ((True,) * 4, {"w3a3": parse_value("37.04"), "w5a5": parse_value("70.29")})
    with pytest.raises(ValueError):
        parse_value("12.3x")


def test_published_rows_are_verbatim_from_the_spec():
    """Every transcribed row string occurs verbatim in SPEC_FILE (the tables' transcription beside the repo)."""
    if not SPEC_FILE.is_file():
        if os.environ.get("DFQBENCH_REQUIRE_SHARED") == "1":
            pytest.fail(f"{SPEC_FILE} missing and DFQBENCH_REQUIRE_SHARED=1")
        pytest.skip(f"{SPEC_FILE} not present")
    spec_lines = {line.strip() for line in SPEC_FILE.read_text().splitlines()}
    raw = load_published().raw
    for name, table in list(raw["tables"].items()) + list(raw["ablations"].items()):
        if table.get("verbatim", True):
            for line in [table["header"]] + table["rows"]:
                assert line in spec_lines, f"{name}: {line!r} is not in {SPEC_FILE.name}"
    assert split_row("| a | b |") == ["a", "b"]


# -- mapping, statistics -------------------------------------------------------------------------------
def test_ablation_terms_from_plugin_configs():
    from dfqbench.plugins import load_methods

    methods = load_methods()
    adasg = dataclasses.asdict(methods.get("adasg").config_class())
    assert ablation_terms(adasg) == (True, True, True, True) and is_full(adasg)
    assert ablation_terms({**adasg, "ds_weight": 0.0}) == (False, True, True, True)
    assert ablation_terms({**adasg, "bound_weight": 0}) == (True, True, False, True)
    assert ablation_terms({**adasg, "bns_weight": 0.0}) == (True, True, True, False)
    if "adadfq" in methods:
        adadfq = dataclasses.asdict(methods.get("adadfq").config_class())
        assert ablation_terms(adadfq) == (True, True, True, True)
        assert ablation_terms({**adadfq, "alpha_as": 0.0}) == (True, False, True, True)
        assert ablation_terms({**adadfq, "beta": 0.0}) == (False, False, True, True)
    gdfq = dataclasses.asdict(methods.get("gdfq").config_class())
    assert ablation_terms(gdfq) is None and is_full(gdfq)


def test_summary_and_welch_test():
    s = summarize([86.0, 87.0, 88.0, None])
    assert (s.n, s.mean, s.std) == (3, 87.0, 1.0)
    assert summarize([5.0]).std is None and summarize([None]) is None
    # two-sided 5 % critical values of Student's t
    for t, df in ((12.7062, 1), (4.3027, 2), (2.7764, 4), (2.2281, 10), (1.9600, 1e6)):
        assert student_t_two_sided_p(t, df) == pytest.approx(0.05, abs=2e-4)
    far = welch_test(summarize([86.0, 87.0, 88.0]), summarize([90.0, 91.0, 92.0]))
    assert far.outside_noise and far.delta == 4.0 and far.df == pytest.approx(4.0) and far.p < 0.05
    near = welch_test(summarize([86.0, 87.0, 88.0]), summarize([86.5, 87.5, 88.5]))
    assert near.outside_noise is False and near.verdict == "within seed noise"
    single = welch_test(summarize([86.0]), summarize([90.0, 91.0]))
    assert single.outside_noise is None and single.text == "no noise estimate (n = 1)"


def test_welch_test_known_case():
    """Wikipedia's "Welch's t-test" example 1 (two samples of 15): t = 2.46, ν = 25.0, p = 0.021."""
    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    result = welch_test(summarize(a), summarize(b))
    assert result.t == pytest.approx(2.46, abs=0.005) and result.df == pytest.approx(24.99, abs=0.01)
    assert result.p == pytest.approx(0.0214, abs=5e-4) and result.outside_noise
    assert welch_test(summarize(b), summarize(a)).t == pytest.approx(-result.t)
    same = welch_test(summarize([1.0, 1.0]), summarize([2.0, 2.0]))  # zero spread: outside the (zero) noise
    assert same.outside_noise and same.p == 0.0


# -- tables --------------------------------------------------------------------------------------------
def test_table1_markdown_snapshot_and_content(results):
    scan = scan_results(results)
    tables = build_tables(scan, load_published(), "table1")
    text = to_markdown(tables)
    check_snapshot("table1.md", text)
    paper, quick = tables  # one table per protocol, paper first
    assert paper.title.endswith("protocol paper") and quick.title.endswith("protocol quick")
    assert [g.title for g in quick.groups] == ["ZAQ", "GDFQ", "Qimera", "AdaSG", "AdaDFQ", "ZeroQ"]
    w4 = next(r for r in quick.rows if r.labels[3] == "W4A4")
    gdfq, qimera, adasg = w4.cells[1], w4.cells[2], w4.cells[3]
    assert gdfq[0].text == "87.00 ± 1.00 (n=3)" and gdfq[1].text == "90.11"
    # offline teacher: Δ compares drops, (87.00 − 91.73) − (90.11 − 93.89) = −0.95
    # a quick-protocol run: Δ without a reproduced mark (issue 22 item 4; the drops alone would give ✓)
    assert gdfq[2].text == "−0.95" and "file:fddb0e96" in w4.labels[2]
    assert qimera[0].text == "89.00 ± 0.71 (n=2)" and adasg[0].text == "89.00 (n=1)"
    assert qimera[0].bold and adasg[0].bold and not gdfq[0].bold  # a tie at the printed precision: both bold
    assert w4.cells[0][0].text.startswith("–") and w4.cells[0][0].status == " (1 running)"
    assert w4.cells[4][0].status == " (1 pending)" and "(1 pending)" in text  # markdown shows the status inline
    assert w4.labels[1] == "ResNet-20 (91.73 / 93.89)"
    paper_row = paper.rows[0]
    assert paper_row.labels[2] == "pytorchcv (papers')" and paper_row.cells[1][2].text == "−0.21 ✓"  # 89.90 − 90.11
    assert "protocol quick, a shortened schedule not comparable" in quick.caption and quick.caption.count(". ") == 0
    assert "not comparable" not in paper.caption and paper.caption.count(". ") == 0  # one sentence each
    assert any(n.startswith("2. Protocol: quick") and "not comparable" in n for n in quick.notes)
    assert not [t for t in quick.rows[1].cells for t in t if "✓" in t.text or "✗" in t.text]


def test_best_per_row_is_bold():
    from dfqbench.report.tables import bold_best

    assert bold_best([1.0, None, 3.0, 3.001, 2.0]) == [False, False, True, True, False]
    assert bold_best([None, None]) == [False, False]


def test_qimera_table2_and_ablation_snapshots(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):
        for bits, base in (("w3a3", 30.0), ("w5a5", 69.0)):
            for i, off in enumerate(("ds_weight", "as_weight", "bound_weight", "bns_weight", None)):
                write_run(root, "adasg", base + i + seed * 0.5, model="resnet18", bits=bits, seed=seed,
                          protocol="paper", teacher=PYTORCHCV_TEACHER, overrides=[ADASG_TERM_OFF[off]] if off else [],
                          fp=71.47, metrics=False)
    write_run(root, "zeroq", 22.0, model="resnet18", bits="w4a4", protocol="paper", teacher=PYTORCHCV_TEACHER,
              fp=71.47, metrics=False)
    scan = scan_results(root)
    published = load_published()
    ablation = build_tables(scan, published, "ablation")
    assert len(ablation) == 1
    table = ablation[0]
    assert [r.labels for r in table.rows][:6] == [["–", "yes", "yes", "yes"], ["yes", "–", "yes", "yes"],
                                                  ["yes", "yes", "–", "yes"], ["–", "yes", "yes", "yes"],
                                                  ["yes", "yes", "yes", "–"], ["yes", "yes", "yes", "yes"]]
    assert table.rows[0].cells[0][0].text == "30.25 ± 0.35 (n=2)"  # no L_ds, W3A3: seeds 30.0 and 30.5
    # 30.25 − 14.86 (the papers' teacher: absolute Δ); drops 71.47 − 30.25 = 41.22 vs 71.47 − 14.86 = 56.61: ✗
    assert table.rows[0].cells[0][2].text == "+15.39 ✗"
    assert table.rows[5].cells[1][0].bold  # full configuration, best W5A5 of the column
    check_snapshot("ablation.md", to_markdown(ablation))
    qimera = build_tables(scan, published, "qimera_t2")
    check_snapshot("qimera_t2.md", to_markdown(qimera))
    # "all" shows the ablation because some run has a term off, and keeps ablated runs out of the main tables
    everything = build_tables(scan, published, "all")
    main = [t for t in everything if t.key == "table1"][0]
    w3 = next(r for r in main.rows if r.labels[3] == "W3A3")
    adasg_w3 = w3.cells[[g.title for g in main.groups].index("AdaSG")][0].text
    assert adasg_w3 == "34.25 ± 0.35 (n=2)"  # only the full configuration (index 4)
    assert any(t.key == "ablation" for t in everything)


def test_configurations_are_not_mixed(tmp_path):
    root = tmp_path / "results"
    for seed in range(2):
        write_run(root, "gdfq", 87.0 + seed, seed=seed)
    write_run(root, "gdfq", 80.0, overrides=["method.kd_reduction=batchmean"])
    table = build_tables(scan_results(root), load_published(), "table1")[0]
    cell = table.rows[0].cells[1][0].text
    assert cell.startswith("87.50 ± 0.71 (n=2)")
    note = next(n for n in table.notes if "not shown" in n)
    assert cell.endswith(note[0]) and "1 run with method.kd_reduction=batchmean" in note


def test_diverged_runs_are_footnoted(tmp_path):
    root = tmp_path / "results"
    write_run(root, "gdfq", 87.0, seed=0)
    diverged = write_run(root, "gdfq", 62.0, seed=1)
    record = json.loads((diverged / "record.json").read_text())
    record.update(final_top1=None, diverged="non-finite values at epoch 5 iteration 49: q/loss")
    (diverged / "record.json").write_text(json.dumps(record))
    best = build_tables(scan_results(root), load_published(), "table1")[0]
    cell = best.rows[0].cells[1][0].text
    note = next(n for n in best.notes if "diverged" in n)
    assert cell.startswith("74.50 ± 17.68 (n=2)") and cell.endswith(note[0])
    assert "GDFQ W4A4 (resnet20_cifar10): 1 of 2 run(s) diverged" in note
    final = build_tables(scan_results(root), load_published(), "table1", metric="final")[0]
    assert final.rows[0].cells[1][0].text.startswith("87.00 (n=1)")  # the diverged run has no final epoch
    assert any("1 finished run(s) without a final top-1 (never evaluated, or training diverged" in n for n in final.notes)


def test_metric_final_and_csv(results):
    scan = scan_results(results)
    tables = build_tables(scan, load_published(), "table1", metric="final")
    assert any("final-epoch" in n for n in tables[0].notes)
    rows = list(csv.DictReader(io.StringIO(to_csv(tables))))
    gdfq = next(r for r in rows if r["column"] == "gdfq" and r["bits"] == "w4a4" and r["protocol"] == "quick")
    assert float(gdfq["mean"]) == pytest.approx(86.5) and gdfq["n"] == "3" and float(gdfq["paper"]) == 90.11
    assert gdfq["delta_kind"] == "drop" and len(gdfq["run_ids"].split()) == 3
    zaq = next(r for r in rows if r["column"] == "zaq" and r["bits"] == "w4a4" and r["protocol"] == "quick")
    assert zaq["n"] == "0" and zaq["mean"] == "" and zaq["running"] == "1"


def test_latex_compiles(results, tmp_path):
    """``latex`` is \\input-able table floats (status only in comments); ``latex-document`` compiles alone."""
    scan = scan_results(results)
    tables = build_tables(scan, load_published(), "all", all_rows=True, all_columns=True)
    tables.append(compare_scans(scan, scan))
    tex = to_latex(tables, ["preamble with_underscore & 50% ±"])
    assert r"\documentclass" not in tex and r"\begin{document}" not in tex and r"\toprule" in tex
    assert tex.count(r"\begin{table}") == len(tables) and r"\cmidrule(lr)" in tex and r"\label{tab:dfqbench-1-" in tex
    body = [line for line in tex.splitlines() if line.endswith(r"\\")]  # the tabular rows
    assert not [line for line in body if "pending" in line or "running" in line], "run status inside a table body"
    assert [line for line in tex.splitlines() if line.startswith("% ") and "1 pending" in line]
    assert "% preamble with\\_underscore" in tex and "1 running" in tex
    assert "Top-1 over the full CIFAR-10 test set (10,000 images)." in tex
    doc = to_latex_document(tables, ["preamble with_underscore & 50% ±"])
    assert r"\usepackage{booktabs}" in doc and doc.startswith(r"\documentclass")
    for text in (tex, doc):
        assert all(ord(ch) < 128 for ch in text), "non-ASCII left in the LaTeX output"
    assert latex_escape("a_b & 5% † ᵃ") == r"a\_b \& 5\% \textsuperscript{\dag} \textsuperscript{a}"
    assert latex_escape("--all-columns, x-y") == "-{}-all-columns, x-y"
    assert latex_escape("+0.12 ✓ −1.00 ✗") == r"+0.12 $\surd$ $-$1.00 $\times$"
    if shutil.which("pdflatex") is None:
        if os.environ.get("DFQBENCH_REQUIRE_TEX") == "1":
            pytest.fail("pdflatex not found and DFQBENCH_REQUIRE_TEX=1 (install texlive-latex-base, -recommended)")
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    (tmp_path / "report.tex").write_text(doc)
    (tmp_path / "tables.tex").write_text(tex)
    (tmp_path / "paper.tex").write_text("\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{booktabs,graphicx}"
                                        "\n\\begin{document}\n\\input{tables}\n\\end{document}\n")
    for name in ("report", "paper"):
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=HANG_S)
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert (tmp_path / f"{name}.pdf").stat().st_size > 1000


# -- comparison ----------------------------------------------------------------------------------------
def test_compare_two_results_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for seed in range(3):
        write_run(a, "gdfq", 86.0 + seed, seed=seed)
        write_run(b, "gdfq", 90.0 + seed, seed=seed)  # clearly better: outside noise
        write_run(a, "qimera", 88.0 + seed, seed=seed)
        write_run(b, "qimera", 88.5 + seed, seed=seed)  # within noise
    write_run(a, "adasg", 89.0)
    write_run(b, "adasg", 89.5)
    write_run(b, "zeroq", 80.0)
    table = compare_scans(scan_results(a), scan_results(b))
    verdicts = {r.labels[4]: r.cells[3][0].text for r in table.rows}
    assert verdicts["GDFQ"].startswith("outside seed noise") and verdicts["Qimera"].startswith("within seed noise")
    assert verdicts["AdaSG"] == "no noise estimate (n = 1)" and verdicts["ZeroQ"] == "only in B"
    text = to_markdown([table]).replace(str(a), "<A>").replace(str(b), "<B>")
    check_snapshot("compare.md", text)


def test_compare_lists_changed_spec_fields(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(a, "gdfq", 87.0)
    write_run(b, "gdfq", 87.0, overrides=["method.temperature=10.0"])
    row = compare_scans(scan_results(a), scan_results(b)).rows[0]
    assert row.cells[4][0].text == "method.temperature=10.0"


# -- plots ---------------------------------------------------------------------------------------------
def test_plots_from_fixture_logs(tmp_path):
    """Every figure is written as PNG and PDF, and the curves are the seed means of the logged values."""
    from dfqbench.report.plots import diagnostics_frame, drop_figure, game_figure, make_plots

    root = tmp_path / "results"
    for seed, best in enumerate([86.0, 87.0]):
        write_run(root, "gdfq", best, seed=seed)
    write_run(root, "qimera", 88.0)
    write_run(root, "zeroq", 80.0, metrics=False)  # no logged iterations: named as not plotted
    write_run(root, "gdfq", 59.0, bits="w3a3")
    records = scan_results(root).records
    published = load_published()
    written = make_plots(records, published, "best", tmp_path / "plots")
    stems = ["game_quick_resnet20_cifar10_w4a4", "game_quick_resnet20_cifar10_w3a3", "game_quick_resnet20_cifar10_gdfq",
             "top1_quick_resnet20_cifar10_w4a4", "top1_quick_resnet20_cifar10_w3a3", "drop_quick"]
    assert sorted(p.name for p in written) == sorted(f"{s}.{ext}" for s in stems for ext in ("png", "pdf"))
    for path in written:
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n" if path.suffix == ".png" else b"%PDF-")

    w4 = [r for r in records if r.bits == "w4a4"]
    fig = game_figure(w4, lambda r: r.method, {"gdfq": "C0", "qimera": "C1", "zeroq": "C2"},
                      {"gdfq": "o", "qimera": "s", "zeroq": "D"}, "cell")
    ax1, ax2 = fig.axes
    gdfq_h_g, gdfq_h_q = ax1.lines[0], ax1.lines[1]
    # write_metrics logs iterations 24 and 49 of each epoch (1-based: 25, 50, …) with H_g = 0.3 + 0.1·epoch + best/100
    assert list(gdfq_h_g.get_xdata()[:3]) == [25, 50, 75]
    assert gdfq_h_g.get_ydata()[2] == pytest.approx(0.3 + 0.1 + 0.865)  # epoch 1, mean of seeds 86 and 87
    assert gdfq_h_q.get_ydata()[2] == pytest.approx(0.3 + 0.1 + 0.865 + 0.02) and gdfq_h_q.get_linestyle() == "--"
    assert ax2.lines[0].get_ydata()[2] == pytest.approx(0.2 / 2 - 0.01 * 0.865)  # the Balance Gap
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "gdfq (2 seeds)" in legend and "qimera (1 seed)" in legend
    assert "not plotted (< 2 logged iterations): zeroq" in legend
    assert "not comparable with the published numbers" in fig._suptitle.get_text()
    assert "not the papers' pytorchcv weights" in fig._suptitle.get_text()
    assert len(diagnostics_frame(w4, lambda r: r.method)) == 3 * 8 * 2  # 3 runs with logs × 8 epochs × 2 rows

    drop = drop_figure(w4, published, "best", "quick")
    bars = drop.axes[0].patches  # gdfq, zeroq, qimera at W4A4 (method order), FP 91.73 − best
    assert [round(b.get_height(), 2) for b in bars] == [round(91.73 - 86.5, 2), round(91.73 - 80.0, 2), round(91.73 - 88.0, 2)]
    from matplotlib.collections import PathCollection

    diamonds = [tuple(c.get_offsets()[0]) for c in drop.axes[0].collections if isinstance(c, PathCollection)]
    # published drops: GDFQ and Qimera from AdaSG Table 1, ZeroQ from Qimera Table 2 (79.30)
    assert [round(y, 2) for _, y in diamonds] == [round(93.89 - 90.11, 2), round(93.89 - 79.30, 2), round(93.89 - 91.26, 2)]
    import matplotlib.pyplot as plt

    plt.close("all")


# -- partial and broken data ---------------------------------------------------------------------------
def test_partial_and_broken_folders_do_not_raise(tmp_path, capsys):
    root = tmp_path / "results"
    (root / "runs").mkdir(parents=True)
    assert scan_results(root).counts()["finished"] == 0
    write_run(root, "gdfq", 87.0)
    nothing = root / "runs" / "gdfq_x_w4a4_s1_000000000000"
    nothing.mkdir()  # created, nothing written yet
    empty = root / "runs" / "gdfq_x_w4a4_s2_000000000001"
    empty.mkdir()
    (empty / "record.json").write_text("")  # truncated
    no_keys = root / "runs" / "gdfq_x_w4a4_s3_000000000002"
    no_keys.mkdir()
    (no_keys / "record.json").write_text('{"spec": {"method": "gdfq"}}')
    never_evaluated = write_run(root, "gdfq", None, seed=7)
    torn = write_run(root, "qimera", 88.0)
    (torn / "metrics.jsonl").write_text((torn / "metrics.jsonl").read_text() + '{"type": "iter", "epo')
    (root / "runs" / "stray-file.txt").write_text("not a run")
    scan = scan_results(root)
    counts = scan.counts()
    assert counts["finished"] == 3 and counts["unreadable"] == 2 and counts["pending"] == 1
    tables = build_tables(scan, load_published(), "all")
    assert any("without a best top-1" in n for n in tables[0].notes), never_evaluated
    out_dir = tmp_path / "plots"
    assert main(["report", "--results", str(root), "--plots", str(out_dir), "--cell", "resnet20_cifar10:w4a4"]) == 0
    out = capsys.readouterr().out
    assert "Unreadable records (2)" in out and "record.json (missing fp_top1" in out
    assert (out_dir / "game_quick_resnet20_cifar10_w4a4.png").exists()


def test_where_filters_and_their_errors(results):
    scan = scan_results(results)
    only = filter_scan(scan, [Where.parse("method=gdfq,qimera"), Where.parse("bits=w4a4")])
    assert {r.method for r in only.records} == {"gdfq", "qimera"} and {r.bits for r in only.records} == {"w4a4"}
    zero = filter_scan(scan, [Where.parse("method_config.ds_weight=0")])
    assert len(zero.records) == 1 and zero.records[0].method == "adasg"
    assert len(filter_scan(scan, [Where.parse("train.g_betas=[0.5, 0.999]")]).records) == len(scan.records)


# -- command line --------------------------------------------------------------------------------------
def test_cli_report_formats_and_errors(results, tmp_path, capsys, monkeypatch):
    out = tmp_path / "t1.tex"
    assert main(["report", "--results", str(results), "--format", "latex", "--out", str(out)]) == 0
    assert out.read_text().startswith("% Generated") and "wrote" in capsys.readouterr().out
    assert r"\begin{table}" in out.read_text() and r"\documentclass" not in out.read_text()
    assert main(["report", "--results", str(results), "--format", "latex-document", "--out", str(out)]) == 0
    assert out.read_text().startswith(r"\documentclass") and "wrote" in capsys.readouterr().out
    monkeypatch.setenv(RESULTS_ENV, str(results))
    assert main(["report", "--table", "table1", "--protocol", "paper"]) == 0
    text = capsys.readouterr().out
    assert "AdaSG Table 1 — protocol paper" in text and "protocol quick" not in text
    assert main(["report", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("table,protocol,dataset,model")
    bad = tmp_path / "never.md"
    for args, message in ((["--where", "methd=gdfq"], "did you mean 'method'?"),
                          (["--where", "method"], "expected KEY=VALUE"),
                          (["--cell", "resnet20_cifar10"], "give --plots DIR too"),
                          (["--results", str(tmp_path / "nope")], "does not exist"),
                          (["--grid", "smoke"], "was never launched into")):
        assert main(["report", "--out", str(bad), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dfqbench: error:") and message in err and err.count("\n") == 1
        assert not bad.exists()
    with pytest.raises(SystemExit):
        main(["report", "--format", "html"])
    assert "invalid choice" in capsys.readouterr().err


def test_results_env_matches_the_store():
    from dfqbench.store import RESULTS_ENV as STORE_ENV

    assert RESULTS_ENV == STORE_ENV


def test_grid_restriction_selects_the_grids_run_ids(tiny_request, tmp_path, capsys):
    """`report --grid` selects the runs its launch planned (the grid index), without re-planning the grid."""
    from dfqbench.core.progress import Progress
    from dfqbench.runner import run

    results = tiny_request().results
    run(tiny_request(bits="w4a4", seed=5), Progress())  # not in the grid
    assert main(["run", "--grid", "smoke", "--results", results, "--device", "cpu", "--jobs", "1",
                 "--only", "bits=w4a4", "--seeds", "0"]) == 0  # one cell of the smoke grid launched
    capsys.readouterr()
    # the tiny runs have overrides (TINY_OVERRIDES): no run of the default configuration, so the configurations
    # that were run are shown (issue 22 item 2), each labelled with its whole configuration (no "…" in the CSV)
    assert main(["report", "--results", results, "--table", "table1", "--format", "csv"]) == 0
    default_rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    shown = [r for r in default_rows if int(r["n"])]
    assert sum(int(r["n"]) for r in default_rows) == 2 and len(shown) == 2 and "default" not in {r["configuration"] for r in shown}
    assert {r["configuration"] for r in shown} == {", ".join(sorted(TINY_OVERRIDES)),
                                                   ", ".join(sorted(TINY_OVERRIDES + ["quant.tracker=ema"]))}
    assert main(["report", "--results", results, "--table", "table1", "--format", "csv", "--all-configurations"]) == 0
    all_rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sum(int(r["n"]) for r in all_rows) == 2
    assert main(["report", "--results", results, "--grid", "smoke", "--table", "table1", "--format", "csv"]) == 0
    rows = [r for r in csv.DictReader(io.StringIO(capsys.readouterr().out)) if r["configuration"] != "default"]
    assert sorted((r["bits"], r["n"], r["pending"]) for r in rows if r["column"] == "gdfq") == [
        ("w3a3", "0", "2"), ("w4a4", "1", "1")]  # the launch ran one cell; the grid's others are pending
    index = json.loads((Path(results) / "grids" / "smoke" / "cells.json").read_text())
    assert sorted(index["cells"]) == ["gdfq tiny_cifar10 w3a3 s0", "gdfq tiny_cifar10 w3a3 s1",
                                      "gdfq tiny_cifar10 w4a4 s0", "gdfq tiny_cifar10 w4a4 s1"]


def test_grid_selection_counts_cells_that_are_not_runs_apart(tmp_path):
    """Cells without a run (excluded, unsupported, skipped for want of weights, invalid) are not counted as
    runs whose id is unknown; a run cell without an id (teacher not downloaded) is."""
    from dfqbench.store.grid_index import write_grid_index
    from dfqbench.report.cli import grid_selection

    cells = [{"label": f"c{i}", "status": status, "run_id": None, "run_name": None, "spec": None}
             for i, status in enumerate(("excluded", "unsupported", "skipped", "invalid", "pending"))]
    write_grid_index(tmp_path, "g", cells)
    run_ids, missing, (line,) = grid_selection("g", tmp_path)
    assert run_ids == set() and missing == []
    assert line.endswith("; 1 runs without a known run id (teacher not downloaded yet) are not shown"), line


def test_grid_runs_are_counted_once_each_in_their_store_state(tmp_path):
    """Issue 22 item 7: the report counts a grid's runs as `status` names their states: one per run id (a cell
    duplicating another's run is no second run), done whether this launch or an earlier one trained it."""
    from dfqbench.store.grid_index import write_grid_index
    from dfqbench.report.selection import grid_selection

    done = write_run(tmp_path, "gdfq", 87.0)  # trained before the grid was launched (no manifest lists it)
    spec = json.loads((done / "spec.json").read_text())
    cells = [{"label": "a", "status": "done", "run_id": spec["run_id"], "run_name": done.name, "spec": spec},
             {"label": "b", "status": "to run", "run_id": "0123456789ab", "run_name": "gdfq_x_s1_0123456789ab",
              "spec": {**spec, "seed": 1, "run_id": "0123456789ab"}},
             {"label": "a again", "status": "duplicate", "run_id": spec["run_id"], "run_name": done.name,
              "duplicate_of": "a", "spec": spec},
             {"label": "c", "status": "excluded", "run_id": None, "run_name": None, "spec": None}]
    write_grid_index(tmp_path, "g", cells)
    run_ids, missing, (line,) = grid_selection("g", tmp_path)
    assert run_ids == {spec["run_id"], "0123456789ab"} and [m.state for m in missing] == ["pending"]
    assert line == "Grid g: 2 runs (1 pending, 1 done); cells without a run of their own: 1 duplicate, 1 excluded"


def test_status_counts_a_grids_runs_as_the_report_does(tmp_path):
    """Issue 22 item 7: a run done before its grid was launched is in no manifest (the launch had nothing to run
    for it); `status` still counts it as the grid's, from the grid's index, as `report --grid` does (2, not 1)."""
    from types import SimpleNamespace

    from dfqbench.launch.manifest import write_manifest
    from dfqbench.launch.status import status_report
    from dfqbench.report.selection import grid_selection
    from dfqbench.store.grid_index import write_grid_index

    done = write_run(tmp_path, "gdfq", 87.0)
    spec = json.loads((done / "spec.json").read_text())
    later = {"run_id": "0123456789ab", "run_name": "gdfq_x_s1_0123456789ab"}
    write_grid_index(tmp_path, "g", [
        {"label": "a", "status": "done", "run_id": spec["run_id"], "run_name": done.name, "spec": spec},
        {"label": "b", "status": "to run", **later, "spec": {**spec, "seed": 1, "run_id": later["run_id"]}},
        {"label": "a again", "status": "duplicate", "run_id": spec["run_id"], "run_name": done.name,
         "duplicate_of": "a", "spec": spec}])
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("name: g\n")
    write_manifest(tmp_path, SimpleNamespace(name="g", path=grid_file), "local", [later])
    _, counts = status_report(tmp_path, "g")
    assert counts["g"]["done"] == 1 and counts["g"]["pending"] == 1 and sum(counts["g"].values()) == 2
    run_ids, _, (line,) = grid_selection("g", tmp_path)
    assert len(run_ids) == 2 and line.startswith("Grid g: 2 runs (1 pending, 1 done)")
