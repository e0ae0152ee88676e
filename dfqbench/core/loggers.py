"""Experiment loggers (``--log tensorboard``, ``--log wandb``): what the trainer logs, also sent elsewhere.

The trainer always writes ``metrics.jsonl`` (the results store); a logger receives the same values as they
are logged: at every logged iteration every loss term (``g/…``, ``q/…``, window means) and diagnostic
(``R_*``, ``delta_*``, ``balance_gap``, ``H_g``, ``H_q``, point values), and after every epoch its top-1 and
learning rates under ``epoch/…``. The step is the global iteration count (1-based: epoch e, iteration i ↦
e·iters_per_epoch + i + 1; an epoch's values at the step of its last iteration), so every tag shares one
x-axis. At the end the record's accuracies go out as a summary.

Loggers are optional extras (``pip install 'dfqbench[tensorboard]'`` / ``'dfqbench[wandb]'``); asking for
one whose package is missing is a one-line error before anything is written. This module imports neither
torch nor the loggers' packages at import time (the CLI checks ``--log`` before a cached dry run).

- ``tensorboard``: event files in ``<run folder>/tensorboard/`` (``tensorboard --logdir results/runs``). A
  resumed run purges the events logged after its checkpoint (``purge_step``), so no step appears twice.
- ``wandb``: one W&B run per dfqbench run (name = the run name, config = the spec), its files under
  ``<run folder>/wandb/``; ``WANDB_PROJECT`` (default ``dfqbench``), ``WANDB_MODE=offline`` and the other
  ``WANDB_*`` variables apply. Its id is kept in ``<run folder>/wandb_id`` so that a resumed run continues
  the same W&B run. W&B cannot rewind a run, so the last step sent (and the keys sent at it) is kept in
  ``<run folder>/wandb_step``: after a crash, the part of an epoch that the resumed run trains again is not
  sent a second time, and W&B keeps the first session's points there (the same values when the resume is
  bit-identical, as on the CPU; TensorBoard instead replaces them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from dfqbench.errors import DfqbenchError
from dfqbench.registry import unknown_choice
from dfqbench.store.files import cannot_write, parse_json, unreadable

if TYPE_CHECKING:
    from dfqbench.store import RunRecord
    from dfqbench.specs import RunSpec

# name → (the package it needs, the extra that installs it)
LOGGERS: dict[str, tuple[str, str]] = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
SUMMARY_KEYS = ("fp_top1", "calibrated_top1", "best_top1", "best_epoch", "final_top1", "wall_time_s")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_loggers(names: Iterable[str] | None) -> tuple[str, ...]:
    """The requested logger names, each once, in order; an unknown name or a missing package is a one-line
    :class:`DfqbenchError` naming the choices or the install command."""
    if isinstance(names, str):
        names = [names]
    checked: list[str] = []
    for name in names or ():
        if not isinstance(name, str) or name not in LOGGERS:
            raise DfqbenchError(unknown_choice("logger (--log)", name, list(LOGGERS)))
        package, extra = LOGGERS[name]
        if not _installed(package):
            raise DfqbenchError(f"--log {name} needs the {package} package, which is not installed; "
                                f"pip install 'dfqbench[{extra}]'")
        if name not in checked:
            checked.append(name)
    return tuple(checked)


class RunLogger:
    """What a logger implements. ``first_step``: the step the run (re)starts after (0 for a fresh run)."""

    def open(self, spec: "RunSpec", folder: Path, first_step: int) -> None:
        raise NotImplementedError

    def log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self, summary: dict[str, Any] | None) -> None:
        """``summary``: the accuracies of the finished run, or None when it stopped early (crash, Ctrl-C)."""
        raise NotImplementedError


class TensorBoardLogger(RunLogger):
    """Scalars through ``torch.utils.tensorboard.SummaryWriter`` into ``<run folder>/tensorboard/``."""

    def __init__(self) -> None:
        self.writer: Any = None
        self.last_step = 0

    def open(self, spec: "RunSpec", folder: Path, first_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.last_step = first_step
        log_dir = folder / "tensorboard"
        if log_dir.exists() and not log_dir.is_dir():
            raise unreadable("TensorBoard folder", log_dir, "a file where its folder of event files belongs")
        # purge_step hides every event at or after it from earlier sessions: the part of an epoch that a
        # crash cut short is re-run and logged again.
        try:
            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=first_step + 1 if first_step > 0 else None)
        except OSError as exc:
            raise cannot_write(log_dir, exc) from None

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.last_step = step

    def close(self, summary: dict[str, Any] | None) -> None:
        if self.writer is None:
            return
        for key, value in (summary or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"summary/{key}", value, self.last_step)
        self.writer.close()
        self.writer = None


class WandbLogger(RunLogger):
    """A W&B run (``wandb.init`` in the run folder; offline with ``WANDB_MODE=offline``)."""

    def __init__(self) -> None:
        self.run: Any = None
        self.sent: SentMark | None = None

    def open(self, spec: "RunSpec", folder: Path, first_step: int) -> None:
        import wandb

        self.sent = SentMark(folder / "wandb_step")
        id_file = folder / "wandb_id"
        run_id = read_wandb_id(id_file)
        if not run_id:
            from dfqbench.store import atomic_write_bytes

            run_id = secrets.token_hex(4)  # W&B ids: lowercase letters and digits
            atomic_write_bytes(id_file, run_id.encode())
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "dfqbench", name=spec.run_name, id=run_id,
                              resume="allow", dir=str(folder), config=json.loads(json.dumps(spec.to_dict())),
                              group=f"{spec.method}_{spec.model}_{spec.bits}", reinit="create_new")
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="iteration")

    def log(self, values: dict[str, float], step: int) -> None:
        assert self.sent is not None
        fresh = self.sent.unsent(values, step)
        if fresh:
            self.run.log({**fresh, "iteration": step})
            self.sent.record(fresh, step)

    def close(self, summary: dict[str, Any] | None) -> None:
        if self.run is None:
            return
        for key, value in (summary or {}).items():
            self.run.summary[key] = value
        self.run.finish(exit_code=0 if summary is not None else 1)
        self.run = None


WANDB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what W&B accepts as a run id (dfqbench writes 8 hex digits)


def read_wandb_id(path: Path) -> str | None:
    """The W&B run id kept in the run folder, or None before the first session. A file that cannot be read or
    that holds no valid id (a '/', bytes that are not ASCII, a folder) is one line naming it."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise unreadable("W&B run id", path, exc.strerror or type(exc).__name__) from None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise unreadable("W&B run id", path, "not ASCII text") from None
    if text and not WANDB_ID.fullmatch(text):
        raise unreadable("W&B run id", path, "a W&B run id is 1-64 letters, digits, '-' or '_'")
    return text or None


class SentMark:
    """The last step a logger sent and the keys sent at that step, kept in a file across sessions, so that a
    resumed run does not send again what an earlier session already sent (for loggers that cannot rewind)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.step, self.keys = 0, set()
        try:
            saved = parse_json(path.read_text())
            self.step, self.keys = int(saved["step"]), set(saved["keys"])
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: send all rather than lose any
            pass

    def unsent(self, values: dict[str, float], step: int) -> dict[str, float]:
        """The values not yet sent: all of them after the mark, the keys not sent at it, none before it."""
        if step > self.step:
            return dict(values)
        if step == self.step:
            return {key: value for key, value in values.items() if key not in self.keys}
        return {}

    def record(self, values: dict[str, float], step: int) -> None:
        from dfqbench.store import atomic_write_json

        self.keys = (self.keys | set(values)) if step == self.step else set(values)
        self.step = step
        atomic_write_json(self.path, {"step": self.step, "keys": sorted(self.keys)})


_CLASSES: dict[str, type[RunLogger]] = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}


class Loggers:
    """The run's loggers as one: opened after a resume, closed once (also when training raises)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.loggers = [_CLASSES[name]() for name in check_loggers(names)]

    def open(self, spec: "RunSpec", folder: Path, first_step: int) -> None:
        for logger in self.loggers:
            logger.open(spec, folder, first_step)

    def log(self, values: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log(values, step)

    def close(self, record: "RunRecord | None") -> None:
        values = None if record is None else record.to_dict()
        summary = None if values is None else {k: values[k] for k in SUMMARY_KEYS if values.get(k) is not None}
        for logger in self.loggers:
            logger.close(summary)
