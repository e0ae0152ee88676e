"""Rendering :class:`~dfqbench.report.model.Table` objects as markdown, LaTeX (booktabs) or CSV.

Markdown joins a group's sub-columns in one cell (``ours / paper / Δ``). LaTeX gives each sub-column its own
column under a ``\\cmidrule``-ruled group header and is a complete document (``article``, ``booktabs``,
``geometry``, ``graphicx``) that ``pdflatex`` compiles; the non-ASCII characters the tables use are mapped to
LaTeX commands. CSV is long-form: one line per cell with numeric fields, from :attr:`Table.records`.
"""

from __future__ import annotations

import csv
import io
from typing import Iterable

from dfqbench.report.model import SUPERSCRIPT_LETTERS, SUPERSCRIPTS, Table, Text


# -- markdown ------------------------------------------------------------------------------------------
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_cell(texts: list[Text]) -> str:
    parts = []
    for t in texts:
        text = _md_escape(t.text)
        parts.append(f"**{text}**" if t.bold and text else text)
    return " / ".join(parts)


def to_markdown(tables: Iterable[Table], preamble: Iterable[str] = ()) -> str:
    out = [line for line in preamble]
    for table in tables:
        if out:
            out.append("")
        out += [f"### {table.title}", "", table.caption, ""]
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
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "−": r"$-$", "†": r"\textsuperscript{\dag}", "–": "--", "—": "---",
                  "Δ": r"$\Delta$", "×": r"$\times$", "≠": r"$\neq$", "≥": r"$\geq$", "≤": r"$\leq$", "·": r"$\cdot$",
                  "…": r"\ldots{}", "θ": r"$\theta$", "²": r"\textsuperscript{2}", "∞": r"$\infty$", "→": r"$\to$",
                  "’": "'", "‘": "`", "“": "``", "”": "''"}
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


def latex_table(table: Table) -> str:
    """One ``table`` float: booktabs rules, a group header row with cmidrules, a sub-column header row."""
    n_labels = len(table.label_columns)
    widths = [len(g.subtitles) for g in table.groups]
    spec = "l" * n_labels + "".join("r" * w for w in widths)
    lines = [r"\begin{table}[htbp]", r"\centering", r"\footnotesize", rf"\caption{{{latex_escape(table.title)}}}"]
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
    lines.append(r"\par\smallskip\begin{minipage}{\linewidth}\scriptsize")
    lines.append(latex_escape(table.caption) + r"\par")
    lines += [latex_escape(note) + r"\par" for note in table.notes]
    lines += [r"\end{minipage}", r"\end{table}"]
    return "\n".join(lines)


def to_latex(tables: Iterable[Table], preamble: Iterable[str] = ()) -> str:
    """A complete, compilable document holding every table."""
    head = [r"\documentclass{article}", r"\usepackage[T1]{fontenc}",
            r"\usepackage[a4paper,landscape,margin=1.5cm]{geometry}", r"\usepackage{booktabs}",
            r"\usepackage{graphicx}", r"\begin{document}"]
    body = [latex_escape(line) + r"\par" for line in preamble]
    body += [latex_table(t) + "\n\\clearpage" for t in tables]
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
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return buffer.getvalue()


def render(tables: list[Table], fmt: str, preamble: Iterable[str] = ()) -> str:
    if fmt == "markdown":
        return to_markdown(tables, preamble)
    if fmt == "latex":
        return to_latex(tables, preamble)
    return to_csv(tables)
