"""The wheel holds every package of the source tree and every data file beside them (issue 19: a hand-kept
package list left ``dfqbench.store`` out of every non-editable install, which failed at its first import).

The expectations come from the source tree, not from the packaging configuration: every folder under
``dfqbench/`` and ``methods/`` (installed as ``dfqbench.methods``) holding ``.py`` files is a package whose
files must all be in the wheel, and so must every other file there (grids, published numbers, the default
Slurm profiles). The wheel is built from a copy of the checkout's files (``pip wheel --no-deps
--no-build-isolation``, a few seconds), so a stale ``build/`` folder cannot hide a missing package.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dfqbench.store.provenance import checkout_state

REPO = Path(__file__).resolve().parents[1]
SOURCES = {"dfqbench": "dfqbench", "methods": "dfqbench/methods"}  # source folder -> its folder in the wheel


def checkout_files() -> list[str]:
    """The checkout's files (tracked and untracked, not ignored, not deleted), relative to the repository."""
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"],
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but caches
        listed = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts and not any(part.endswith(".egg-info") for part in p.parts)]
    return sorted(f for f in listed if (REPO / f).is_file())


def package_sources() -> dict[str, str]:
    """Each file under the package folders -> its path in the wheel."""
    wheel_paths = {}
    for name in checkout_files():
        top, _, rest = name.partition("/")
        if top in SOURCES and rest:
            wheel_paths[name] = f"{SOURCES[top]}/{rest}"
    return wheel_paths


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    """The file names in a wheel built from a copy of the top-level files and the package folders."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in checkout_files():
        if "/" not in name or name.split("/", 1)[0] in SOURCES:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True)
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout[-2000:]}{built.stderr[-2000:]}"
    (wheel,) = (tmp / "dist").glob("dfqbench-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_every_source_folder_with_python_files_is_a_package():
    """A folder of modules without ``__init__.py`` is a namespace package, which package discovery skips."""
    folders = {str(Path(name).parent) for name in package_sources() if name.endswith(".py")}
    missing = sorted(f for f in folders if not (REPO / f / "__init__.py").is_file())
    assert not missing, f"folders with .py files but no __init__.py: {missing}"


def test_wheel_holds_every_package_and_module(wheel_names):
    sources = package_sources()
    packages = sorted({str(Path(w).parent).replace("/", ".") for s, w in sources.items() if s.endswith(".py")})
    assert {"dfqbench", "dfqbench.store", "dfqbench.launch", "dfqbench.methods"} <= set(packages)
    missing = sorted(w for s, w in sources.items() if s.endswith(".py") and w not in wheel_names)
    assert not missing, f"modules missing from the wheel: {missing}"
    assert not [n for n in wheel_names if n.startswith("methods/")], "methods/ must be dfqbench.methods only"


def test_wheel_holds_every_data_file(wheel_names):
    """Grids, published numbers, the default Slurm profiles: every non-Python file of the package folders."""
    data = {s: w for s, w in package_sources().items() if not s.endswith(".py")}
    assert {"dfqbench/grids/smoke.yaml", "dfqbench/report/published.yaml",
            "dfqbench/launch/slurm_profiles.yaml"} <= set(data.values())
    missing = sorted(w for w in data.values() if w not in wheel_names)
    assert not missing, f"data files missing from the wheel: {missing}"


def test_checkout_state_is_null_for_an_installed_copy_inside_a_repository(tmp_path):
    """Records name the dfqbench checkout's commit; an installed dfqbench in a venv inside some repository is
    not that repository's code, so its records get nulls."""
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(git + ["add", "f"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "c"], check=True)
    site_packages = tmp_path / ".venv" / "lib" / "site-packages"
    site_packages.mkdir(parents=True)
    assert checkout_state(tmp_path)["commit"] and checkout_state(tmp_path)["dirty"] is False
    assert checkout_state(site_packages) == {"commit": None, "dirty": None}
