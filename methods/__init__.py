"""The DFQ method plugins, installed as ``dfqbench.methods``; each module registers itself on import."""

from dfqbench.methods import gdfq  # noqa: F401
