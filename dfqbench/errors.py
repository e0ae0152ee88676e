"""The one exception type for bad user input: the CLI prints its message as one line and exits non-zero."""


class DfqbenchError(Exception):
    """A user-facing error: the message names the bad value and the valid choices or the fix."""
