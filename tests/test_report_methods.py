"""Issue 22, report side: the comparison view (``report --table methods --baseline``), the configurations that
were run shown where the default has none, their plots, and the researcher's loop on the tiny network (a method
plugin against GDFQ in a grid: the tables, the comparison with its test, the curves of both)."""

from __future__ import annotations

import csv
import io
import math
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require_example_plugin
from test_report import write_run
from waiting import HANG_S

from dfqbench.cli import main
from dfqbench.report.load import scan_results
from dfqbench.report.published import load_published
from dfqbench.report.render import to_csv, to_latex, to_latex_document, to_markdown
from dfqbench.report.versus import OUTSIDE_NOISE, methods_tables


def welch_p(a: list[float], b: list[float]) -> float:
    """Welch's two-sided p from the raw seeds (SciPy on the samples, not on the report's summaries)."""
    from scipy.stats import ttest_ind

    return float(ttest_ind(b, a, equal_var=False).pvalue)


def mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs)


def column(table, title: str) -> int:
    return [g.title for g in table.groups].index(title)


# -- the comparison view on fixture records -------------------------------------------------------------------
@pytest.fixture
def methods_results(tmp_path) -> Path:
    root = tmp_path / "results"
    for seed, best in enumerate([86.0, 87.0, 88.0]):
        write_run(root, "gdfq", best, seed=seed)
    for seed, best in enumerate([90.0, 91.0, 92.0]):
        write_run(root, "qimera", best, seed=seed)  # 4 points better, seed spread 1: outside the noise
    for seed, best in enumerate([86.5, 88.5]):
        write_run(root, "gdfq", best, seed=seed, overrides=["quant.tracker=ema"])  # within the noise
    write_run(root, "adasg", 89.0)  # one seed: no noise estimate
    write_run(root, "gdfq", 59.0, bits="w3a3")  # a row where only the baseline ran
    return root


def test_methods_view_columns_differences_and_welch(methods_results, tmp_path):
    (table,) = methods_tables(scan_results(methods_results), load_published(), "best", "gdfq")
    assert [g.title for g in table.groups] == ["GDFQ [baseline]", "GDFQ (quant.tracker=ema)", "Qimera", "AdaSG"]
    assert [g.subtitles for g in table.groups] == [("top-1",)] + [("top-1", "Δ", "test")] * 3
    w4 = next(r for r in table.rows if r.labels[-1] == "W4A4")
    assert w4.labels == ["CIFAR-10", "ResNet-20 (FP 91.73)", "W4A4"]
    base, ema, qimera, adasg = w4.cells
    assert base[0].text == "87.00 ± 1.00 (n=3)"
    p = welch_p([86.0, 87.0, 88.0], [90.0, 91.0, 92.0])
    assert p < 0.05 and qimera[0].text == "91.00 ± 1.00 (n=3)" and qimera[0].bold
    assert qimera[1].text == f"+4.00 {OUTSIDE_NOISE}" and qimera[2].text == f"p = {p:.2g}"
    p_ema = welch_p([86.0, 87.0, 88.0], [86.5, 88.5])
    assert p_ema >= 0.05 and ema[1].text == "+0.50" and ema[2].text == f"p = {p_ema:.2g}"  # no ⋆: within the noise
    assert adasg[0].text == "89.00 (n=1)" and adasg[1].text == "+2.00" and adasg[2].text == "n=1, no test"
    w3 = next(r for r in table.rows if r.labels[-1] == "W3A3")
    assert w3.cells[0][0].text == "59.00 (n=1)" and [t.text for t in w3.cells[2]] == ["", "", ""]
    assert table.caption.count(". ") == 0 and "baseline GDFQ" in table.caption
    assert any(n.startswith("4. Δ = the column's mean − the baseline's (GDFQ)") and "(1 of 2 tested cells)" in n
               for n in table.notes)

    rows = list(csv.DictReader(io.StringIO(to_csv([table]))))
    q = next(r for r in rows if r["method"] == "qimera")
    assert (q["configuration"], q["baseline_column"], q["delta"], q["outside_noise"]) == ("default", "GDFQ", "4.0", "yes")
    assert float(q["p"]) == pytest.approx(p, abs=1e-4) and float(q["df"]) == pytest.approx(4.0)
    e = next(r for r in rows if r["column"] == "GDFQ (quant.tracker=ema)")
    assert (e["method"], e["configuration"], e["outside_noise"], e["n"]) == ("gdfq", "quant.tracker=ema", "no", "2")
    a = next(r for r in rows if r["method"] == "adasg")
    assert a["p"] == "" and a["outside_noise"] == ""
    tex = to_latex([table])
    assert all(ord(ch) < 128 for ch in tex) and r"+4.00 $\star$" in tex and r"p \textless{} 0.05" in tex
    assert "| GDFQ [baseline] | GDFQ (quant.tracker=ema) | Qimera | AdaSG |" in to_markdown([table])
    if shutil.which("pdflatex") is not None:  # test_report.py::test_latex_compiles says when it is required
        (tmp_path / "methods.tex").write_text(to_latex_document([table]))
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "methods.tex"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=HANG_S)
        assert proc.returncode == 0, proc.stdout[-3000:]


def test_methods_view_baseline_in_a_configuration_and_without_a_baseline(methods_results):
    scan = scan_results(methods_results)
    (table,) = methods_tables(scan, load_published(), "best", "gdfq:quant.tracker=ema")
    assert [g.title for g in table.groups][:2] == ["GDFQ (quant.tracker=ema) [baseline]", "GDFQ"]
    w4 = next(r for r in table.rows if r.labels[-1] == "W4A4")
    assert w4.cells[0][0].text == "87.50 ± 1.41 (n=2)" and w4.cells[1][1].text == "−0.50"
    (plain,) = methods_tables(scan, load_published(), "best", None)
    assert all(g.subtitles == ("top-1",) for g in plain.groups)
    assert any("--baseline METHOD[:KEY=VALUE,…]" in n and "gdfq:quant.tracker=ema" in n for n in plain.notes)


def test_methods_view_states_shared_settings_once(tmp_path):
    """A grid's base overrides are set by every column: named once in a note, not in every label; a column with
    nothing beyond them is named by its method, and --baseline names it so."""
    root = tmp_path / "results"
    base = ["train.epochs=4", "quant.tracker=ema"]
    for seed in range(2):
        write_run(root, "gdfq", 80.0 + seed, seed=seed, overrides=base)
        write_run(root, "gdfq", 82.0 + seed, seed=seed, overrides=base + ["method.temperature=10.0"])
        write_run(root, "qimera", 84.0 + seed, seed=seed, overrides=base)
    scan = scan_results(root)
    (table,) = methods_tables(scan, load_published(), "best", "gdfq")
    assert [g.title for g in table.groups] == ["GDFQ [baseline]", "GDFQ (method.temperature=10.0)", "Qimera"]
    assert "4. Every column here also sets quant.tracker=ema, train.epochs=4 (left out of the labels)." in table.notes
    assert table.settings == "quant.tracker=ema, train.epochs=4"
    (other,) = methods_tables(scan, load_published(), "best", "gdfq:method.temperature=10")
    assert other.groups[0].title == "GDFQ (method.temperature=10.0) [baseline]"
    rows = list(csv.DictReader(io.StringIO(to_csv([other]))))
    assert {r["configuration"] for r in rows} == {"quant.tracker=ema, train.epochs=4",
                                                  "method.temperature=10.0, quant.tracker=ema, train.epochs=4"}


@pytest.mark.parametrize("baseline, message", [
    ("gdfqq", "unknown --baseline method 'gdfqq'; did you mean 'gdfq'? choices: gdfq, qimera, adasg"),
    ("gdfq:quant.tracker=minmax", "unknown --baseline 'gdfq:quant.tracker=minmax': gdfq has no runs in that "
                                  "configuration here; choices: gdfq; gdfq:quant.tracker=ema; qimera; adasg"),
    ("gdfq:quant.tracker", "invalid --baseline 'gdfq:quant.tracker': 'quant.tracker' is not KEY=VALUE"),
    ("gdfq:", "invalid --baseline 'gdfq:': expected METHOD or METHOD:KEY=VALUE"),
])
def test_bad_baseline_is_one_line_naming_the_choices(methods_results, tmp_path, capsys, baseline, message):
    out = tmp_path / "never.md"
    assert main(["report", "--results", str(methods_results), "--table", "methods", "--baseline", baseline,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfqbench: error: ") and message in err and err.count("\n") == 1 and not out.exists()


def test_baseline_needs_the_methods_table_and_an_unambiguous_method(tmp_path, capsys):
    root = tmp_path / "results"
    write_run(root, "gdfq", 80.0, overrides=["quant.tracker=ema"])
    write_run(root, "gdfq", 81.0, overrides=["quant.tracker=minmax"])
    assert main(["report", "--results", str(root), "--baseline", "gdfq"]) == 2
    assert "give --table methods too (--table is 'all')" in capsys.readouterr().err
    assert main(["report", "--results", str(root), "--table", "methods", "--baseline", "gdfq"]) == 2
    err = capsys.readouterr().err
    assert "--baseline 'gdfq' is ambiguous" in err and "choices: gdfq:quant.tracker=ema; gdfq:quant.tracker=minmax" in err
    assert main(["report", "--results", str(root), "--table", "methods", "--baseline", "gdfq:quant.tracker=ema"]) == 0
    assert "GDFQ (quant.tracker=ema) [baseline]" in capsys.readouterr().out


def test_methods_figure_is_the_tables_numbers(methods_results, tmp_path):
    from matplotlib.container import ErrorbarContainer
    import matplotlib.pyplot as plt

    from dfqbench.report.plots import methods_figure, methods_figures

    (table,) = methods_tables(scan_results(methods_results), load_published(), "best", "gdfq")
    fig = methods_figure(table.records, load_published(), "best")
    bars = {c.get_label(): c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)}
    assert sorted(bars) == ["AdaSG (n=1)", "GDFQ (baseline) (n=1–3)", "GDFQ (quant.tracker=ema) (n=2)", "Qimera (n=3)"]
    base_line = bars["GDFQ (baseline) (n=1–3)"].lines[0]
    assert list(base_line.get_ydata()) == [59.0, 87.0]  # W3A3, W4A4: the table's means
    assert list(bars["Qimera (n=3)"].lines[0].get_ydata()) == [91.0]
    plt.close("all")
    written = methods_figures(table.records, load_published(), "best", tmp_path / "plots", "g_")
    assert sorted(p.name for p in written) == ["g_methods_quick_resnet20_cifar10.pdf", "g_methods_quick_resnet20_cifar10.png"]


# -- what was run, in the published layouts and their plots ---------------------------------------------------
def test_plots_draw_the_configurations_shown(tmp_path):
    """Without a default run, the tables show the configurations that were run; so do the plots, labelled, the
    settings every series shares said once."""
    import matplotlib.pyplot as plt

    from dfqbench.report.plots import factor_shared, make_plots, shown_series, top1_figure

    root = tmp_path / "results"
    for seed in range(2):
        for bits in ("w4a4", "w3a3"):
            write_run(root, "gdfq", 80.0 + seed, seed=seed, bits=bits, overrides=["quant.tracker=ema"])
            write_run(root, "gdfq", 70.0 + seed, seed=seed, bits=bits,
                      overrides=["quant.tracker=ema", "method.temperature=10.0"])
    records = scan_results(root).records
    series, footer = factor_shared(shown_series(records, "best"))
    assert sorted({s.label for s in series.values()}) == ["GDFQ", "GDFQ (method.temperature=10.0)"]
    assert footer == "Every series also sets quant.tracker=ema."
    fig = top1_figure([r for r in records if r.bits == "w4a4"], "cell", lambda r: series[r.path])
    assert sorted(line.get_label() for line in fig.axes[0].lines if not line.get_label().startswith(("_", "FP"))) == [
        "GDFQ (2 seeds)", "GDFQ (method.temperature=10.0) (2 seeds)"]
    plt.close("all")
    written = make_plots(records, load_published(), "best", tmp_path / "plots", prefix="grid_")
    assert {p.stem for p in written} == {f"grid_{kind}_quick_resnet20_cifar10_{bits}" for kind in ("game", "top1")
                                         for bits in ("w4a4", "w3a3")} | {
        "grid_game_quick_resnet20_cifar10_gdfq", "grid_game_quick_resnet20_cifar10_gdfq_method.temperature-10.0",
        "grid_drop_quick"}  # per bit-width; per series over the bit-widths (the shared setting in no name)
    # with a default run (W4A4 only), only the default is drawn there unless every configuration is asked for
    write_run(root, "gdfq", 85.0, seed=5)
    records = [r for r in scan_results(root).records if r.bits == "w4a4"]
    assert {s.label for s in shown_series(records, "best").values()} == {"GDFQ"}
    assert len({s.label for s in shown_series(records, "best", all_configurations=True).values()}) == 3


# -- the loop: a plugin against GDFQ in a grid, on the tiny network ----------------------------------------------
PAIR_GRID = """\
name: pair
description: GDFQ and the example plugin (GDFQ + information entropy), 2 seeds each, on the tiny network
base:
  model: tiny_cifar10
  bits: w4a4
  protocol: quick
  quant.tracker: ema
  train.epochs: 3
  train.iters_per_epoch: 6
  train.batch_size: 16
  train.warmup_epochs: 1
  train.range_update_epochs: 1
  train.lr_q: 1.0e-5
axes:
  method: [gdfq, gdfq_ie]
  seed: [0, 1]
"""


def test_plugin_against_gdfq_in_a_grid(tmp_path, capsys):
    """Plugin A (gdfq_ie) vs GDFQ in a grid: `report` shows both numbers, `--table methods --baseline gdfq` the
    difference and its test, `--plots` the curves of both (the stale/rerun part of the loop: test_stale)."""
    require_example_plugin()
    from dfqbench.report.plots import factor_shared, shown_series, top1_figure

    grid = tmp_path / "pair.yaml"
    grid.write_text(PAIR_GRID)
    results = str(tmp_path / "results")
    assert main(["run", "--grid", str(grid), "--results", results, "--device", "cpu", "--jobs", "2"]) == 0
    capsys.readouterr()
    records = scan_results(results).records
    best = {m: [r.metric("best") for r in sorted(records, key=lambda r: r.spec["seed"]) if r.method == m]
            for m in ("gdfq", "gdfq_ie")}
    assert [len(v) for v in best.values()] == [2, 2]

    # `report` without flags: both numbers, in one row of AdaSG Table 1 (no run is a default configuration)
    assert main(["report", "--results", results]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| tiny |"))
    for values in best.values():
        assert f"{mean(values):.2f} ± " in row
    assert row.count("(n=2)") == 2

    # the comparison view: Δ = plugin − GDFQ and Welch's test on the seeds
    assert main(["report", "--results", results, "--grid", str(grid), "--table", "methods", "--baseline", "gdfq",
                 "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    plugin = next(r for r in rows if r["method"] == "gdfq_ie")
    delta = mean(best["gdfq_ie"]) - mean(best["gdfq"])
    assert float(plugin["delta"]) == pytest.approx(delta, abs=1e-4) and plugin["baseline_column"] == "GDFQ"
    spread = any(len(set(v)) > 1 for v in best.values())
    if spread:  # two seeds with some spread: a p value (which side of 0.05 it falls on is the data's business)
        p = welch_p(best["gdfq"], best["gdfq_ie"])
        assert float(plugin["p"]) == pytest.approx(p, abs=1e-4)
        assert plugin["outside_noise"] == ("yes" if p < 0.05 else "no")
    assert main(["report", "--results", results, "--grid", str(grid), "--table", "methods", "--baseline", "gdfq"]) == 0
    out = capsys.readouterr().out
    assert "Grid pair: 4 runs (4 done)" in out and "| GDFQ [baseline] | gdfq_ie |" in out
    assert f"{delta:+.2f}".replace("-", "−") in out and ("p = " in out) == spread

    # --plots draws both, per grid
    plots = tmp_path / "plots"
    assert main(["report", "--results", results, "--grid", str(grid), "--table", "methods", "--baseline", "gdfq",
                 "--plots", str(plots)]) == 0
    assert "wrote 8 figure files" in capsys.readouterr().err
    assert sorted(p.name for p in plots.iterdir()) == sorted(
        f"pair_{stem}.{ext}" for stem in ("game_quick_tiny_cifar10_w4a4", "top1_quick_tiny_cifar10_w4a4", "drop_quick",
                                          "methods_quick_tiny_cifar10") for ext in ("png", "pdf"))
    series, _ = factor_shared(shown_series(records, "best"))
    fig = top1_figure(records, "tiny W4A4", lambda r: series[r.path])
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert "GDFQ (2 seeds)" in labels and "gdfq_ie (2 seeds)" in labels
