"""Checks for the values a user types (flags, settings, environment): pure functions, one rule each.

Each returns the value or raises ValueError saying what is accepted; the CLI's ParamTypes and the config
resolver turn that into one line naming the flag, variable or file:line.
"""

from __future__ import annotations

import math
import re
import urllib.parse

TYPE_CHECKING = False  # `typing` is not imported at run time: `cloudsd status` imports this module
if TYPE_CHECKING:
    from typing import Any

MAX_DISK_GB = 10_000
MAX_PRICE_PER_HOUR = 1_000.0  # USD per hour: no single rented machine costs more
MAX_SPEND_USD = 1_000_000.0
MAX_VRAM_GB = 4_096.0
_CUDA = re.compile(r"[0-9]{1,2}(\.[0-9]{1,2})?")


def number(value: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           what: str = "a number") -> float:
    """A finite float within [low, high] (low excluded with `low_open`)."""
    if isinstance(value, bool):
        raise ValueError(f"expected {what}")
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected {what}") from None
    if not math.isfinite(result):
        raise ValueError(f"expected {what}, not {value}")
    if low is not None and (result < low or (low_open and result == low)):
        raise ValueError(f"expected {what} {'above' if low_open else 'at least'} {low:g}")
    if high is not None and result > high:
        raise ValueError(f"expected {what} at most {high:g}")
    return result


def whole(value: Any, *, low: int | None = None, high: int | None = None, what: str = "a whole number") -> int:
    """An int within [low, high]; 40.7 is refused, never truncated."""
    if isinstance(value, bool):
        raise ValueError(f"expected {what}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected {what}, not {value}")
        value = int(value)
    try:
        result = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ValueError(f"expected {what}") from None
    if low is not None and result < low:
        raise ValueError(f"expected {what} of at least {low}")
    if high is not None and result > high:
        raise ValueError(f"expected {what} of at most {high}")
    return result


def disk_gb(value: Any) -> int:
    return whole(value, low=1, high=MAX_DISK_GB, what="a disk size in whole GB")


def price(value: Any) -> float:
    return number(value, low=0, high=MAX_PRICE_PER_HOUR, what="a price in USD per hour")


def spend(value: Any) -> float:
    return number(value, low=0, high=MAX_SPEND_USD, low_open=True, what="an amount in USD")


def vram_gb(value: Any) -> float:
    return number(value, low=0, high=MAX_VRAM_GB, low_open=True, what="GPU memory in GB")


def fraction(value: Any) -> float:
    return number(value, low=0, high=1, what="a share from 0 to 1")


def percent(value: Any) -> float:
    return number(value, low=0, high=100, low_open=True, what="a percentage above 0, at most 100")


def cuda(value: Any) -> str:
    text = str(value).strip()
    if not _CUDA.fullmatch(text):
        raise ValueError(f"expected a CUDA version like 12.4, not {text!r}")
    return text


def http_url(value: Any) -> str:
    """An http(s) URL with a host (and a valid port, when it names one)."""
    text = str(value).strip()
    try:
        parts = urllib.parse.urlsplit(text)
        _ = parts.port  # raises ValueError for a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise ValueError(f"expected an http(s) URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http(s) URL like https://api.example.com")
    if any(c.isspace() or ord(c) < 32 for c in text):
        raise ValueError("expected an http(s) URL without spaces or control characters")
    return text.rstrip("/")
