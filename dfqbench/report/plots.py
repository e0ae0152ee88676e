"""Plots from stored records and ``metrics.jsonl`` (matplotlib Agg, seaborn styles; each figure as PNG and PDF).

- ``game_<protocol>_<model>_<bits>``: AdaSG Figure 6's layout for one cell, one line per method —
  (a1) the disagreement entropy H(softmax(t − s)) after the generation step (``H_g``, solid) and after the
  calibration step (``H_q``, dashed) over iterations; (a2) the Balance Gap (``balance_gap``) over iterations.
- ``game_<protocol>_<model>_<method>``: the same two panels, one line per bit-width (methods with ≥ 2).
- ``top1_<protocol>_<model>_<bits>``: test top-1 per epoch for every method of the cell, FP as a line.
- ``drop_<protocol>``: accuracy drop from FP per method and bit-width (bars: ours, mean ± std over seeds;
  diamonds: the published drop, paper FP − paper top-1), one panel per model and teacher.
- ``methods_<protocol>_<model>`` (``report --table methods``): the comparison view's numbers, top-1 per
  bit-width as points with ±1 std error bars, one series per column (method or configuration).
Lines are means over seeds with a ±1 std band (drawn where a point has ≥ 2 seeds). Each series is one method in
one configuration, the configurations the tables show (:func:`dfqbench.report.cells.shown_configurations`: the
default, or what was run where the default has no finished run; every configuration with
``all_configurations``), labelled ``GDFQ`` or ``GDFQ (quant.tracker=ema)``; a method's default has its fixed
colour and marker, other series the next free colour. Titles name the cell, the protocol (quick runs: "not
comparable with the published numbers") and the teacher (the papers' pytorchcv weights or not). With ``prefix``
(``report --grid NAME``: ``NAME_``) every file name starts with it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

import textwrap  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from dfqbench.report.cells import (Items, bits_sort_key, group_by, is_papers_teacher,  # noqa: E402
                                   method_label, method_sort_key, record_key, shared_settings, without)
from dfqbench.report.defaults import diff_text  # noqa: E402
from dfqbench.report import cells as report_cells  # noqa: E402
from dfqbench.report.load import RunRecord, read_metrics  # noqa: E402
from dfqbench.report.published import Published  # noqa: E402

METHOD_COLORS = {"gdfq": "#0072B2", "zeroq": "#E69F00", "zeroq_kd": "#D55E00", "zaq": "#56B4E9",
                 "qimera": "#009E73", "adasg": "#CC79A7", "adadfq": "#6A3D9A"}
METHOD_MARKERS = {"gdfq": "o", "zeroq": "s", "zeroq_kd": "D", "zaq": "^", "qimera": "v", "adasg": "P", "adadfq": "X"}
SERIES_COLORS = ("#7F7F7F", "#BCBD22", "#17BECF", "#8C564B", "#D62728", "#2CA02C", "#9467BD", "#E377C2", "#FF7F0E",
                 "#1F77B4", "#393B79", "#637939")  # for series beyond the bundled methods' defaults
STEPS = (("H_g", "-", "solid, filled markers: after the generation step (H_g)"),
         ("H_q", "--", "dashed, hollow markers: after the calibration step (H_q)"))
FORMATS = ("png", "pdf")
MAX_MARKERS = 40  # a line with more points than this is drawn without markers
STYLE = "whitegrid"


def method_marker(method: str) -> str:
    return METHOD_MARKERS.get(method, "o")


@dataclass(frozen=True)
class Series:
    """One line (or bar) of a figure: a method in one configuration; ``default`` when it is the method's default."""

    label: str
    method: str
    default: bool = True
    items: Items | None = field(default=(), compare=False, hash=False)  # how it differs from the method's default


def method_series(record: RunRecord) -> Series:
    """A record's series when every configuration is its method's default (one series per method)."""
    return Series(method_label(record.method), record.method)


def series_order(series: Series) -> tuple:
    return (method_sort_key(series.method), not series.default, series.label)


def series_styles(series: list[Series]) -> tuple[dict[str, str], dict[str, str]]:
    """(label → colour, label → marker): a bundled method's default keeps its fixed colour, every other series
    takes the next colour no series of the figure has; markers are the method's."""
    ordered = sorted(set(series), key=series_order)
    colors: dict[str, str] = {s.label: METHOD_COLORS[s.method] for s in ordered if s.default and s.method in METHOD_COLORS}
    free = [c for c in SERIES_COLORS if c not in colors.values()]
    for i, s in enumerate(x for x in ordered if x.label not in colors):
        colors[s.label] = free[i % len(free)]
    return colors, {s.label: method_marker(s.method) for s in ordered}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _save(fig: plt.Figure, folder: Path, stem: str, footer: str = "") -> list[Path]:
    if footer:  # a last line of the title (constrained layout makes room for it; a legend may sit below the axes)
        fig.suptitle(f"{fig.get_suptitle()}\n{textwrap.fill(footer, 120)}", fontsize=10.5)
    paths = []
    for ext in FORMATS:
        path = folder / f"{_slug(stem)}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def context_line(record: RunRecord) -> str:
    """Protocol and teacher of a record, as the title's second and third lines."""
    protocol = record.protocol
    proto = ("protocol paper (the papers' schedule)" if protocol == "paper"
             else f"protocol {protocol}: a shortened schedule, not comparable with the published numbers")
    teacher = ("teacher: pytorchcv (the papers')" if is_papers_teacher(record.spec["teacher"])
               else f"teacher: {record.teacher} (not the papers' pytorchcv weights)")
    return f"{proto}\n{teacher}"


def _title(fig: plt.Figure, head: str, record: RunRecord) -> None:
    fig.suptitle(f"{head}\n{context_line(record)}", fontsize=10.5)


def diagnostics_frame(records: list[RunRecord], label: Callable[[RunRecord], str]) -> pd.DataFrame:
    """Long frame of the logged diagnostics: label, seed, iteration (1-based over the run), H_g, H_q, balance_gap."""
    rows = []
    for record in records:
        iters = int(record.spec.get("train", {}).get("iters_per_epoch", 1))
        for row in read_metrics(record.path):
            if row.get("type") != "iter" or "epoch" not in row or "iter" not in row:
                continue
            rows.append({"label": label(record), "seed": record.spec["seed"],
                         "iteration": int(row["epoch"]) * iters + int(row["iter"]) + 1,
                         **{k: row.get(k) for k in ("H_g", "H_q", "balance_gap")}})
    frame = pd.DataFrame(rows, columns=["label", "seed", "iteration", "H_g", "H_q", "balance_gap"])
    return frame.astype({k: float for k in ("H_g", "H_q", "balance_gap")})


def mean_curve(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Per x: mean, sample std and number of seeds of column y (rows without y dropped)."""
    return frame.dropna(subset=[y]).groupby(x)[y].agg(["mean", "std", "count"])


def _draw(ax: plt.Axes, curve: pd.DataFrame, color: str, ls: str = "-", marker: str = "o", **kw: Any) -> bool:
    """Mean line with a ±1 std band where ≥ 2 seeds; True when a band was drawn. Dashed lines get hollow
    markers, so that a dashed curve lying on a solid one still shows."""
    if curve.empty:
        return False
    face = {"mfc": "white", "mec": color, "mew": 1.0} if ls != "-" else {"mec": "white", "mew": 0.5}
    ax.plot(curve.index, curve["mean"], color=color, ls=ls, lw=1.6,
            marker=marker if len(curve) <= MAX_MARKERS else None, ms=4.5, **face, **kw)
    band = curve[curve["count"] > 1]
    if band.empty:
        return False
    ax.fill_between(band.index, band["mean"] - band["std"], band["mean"] + band["std"], color=color, alpha=0.15, lw=0)
    return True


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def game_figure(records: list[RunRecord], label: Callable[[RunRecord], str], colors: dict[str, str],
                markers: dict[str, str], head: str) -> plt.Figure | None:
    """AdaSG Figure 6 (a1, a2) for the labels in ``colors`` (in that order); None without ≥ 2 logged iterations."""
    frame = diagnostics_frame(records, label)
    points = frame.groupby("label")["iteration"].nunique()
    shown = [name for name in colors if points.get(name, 0) >= 2]
    left_out = [name for name in colors if name not in shown]
    if not shown:
        return None
    with sns.axes_style(STYLE):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    series: list[Any] = []
    extras: list[Any] = []
    banded = False
    for name in shown:
        part = frame[frame["label"] == name]
        for column, ls, _ in STEPS:
            banded |= _draw(ax1, mean_curve(part, "iteration", column), colors[name], ls, markers[name])
        banded |= _draw(ax2, mean_curve(part, "iteration", "balance_gap"), colors[name], "-", markers[name])
        series.append(Line2D([], [], color=colors[name], lw=2.5, marker=markers[name], ms=6, mec="white",
                             label=f"{name} ({_seeds(part['seed'].nunique())})"))
    styles = [Line2D([], [], color="0.3", ls=ls, marker="o", ms=4.5, mfc="0.3" if ls == "-" else "white", label=text)
              for _, ls, text in STEPS]
    if banded:
        extras.append(Patch(color="0.3", alpha=0.15, label="band: ±1 std over seeds"))
    warmup = _warmup_iterations([r for r in records if label(r) in shown])
    for ax in (ax1, ax2):
        if warmup:
            ax.axvline(warmup + 0.5, color="0.45", lw=0.9, ls=":")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if warmup:
        extras.append(Line2D([], [], color="0.45", lw=0.9, ls=":", label=f"end of warm-up (iteration {warmup})"))
    if left_out:
        extras.append(Line2D([], [], ls="none", label=f"not plotted (< 2 logged iterations): {', '.join(left_out)}"))
    ax1.set(title="(a1) disagreement entropy H(softmax(t − s))", xlabel="iteration", ylabel="entropy (nats)")
    ax2.axhline(0.0, color="0.2", lw=0.8)
    ax2.set(title="(a2) Balance Gap", xlabel="iteration", ylabel="BG = R(θg², θq²) − R(θg¹, θq¹)")
    _legend_below(fig, [series, styles, extras], handlelength=3)
    _title(fig, head, records[0])
    return fig


def _legend_below(fig: plt.Figure, groups: list[list[Any]], rows: int = 3, **kw: Any) -> None:
    """One legend under the axes; each group of handles starts a new column (blank entries pad the columns)."""
    handles: list[Any] = []
    for group in groups:
        if group:
            handles += group + [Line2D([], [], ls="none", label=" ")] * (-len(group) % rows)
    fig.legend(handles=handles, loc="outside lower center", ncol=max(1, len(handles) // rows), frameon=False,
               fontsize=8.5, **kw)


def _warmup_iterations(records: list[RunRecord]) -> int | None:
    """The iteration at which the warm-up (G-only) epochs end, when every record agrees on it."""
    ends = {int(r.spec.get("train", {}).get("warmup_epochs", 0)) * int(r.spec.get("train", {}).get("iters_per_epoch", 1))
            for r in records}
    return ends.pop() if len(ends) == 1 and next(iter(ends)) > 0 else None


def top1_figure(records: list[RunRecord], head: str, series: Callable[[RunRecord], Series] = method_series
                ) -> plt.Figure | None:
    """Test top-1 per epoch, one line per series (a method in one configuration; mean ± std over seeds), the FP
    teacher as a dotted line."""
    rows = [{"series": series(r).label, "seed": r.spec["seed"], "epoch": int(e) + 1, "top1": float(v)}
            for r in records for e, v in (r.record.get("top1_per_epoch") or {}).items() if v is not None]
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    colors, markers = series_styles([series(r) for r in records])
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(8.5, 4.4), layout="constrained")
    for label in [name for name in colors if name in set(frame["series"])]:
        part = frame[frame["series"] == label]
        _draw(ax, mean_curve(part, "epoch", "top1"), colors[label], "-", markers[label],
              label=f"{label} ({_seeds(part['seed'].nunique())})")
    trained = [r.spec.get("train", {}) for r in records]  # runs that train Q after their warm-up (not ZeroQ's one epoch)
    warmups = {int(t.get("warmup_epochs", 0)) for t in trained if int(t.get("epochs", 0)) > int(t.get("warmup_epochs", 0))}
    if len(warmups) == 1 and next(iter(warmups)) > 0:
        ax.axvspan(0.5, next(iter(warmups)) + 0.5, color="0.88", zorder=0, label="warm-up epochs (Q not trained)")
    fps = [r.fp for r in records if r.fp is not None]
    if fps:
        ax.axhline(sum(fps) / len(fps), color="0.2", ls=":", lw=1.2, label=f"FP teacher ({sum(fps) / len(fps):.2f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="", xlabel="epoch", ylabel="test top-1 (%)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False)
    _title(fig, head, records[0])
    return fig


def published_drop(published: Published, model: str, bits: str, method: str) -> float | None:
    """Paper FP − paper top-1 from the first published table that prints the cell (in ``published.yaml``'s
    order: AdaSG Table 1, Qimera Table 2, SynQ Table 1, IntraQ's README); None when none prints it."""
    found = published.printed_elsewhere(model, bits, method, skip="")
    if found is None:
        return None
    value, table = found
    row = table.row(model, bits)
    return None if row is None else row.fp - value.mean


def drop_figure(records: list[RunRecord], published: Published, metric: str, protocol: str,
                series: Callable[[RunRecord], Series] = method_series) -> plt.Figure | None:
    """Accuracy drop from FP (FP − top-1) per series (a method in one configuration) and bit-width, with the
    published drop of a method's default configuration as diamonds."""
    panels = group_by(records, lambda r: (r.model, r.teacher))
    if not panels:
        return None
    keys = sorted(panels)
    colors, _ = series_styles([series(r) for r in records])
    methods = sorted({series(r) for r in records}, key=series_order)
    with sns.axes_style(STYLE):
        fig, axes = plt.subplots(1, len(keys), figsize=(max(7.0, 5.5 * len(keys)) + 1.8, 4.6), squeeze=False,
                                 layout="constrained")
    any_paper = any_error = False
    for ax, key in zip(axes[0], keys):
        cell_records = panels[key]
        bits_list = sorted({r.bits for r in cell_records}, key=bits_sort_key)
        width = 0.8 / len(methods)
        for j, line in enumerate(methods):
            for i, bits in enumerate(bits_list):
                x = i - 0.4 + width * (j + 0.5)
                rs = [r for r in cell_records if series(r) == line and r.bits == bits]
                drops = pd.Series([r.fp - r.metric(metric) for r in rs if r.fp is not None and r.metric(metric) is not None],
                                  dtype=float)
                if drops.empty:  # no finished run: say so rather than draw a zero-height bar
                    ax.text(x, 0, " no finished run", rotation=90, ha="center", va="bottom", fontsize=7, color="0.3")
                else:
                    ax.bar(x, drops.mean(), width=width * 0.92, color=colors[line.label],
                           yerr=drops.std() if len(drops) > 1 else None, capsize=2, ecolor="0.2")
                    any_error |= len(drops) > 1
                paper_drop = published_drop(published, key[0], bits, line.method) if line.default else None
                if paper_drop is not None:
                    ax.scatter([x], [paper_drop], marker="D", s=24, color="black", edgecolor="white", zorder=3)
                    any_paper = True
        ax.set_xticks(range(len(bits_list)), [b.upper() for b in bits_list])
        ax.set_xlim(-0.5, len(bits_list) - 0.5)
        ax.grid(axis="x", visible=False)
        teacher = "pytorchcv (papers')" if is_papers_teacher(cell_records[0].spec["teacher"]) else f"{key[1]} (not the papers')"
        ax.set(xlabel="bit-width", ylabel=f"FP − {metric} top-1 (points)",
               title=f"{published.model_text(key[0])} · teacher {teacher}")
    extras = [Line2D([], [], marker="D", ls="none", color="black", label="published drop (paper FP − paper)")] if any_paper else []
    if any_error:
        extras.append(Line2D([], [], color="0.2", marker="|", ms=10, ls="none", label="error bar: ±1 std over seeds"))
    _legend_below(fig, [[Patch(color=colors[s.label], label=s.label) for s in methods], extras], rows=2)
    proto = ("protocol paper (the papers' schedule)" if protocol == "paper"
             else f"protocol {protocol}: a shortened schedule, not comparable with the published numbers")
    fig.suptitle(f"Accuracy drop from FP (FP − {metric} top-1) per method and bit-width\n{proto}", fontsize=10.5)
    return fig


def select_cells(records: list[RunRecord], cells: list[str]) -> list[RunRecord]:
    """Keep records matching any ``MODEL`` or ``MODEL:BITS`` in ``cells`` (all when empty)."""
    if not cells:
        return records
    wanted = [c.lower().split(":", 1) for c in cells]
    return [r for r in records if any(r.model == w[0] and (len(w) == 1 or r.bits == w[1]) for w in wanted)]


def shown_series(records: list[RunRecord], metric: str, all_configurations: bool = False) -> dict[Path, Series]:
    """Per table cell (protocol, model, teacher, bits, method), the series of the configurations the tables
    show (:func:`dfqbench.report.cells.shown_configurations`), by run folder."""
    out: dict[Path, Series] = {}
    for group in group_by(records, record_key).values():
        method = group[0].method
        for conf in report_cells.shown_configurations(group, metric, all_configurations):
            default = conf.label == "default"
            line = Series(method_label(method) if default else f"{method_label(method)} ({conf.label})", method, default,
                          conf.diff)
            out.update({r.path: line for r in conf.records})
    return out


def factor_shared(series: dict[Path, Series]) -> tuple[dict[Path, Series], str]:
    """The series relabelled without the settings all of them share (a grid's base), and those settings' text."""
    shared = shared_settings([s.items for s in set(series.values())])
    if not shared:
        return series, ""

    def relabel(s: Series) -> Series:
        rest = without(s.items, shared)
        return Series(method_label(s.method) + (f" ({diff_text(rest)})" if rest else ""), s.method, s.default, s.items)

    return {path: relabel(s) for path, s in series.items()}, f"Every series also sets {diff_text(shared, limit=None)}."


def _stem_part(line: Series) -> str:
    """A series in a file name: the method, then (not its default) a slug of the configuration label."""
    slug = _slug(line.label[len(method_label(line.method)):].strip(" ()").replace("=", "-"))
    if line.default or not slug:  # the default, or nothing beyond the settings every series shares
        return line.method
    if len(slug) > 48:
        import hashlib

        slug = slug[:40] + "-" + hashlib.sha1(line.label.encode()).hexdigest()[:7]
    return f"{line.method}_{slug}"


def _write(fig: plt.Figure | None, folder: Path, stem: str, footer: str = "") -> list[Path]:
    return [] if fig is None else _save(fig, folder, stem, footer)


def make_plots(records: list[RunRecord], published: Published, metric: str, folder: Path,
               cells: list[str] = (), all_configurations: bool = False, prefix: str = "",
               tables: list[Any] = ()) -> list[Path]:
    """Every figure for the chosen cells' records, one series per configuration the tables show (with
    ``all_configurations``: every configuration), and the comparison view's figure for each ``methods`` table
    among ``tables``; file names start with ``prefix``. Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    records = [r for r in select_cells(records, list(cells))
               if r.metric(metric) is not None or r.record.get("top1_per_epoch")]
    series, footer = factor_shared(shown_series(records, metric, all_configurations))
    records = [r for r in records if r.path in series]
    line = lambda r: series[r.path]  # noqa: E731
    written: list[Path] = []
    for protocol, proto_records in sorted(group_by(records, lambda r: r.protocol).items()):
        models = group_by(proto_records, lambda r: (r.model, r.teacher))
        several_teachers = len({m for m, _ in models}) < len(models)
        for (model, teacher), model_records in sorted(models.items()):
            tag = f"_{teacher}" if several_teachers else ""
            name = published.model_text(model)
            for bits, cell_records in sorted(group_by(model_records, lambda r: r.bits).items()):
                colors, markers = series_styles([line(r) for r in cell_records])
                written += _write(game_figure(cell_records, lambda r: line(r).label, colors, markers,
                                              f"{name} {bits.upper()}: game diagnostics per method and configuration"),
                                  folder, f"{prefix}game_{protocol}_{model}_{bits}{tag}", footer)
                written += _write(top1_figure(cell_records, f"{name} {bits.upper()}: test top-1 per epoch", line),
                                  folder, f"{prefix}top1_{protocol}_{model}_{bits}{tag}", footer)
            for one, series_records in sorted(group_by(model_records, line).items(), key=lambda kv: series_order(kv[0])):
                bits_list = sorted({r.bits for r in series_records}, key=bits_sort_key)
                if len(bits_list) < 2:
                    continue
                colors = dict(zip([b.upper() for b in bits_list], sns.color_palette("viridis", len(bits_list)).as_hex()))
                markers = {b: "o" for b in colors}
                written += _write(game_figure(series_records, lambda r: r.bits.upper(), colors, markers,
                                              f"{name} {one.label}: game diagnostics per bit-width"),
                                  folder, f"{prefix}game_{protocol}_{model}_{_stem_part(one)}{tag}", footer)
        written += _write(drop_figure(proto_records, published, metric, protocol, line), folder,
                          f"{prefix}drop_{protocol}", footer)
    for table in tables:
        if getattr(table, "key", None) == "methods":
            footer = f"Every series also sets {table.settings}." if table.settings else ""
            written += methods_figures(table.records, published, metric, folder, prefix, cells, footer)
    return written


def methods_figures(rows: list[dict[str, Any]], published: Published, metric: str, folder: Path, prefix: str = "",
                    cells: list[str] = (), footer: str = "") -> list[Path]:
    """The comparison view's figures (one per protocol, model and teacher) from its table's long-form records."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [c.lower().split(":", 1) for c in cells]
    rows = [r for r in rows if not wanted or any(r["model"] == w[0] and (len(w) == 1 or r["bits"] == w[1]) for w in wanted)]
    groups = group_by(rows, lambda r: (r["protocol"], r["model"], r["teacher"]))
    written: list[Path] = []
    for (protocol, model, teacher), part in sorted(groups.items()):
        several = len({t for p, m, t in groups if (p, m) == (protocol, model)}) > 1
        written += _write(methods_figure(part, published, metric), folder,
                          f"{prefix}methods_{protocol}_{model}" + (f"_{teacher}" if several else ""), footer)
    return written


def methods_figure(rows: list[dict[str, Any]], published: Published, metric: str) -> plt.Figure | None:
    """Top-1 per bit-width, one series per column of the comparison view: the mean over seeds as a point, ±1 std
    (n ≥ 2) as an error bar, points of one series joined by a thin line; the baseline drawn black."""
    rows = [r for r in rows if r["mean"] is not None]
    if not rows:
        return None
    bits_list = sorted({r["bits"] for r in rows}, key=bits_sort_key)
    lines: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        lines.setdefault(r["column"], []).append(r)
    styles = [Series(name, part[0]["method"], part[0]["configuration"] == "default") for name, part in lines.items()]
    colors, markers = series_styles(styles)
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(8.5, 4.6), layout="constrained")
    width = 0.5 / max(1, len(lines) - 1) if len(lines) > 1 else 0.0
    any_error = False
    for j, (name, part) in enumerate(lines.items()):
        part = sorted(part, key=lambda r: bits_sort_key(r["bits"]))
        xs = [bits_list.index(r["bits"]) - 0.25 + width * j if len(lines) > 1 else bits_list.index(r["bits"]) for r in part]
        errors = [r["std"] if r["std"] is not None and r["n"] >= 2 else 0.0 for r in part]
        any_error |= any(errors)
        base = part[0]["baseline"] == "yes"
        color = "black" if base else colors[name]
        seeds = sorted({r["n"] for r in part})
        n_text = f"n={seeds[0]}" if len(seeds) == 1 else f"n={seeds[0]}–{seeds[-1]}"
        ax.errorbar(xs, [r["mean"] for r in part], yerr=errors, color=color, marker=markers[name], ms=6, lw=0.8,
                    ls=":", capsize=3, label=f"{name}{' (baseline)' if base else ''} ({n_text})")
    fps = [r["fp"] for r in rows if r["fp"] is not None]
    if fps:
        ax.axhline(sum(fps) / len(fps), color="0.2", ls="--", lw=1.0, label=f"FP teacher ({sum(fps) / len(fps):.2f})")
    if any_error:
        ax.plot([], [], color="0.2", marker="|", ms=10, ls="none", label="error bar: ±1 std over seeds")
    ax.set_xticks(range(len(bits_list)), [b.upper() for b in bits_list])
    ax.set_xlim(-0.6, len(bits_list) - 0.4)
    ax.set(xlabel="bit-width", ylabel=f"{metric} test top-1 (%)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False)
    first = rows[0]
    proto = ("protocol paper (the papers' schedule)" if first["protocol"] == "paper"
             else f"protocol {first['protocol']}: a shortened schedule, not comparable with the published numbers")
    teacher = ("teacher: pytorchcv (the papers')" if str(first["teacher"]).startswith("pytorchcv")
               else f"teacher: {first['teacher']} (not the papers' pytorchcv weights)")
    fig.suptitle(f"{published.model_text(first['model'])}: {metric} top-1 per method and configuration "
                 f"(mean ± std over seeds)\n{proto}\n{teacher}", fontsize=10.5)
    return fig
