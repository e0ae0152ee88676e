"""Export of a run's trained quantized student (docs/export.md).

- :mod:`~dfqbench.export.source`: the finished run and its student (as ``dfqbench.load_student`` loads it);
- :mod:`~dfqbench.export.quantities`: the quantizer's integers, scales and zero points of that student;
- :mod:`~dfqbench.export.encoding` and :mod:`~dfqbench.export.onnx_graph`: the ONNX QDQ graph (opset 21);
- :mod:`~dfqbench.export.intpack`: the integer pack (safetensors + manifest) and :func:`load_int`;
- :mod:`~dfqbench.export.check`: the exported model on the run's test subset against the recorded top-1;
- :mod:`~dfqbench.export.run`: ``dfqbench export`` (:func:`export_run`).
"""

from dfqbench.export.intpack import load_int
from dfqbench.export.run import FORMATS, ExportOutcome, default_output, export_run

__all__ = ["FORMATS", "ExportOutcome", "default_output", "export_run", "load_int"]
