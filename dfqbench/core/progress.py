"""Progress display: a rich live bar on a terminal, plain lines elsewhere (CI, Slurm logs, pipes).

Both show the stages as they happen (loading the teacher and the test set, evaluating the FP teacher,
calibrating, each epoch), the last top-1 as soon as an evaluation finishes, and an ETA from
:class:`EtaClock`. Plain lines start with the time of day (``HH:MM:SS``). Torch-free: the CLI prints its
first line before importing torch.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import TextIO

SHOWN_KEYS = ("g/loss", "q/loss", "H_g", "H_q", "balance_gap")


def _format(values: dict[str, float]) -> str:
    return " ".join(f"{k}={values[k]:.4g}" for k in SHOWN_KEYS if k in values)


def epoch_text(top1: float | None, best: float | None) -> str:
    """An epoch's accuracy for the progress line; ``best`` is None before the first epoch that can be the best (a
    calibration epoch before ``train.eval_start_epoch``)."""
    if top1 is None:
        return "not evaluated"
    return f"top-1 {top1:.2f} (" + ("not a candidate for the best yet" if best is None else f"best {best:.2f}") + ")"


class EtaClock:
    """A steady remaining-time estimate: (iterations left) × (mean seconds per training iteration) + (epochs
    left) × (mean seconds per epoch end: evaluation, metrics and checkpoint).

    An iteration's time is the gap between two consecutive iterations of one epoch, so evaluations never
    count as training time; the first iteration of each epoch (its gap holds the previous epoch's end) and
    the first ``skip`` iterations of a session (engine compilation, CUDA graph capture) are left out. The
    means are over the whole session, not a recent window, so the estimate does not jump when an
    evaluation pauses the bar (rich's own column measures speed over the last 30 s).
    """

    def __init__(self, clock=time.monotonic, skip: int = 2) -> None:
        self.clock, self.skip = clock, skip
        self.epochs = self.iters = 0
        self.iter_s = self.iter_n = 0.0
        self.end_s = self.end_n = 0.0
        self.seen = 0
        self.last: float | None = None
        self.position = (0, -1)  # (epoch, iteration) of the last call

    def start(self, epochs: int, iters: int, first_epoch: int) -> None:
        self.epochs, self.iters = epochs, iters
        self.position, self.last = (first_epoch, -1), None

    def iteration(self, epoch: int, it: int) -> None:
        now = self.clock()
        self.seen += 1
        if self.last is not None and it > 0 and self.position == (epoch, it - 1) and self.seen > self.skip:
            self.iter_s += now - self.last
            self.iter_n += 1
        self.last, self.position = now, (epoch, it)

    def end_epoch(self, epoch: int) -> None:
        now = self.clock()
        if self.last is not None and self.position[0] == epoch:
            self.end_s += now - self.last
            self.end_n += 1
        self.last, self.position = now, (epoch + 1, -1)

    def remaining(self) -> float | None:
        """Seconds left, or None until a training iteration has been timed."""
        if not self.iter_n:
            return None
        epoch, it = self.position
        iters_left = max(0, (self.epochs - epoch) * self.iters - (it + 1))
        ends_left = max(0, self.epochs - epoch)
        per_end = self.end_s / self.end_n if self.end_n else 0.0
        return iters_left * self.iter_s / self.iter_n + ends_left * per_end

    def text(self) -> str:
        left = self.remaining()
        return "-:--:--" if left is None else str(timedelta(seconds=round(left)))


class Progress:
    """Plain-text progress: stage lines, one line per logged window and per epoch, each with the time of day.
    Also the base of the rich display."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.epochs = 0
        self.iters = 0
        self.eta = EtaClock()

    def message(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=self.stream, flush=True)

    def stage(self, text: str) -> None:
        """A step of the run that is starting now (loading, evaluating, calibrating, an epoch)."""
        self.message(text)

    def start(self, epochs: int, iters: int, first_epoch: int) -> None:
        self.epochs, self.iters = epochs, iters
        self.eta.start(epochs, iters, first_epoch)

    def start_epoch(self, epoch: int) -> None:
        self.stage(f"epoch {epoch + 1}/{self.epochs}: training, {self.iters} iterations")

    def iteration(self, epoch: int, it: int, values: dict[str, float] | None) -> None:
        self.eta.iteration(epoch, it)
        if values is not None:
            self.message(f"epoch {epoch + 1}/{self.epochs} iter {it + 1}/{self.iters} {_format(values)}")

    def end_epoch(self, epoch: int, top1: float | None, best: float | None) -> None:
        self.eta.end_epoch(epoch)
        acc = epoch_text(top1, best)
        left = f", ETA {self.eta.text()}" if epoch + 1 < self.epochs else ""
        self.message(f"epoch {epoch + 1}/{self.epochs} done: {acc}{left}")

    def stop(self) -> None:
        pass


class SilentProgress(Progress):
    """A progress sink that prints nothing and keeps the messages (``progress=False`` in the API; tests read
    ``messages``)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


class RichProgress(Progress):
    """A live rich progress bar with the last losses, the last top-1 and the ETA; stage lines and epoch
    summaries stay printed above it."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn

        self.console = Console()
        self.bar = Bar(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("ETA {task.fields[eta]}"), TextColumn("{task.fields[info]}"), console=self.console,
            transient=True,
        )
        self.task = None
        self.last_top1 = "-"
        self.losses = ""

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def start(self, epochs: int, iters: int, first_epoch: int) -> None:
        super().start(epochs, iters, first_epoch)
        self.bar.start()
        self.task = self.bar.add_task("train", total=epochs * iters, completed=first_epoch * iters,
                                      epoch=f"{first_epoch + 1}/{epochs}", eta=self.eta.text(), info=self._info())

    def start_epoch(self, epoch: int) -> None:
        pass  # the bar shows the epoch

    def _info(self) -> str:
        return f"{self.losses} last top-1 {self.last_top1}".strip()

    def iteration(self, epoch: int, it: int, values: dict[str, float] | None) -> None:
        self.eta.iteration(epoch, it)
        if values is not None:
            self.losses = _format(values)
        self.bar.update(self.task, advance=1, epoch=f"{epoch + 1}/{self.epochs}", eta=self.eta.text(),
                        info=self._info())

    def end_epoch(self, epoch: int, top1: float | None, best: float | None) -> None:
        self.eta.end_epoch(epoch)
        if top1 is not None:
            self.last_top1 = f"{top1:.2f}"
        self.bar.update(self.task, eta=self.eta.text(), info=self._info())  # now, not at the next logged window
        self.bar.console.print(
            f"epoch {epoch + 1}/{self.epochs}: {epoch_text(top1, best)}")

    def stop(self) -> None:
        self.bar.stop()


def make_progress(force_plain: bool = False) -> Progress:
    """Rich on an interactive terminal, plain lines otherwise."""
    if not force_plain and sys.stdout.isatty():
        return RichProgress()
    return Progress()
