"""Per-machine SSH key pairs made by cloudsd, and the pinned host key as an OpenSSH known_hosts file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cloudsd import paths
from cloudsd.errors import ConfigError
from cloudsd.names import name_problem


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_line: str  # "ssh-ed25519 AAAA… cloudsd-NAME"

    @property
    def known_hosts_path(self) -> Path:
        return self.private_path.parent / "known_hosts"


def machine_dir(name: str) -> Path:
    """The machine's key folder; a name that could leave the keys dir never gets one (ConfigError)."""
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"{problem}.")
    return paths.keys_dir() / name


def create_key_pair(name: str) -> KeyPair:
    """A fresh ed25519 pair for machine `name` (private key 0600); replaces any older pair of that name."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder = machine_dir(name)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    private_path = folder / "id_ed25519"
    tmp = folder / ".id_ed25519.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    os.replace(tmp, private_path)
    public_line = f"{public.decode()} cloudsd-{name}"
    (folder / "id_ed25519.pub").write_text(public_line + "\n")
    (folder / "known_hosts").unlink(missing_ok=True)
    return KeyPair(private_path, public_line)


def load_key_pair(name: str) -> KeyPair:
    from cloudsd.errors import SSHError

    folder = machine_dir(name)
    private_path = folder / "id_ed25519"
    try:
        public_line = (folder / "id_ed25519.pub").read_text().strip()
    except FileNotFoundError:
        raise SSHError(
            f"the SSH key for {name!r} is missing ({private_path}).",
            hint=f"The machine cannot be reached without it; end it with `cloudsd down {name}`.",
        ) from None
    return KeyPair(private_path, public_line)


def write_known_hosts(pair: KeyPair, host: str, port: int, host_key: str) -> None:
    """Record the pinned host key where OpenSSH can use it (`ssh -o UserKnownHostsFile=…`)."""
    host_part = host if port == 22 else f"[{host}]:{port}"
    pair.known_hosts_path.write_text(f"{host_part} {host_key}\n")
