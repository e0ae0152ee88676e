"""The layering the architecture promises: the report reads the results store only — it imports nothing from
the launcher and renders tables without torch or any method plugin (README "How it works")."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import dfqbench

from waiting import HANG_S

PACKAGE = Path(dfqbench.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from … import`` statement in ``path`` names (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_report_package_imports_nothing_from_the_launcher():
    offending = {f"{path.name}: {name}" for path in sorted((PACKAGE / "report").glob("*.py"))
                 for name in imported_modules(path) if name == "dfqbench.launch" or name.startswith("dfqbench.launch.")}
    assert not offending, f"dfqbench.report imports the launcher: {sorted(offending)}"


def test_report_renders_without_torch_or_plugins_or_launcher(tiny_request, tmp_path):
    from dfqbench.core.progress import Progress
    from dfqbench.runner import run

    for bits in ("w4a4", "w3a3"):
        run(tiny_request(bits=bits), Progress())
    results = tiny_request().results
    out = tmp_path / "table.md"
    probe = (
        "import sys\n"
        "from dfqbench.report.cli import add_report_parser, run_report\n"
        "import argparse\n"
        "parser = argparse.ArgumentParser(); sub = parser.add_subparsers(dest='command'); add_report_parser(sub)\n"
        f"args = parser.parse_args(['report', '--results', {results!r}, '--table', 'table1', '--out', {str(out)!r}])\n"
        "assert run_report(args) == 0\n"
        "heavy = sorted(m for m in sys.modules if m in ('torch', 'pytorchcv', 'torchvision')\n"
        "               or m.startswith(('dfqbench.launch', 'dfqbench.methods', 'dfqbench.core')))\n"
        "print(json.dumps(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", "import json\n" + probe], capture_output=True, text=True,
                          timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
    table = out.read_text()
    assert "| tiny_cifar10 (89.45 / –) | builtinᵃ | W3A3 |" in table and "| W4A4 |" in table
