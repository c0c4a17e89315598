"""Where cloudsd keeps its config, keys and ledger: one folder, `CLOUDSD_HOME` or `~/.cloudsd`."""

from __future__ import annotations

import os
from pathlib import Path

from cloudsd.errors import ConfigError


def expand(text: str | Path, where: str) -> Path:
    """`~` and `~user` expanded; ConfigError naming `where` for a user that does not exist or a NUL byte."""
    if "\x00" in str(text):
        raise ConfigError(f"{where}: a path cannot contain a NUL byte.")
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise ConfigError(f"{where}: {str(text).split('/', 1)[0]!r} names no user on this computer.") from None


def home() -> Path:
    env = os.environ.get("CLOUDSD_HOME")
    return expand(env, "CLOUDSD_HOME") if env else Path.home() / ".cloudsd"


def config_file() -> Path:
    return home() / "config.yaml"


def ledger_file() -> Path:
    return home() / "ledger.sqlite3"


def keys_dir() -> Path:
    return home() / "keys"


def home_is_a_file(path: Path) -> ConfigError:
    """What every command says when cloudsd's folder is a file, whether it was to read or to write there."""
    return ConfigError(f"{path} is a file, not cloudsd's folder.",
                       hint="Move it aside, or point CLOUDSD_HOME at a folder.")


def ensure_home() -> Path:
    """The config dir, made if missing; ConfigError when it cannot be (a file of that name, no permission)."""
    path = home()
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise home_is_a_file(path) from None
    except OSError as exc:
        raise ConfigError(f"cannot make cloudsd's folder {path} ({exc.strerror}).",
                          hint="Point CLOUDSD_HOME at a folder you can write.") from None
    return path
