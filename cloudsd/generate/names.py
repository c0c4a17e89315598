"""Matching the names a user types against what the machine has, with the closest names when none fits."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from cloudsd.errors import ConfigError


def closest(wanted: str, choices: Iterable[str], n: int = 3) -> list[str]:
    pool = sorted(set(choices))
    by_lower = {c.lower(): c for c in pool}
    found = difflib.get_close_matches(wanted.lower(), list(by_lower), n=n, cutoff=0.3)
    return [by_lower[f] for f in found]


def unknown(kind: str, wanted: str, choices: Iterable[str], flag: str) -> ConfigError:
    pool = sorted(set(choices))
    near = closest(wanted, pool)
    if near:
        hint = f"The machine has {', '.join(repr(n) for n in near)}{' among others' if len(pool) > len(near) else ''}."
    elif pool:
        hint = f"The machine has: {', '.join(repr(p) for p in pool[:8])}{' …' if len(pool) > 8 else ''}."
    else:
        hint = "The machine has none: sync one first (`cloudsd sync models NAME FILE`)."
    return ConfigError(f"no {kind} {wanted!r} on the machine ({flag}); nothing was generated.", hint=hint)
