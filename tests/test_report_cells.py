"""What a report cell shows: the method's default configuration, the reproduced mark, the run-level CSV,
records with wrong types, and ``--where`` in override spelling (fixture records as the trainer writes them)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from test_report import PYTORCHCV_TEACHER, make_spec, unfinished, write_run

from dfqbench.cli import main
from dfqbench.report.defaults import configuration_diff
from dfqbench.report.load import Where, filter_scan, scan_results
from dfqbench.report.published import load_published
from dfqbench.report.render import to_csv, to_latex, to_markdown
from dfqbench.report.tables import build_tables


def table1(root: Path, **kwargs):
    return build_tables(scan_results(root), load_published(), "table1", **kwargs)


def cell_of(table, method: str, bits: str = "W4A4", configuration: str | None = None):
    """The (ours, paper, Δ) Texts of a method's column in the row of ``bits`` (and ``configuration``)."""
    column = [g.title for g in table.groups].index(method)
    rows = [r for r in table.rows if r.labels[3] == bits
            and (configuration is None or r.labels[-1] == configuration)]
    return rows[0].cells[column]


# -- default configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True], ids=["recorded", "resolved-from-plugins"])
def test_default_spec_is_recognised(legacy):
    """Runs record how they differ from the default (spec ``changed``); older specs are resolved from plugins."""
    assert configuration_diff(make_spec("adasg", legacy=legacy)) == []
    assert configuration_diff(make_spec("adasg", protocol="paper", legacy=legacy)) == []
    assert configuration_diff(make_spec("adasg", overrides=["quant.tracker=ema"], legacy=legacy)) == [
        ("quant.tracker", "ema")]
    assert configuration_diff(make_spec("gdfq", overrides=["method.temperature=10", "train.lr_q=0.01"],
                                        legacy=legacy)) == [("method.temperature", 10.0), ("train.lr_q", 0.01)]
    if legacy:
        old = {**make_spec("gdfq", legacy=True), "method_version": "0"}
        assert configuration_diff(old) == [("method_version", "0")]
        assert configuration_diff({**make_spec("gdfq", legacy=True), "method": "not_a_method"}) is None


def test_an_older_method_versions_default_is_another_configuration(tmp_path):
    """Both runs recorded themselves as their version's default: the newest version's default fills the cell."""
    root = tmp_path / "results"
    write_run(root, "gdfq", 70.0, fp=93.89)
    old = write_run(root, "gdfq", 60.0, seed=1, fp=93.89)
    for name in ("spec.json", "record.json"):  # as a run of method version 0 would have written them
        data = json.loads((old / name).read_text())
        spec = data.get("spec", data)
        spec["method_version"] = "0"
        (old / name).write_text(json.dumps(data))
    shown = table1(root, all_configurations=True)[0]
    assert [r.labels[-1] for r in shown.rows] == ["default", "GDFQ (method_version=0)"]
    assert cell_of(shown, "GDFQ", configuration="default")[0].text == "70.00 (n=1)"


def test_default_configuration_is_shown_not_the_most_recent_or_numerous(tmp_path, capsys):
    """Issue 13 item 5: one faithful AdaSG run (default tracker, 10.10) and one quant.tracker=ema run (88.45)."""
    root = tmp_path / "results"
    write_run(root, "adasg", 10.10, fp=93.89)
    for seed in range(2):  # more seeds and finished later than the default: still not shown in its place
        write_run(root, "adasg", 88.45 + seed, seed=seed + 1, fp=93.89, overrides=["quant.tracker=ema"])
    table = table1(root)[0]
    ours = cell_of(table, "AdaSG")[0]
    assert ours.text.startswith("10.10 (n=1)") and ours.bold
    note = next(n for n in table.notes if n.startswith(ours.text[-1]))
    assert "not shown: 2 runs with quant.tracker=ema" in note and "--all-configurations" in note
    assert table.label_columns[-1] == "bits" and len(table.rows) == 1  # no configuration rows unless asked

    shown = table1(root, all_configurations=True)[0]
    assert shown.label_columns[-1] == "configuration" and [r.labels[-1] for r in shown.rows] == [
        "default", "AdaSG (quant.tracker=ema)"]
    default, ema = cell_of(shown, "AdaSG", configuration="default"), cell_of(shown, "AdaSG",
                                                                               configuration="AdaSG (quant.tracker=ema)")
    assert default[0].text == "10.10 (n=1)" and default[0].bold
    assert ema[0].text == "88.95 ± 0.71 (n=2)" and not ema[0].bold and ema[1].text == "92.10"
    gdfq_column = [g.title for g in shown.groups].index("GDFQ")
    assert shown.rows[1].cells[gdfq_column][0].text == ""  # other methods' cells stay empty on that row
    rows = list(csv.DictReader(io.StringIO(to_csv([shown]))))
    assert [(r["column"], r["configuration"], r["n"]) for r in rows if r["column"] == "adasg"] == [
        ("adasg", "default", "1"), ("adasg", "quant.tracker=ema", "2")]
    assert "| AdaSG (quant.tracker=ema) |" in to_markdown([shown])

    # --where in override spelling selects the other configuration; without a default run it is shown in the
    # default's place, labelled (issue 22 item 2)
    assert main(["report", "--results", str(root), "--table", "table1", "--where", "quant.tracker=ema"]) == 0
    out = capsys.readouterr().out
    mark = out.split("| **88.95 ± 0.71 (n=2)")[1][0]  # the cell's footnote mark
    assert f"| **88.95 ± 0.71 (n=2){mark}** / 92.10 / −3.15 |" in out and "10.10" not in out
    assert f"\n{mark} no finished run of the default configuration here; shown: the runs with quant.tracker=ema." in out


def test_only_other_configurations_are_shown_in_the_defaults_place(tmp_path):
    """Issue 22 item 2: without a finished default run, the configurations that were run are shown, labelled."""
    root = tmp_path / "results"
    write_run(root, "gdfq", 80.0, overrides=["method.kd_reduction=batchmean"])
    write_run(root, "gdfq", 70.0, overrides=["method.temperature=10.0"])
    unfinished(root, "gdfq", "pending", seed=1, overrides=["method.kd_reduction=batchmean"])
    unfinished(root, "gdfq", "pending", seed=2)  # a default run not finished yet: counted in the cell
    table = table1(root)[0]
    ours = cell_of(table, "GDFQ", configuration="default")[0]
    assert ours.text.startswith("80.00 (n=1)") and ours.status == "; +2 pending"
    note = next(n for n in table.notes if n.startswith(ours.text[-1]))
    assert note.endswith("no finished run of the default configuration here; shown: the runs with "
                         "method.kd_reduction=batchmean.")
    assert not [n for n in table.notes if "not shown:" in n]
    # the other configuration that was run: its own labelled row
    assert cell_of(table, "GDFQ", configuration="GDFQ (method.temperature=10.0)")[0].text == "70.00 (n=1)"
    rows = list(csv.DictReader(io.StringIO(to_csv([table]))))
    assert [(r["configuration"], r["n"], r["pending"]) for r in rows if r["column"] == "gdfq"] == [
        ("method.kd_reduction=batchmean", "1", "2"), ("method.temperature=10.0", "1", "0")]


def test_ablation_rows_are_default_but_for_the_terms_off(tmp_path):
    root = tmp_path / "results"
    write_run(root, "adasg", 60.0, overrides=["method.ds_weight=0"])
    write_run(root, "adasg", 61.0, seed=1, overrides=["method.ds_weight=0"])
    write_run(root, "adasg", 55.0, overrides=["method.ds_weight=0", "method.lambda_u=0.9"])  # not the row's default
    write_run(root, "adasg", 89.0)
    table = [t for t in build_tables(scan_results(root), load_published(), "ablation")][0]
    row = next(r for r in table.rows if r.labels[:4] == ["–", "yes", "yes", "yes"])
    assert row.cells[0][0].text.startswith("60.50 ± 0.71 (n=2)")
    assert any("1 run with method.lambda_u=0.9" in n for n in table.notes)


# -- reproduced mark -----------------------------------------------------------------------------------
def test_reproduced_mark_on_fixture_records(tmp_path):
    """GDFQ / Qimera / AdaSG at ResNet-20 W4A4 (published 90.11 / 91.26 / 92.10, FP 93.89: drops 3.78 / 2.63 /
    1.79) and ZeroQ (no published number in AdaSG Table 1)."""
    root = tmp_path / "results"
    write_run(root, "gdfq", 90.61, fp=93.89, protocol="paper", teacher=PYTORCHCV_TEACHER)  # drop 3.28: |Δ| = 0.50
    write_run(root, "qimera", 90.25, fp=93.89, protocol="paper", teacher=PYTORCHCV_TEACHER)  # drop 3.64: |Δ| = 1.01
    write_run(root, "qimera", 91.75, seed=1, fp=93.89, protocol="paper", teacher=PYTORCHCV_TEACHER)  # std 1.06
    write_run(root, "adasg", 91.59, fp=93.89, protocol="paper", teacher=PYTORCHCV_TEACHER)  # drop 2.30: |Δ| = 0.51
    write_run(root, "zeroq", 80.0, fp=93.89, protocol="paper", teacher=PYTORCHCV_TEACHER)
    write_run(root, "gdfq", 87.88, fp=91.73, bits="w3a3")  # other teacher, own FP: drop 3.85 vs 93.89 − 75.11
    tables = table1(root)
    paper = tables[0]
    assert cell_of(paper, "GDFQ")[2].text == "+0.50 ✓"  # the 0.5 pp floor, at its boundary
    assert cell_of(paper, "Qimera")[2].text == "−0.26 ✓"  # |Δ drop| = 0.26 ≤ 2 · 1.06
    assert cell_of(paper, "AdaSG")[2].text == "−0.51 ✗"  # one seed: std 0, threshold 0.5
    assert cell_of(paper, "ZeroQ")[2].text == "–"  # no published number: no mark
    assert any("Reproduced (✓): 2 cells; not reproduced (✗): 1 cell" in n for n in paper.notes)
    assert any("max(0.5 pp, 2 · the std of our drop over seeds)" in n for n in paper.notes)
    quick = tables[1]
    # (87.88 − 91.73) − (75.11 − 93.89) = +14.93, a quick run: no mark (issue 22 item 4), nor a count of marks
    assert cell_of(quick, "GDFQ", "W3A3")[2].text == "+14.93"
    assert not [n for n in quick.notes if n.startswith(tuple("0123456789")) and "Reproduced (✓)" in n]
    rows = list(csv.DictReader(io.StringIO(to_csv(tables))))
    marks = {(r["protocol"], r["column"], r["bits"]): r["reproduced"] for r in rows if r["n"] != "0"}
    assert marks == {("paper", "gdfq", "w4a4"): "yes", ("paper", "qimera", "w4a4"): "yes",
                     ("paper", "adasg", "w4a4"): "no", ("paper", "zeroq", "w4a4"): "",
                     ("quick", "gdfq", "w3a3"): ""}
    gdfq = next(r for r in rows if r["column"] == "gdfq" and r["protocol"] == "paper" and r["bits"] == "w4a4")
    assert (gdfq["drop"], gdfq["paper_drop"], gdfq["delta"]) == ("3.28", "3.78", "0.5")  # rounded, no float noise
    tex = to_latex(tables)
    assert r"+0.50 $\surd$" in tex and r"$-$0.51 $\times$" in tex


# -- per-run CSV, bad records, --where spelling ----------------------------------------------------------
def test_per_run_csv(tmp_path, capsys):
    root = tmp_path / "results"
    write_run(root, "gdfq", 86.0)
    write_run(root, "gdfq", 87.0, seed=1, overrides=["quant.tracker=minmax"])
    unfinished(root, "qimera", "pending")
    assert main(["report", "--results", str(root), "--format", "csv-runs"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["method"], r["seed"], r["state"], r["configuration"], r["best_top1"]) for r in rows] == [
        ("gdfq", "0", "finished", "default", "86.0"), ("gdfq", "1", "finished", "quant.tracker=minmax", "87.0"),
        ("qimera", "0", "pending", "default", "")]
    assert all(len(r["run_id"]) == 12 for r in rows)
    assert main(["report", "--results", str(root), "--format", "csv-runs", "--compare", str(root)]) == 2
    err = capsys.readouterr().err
    assert "choices with --compare are markdown, latex, latex-document, csv" in err and err.count("\n") == 1


@pytest.mark.parametrize("field, value, message", [
    ("best_top1", "88.1", 'field best_top1 is a string "88.1", expected number or null'),
    ("spec.bits", 4, "field spec.bits is a number 4, expected string"),
    ("spec.teacher", "file", 'field spec.teacher is a string "file", expected object'),
])
def test_record_with_a_wrong_type_is_skipped_with_one_line(tmp_path, capsys, field, value, message):
    root = tmp_path / "results"
    write_run(root, "gdfq", 86.0)
    bad = write_run(root, "gdfq", 87.0, seed=1)
    record = json.loads((bad / "record.json").read_text())
    if field.startswith("spec."):
        record["spec"][field[5:]] = value
    else:
        record[field] = value
    (bad / "record.json").write_text(json.dumps(record))
    assert main(["report", "--results", str(root), "--table", "table1"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert warnings == [f"dfqbench: warning: skipped {bad / 'record.json'}: {message}"]
    assert "86.00 (n=1)" in captured.out and "Unreadable records (1)" in captured.out
    if field.startswith("spec."):  # the same spec in an unfinished folder: counted, in no cell, no error
        (bad / "record.json").unlink()
        (bad / "spec.json").write_text(json.dumps(record["spec"]))
        assert main(["report", "--results", str(root), "--table", "table1"]) == 0
        assert "1 finished, 1 started" in capsys.readouterr().out  # it has metrics.jsonl


def test_where_accepts_the_override_spelling(tmp_path, capsys):
    root = tmp_path / "results"
    write_run(root, "adasg", 89.0)
    write_run(root, "adasg", 60.0, overrides=["method.ds_weight=0"])
    scan = scan_results(root)
    for key in ("method.ds_weight", "method_config.ds_weight"):
        kept = filter_scan(scan, [Where.parse(f"{key}=0")])
        assert [r.spec["method_config"]["ds_weight"] for r in kept.records] == [0.0]
    assert [r.method for r in filter_scan(scan, [Where.parse("method=adasg")]).records] == ["adasg", "adasg"]
    assert main(["report", "--results", str(root), "--where", "method.ds_weigth=0"]) == 2
    err = capsys.readouterr().err
    assert "'method.ds_weigth'" in err and "did you mean 'method.ds_weight'?" in err and err.count("\n") == 1


def test_evaluation_set_sizes_match_the_zoo():
    """The caption's set sizes (kept torch-free in the report) are the zoo's: tiny's 256-image test set is stated
    as the full set, not as a subset of eval_max_images."""
    from dfqbench.report.tables import TEST_SET_IMAGES, evaluation_text
    from dfqbench.zoo import tiny

    assert TEST_SET_IMAGES["tiny"] == tiny.TEST_IMAGES
    spec = {"dataset": "tiny", "train": {"eval_max_images": 10_000}}
    assert evaluation_text([spec]) == f"Top-1 over the full tiny test set ({tiny.TEST_IMAGES} images)."
