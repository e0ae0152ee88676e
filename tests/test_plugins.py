"""Method plugins from other installed packages (``dfqbench.methods`` entry points): what is registered,
what is refused with one warning line, and that a fresh process (a grid worker) finds them too."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from dfqbench import plugins
from dfqbench.blocks import interface as plugin
from dfqbench.errors import DfqbenchError
from dfqbench.plugins import GROUP, MethodEntry
from dfqbench.core.progress import SilentProgress

from waiting import HANG_S

PLUGIN_MODULE = """
from dfqbench.methods.gdfq import GDFQ

class Variant(GDFQ):          # no name: the entry point's name is used
    paper = "a variant"

class Named(GDFQ):
    name = "named"
    paper = "named variant"

class Other(GDFQ):
    paper = "another variant"

class NotAMethod:
    pass
"""


@pytest.fixture
def registry_snapshot():
    """Entry points registered by a test are removed afterwards (the registry is per process)."""
    plugins.load_methods()
    items, sources = dict(plugin.METHODS._items), dict(plugins.METHOD_SOURCES)
    yield
    plugin.METHODS._items.clear(), plugin.METHODS._items.update(items)
    plugins.METHOD_SOURCES.clear(), plugins.METHOD_SOURCES.update(sources)


@pytest.fixture
def fake_entries(tmp_path, monkeypatch, registry_snapshot):
    """Install ``entries`` ([(name, value, distribution)]) as the discovered entry points; modules from
    PLUGIN_MODULE (as ``fakeplugin_<tmp>``) are importable."""
    module = f"fakeplugin_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(entries: list[tuple[str, str, str]]) -> list[str]:
        found = [MethodEntry(name, value.replace("MOD", module), dist, metadata.EntryPoint(
            name, value.replace("MOD", module), GROUP)) for name, value, dist in entries]
        monkeypatch.setattr(plugins, "method_entries", lambda: found)
        return plugins.register_entry_points()

    return install


def test_entry_point_registers_a_subclass_under_the_entry_name(fake_entries):
    problems = fake_entries([("gdfq_variant", "MOD:Variant", "variant-pkg 1.0"), ("named", "MOD:Named", "n 2")])
    assert problems == []
    variant = plugin.METHODS.get("gdfq_variant")
    assert variant.__name__ == "Variant" and variant.name == "gdfq_variant"
    assert plugin.METHODS.get("gdfq").name == "gdfq"  # the parent keeps its name
    assert plugins.METHOD_SOURCES["gdfq_variant"] == "variant-pkg 1.0" and plugins.METHOD_SOURCES["gdfq"] == "dfqbench"
    assert plugin.METHODS.get("named").name == "named"


@pytest.mark.parametrize("entry, expected", [
    (("broken", "no_such_module_xyz:Thing", "broken-pkg 0.1"),
     "method plugin 'broken' = 'no_such_module_xyz:Thing' (distribution broken-pkg 0.1) not loaded: "
     "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    (("notmethod", "MOD:NotAMethod", "p 1"), "is not a subclass of dfqbench.blocks.interface.Method"),
    (("other_name", "MOD:Named", "p 1"), "the class sets name = 'named'; the entry point's name and the class's"),
    (("gdfq", "MOD:Variant", "evil 1"), "'gdfq' is a bundled method; a plugin cannot replace it"),
    (("../../../esc", "MOD:Variant", "evil 1"), "invalid method name '../../../esc': a method's name is part of"),
    (("Gdfq-IE", "MOD:Variant", "p 1"), "invalid method name 'Gdfq-IE'"),
])
def test_refused_entries_give_one_line_and_leave_the_rest_working(fake_entries, entry, expected):
    problems = fake_entries([entry, ("gdfq_variant", "MOD:Variant", "variant-pkg 1.0")])
    assert len(problems) == 1 and expected in problems[0] and "\n" not in problems[0]
    assert entry[0] == "gdfq" or entry[0] not in plugin.METHODS
    assert plugin.METHODS.get("gdfq").__module__ == "dfqbench.methods.gdfq"
    assert "gdfq_variant" in plugin.METHODS


def test_the_same_name_from_two_distributions_keeps_the_first(fake_entries):
    problems = fake_entries([("dup", "MOD:Variant", "a 1"), ("dup", "MOD:Other", "b 1")])
    assert len(problems) == 1 and "(distribution b 1)" in problems[0] and "already registered by a 1" in problems[0]
    assert plugin.METHODS.get("dup").__name__ == "Variant" and plugins.METHOD_SOURCES["dup"] == "a 1"


def _dist_info(site: Path, dist: str, entries: dict[str, str]) -> None:
    """A minimal installed distribution (what pip writes) with ``dfqbench.methods`` entry points."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))


def test_a_fresh_process_finds_installed_plugins_and_warns_once_about_a_broken_one(tmp_path):
    """What a grid worker or a Slurm task sees: a new interpreter, the plugins of its environment."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "fresh_plugin.py").write_text(PLUGIN_MODULE)
    _dist_info(site, "fresh-plugin", {"fresh_variant": "fresh_plugin:Variant"})
    _dist_info(site, "broken-plugin", {"broken": "fresh_plugin_missing:Variant"})
    code = textwrap.dedent("""
        from dfqbench.plugins import load_methods
        registry = load_methods()
        load_methods()  # a second call warns no more
        print(sorted(registry.names()), registry.get("fresh_variant").name)
    """)
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=HANG_S)
    assert out.returncode == 0, out.stderr
    assert "'fresh_variant'" in out.stdout and out.stdout.strip().endswith("fresh_variant")
    warnings = [line for line in out.stderr.splitlines() if line.startswith("dfqbench: warning:")]
    assert warnings == ["dfqbench: warning: method plugin 'broken' = 'fresh_plugin_missing:Variant' (distribution "
                        "broken-plugin 0.1) not loaded: ModuleNotFoundError: No module named 'fresh_plugin_missing'"]


def test_plan_cache_fingerprint_follows_the_installed_plugins(tmp_path, monkeypatch):
    """A cached plan must not outlive a plugin's code: its entries and files are in the cache's key."""
    import os

    from dfqbench.launch.plan import LaunchOptions
    from dfqbench.launch.plancache import fingerprint

    package = tmp_path / "fp_plugin_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "method.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    options = LaunchOptions(results=tmp_path / "results")
    entry = MethodEntry("fp_variant", "fp_plugin_pkg.method:Variant", "fp 1", None)
    monkeypatch.setattr(plugins, "method_entries", lambda: [])
    without = fingerprint(options)
    monkeypatch.setattr(plugins, "method_entries", lambda: [entry])
    with_plugin = fingerprint(options)
    assert with_plugin != without and fingerprint(options) == with_plugin
    (package / "method.py").write_text(PLUGIN_MODULE + "\n# edited\n")
    os.utime(package / "method.py", ns=(1, 1))
    assert fingerprint(options) != with_plugin
    assert "fp_plugin_pkg.method" not in sys.modules  # fingerprinted without importing the plugin


def test_plugin_packages_written_against_earlier_releases_keep_working():
    """The interface (``Method``, ``Sample``, ``StepContext``, ``register_method``, ``LossTerms``) is
    dfqbench.blocks.interface, imported without a warning. Its old path dfqbench.core.plugin, and the building
    blocks' old paths under dfqbench.core, are the same modules for one release, with a DeprecationWarning;
    the loading names that moved to dfqbench.plugins are still there under the old path, as the same objects."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec("from dfqbench.blocks.interface import LossTerms, Method, Sample, StepContext, register_method", {})
    for old, new in (("dfqbench.core.plugin", "dfqbench.blocks.interface"),
                     ("dfqbench.core.losses", "dfqbench.blocks.losses"),
                     ("dfqbench.validate", "dfqbench.specs.validate"),
                     ("dfqbench.grid_index", "dfqbench.store.grid_index")):
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
            assert importlib.import_module(old) is importlib.import_module(new)
    old_plugin = sys.modules["dfqbench.core.plugin"]
    for name in ("load_methods", "register_entry_points", "METHOD_SOURCES", "PLUGIN_PROBLEMS"):
        with pytest.warns(DeprecationWarning, match=f"dfqbench.core.plugin.{name} moved to dfqbench.plugins.{name}"):
            assert getattr(old_plugin, name) is getattr(plugins, name)
    namespace: dict = {}
    with pytest.warns(DeprecationWarning, match="load_methods moved"):
        exec("from dfqbench.core.plugin import Method, Sample, StepContext, register_method, load_methods", namespace)
    assert namespace["load_methods"]() is plugin.METHODS and "gdfq" in plugin.METHODS
    assert namespace["Sample"] is plugin.Sample
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        plugin.no_such_name  # noqa: B018


def test_objects_pickled_under_the_old_module_paths_load():
    """A Slurm job pickled before the layout change names ``dfqbench.core.plugin.Sample``: it loads as the
    class at its new path."""
    import pickle
    import warnings

    import torch

    sample = plugin.Sample(torch.zeros(1), torch.zeros(1, dtype=torch.long))
    data = pickle.dumps(sample, protocol=0).replace(b"dfqbench.blocks.interface", b"dfqbench.core.plugin")
    assert b"dfqbench.core.plugin" in data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = pickle.loads(data)
    assert type(loaded) is plugin.Sample


@pytest.mark.parametrize("body, kind", [("import sys\nsys.exit(0)\n", "SystemExit"),
                                        ("raise KeyboardInterrupt\n", "KeyboardInterrupt")])
def test_a_plugin_that_exits_or_interrupts_at_import_is_a_broken_plugin(fake_entries, tmp_path, body, kind):
    """Issue 23: `sys.exit(0)` or a KeyboardInterrupt raised by a plugin's import (no Ctrl-C was pressed) is
    that plugin's problem, reported in one line; every other method keeps working."""
    module = f"hostile_{kind.lower()}_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{module}.py").write_text(body)
    problems = fake_entries([("hostile", f"{module}:Thing", "hostile 1"), ("gdfq_variant", "MOD:Variant", "v 1")])
    assert len(problems) == 1 and f"not loaded: {kind}" in problems[0] and "\n" not in problems[0], problems
    assert "hostile" not in plugin.METHODS and "gdfq_variant" in plugin.METHODS


def test_method_code_that_fails_while_the_run_is_prepared_is_one_line(tiny_request, registry_snapshot):
    """A method's config class or constructor raising (a plugin's bug) is a one-line error naming the method,
    not a traceback."""
    from dfqbench.methods.gdfq import GDFQ
    from dfqbench.runner import run

    @plugin.register_method
    class Exploding(GDFQ):
        name = "exploding"

        def __init__(self, *args, **kwargs):
            raise RuntimeError("boom in the constructor")

    with pytest.raises(DfqbenchError, match=r"^method exploding could not be built: RuntimeError: boom in the "):
        run(tiny_request(method="exploding"), SilentProgress())
