"""Where cloudsd keeps its config, keys and ledger: one folder, `CLOUDSD_HOME` or `~/.cloudsd`."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("CLOUDSD_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cloudsd"


def config_file() -> Path:
    return home() / "config.yaml"


def ledger_file() -> Path:
    return home() / "ledger.sqlite3"


def keys_dir() -> Path:
    return home() / "keys"


def ensure_home() -> Path:
    path = home()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
