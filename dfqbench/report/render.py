"""Rendering :class:`~dfqbench.report.model.Table` objects as markdown, LaTeX (booktabs) or CSV.

Markdown joins a group's sub-columns in one cell (``ours / paper / Δ``), with the runs' status (running,
pending…) inline. LaTeX gives each sub-column its own column under a ``\\cmidrule``-ruled group header; the
``latex`` format is a file of ``table`` floats to ``\\input`` into a paper (needs ``booktabs`` and
``graphicx``), the run status only in its header comments, never in a table body; ``latex-document`` wraps
the same floats in a complete document that ``pdflatex`` compiles. The non-ASCII characters the tables use
are mapped to LaTeX commands. CSV is long-form: one line per cell with numeric fields rounded to 4 decimals,
from :attr:`Table.records`.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Iterable

from dfqbench.report.model import SUPERSCRIPT_LETTERS, SUPERSCRIPTS, Table, Text


# -- markdown ------------------------------------------------------------------------------------------
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_cell(texts: list[Text]) -> str:
    if not any(t.text for t in texts):  # a labelled configuration row leaves the other methods' cells empty
        return ""
    parts = []
    for t in texts:
        text = _md_escape(t.text)
        parts.append((f"**{text}**" if t.bold and text else text) + _md_escape(t.status))
    return " / ".join(parts)


def to_markdown(tables: Iterable[Table], preamble: Iterable[str] = ()) -> str:
    out = [line for line in preamble]
    for table in tables:
        if out:
            out.append("")
        out += [f"### {table.title}", "", " ".join([table.caption] + table.status), ""]
        header = table.label_columns + [g.title for g in table.groups]
        out.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
        out.append("|" + "|".join([":--"] * len(table.label_columns) + ["--:"] * len(table.groups)) + "|")
        for row in table.rows:
            cells = [_md_escape(label) for label in row.labels] + [_md_cell(c) for c in row.cells]
            out.append("| " + " | ".join(cells) + " |")
        if table.notes:
            out.append("")
            out += [f"{note}  " for note in table.notes[:-1]] + [table.notes[-1]]
    return "\n".join(out) + "\n"


# -- LaTeX ---------------------------------------------------------------------------------------------
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "−": r"$-$", "†": r"\textsuperscript{\dag}", "–": "--", "—": "---",
                  "Δ": r"$\Delta$", "×": r"$\times$", "≠": r"$\neq$", "≥": r"$\geq$", "≤": r"$\leq$", "·": r"$\cdot$",
                  "…": r"\ldots{}", "θ": r"$\theta$", "²": r"\textsuperscript{2}", "∞": r"$\infty$", "→": r"$\to$",
                  "’": "'", "‘": "`", "“": "``", "”": "''",
                  "✓": r"$\surd$", "✗": r"$\times$", "⋆": r"$\star$"}
_LATEX_UNICODE.update({s: rf"\textsuperscript{{{c}}}" for s, c in zip(SUPERSCRIPTS, SUPERSCRIPT_LETTERS)})


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and map the report's Unicode characters; any other non-ASCII becomes ``?``.
    A hyphen followed by another stays a hyphen (``--all-columns``, not an en dash)."""
    out = []
    for i, ch in enumerate(text):
        if ch == "-" and text[i + 1:i + 2] == "-":
            out.append("-{}")
        elif ch in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[ch])
        elif ch in _LATEX_UNICODE:
            out.append(_LATEX_UNICODE[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def _latex_text(t: Text) -> str:
    text = latex_escape(t.text)
    return rf"\textbf{{{text}}}" if t.bold and text else text


def latex_label(table: Table, index: int) -> str:
    """``tab:dfqbench-1-table1-protocol-quick``: unique within one output, stable across regenerations."""
    slug = re.sub(r"[^a-z0-9]+", "-", table.title.lower()).strip("-")
    return f"tab:dfqbench-{index}-{slug[:60].rstrip('-')}"


def latex_table(table: Table, index: int = 1) -> str:
    """One ``table`` float: caption and label, booktabs rules, a group header row with cmidrules, a sub-column
    header row, the footnotes under the tabular. No run status: see :func:`latex_status`."""
    n_labels = len(table.label_columns)
    widths = [len(g.subtitles) for g in table.groups]
    spec = "l" * n_labels + "".join("r" * w for w in widths)
    lines = [r"\begin{table}[htbp]", r"\centering", r"\footnotesize",
             rf"\caption[{latex_escape(table.title)}]{{{latex_escape(table.title)}. {latex_escape(table.caption)}}}",
             rf"\label{{{latex_label(table, index)}}}"]
    wide = n_labels + sum(widths) > 10
    lines.append(r"\resizebox{\linewidth}{!}{%" if wide else "{%")
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    group_header, rules, col = [], [], n_labels + 1
    for group, width in zip(table.groups, widths):
        group_header.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(group.title)}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + width - 1}}}")
        col += width
    lines.append(" & ".join([""] * n_labels + group_header) + r" \\")
    lines.append(" ".join(rules))
    sub = [latex_escape(s) for g in table.groups for s in g.subtitles]
    lines.append(" & ".join([latex_escape(c) for c in table.label_columns] + sub) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        cells = [latex_escape(label) for label in row.labels] + [_latex_text(t) for c in row.cells for t in c]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}%", "}"]
    if table.notes:
        lines.append(r"\par\smallskip\begin{minipage}{\linewidth}\scriptsize")
        lines += [latex_escape(note) + r"\par" for note in table.notes]
        lines.append(r"\end{minipage}")
    lines.append(r"\end{table}")
    return "\n".join(lines)


def _comment(line: str) -> str:
    return "% " + latex_escape(line).replace("\n", " ")


def latex_status(tables: list[Table], preamble: Iterable[str] = ()) -> list[str]:
    """The run status as LaTeX comments: the report's preamble, each table's counts and unfinished cells."""
    lines = ["% Generated by `dfqbench report --format latex`: \\input this file (needs \\usepackage{booktabs,graphicx})."]
    lines += [_comment(line) for line in preamble]
    for index, table in enumerate(tables, 1):
        for line in table.status + table.cell_status:
            lines.append(_comment(f"Table {index} ({table.title}): {line}"))
    return lines


def to_latex(tables: Iterable[Table], preamble: Iterable[str] = ()) -> str:
    """The tables as ``table`` floats to ``\\input`` (status in the header comments only)."""
    tables = list(tables)
    body = [latex_table(t, i) for i, t in enumerate(tables, 1)]
    return "\n".join(latex_status(tables, preamble)) + "\n\n" + "\n\n".join(body) + "\n"


def to_latex_document(tables: Iterable[Table], preamble: Iterable[str] = ()) -> str:
    """A complete, compilable document holding every table, the report's status lines before them."""
    tables = list(tables)
    head = [r"\documentclass{article}", r"\usepackage[T1]{fontenc}",
            r"\usepackage[a4paper,landscape,margin=1.5cm]{geometry}", r"\usepackage{booktabs}",
            r"\usepackage{graphicx}", r"\begin{document}"]
    body = [latex_escape(line) + r"\par" for line in preamble]
    for index, table in enumerate(tables, 1):
        body += [latex_escape(line) + r"\par" for line in table.status]
        body.append(latex_table(table, index) + "\n\\clearpage")
    return "\n".join(head + body + [r"\end{document}"]) + "\n"


# -- CSV -----------------------------------------------------------------------------------------------
def to_csv(tables: Iterable[Table]) -> str:
    """Long-form CSV: one line per table cell with numeric mean / std / n / published / Δ columns."""
    rows = [record for table in tables for record in table.records]
    fields: list[str] = []
    for record in rows:
        fields += [k for k in record if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for record in rows:
        writer.writerow({k: csv_value(v) for k, v in record.items()})
    return buffer.getvalue()


def csv_value(value: object, decimals: int = 4) -> object:
    """A CSV field: None → empty, floats rounded to ``decimals`` (−1.31, not −1.309999999999988)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, decimals) + 0.0  # + 0.0: no "-0.0"
    return value


def render(tables: list[Table], fmt: str, preamble: Iterable[str] = ()) -> str:
    if fmt == "markdown":
        return to_markdown(tables, preamble)
    if fmt == "latex":
        return to_latex(tables, preamble)
    if fmt == "latex-document":
        return to_latex_document(tables, preamble)
    return to_csv(tables)
