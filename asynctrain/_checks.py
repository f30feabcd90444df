"""Argument checks shared by every layer; each error names the value and the fix.

Pure Python (no asyncio, no numpy arrays) so that ``models``, ``optim`` and ``data``
may use it freely.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import TypeVar

from asynctrain._exceptions import ConfigError, ConfigTypeError

T = TypeVar("T")

INT64_MAX = 2**63 - 1
"""The largest integer a checkpoint holds (its manifest's counters and settings are
64-bit signed integers): the bound of every setting a checkpoint records."""


def check_int(name: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) within
    ``[minimum, maximum]`` (no upper bound when ``maximum`` is None).

    Raises:
        ConfigTypeError: ``value`` is a bool, a float or not a number at all.
        ConfigError: ``value`` is below ``minimum`` or above ``maximum``.

    >>> check_int("epochs", 3)
    3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigTypeError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__}); "
            f"pass a whole number such as {max(minimum, 1)}"
        )
    number = int(value)
    if number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        bound = "2**63 - 1 (the largest a checkpoint holds)" if maximum == INT64_MAX else maximum
        raise ConfigError(f"{name} must be <= {bound}, got {number}")
    return number


def check_bool(name: str, value: object, *, means: str = "") -> bool:
    """Return ``value`` if it is True or False (not 1, 0 or another truthy object).

    ``means``, if given, ends the message: what the flag does, for a caller who passed
    a number meaning something else.

    Raises:
        ConfigTypeError: ``value`` is not a bool.

    >>> check_bool("monitor_lag", True)
    True
    """
    if not isinstance(value, bool):
        hint = f"; {means}" if means else ""
        raise ConfigTypeError(
            f"{name} must be True or False, got {value!r} ({type(value).__name__}){hint}"
        )
    return value


def check_float(
    name: str,
    value: object,
    *,
    minimum: float = 0.0,
    inclusive: bool = True,
    maximum: float = math.inf,
) -> float:
    """Return ``value`` as a finite float within ``[minimum, maximum]``.

    ``inclusive=False`` excludes ``minimum`` itself (for strictly positive settings).

    Raises:
        ConfigTypeError: ``value`` is a bool or not a real number.
        ConfigError: ``value`` is NaN, infinite or out of range.

    >>> check_float("learning_rate", 0.1, inclusive=False)
    0.1
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigTypeError(
            f"{name} must be a real number, got {value!r} ({type(value).__name__})"
        )
    result = float(value)
    if not math.isfinite(result):
        raise ConfigError(f"{name} must be finite, got {result}; pass a finite number")
    too_low = result < minimum if inclusive else result <= minimum
    if too_low or result > maximum:
        low = "[" if inclusive else "("
        high = "]" if math.isfinite(maximum) else ")"
        raise ConfigError(f"{name} must be in {low}{minimum}, {maximum}{high}, got {result}")
    return result


def check_choice(name: str, value: T, choices: Collection[T]) -> T:
    """Return ``value`` if it is one of ``choices``.

    Raises:
        ConfigError: naming the accepted choices.

    >>> check_choice("activation", "relu", ("relu", "tanh"))
    'relu'
    """
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} must be one of {listed}; got {value!r}")
    return value
