"""Small checks of user-given numbers and names, each raising a one-line :class:`DfqbenchError` naming the key
and the valid range (torch-free: grid dry runs use them)."""

from __future__ import annotations

import math
import re
from typing import Any

from dfqbench.errors import DfqbenchError

MAX_SEED = 2**63 - 1  # torch.manual_seed's range
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def is_int(value: Any) -> bool:
    """An integer, not a bool (``True`` is an int to Python) and not a float such as 2.0 or 2.5."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(key: str, value: Any, low: int = 0, high: int | None = None) -> None:
    """``value`` must be an integer >= ``low`` (and <= ``high`` when given)."""
    if not is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high:,}]"
        raise DfqbenchError(f"invalid {key}={short_repr(value)}: must be an integer {bound}")


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to 40 characters (a 100,000-digit integer is one line, not a screenful)."""
    if is_int(value) and abs(value) >= 10**40:
        return f"<an integer of {len(str(abs(value))):,} digits>"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_real(key: str, value: Any, low: float, high: float | None = None, *, low_open: bool = False,
               high_open: bool = True) -> None:
    """``value`` must be a finite number in the given range (``low_open``/``high_open`` exclude the ends)."""
    ok = is_real(value) and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open or high is None else "]"
        bound = f"{left}{low:g}, {'inf' if high is None else f'{high:g}'}{right}"
        raise DfqbenchError(f"invalid {key}={value!r}: must be a finite number in {bound}")


def check_positive(key: str, value: Any) -> None:
    """A finite number > 0, e.g. a KD temperature (it divides the logits)."""
    check_real(key, value, 0.0, low_open=True)


def check_finite(key: str, value: Any) -> None:
    """No NaN or infinity anywhere in ``value`` (numbers, lists, tuples, dicts): JSON cannot hold them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise DfqbenchError(f"invalid {key}={value!r}: must be a finite number (NaN and infinity are rejected)")
    if isinstance(value, (list, tuple)):
        for item in value:
            check_finite(key, item)
    elif isinstance(value, dict):
        for name, item in value.items():
            check_finite(f"{key}.{name}", item)


def check_seed(key: str, value: Any) -> None:
    """A seed torch.manual_seed accepts: an integer in [0, 2**63 - 1]."""
    if not is_int(value) or not 0 <= value <= MAX_SEED:
        raise DfqbenchError(f"invalid {key} {value!r}: must be an integer in [0, 2**63 - 1]")


def check_path_name(what: str, value: Any) -> None:
    """``value`` becomes a folder or file name: letters, digits, ``_ . -``, not starting with a dot."""
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise DfqbenchError(f"invalid {what} {value!r}: it names a folder, so it must be 1-128 letters, digits, "
                            "'_', '.' or '-', not starting with '.' (no '/' or '..')")


# A method's name is part of every run's spec, run id and folder name (``<method>_<model>_<bits>_s<seed>_<id>``):
# a lowercase letter, then lowercase letters, digits or '_', 48 characters at most. Bundled methods, plugin
# entry points, ``name`` attributes and ``@register_method`` are all held to it when they register.
METHOD_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")


def check_method_name(name: Any) -> None:
    """Raise a one-line :class:`DfqbenchError` unless ``name`` can name a method (:data:`METHOD_NAME`)."""
    if not isinstance(name, str) or not METHOD_NAME.fullmatch(name):
        raise DfqbenchError(f"invalid method name {short_repr(name)}: a method's name is part of its runs' folder "
                            "names, so it must be a lowercase letter followed by up to 47 lowercase letters, "
                            "digits or '_'")
