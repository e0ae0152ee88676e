"""The layering the architecture promises, checked from the imports themselves.

- No import circles: among every module of dfqbench (and its bundled ``dfqbench.methods``), no two import each
  other, directly or through others.
- One direction: the modules form the layers of :data:`LAYERS`, lowest first, and no module imports a layer
  above its own.
- The report reads the results store only: it imports nothing from the launcher and renders tables without
  torch or any method plugin (docs/architecture.md).

How the import graph is read (statically, from the source: nothing is imported):

- Every ``import`` and ``from … import`` counts, wherever it stands: at module level, under
  ``if TYPE_CHECKING:``, and inside functions. A lazy (function-level) import is a dependency all the same (it
  runs whenever that function does) and a circle through one is a circle.
- The one exception is a module's own ``__getattr__`` (PEP 562) serving names that moved elsewhere, for one
  release, with a DeprecationWarning: it is a door for old callers (plugin packages, pickled Slurm jobs), not
  a dependency of the module's code. Such doors are listed in :data:`COMPATIBILITY_DOORS`, so that each one is
  deliberate and goes when its release does; any other import in a ``__getattr__`` counts like the rest.
- ``from pkg import name`` depends on the module ``pkg.name`` when there is one, else on ``pkg``; ``import a.b``
  on ``a.b``. The ``__init__`` of the parent packages that Python runs on the way is not counted as a
  dependency (its own imports are in the graph, as the package's module): a module depends on a package's
  face only where it names the package itself.
- A package that imports its own submodules by computed name (``importlib.import_module(f"{__name__}.…")``,
  as ``dfqbench.methods`` registers its plugins) depends on each of them.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from waiting import HANG_S

PACKAGE = Path(importlib.util.find_spec("dfqbench").submodule_search_locations[0])

# The layers, lowest first: a module may import its own layer and those below it, never one above. A module
# belongs to the layer of the longest name here that is it or a package above it; every module must have one.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("dfqbench.errors", "dfqbench.registry", "dfqbench.moved")),
    ("run specification", ("dfqbench.specs", "dfqbench.grids")),
    ("quantizer", ("dfqbench.quant",)),
    ("model zoo", ("dfqbench.zoo",)),
    ("results store", ("dfqbench.store",)),
    ("method interface and building blocks", ("dfqbench.blocks",)),
    ("trainer machinery", ("dfqbench.core",)),
    ("bundled methods", ("dfqbench.methods",)),
    ("plugin discovery and loading", ("dfqbench.plugins",)),
    ("one run", ("dfqbench.request", "dfqbench.runner", "dfqbench.testing")),
    ("export", ("dfqbench.export",)),
    ("grids and executors", ("dfqbench.launch",)),
    ("report", ("dfqbench.report",)),
    ("Python API", ("dfqbench.api",)),
    ("package face", ("dfqbench",)),
    ("command line", ("dfqbench.cli", "dfqbench.launch.cli", "dfqbench.report.cli")),
]

# (module, the module its __getattr__ imports): compatibility names for one release (see the docstring).
COMPATIBILITY_DOORS = {
    ("dfqbench.blocks.interface", "dfqbench.plugins"),  # load_methods & co. for plugin packages of earlier releases
    ("dfqbench.launch.task", "dfqbench.launch.slurm"),  # SlurmGridTask, SlurmTaskGroup for jobs pickled before
}


def source_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of dfqbench and of its bundled methods (a checkout's top-level ``methods/`` folder, or
    ``dfqbench/methods`` when installed), by dotted name."""
    roots = {"dfqbench": package}
    methods = importlib.util.find_spec("dfqbench.methods")
    for folder in (methods.submodule_search_locations or []) if methods else []:
        if Path(folder).resolve() != (package / "methods").resolve():
            roots["dfqbench.methods"] = Path(folder)
    found: dict[str, Path] = {}
    for prefix, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = path
    return found


def _imports_submodules_by_name(tree: ast.Module) -> bool:
    """Whether the module calls ``import_module`` on a name built from ``__name__`` (its own submodules)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            if any(isinstance(n, ast.Name) and n.id == "__name__" for arg in node.args for n in ast.walk(arg)):
                return True
    return False


def module_imports(name: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """The modules (of ``modules``) that module ``name`` imports, and those only its ``__getattr__`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    def targets(node: ast.Import | ast.ImportFrom) -> set[str]:
        found: set[str | None] = set()
        if isinstance(node, ast.Import):
            found = {resolve(alias.name) for alias in node.names}
        else:
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found = {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else resolve(base) for a in node.names}
        return {t for t in found if t is not None and t != name}

    tree = ast.parse(path.read_text(), str(path))
    doors = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"]
    in_doors = {id(n) for door in doors for n in ast.walk(door)}
    imports: set[str] = set()
    door_imports: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            (door_imports if id(node) in in_doors else imports).update(targets(node))
    if path.name == "__init__.py" and _imports_submodules_by_name(tree):
        imports.update(m for m in modules if m.rpartition(".")[0] == name)
    return imports, door_imports


def import_graph(modules: dict[str, Path] | None = None,
                 doors: set[tuple[str, str]] = COMPATIBILITY_DOORS) -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """Module -> the modules it imports (see the module docstring), and the listed ``doors`` found and left out
    (any other import in a ``__getattr__``, e.g. a lazily loaded public name, is an ordinary dependency)."""
    modules = source_modules() if modules is None else modules
    graph: dict[str, set[str]] = {}
    found: set[tuple[str, str]] = set()
    for name, path in modules.items():
        imports, door_targets = module_imports(name, path, modules)
        found.update((name, target) for target in door_targets if (name, target) in doors)
        graph[name] = imports | {target for target in door_targets if (name, target) not in doors}
    return graph, found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def layer_of(module: str) -> int | None:
    """The index in :data:`LAYERS` of ``module``'s layer (the longest matching name), or None."""
    best: tuple[int, int] | None = None
    for level, (_, names) in enumerate(LAYERS):
        for entry in names:
            if module == entry or (entry != "dfqbench" and module.startswith(entry + ".")):
                if best is None or len(entry) > best[0]:
                    best = (len(entry), level)
    return None if best is None else best[1]


def test_no_import_circles():
    graph, _ = import_graph()
    found = circles(graph)
    described = ["; ".join(f"{a} -> {b}" for a in circle for b in sorted(graph[a]) if b in circle) for circle in found]
    assert not found, f"{len(found)} import circles:\n" + "\n".join(described)


def test_every_module_imports_only_its_own_layer_and_those_below():
    graph, _ = import_graph()
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"
    upward = sorted(f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
                    for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))
    assert not upward, f"{len(upward)} imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_every_listed_compatibility_door_is_still_there():
    """The list stays true: a door that was removed (its release went) leaves the list too."""
    _, doors = import_graph()
    assert doors == COMPATIBILITY_DOORS


def test_the_checks_see_circles_lazy_imports_and_doors(tmp_path):
    """The graph reader on a small package: a circle through a function-level import, an upward import, a
    package that imports its submodules by name, and a compatibility door."""
    root = tmp_path / "dfqbench"
    (root / "blocks").mkdir(parents=True)
    (root / "methods").mkdir()
    files = {
        "__init__.py": "",
        "errors.py": "",
        "blocks/__init__.py": "",
        "blocks/interface.py": "def load():\n    import dfqbench.methods\n"
                          "def __getattr__(name):\n    from dfqbench import plugins\n    return plugins\n",
        "methods/__init__.py": "import importlib\nfor m in ['a']:\n    importlib.import_module(f'{__name__}.{m}')\n",
        "methods/a.py": "from dfqbench.blocks.interface import Method\nfrom dfqbench import errors\n",
        "plugins.py": "from .blocks import interface\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(tmp_path).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph, doors = import_graph(modules)
    assert graph["dfqbench.methods"] == {"dfqbench.methods.a"}
    assert graph["dfqbench.methods.a"] == {"dfqbench.blocks.interface", "dfqbench.errors"}
    assert graph["dfqbench.plugins"] == {"dfqbench.blocks.interface"}
    assert doors == {("dfqbench.blocks.interface", "dfqbench.plugins")}
    assert circles(graph) == [["dfqbench.blocks.interface", "dfqbench.methods", "dfqbench.methods.a"]]
    graph, doors = import_graph(modules, doors=set())  # an unlisted __getattr__ import is a dependency
    assert doors == set() and "dfqbench.plugins" in graph["dfqbench.blocks.interface"]
    assert circles(graph) == [["dfqbench.blocks.interface", "dfqbench.methods", "dfqbench.methods.a", "dfqbench.plugins"]]


ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def layer_imports_table() -> str:
    """docs/architecture.md's "what each layer imports" table, measured from the import graph (top layer first)."""
    graph, _ = import_graph()
    below: dict[int, set[int]] = {level: set() for level in range(len(LAYERS))}
    for module, targets in graph.items():
        for target in targets:
            if layer_of(target) is not None and layer_of(target) != layer_of(module):
                below[layer_of(module)].add(layer_of(target))
    rows = ["| layer | imports from |", "|---|---|"]
    for level in reversed(range(len(LAYERS))):
        names = [LAYERS[other][0] for other in sorted(below[level], reverse=True)]
        rows.append(f"| {level} {LAYERS[level][0]} | {', '.join(names) or '—'} |")
    return "\n".join(rows)


def documented_modules() -> dict[str, int]:
    """module → layer number as docs/architecture.md's "Modules and what they own" table gives them."""
    text = ARCHITECTURE.read_text()
    table = text[text.index("| layer | module | file | owns |"):]
    table = table[:table.index("\n\n")]
    found = {}
    for row in table.splitlines()[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        found[cells[1].strip("`")] = int(cells[0])
    return found


def test_the_architecture_page_lists_every_module_in_its_layer():
    """docs/architecture.md's module table stays true: every module once, in the layer LAYERS gives it."""
    documented = documented_modules()
    modules = source_modules()
    assert sorted(set(modules) - set(documented)) == [], "modules missing from docs/architecture.md"
    assert sorted(set(documented) - set(modules)) == [], "docs/architecture.md lists modules that do not exist"
    wrong = {m: (documented[m], layer_of(m)) for m in modules if documented[m] != layer_of(m)}
    assert wrong == {}, "module: (documented layer, actual layer)"


def test_the_architecture_page_says_what_each_layer_imports_as_measured():
    assert layer_imports_table() in ARCHITECTURE.read_text(), \
        "docs/architecture.md's layer-imports table differs from the import graph:\n" + layer_imports_table()


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
        "               or m.startswith(('dfqbench.launch', 'dfqbench.methods', 'dfqbench.core', 'dfqbench.blocks')))\n"
        "print(json.dumps(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", "import json\n" + probe], capture_output=True, text=True,
                          timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
    table = out.read_text()
    assert "| tiny_cifar10 (89.45 / –) | builtinᵃ | W3A3 |" in table and "| W4A4 |" in table
