"""Checks of values a user or a caller passes in, each failing with one line that says what was
expected (typed errors from rsicrc.errors). Torch-free. `bool` is never an integer here: True is
not a batch size."""

from __future__ import annotations

import math
from collections.abc import Collection
from numbers import Integral, Real
from typing import Any

from rsicrc.errors import ConfigError, RsicrcError


def is_int(value: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def positive_int(value: Any, what: str, minimum: int = 1, error: type[RsicrcError] = ConfigError) -> int:
    """`value` as an int >= `minimum`, else `error`: "<what> must be an integer >= <minimum>, got ..."."""
    if not is_int(value) or value < minimum:
        raise error(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def optional_positive_int(value: Any, what: str, minimum: int = 1,
                          error: type[RsicrcError] = ConfigError) -> int | None:
    """None, or `positive_int`."""
    return None if value is None else positive_int(value, what, minimum, error)


def finite_number(value: Any, what: str, minimum: float | None = None, maximum: float | None = None,
                  error: type[RsicrcError] = ConfigError) -> float:
    """`value` as a finite float within [minimum, maximum] (either bound optional), else `error`."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        bounds = " and ".join(b for b in (f">= {minimum:g}" if minimum is not None else "",
                                          f"<= {maximum:g}" if maximum is not None else "") if b)
        raise error(f"{what} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}")
    return float(value)


def one_of(value: Any, choices: Collection[str], what: str, error: type[RsicrcError] = ConfigError) -> str:
    """`value` if it is one of `choices`, else `error` naming them."""
    if not isinstance(value, str) or value not in choices:
        raise error(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value
