"""The results layout: ``<results>/runs/<run name>/``, one folder per run, and the files in it (beside
``<results>/launch/`` for launch manifests, ``<results>/slurm/`` for submitit's job files and
``<results>/banks/`` for image banks, :mod:`dfqbench.store.bank`).

A run folder holds ``spec.json`` (what was asked), ``metrics.jsonl`` (per-iteration and per-epoch logs),
``checkpoint.pt`` (written each epoch, for resuming), ``lease.json`` while a task runs it
(:mod:`dfqbench.store.lease`), ``attempts.json`` (grid tasks) and, once finished, ``record.json``
(:mod:`dfqbench.store.records`). A run is finished only when ``record.json`` reads as a valid record;
``error.json`` says why a run failed. Nothing outside this module builds these paths.
"""

from __future__ import annotations

import json
import os
import shutil
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from dfqbench.store.files import (StoreError, atomic_write_bytes, atomic_write_json, first_line, parse_json,
                                  read_json_object, remove_stale_tmp, unreadable)
from dfqbench.store.records import RunRecord

if TYPE_CHECKING:
    from dfqbench.specs import RunSpec
    from dfqbench.store.bank.folder import BankFolder

# torch is imported inside the checkpoint functions only (dfqbench.store.checkpoint), so that `dfqbench status`,
# a cached dry run and the reporter can use the store without importing it.

RESULTS_ENV = "DFQBENCH_RESULTS"
RUNS_DIR = "runs"
BANKS_DIR = "banks"  # image banks shared by runs (dfqbench.store.bank)


def default_results_root() -> Path:
    return Path(os.environ.get(RESULTS_ENV, "results"))


def results_root(text: str | os.PathLike | None) -> Path:
    """The results folder a command or API call means: ``--results``/``results=`` if given (an empty string
    counts as not given), else ``$DFQBENCH_RESULTS``, else ``./results``; ``~`` expanded, made absolute. The one
    reading of that option, for the launcher, the reporter and the API alike."""
    return (Path(text) if text else default_results_root()).expanduser().resolve()


class RunFolder:
    """The files of one run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.spec_path = self.path / "spec.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.record_path = self.path / "record.json"
        self.error_path = self.path / "error.json"
        self.attempts_path = self.path / "attempts.json"
        self.worker_log_path = self.path / "worker.log"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def results_root(self) -> Path:
        """The results folder this run belongs to (``<results>/runs/<run name>``; image banks are in
        ``<results>/banks``)."""
        return self.path.parents[1]

    # -- the record ---------------------------------------------------------------------------------------
    def has_record(self) -> bool:
        """``record.json`` exists (valid or not: :meth:`is_done` tells)."""
        return self.record_path.exists()

    def is_done(self) -> bool:
        """Finished: ``record.json`` reads as a valid :class:`RunRecord` (a truncated one does not count)."""
        try:
            return self.read_record() is not None
        except StoreError:
            return False

    def read_record(self) -> RunRecord | None:
        """The record, None without one; an unreadable or invalid one is a :class:`RecordError`."""
        try:
            return RunRecord.read(self.record_path)
        except FileNotFoundError:
            return None

    def write_record(self, record: RunRecord) -> None:
        """Write ``record``, checked as a reader will check it (a record that would not read back is a bug)."""
        data = record.to_dict()
        RunRecord.from_dict(data)
        atomic_write_json(self.record_path, data, allow_nan=False)

    # -- spec, metrics, error -----------------------------------------------------------------------------
    def create(self, spec: "RunSpec") -> None:
        """Create the folder and write the spec. An existing spec.json is kept when it reads back as this spec
        (the folder name is its hash); a corrupt or different one is rewritten from ``spec``: the spec is
        derived from the request, so nothing is lost."""
        data = spec.to_dict()
        if self.read_spec() != data:
            atomic_write_json(self.spec_path, data, allow_nan=False)  # always valid JSON
        self.error_path.unlink(missing_ok=True)

    def read_spec(self) -> dict[str, Any] | None:
        """spec.json as a dict, or None when it is missing or unreadable (it is rewritten at the next start)."""
        return read_json_object(self.spec_path)

    def spec(self) -> dict[str, Any]:
        """spec.json as a dict, for a caller that cannot go on without it: a missing or unreadable file is a
        one-line :class:`StoreError` naming the folder and why (the API's loaders, export)."""
        try:
            spec = parse_json(self.spec_path.read_bytes())  # bounded: deep nesting is a ValueError
        except (OSError, ValueError) as exc:
            raise StoreError(f"unreadable spec.json in '{self.path}' ({type(exc).__name__})") from None
        if not isinstance(spec, dict):
            raise StoreError(f"unreadable spec.json in '{self.path}' (not a JSON object)")
        return spec

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every row of metrics.jsonl (written whole and atomically each epoch, so every line parses); a file
        that does not is a one-line :class:`StoreError` naming it and the line."""
        try:
            text = self.metrics_path.read_text()
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise unreadable("metrics", self.metrics_path, first_line(exc)) from None
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = parse_json(line)
            except ValueError as exc:
                raise unreadable("metrics", self.metrics_path, f"line {number}: {first_line(exc)}") from None
            if not isinstance(row, dict):
                raise unreadable("metrics", self.metrics_path, f"line {number} is not a JSON object")
            rows.append(row)
        return rows

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        atomic_write_bytes(self.metrics_path, text.encode())

    def write_error(self, exc: BaseException) -> bool:
        """Record why the run failed (type, message, traceback); False when even that cannot be written (a
        read-only or full results folder: the caller reports ``exc`` itself)."""
        try:
            atomic_write_json(
                self.error_path,
                {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()},
            )
        except StoreError:
            return False
        return True

    def read_error(self) -> dict[str, Any] | None:
        return read_json_object(self.error_path)

    # -- checkpoint (torch imported lazily) ---------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        from dfqbench.store.checkpoint import save_checkpoint

        save_checkpoint(self.checkpoint_path, state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        from dfqbench.store.checkpoint import load_checkpoint

        return load_checkpoint(self.checkpoint_path)

    def checkpoint_epoch(self) -> int | None:
        from dfqbench.store.checkpoint import checkpoint_epoch

        return checkpoint_epoch(self.checkpoint_path)

    # -- starting over ------------------------------------------------------------------------------------
    def remove_stale_tmp(self) -> list[Path]:
        """Temp files of writes a killed process never finished; call under the run's lease."""
        return remove_stale_tmp(self.path)

    def clear(self) -> None:
        """Delete everything in the folder but the lease and ``attempts.json`` (the history of the tasks that ran
        it) (``--restart``, ``--rerun-stale``; call under the run's lease)."""
        from dfqbench.store.lease import LEASE_FILE

        if not self.path.is_dir():
            return
        for entry in self.path.iterdir():
            if entry.name in (LEASE_FILE, self.attempts_path.name) or entry.name.startswith(".lease"):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)


def is_single_name(name: object) -> bool:
    """``name`` names one entry inside a folder, whatever the OS: no separator, not ``.``/``..``, no leading dot,
    no NUL, not empty."""
    return (isinstance(name, str) and bool(name) and not name.startswith(".")
            and not any(c in name for c in ("/", "\\", "\0")) and Path(name).name == name)


class ResultsStore:
    """The results root: ``<root>/runs/<run name>/``."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_results_root()

    @property
    def runs_dir(self) -> Path:
        return self.root / RUNS_DIR

    @property
    def banks_dir(self) -> Path:
        """Image banks: ``<root>/banks/<bank name>/`` (:mod:`dfqbench.store.bank`), beside ``runs/``."""
        return self.root / BANKS_DIR

    def bank(self, name: str) -> "BankFolder":
        """The folder of the bank called ``name`` (:attr:`dfqbench.store.bank.BankKey.name`): one folder directly
        inside ``<root>/banks`` (any other name is refused, as for runs)."""
        from dfqbench.store.bank.folder import BankFolder

        if not is_single_name(name):
            raise StoreError(f"invalid bank name {str(name)[:80]!r}: a bank's folder must be one name inside "
                             f"{self.banks_dir}")
        return BankFolder(self.banks_dir / name)

    def banks(self) -> Iterator["BankFolder"]:
        """Every bank folder, sorted by name."""
        if not self.banks_dir.is_dir():
            return
        with os.scandir(self.banks_dir) as entries:
            names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        for name in names:
            yield self.bank(name)

    def launch_dir(self) -> Path:
        """Launch manifests: ``<root>/launch/<grid>/<time>-<executor>-<id>.json`` (:mod:`dfqbench.launch.manifest`)."""
        return self.root / "launch"

    def grid_index_path(self, grid: str) -> Path:
        """A grid's cells as its launches planned them: ``<root>/grids/<grid>/cells.json`` (:mod:`dfqbench.store.grid_index`)."""
        return self.root / "grids" / grid / "cells.json"

    def slurm_dir(self, grid: str) -> Path:
        """submitit's job folder of a grid's Slurm launches."""
        return self.root / "slurm" / grid

    def run_dir(self, run_name: str) -> Path:
        """The folder of the run called ``run_name`` (:attr:`dfqbench.specs.RunSpec.run_name`): always one folder
        directly inside ``<root>/runs``. A name that would lead anywhere else (a separator, ``..``, a leading dot,
        a NUL; e.g. planted in a store file or made from a hostile plugin's name) is refused."""
        if not is_single_name(run_name):
            raise StoreError(f"invalid run name {str(run_name)[:80]!r}: a run's folder must be one name inside "
                             f"{self.runs_dir} (no '/', '\\', '..', leading '.' or NUL)")
        return self.runs_dir / run_name

    def run(self, run_name: str) -> RunFolder:
        return RunFolder(self.run_dir(run_name))

    def folder(self, spec: "RunSpec") -> RunFolder:
        return self.run(spec.run_name)

    def runs(self) -> Iterator[RunFolder]:
        """Every run folder, sorted by name (hidden entries and stray files skipped)."""
        if not self.runs_dir.is_dir():
            return
        with os.scandir(self.runs_dir) as entries:
            names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        for name in names:
            yield self.run(name)

    def check(self, write: bool = True) -> None:
        """A one-line error, before anything is written, when the root is a file or (``write``) not writable."""
        check_results_root(self.root, write)


def check_results_root(root: Path, write: bool = True) -> None:
    """Before anything is written: ``root`` must be a folder (or not exist yet) and, with ``write``, be
    creatable and writable by this process. Raises a one-line :class:`StoreError`; writes nothing."""
    hint = "give --results DIR (or set DFQBENCH_RESULTS) naming a folder you can write to"
    existing = root
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "the results folder" if existing == root else f"the results folder '{root}' would be inside it"
        raise StoreError(f"'{existing}' is a file, not a folder ({what}); {hint}")
    if not write:
        return
    runs = root / RUNS_DIR
    for folder in ([existing] if existing != root else [root] + ([runs] if runs.exists() else [])):
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"'{folder}' is a file, not a folder; {hint}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StoreError(f"results folder '{folder}' is not writable (permission denied); {hint}")
    try:
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            raise StoreError(f"results folder '{existing}' is on a read-only filesystem; {hint}")
    except (OSError, AttributeError):
        pass
