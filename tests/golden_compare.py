"""The one comparison every golden test makes, and a record of how much of each tolerance was used.

Every golden test (tests/test_golden_*.py) compares dfqbench's numbers with the official code's through
:func:`assert_golden_close` or :func:`assert_golden_equal`. When the environment variable
``DFQBENCH_GOLDEN_SPREAD`` names a file, each comparison also appends one JSON line to it: the test, what was
compared, the greatest absolute and relative difference, the tolerance and the share of it used
(``usage`` = max |actual − expected| / (atol + rtol·|expected|); 1 is the limit). ``tests/golden/spread.py``
runs the golden tests under every CPU kernel setting this machine allows and reduces those lines to the
cross-kernel spread each golden README gives beside its tolerance.
"""

from __future__ import annotations

import json
import math
import os

import torch

SPREAD_ENV = "DFQBENCH_GOLDEN_SPREAD"


def _as_expected(actual, expected: torch.Tensor) -> torch.Tensor:
    actual = torch.as_tensor(actual)
    return actual.detach().to(expected.dtype).reshape(expected.shape)


def _record(what: str, actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> None:
    path = os.environ.get(SPREAD_ENV)
    if not path:
        return
    if expected.is_floating_point() and expected.numel():
        a, e = actual.double(), expected.double()
        same = (a == e) | (a.isnan() & e.isnan())
        diff = torch.where(same, 0.0, (a - e).abs().nan_to_num(nan=math.inf))
        abs_diff = float(diff.max())
        rel_diff = float(torch.where(diff == 0, 0.0, diff / e.abs()).max())
        usage = float(torch.where(diff == 0, 0.0, diff / (atol + rtol * e.abs())).max())
    else:
        exact = torch.equal(actual, expected)
        abs_diff = rel_diff = usage = 0.0 if exact else math.inf
    row = {"test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0], "what": what,
           "dtype": str(expected.dtype).removeprefix("torch."), "numel": expected.numel(), "rtol": rtol,
           "atol": atol, "abs_diff": abs_diff, "rel_diff": rel_diff, "usage": usage}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def assert_golden_close(what: str, actual, expected: torch.Tensor, rtol: float, atol: float) -> None:
    """``actual`` (cast to ``expected``'s dtype and shape) is within atol + rtol·|expected| of ``expected``."""
    actual = _as_expected(actual, expected)
    _record(what, actual, expected, rtol, atol)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def assert_golden_equal(what: str, actual, expected: torch.Tensor) -> None:
    """``actual`` is bit for bit ``expected`` (what elementwise arithmetic and min/max give on any CPU)."""
    actual = _as_expected(actual, expected)
    _record(what, actual, expected, 0.0, 0.0)
    if not torch.equal(actual, expected):
        torch.testing.assert_close(actual, expected, rtol=0.0, atol=0.0, equal_nan=True,
                                   msg=lambda m: f"{what}: not bit for bit equal: {m}")
