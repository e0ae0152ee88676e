"""Progress display: a rich live bar on a terminal, plain lines elsewhere (CI, Slurm logs, pipes)."""

from __future__ import annotations

import sys
from typing import TextIO

SHOWN_KEYS = ("g/loss", "q/loss", "H_g", "H_q", "balance_gap")


def _format(values: dict[str, float]) -> str:
    return " ".join(f"{k}={values[k]:.4g}" for k in SHOWN_KEYS if k in values)


class Progress:
    """Plain-text progress: one line per logged window and per epoch. Also the base of the rich display."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.epochs = 0
        self.iters = 0

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, epochs: int, iters: int, first_epoch: int) -> None:
        self.epochs, self.iters = epochs, iters

    def iteration(self, epoch: int, it: int, values: dict[str, float] | None) -> None:
        if values is not None:
            self.message(f"epoch {epoch + 1}/{self.epochs} iter {it + 1}/{self.iters} {_format(values)}")

    def end_epoch(self, epoch: int, top1: float | None, best: float | None) -> None:
        acc = "not evaluated" if top1 is None else f"top-1 {top1:.2f} (best {best:.2f})"
        self.message(f"epoch {epoch + 1}/{self.epochs} done: {acc}")

    def stop(self) -> None:
        pass


class RichProgress(Progress):
    """A live rich progress bar with the last losses and accuracy; epoch summaries stay printed above it."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

        self.console = Console()
        self.bar = Bar(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), console=self.console, transient=True,
        )
        self.task = None
        self.last_top1 = "-"

    def message(self, text: str) -> None:
        self.console.print(text)

    def start(self, epochs: int, iters: int, first_epoch: int) -> None:
        super().start(epochs, iters, first_epoch)
        self.bar.start()
        self.task = self.bar.add_task("train", total=epochs * iters, completed=first_epoch * iters,
                                      epoch=f"{first_epoch + 1}/{epochs}", info="")

    def iteration(self, epoch: int, it: int, values: dict[str, float] | None) -> None:
        fields = {"epoch": f"{epoch + 1}/{self.epochs}"}
        if values is not None:
            fields["info"] = f"{_format(values)} last top-1 {self.last_top1}"
        self.bar.update(self.task, advance=1, **fields)

    def end_epoch(self, epoch: int, top1: float | None, best: float | None) -> None:
        if top1 is not None:
            self.last_top1 = f"{top1:.2f}"
        self.bar.console.print(
            f"epoch {epoch + 1}/{self.epochs}: " + ("not evaluated" if top1 is None else f"top-1 {top1:.2f} (best {best:.2f})")
        )

    def stop(self) -> None:
        self.bar.stop()


def make_progress(force_plain: bool = False) -> Progress:
    """Rich on an interactive terminal, plain lines otherwise."""
    if not force_plain and sys.stdout.isatty():
        return RichProgress()
    return Progress()
