"""``dfqbench export``: one finished run's student written as ONNX (QDQ) or as an integer pack, then checked.

Default output, inside the run folder: ``<run>/export/student-<which>.onnx`` and
``<run>/export/student-<which>-int/`` (``out`` replaces it). An existing output is refused unless
``force``; bad input raises :class:`DfqbenchError` before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dfqbench.errors import DfqbenchError
from dfqbench.export.check import CheckResult
from dfqbench.export.deps import require
from dfqbench.registry import unknown_choice

FORMATS = ("onnx", "int")
EXPORT_DIR = "export"


@dataclass(frozen=True)
class ExportOutcome:
    """What was written, and the check (None with ``check=False``)."""

    path: Path
    format: str
    which: str
    epoch: int
    check: CheckResult | None


def default_output(run_dir: Path, fmt: str, which: str) -> Path:
    name = f"student-{which}.onnx" if fmt == "onnx" else f"student-{which}-int"
    return Path(run_dir) / EXPORT_DIR / name


def check_request(fmt: str, which: str, out: Path, force: bool, check: bool) -> None:
    """The checks that need no loading: format, student, packages, and the output not overwritten silently."""
    from dfqbench.core.snapshots import WHICH

    if fmt not in FORMATS:
        raise DfqbenchError(unknown_choice("format", fmt, list(FORMATS)))
    if which not in WHICH:
        raise DfqbenchError(unknown_choice("student", which, list(WHICH)))
    if fmt == "onnx":
        require("onnx", "--format onnx")
        if check:
            require("onnxruntime", "checking an ONNX export (--no-check skips it)")
    else:
        require("safetensors", "--format int")
    if out.exists() and not force:
        raise DfqbenchError(f"'{out}' exists; give --force to overwrite it or --out for another path")
    if out.exists() and (fmt == "onnx") != out.is_file():
        raise DfqbenchError(f"'{out}' is a {'folder' if out.is_dir() else 'file'}; --format {fmt} writes a "
                            f"{'file' if fmt == 'onnx' else 'folder'} there")


def export_run(run_dir: Path, fmt: str, which: str = "best", out: Path | None = None, force: bool = False,
               check: bool = True, data_root: str | None = None) -> ExportOutcome:
    """Export the student ``which`` of the finished run in ``run_dir`` as ``fmt`` ("onnx" or "int") to ``out``
    (default :func:`default_output`) and, with ``check``, evaluate what was written on the run's test subset."""
    out = Path(out) if out is not None else default_output(run_dir, fmt, which)
    check_request(fmt, which, out, force, check)
    from dfqbench.export.source import load_source

    source = load_source(Path(run_dir), which)
    if fmt == "onnx":
        written, runner = _write_onnx(source, out), None
        if check:
            from dfqbench.export.check import onnxruntime_runner

            runner = onnxruntime_runner(written)
    else:
        from dfqbench.export.intpack import load_int, write_int

        write_int(source, out)
        written, runner = out, None
        if check:
            loaded = load_int(out)
            runner = loaded.__call__
    result = None
    if runner is not None:
        from dfqbench.export.check import check_model

        result = check_model(runner, source, data_root)
    return ExportOutcome(written, fmt, which, source.epoch, result)


def _write_onnx(source, out: Path) -> Path:
    from dfqbench.export.onnx_graph import build_onnx
    from dfqbench.store import atomic_write_bytes
    from dfqbench.zoo import model_info

    info = model_info(source.spec["model"])
    model = build_onnx(source.student, info.input_size, info.num_classes, source.metadata())
    atomic_write_bytes(out, model.SerializeToString())
    return out
