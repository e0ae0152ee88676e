"""Measure how far dfqbench's numbers are from the golden fixtures under every CPU kernel setting.

    python tests/golden/spread.py [--out spread.json] [-- PYTEST_ARGS...]

oneDNN (convolutions) and ATen (reductions, vectorised elementwise functions, random draws) choose kernels by
instruction set, so float results can differ in their last bits from one CPU to another. This script runs
the golden tests once per setting of ``ATEN_CPU_CAPABILITY`` (default, avx2, avx512) × ``ONEDNN_MAX_CPU_ISA``
(SSE41, AVX2, AVX512_CORE, and unset) that this CPU supports, with ``DFQBENCH_GOLDEN_SPREAD`` set so that every
comparison records its differences (tests/golden_compare.py), and prints per test: the tolerance, the
greatest absolute and relative difference over all settings, and the greatest share of the tolerance used
(``usage``; the test fails above 1). The golden READMEs quote these tables beside their tolerances.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ATEN = ("default", "avx2", "avx512")
ONEDNN = ("SSE41", "AVX2", "AVX512_CORE", None)  # None: oneDNN's own choice (the best the CPU has)


def cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def settings(flags: set[str]) -> list[dict[str, str]]:
    """Every (ATen, oneDNN) kernel setting this CPU can run, as environment variables."""
    aten = [a for a in ATEN if a == "default" or (a == "avx2" and {"avx2", "fma"} <= flags)
            or (a == "avx512" and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags)]
    onednn = [o for o in ONEDNN if o in (None, "SSE41") or (o == "AVX2" and "avx2" in flags)
              or (o == "AVX512_CORE" and "avx512f" in flags)]
    return [{"ATEN_CPU_CAPABILITY": a, **({"ONEDNN_MAX_CPU_ISA": o} if o else {})} for a in aten for o in onednn]


def label(env: dict[str, str]) -> str:
    return f"aten={env['ATEN_CPU_CAPABILITY']} onednn={env.get('ONEDNN_MAX_CPU_ISA', 'default')}"


def run_setting(env: dict[str, str], pytest_args: list[str], record: Path) -> tuple[int, str]:
    """Run the golden tests under one setting; the pytest exit code and its last line."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    full = {**inherited, **env, "DFQBENCH_GOLDEN_SPREAD": str(record)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args]
    done = subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return done.returncode, lines[-1] if lines else done.stderr.strip()[-300:]


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per test: its tolerances, the worst differences and usage over every comparison and setting."""
    tests: dict[str, dict] = defaultdict(lambda: {"comparisons": set(), "tolerances": set(), "abs_diff": 0.0,
                                                  "rel_diff": 0.0, "usage": 0.0, "worst": "", "dtypes": set()})
    for row in rows:
        t = tests[row["test"]]
        t["comparisons"].add(row["what"])
        t["tolerances"].add((row["rtol"], row["atol"]))
        t["dtypes"].add(row["dtype"])
        t["abs_diff"] = max(t["abs_diff"], row["abs_diff"])
        t["rel_diff"] = max(t["rel_diff"], row["rel_diff"])
        if row["usage"] >= t["usage"]:
            t["usage"], t["worst"] = row["usage"], f"{row['what']} ({row['setting']})"
    return {name: {**t, "comparisons": len(t["comparisons"]), "tolerances": sorted(t["tolerances"]),
                   "dtypes": sorted(t["dtypes"])} for name, t in sorted(tests.items())}


def tolerance_text(tolerances: list[tuple[float, float]]) -> str:
    """The (rtol, atol) pairs of a test; absolute-only ones (rtol 0: e.g. a digest's sum, held to a share of its
    abs-sum, one atol per tensor) are summarised as a count and a range when there are many."""
    relative = [(r, a) for r, a in tolerances if r]
    absolute = sorted(a for r, a in tolerances if not r)
    if len(absolute) <= 3:
        return ", ".join(f"({r:g}, {a:g})" for r, a in tolerances)
    text = ", ".join(f"({r:g}, {a:g})" for r, a in relative)
    return f"{text}{'; ' if text else ''}{len(absolute)} absolute-only (0, {absolute[0]:.2g} … {absolute[-1]:.2g})"


def markdown(summary: dict[str, dict]) -> str:
    lines = ["| test | dtype | comparisons | tolerances (rtol, atol) | max abs diff | max rel diff | max usage |",
             "|---|---|---|---|---|---|---|"]
    for name, t in summary.items():
        tol = tolerance_text(t["tolerances"])
        lines.append(f"| `{name.split('::', 1)[-1]}` | {'/'.join(t['dtypes'])} | {t['comparisons']} | {tol} | "
                     f"{t['abs_diff']:.2g} | {t['rel_diff']:.2g} | {t['usage']:.2g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write every recorded comparison and the summary here (JSON)")
    parser.add_argument("--summarise", type=Path, metavar="JSON",
                        help="print the table of an earlier --out file instead of running the tests")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (default: every golden test)")
    args = parser.parse_args(argv)
    if args.summarise:
        print(markdown(json.loads(args.summarise.read_text())["summary"]))
        return 0
    pytest_args = args.pytest_args or sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("tests/test_golden_*.py"))
    rows: list[dict] = []
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for env in settings(cpu_flags()):
            record = Path(tmp) / "record.jsonl"
            record.unlink(missing_ok=True)
            code, last = run_setting(env, pytest_args, record)
            results[label(env)] = {"exit": code, "summary": last}
            print(f"{label(env):38s} exit {code}: {last}", flush=True)
            if record.exists():
                rows += [{**json.loads(line), "setting": label(env)} for line in record.read_text().splitlines()]
    summary = summarise(rows)
    print(markdown(summary))
    if args.out:
        args.out.write_text(json.dumps({"settings": results, "summary": summary, "rows": rows}, indent=1))
    return 0 if all(r["exit"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
