"""Which packages the wheel holds; everything else is in pyproject.toml.

Every package under ``dfqbench/``, found (never a hand-kept list: one forgot ``dfqbench.store``), and the method
plugins of the top-level ``methods/`` folder, with any subpackage, installed as ``dfqbench.methods``: a namespaced
name that Slurm jobs can unpickle, never a bare top-level ``methods``. ``[tool.setuptools.packages.find]`` cannot
rename a folder, hence these few lines; ``tests/test_packaging.py`` checks the built wheel.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["dfqbench", "dfqbench.*"])
    + [f"dfqbench.{name}" for name in find_packages(include=["methods", "methods.*"])],
    package_dir={"dfqbench.methods": "methods"},
)
