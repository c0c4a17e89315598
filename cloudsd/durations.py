"""Durations as people write them: `45m`, `2h`, `1h30m`, `90s`, or a number of seconds."""

from __future__ import annotations

import re

TYPE_CHECKING = False  # `typing` is not imported at run time: `cloudsd status` imports this module
if TYPE_CHECKING:
    from typing import Any

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_SECONDS = 366 * 86400.0  # a year: anything longer is a typo, and overflows dates downstream
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd])")


def parse_duration(value: Any) -> float:
    """Seconds in `value`, at most a year; raises ValueError with what is accepted."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 45m or 2h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        if len(text) > 40:
            raise ValueError("expected a duration like 45m, 2h or 1h30m")
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
            seconds = float(text)
        else:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError("expected a duration like 45m, 2h or 1h30m")
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds != seconds or seconds < 0:
        raise ValueError("expected a duration that is not negative")
    if seconds > MAX_SECONDS:
        raise ValueError("expected a duration of at most a year (366d)")
    return seconds


def format_duration(seconds: float) -> str:
    """Time elapsed, as a clock shows it: 2h05m, 3m07s, 42s (uptimes, billed time)."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_written(seconds: float) -> str:
    """A duration as people write it, the inverse of `parse_duration`: 45m, 2h, 1h30m, 20s, 1m30s (budgets)."""
    seconds = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"
