"""A machine is not trusted with the laptop's disk: a pull takes no more than the machine listed, checks the free
space first, and makes no folder outside DEST (issue 11, items 9 and 12)."""

from __future__ import annotations

import os
import posixpath
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudsd.config import resolve
from cloudsd.core.access import Session
from cloudsd.core.machines import Providers, QuietReporter
from cloudsd.core.teardown import down
from cloudsd.core.up import UpOptions, up
from cloudsd.errors import SyncError
from cloudsd.ledger import Ledger
from cloudsd.sync.agent import agent_path, state_dir_for
from cloudsd.sync.outputs import _Folders, _place, pull_outputs


def test_place_checks_containment_before_it_makes_a_folder(tmp_path: Path) -> None:
    dest, elsewhere = tmp_path / "dest", tmp_path / "elsewhere"
    dest.mkdir()
    elsewhere.mkdir()
    (dest / "link").symlink_to(elsewhere)  # a folder on the way is a link out of DEST
    partial = dest / "1.partial"
    partial.write_bytes(b"png")
    folders = _Folders(os.path.realpath(dest))
    assert _place(dest, folders, partial, "link/sub/deeper/x.png") is None
    assert list(elsewhere.iterdir()) == [], "no folder was made outside DEST"
    assert partial.exists()
    assert _place(dest, folders, partial, "link/sub/deeper/y.png") is None  # the folder's answer is kept
    assert list(elsewhere.iterdir()) == []
    assert _place(dest, folders, partial, "inside/x.png") == "inside/x.png"
    assert (dest / "inside" / "x.png").read_bytes() == b"png"


@pytest.fixture
def machine(local_env: dict[str, str]) -> Iterator[Session]:
    settings = resolve({"provider": "local"})
    ledger = Ledger()
    providers = Providers(settings)
    session = up(UpOptions.from_settings(settings, "bounds", port=0), ledger, providers, QuietReporter()).session
    yield session
    session.close()
    down(["bounds"], ledger, providers, QuietReporter())
    providers.close()
    ledger.close()


def _outputs(session: Session) -> str:
    return posixpath.join(session.profile.data_dir, session.profile.output_dir)


# `send` that answers every range with `EXTRA` more bytes than asked, each with a matching sha256, as a hostile
# or broken machine could; `serve` is the real agent's.
HOSTILE = """\
import hashlib, json, runpy, sys
if sys.argv[1:] == ["send"]:
    out = sys.stdout.buffer
    for item in json.loads(sys.stdin.buffer.readline())["items"]:
        body = b"x" * (item["len"] + {extra})
        out.write(json.dumps({{"fid": item["fid"], "off": item["off"], "len": len(body)}}).encode() + b"\\n")
        out.write(body)
        out.write(json.dumps({{"sha256": hashlib.sha256(body).hexdigest(), "short": False}}).encode() + b"\\n")
    out.write(b'{{"end": true}}\\n')
    out.flush()
else:
    sys.argv[0] = {real!r}
    runpy.run_path({real!r}, run_name="__main__")
"""


@pytest.mark.docker
def test_a_pull_takes_no_more_than_the_machine_listed(machine: Session, tmp_path: Path) -> None:
    connection = machine.connection
    outputs = _outputs(machine)
    assert connection.run(f"mkdir -p {outputs}/day && head -c 1000 /dev/urandom > {outputs}/day/a.png")[0] == 0
    agent = agent_path(state_dir_for(machine.profile))
    real = posixpath.join(state_dir_for(machine.profile), "real")
    pull_outputs(connection, machine.profile, tmp_path / "warmup")  # puts the real agent there
    script = HOSTILE.format(extra=5_000_000, real=real)
    status, _, err = connection.run(f"mv {agent} {real} && mkdir {agent} && cat > {agent}/__main__.py",
                                    stdin=script.encode())
    assert status == 0, err

    dest = tmp_path / "pulled"
    summary = pull_outputs(connection, machine.profile, dest)
    assert summary.pulled == [] and len(summary.problems) == 1
    assert "day/a.png" in summary.problems[0] and "where it listed 1000" in summary.problems[0]
    written = [p for p in dest.rglob("*") if p.is_file() and p.name != "pulled.json"]
    assert written == [], "nothing the machine over-sent is kept"


def _small_disk(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as the laptop's full disk")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _small_disk(tmp_path / "small", "2m")


@pytest.mark.docker
def test_a_pull_checks_free_space_before_it_writes(machine: Session, small_disk: Path) -> None:
    outputs = shlex.quote(_outputs(machine))
    command = f"mkdir -p {outputs} && head -c 3000000 /dev/urandom > {outputs}/big.png"
    assert machine.connection.run(command)[0] == 0
    with pytest.raises(SyncError) as info:
        pull_outputs(machine.connection, machine.profile, small_disk / "dest")
    message = str(info.value)
    assert "do not fit" in message and "3.0 MB" in message and "Nothing was pulled" in message
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []
