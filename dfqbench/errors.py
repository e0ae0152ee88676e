"""User-facing exceptions: the CLI prints their message as one line and exits non-zero (2 bad input, 1 diverged)."""


class DfqbenchError(Exception):
    """A user-facing error: the message names the bad value and the valid choices or the fix."""


class RunDiverged(RuntimeError):
    """A logged loss or diagnostic of a training run became NaN or infinite (recorded in the run's error.json)."""
