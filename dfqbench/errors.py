"""dfqbench's exceptions: DfqbenchError (bad input; the CLI prints one line and exits 2) and RunDiverged."""


class DfqbenchError(Exception):
    """A user-facing error: the message names the bad value and the valid choices or the fix."""


class RunDiverged(RuntimeError):
    """A logged loss or diagnostic of a training run became NaN or infinite (the trainer ends the run there and
    records it with ``diverged``; see :mod:`dfqbench.core.trainer`)."""
