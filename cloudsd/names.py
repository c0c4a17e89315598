"""Machine names: the one rule for what a user may call a machine, checked before anything is written.

A name becomes a folder under the keys dir, a label (`cloudsd-NAME`) on every provider, a container name and
hostname on the local engine, and a line in the machine's `authorized_keys`. So only lowercase letters,
digits and `-`, a letter first, no `-` last, at most MAX_LENGTH characters: `cloudsd-` plus the name stays
within a 63-character DNS label, which every provider's label and a hostname accept.
"""

from __future__ import annotations

import re

MAX_LENGTH = 40
_NAME = re.compile(r"[a-z](?:[a-z0-9-]*[a-z0-9])?")
RULE = f"lowercase letters, digits and '-', a letter first, not ending in '-', at most {MAX_LENGTH} characters"


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid machine name, or None when it is."""
    if not name:
        return "a machine name cannot be empty"
    if len(name) > MAX_LENGTH:
        return f"a machine name has at most {MAX_LENGTH} characters (this one has {len(name)})"
    if not _NAME.fullmatch(name):
        return f"{name!r} is not a machine name: use {RULE}, e.g. sd-1 or mybox"
    return None


def check_name(name: str) -> str:
    """`name` if valid; ValueError saying what is accepted otherwise."""
    problem = name_problem(name)
    if problem:
        raise ValueError(problem)
    return name
