"""Argument checks shared by the public classes (messages follow torch.utils.data's style)."""

from __future__ import annotations

import math
from typing import Any


def check_positive_int(name: str, value: Any) -> int:
    """An ``int`` > 0 (``True`` is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} should be a positive integer value, but got {name}={value!r}")
    if value <= 0:
        raise ValueError(f"{name} should be a positive integer value, but got {name}={value!r}")
    return value


def check_nonnegative_int(name: str, value: Any) -> int:
    """An ``int`` ≥ 0 (``True`` is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} should be a non-negative integer value, but got {name}={value!r}")
    if value < 0:
        raise ValueError(f"{name} should be a non-negative integer value, but got {name}={value!r}")
    return value


def check_finite(name: str, value: Any) -> float:
    """A finite real number, returned as ``float``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} should be a real number, but got {name}={value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} should be finite, but got {name}={value!r}")
    return float(value)


def check_real(name: str, value: Any, *, low: float, strict: bool = False) -> float:
    """A finite real number ≥ ``low`` (> ``low`` when ``strict``), returned as ``float``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} should be a real number, but got {name}={value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or (strict and v == low):
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{name} should be a finite number {bound}, but got {name}={value!r}")
    return v
