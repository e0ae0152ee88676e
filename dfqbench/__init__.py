"""dfqbench: a benchmark harness for data-free quantization (DFQ) methods."""

__version__ = "0.1.0"
