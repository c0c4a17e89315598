"""Machine names: one rule, checked before anything is written (issue 11, item 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudsd import keys
from cloudsd.errors import ConfigError
from cloudsd.names import MAX_LENGTH, check_name, name_problem
from tests.cli_helpers import run_in_process

GOOD = ["a", "sd-1a2b", "mybox", "a" * MAX_LENGTH, "x-1-y", "gpu4090"]
BAD = ["", ".", "..", "../../home/.ssh", "a/b", "box\nssh-ed25519 AAAA evil", "Box", "1box", "-box", "box-",
       "a" * (MAX_LENGTH + 1), "a" * 300, "box name", "box_1", "bóx", "box.", "box\x00", "box\n"]


@pytest.mark.parametrize("name", GOOD)
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", BAD)
def test_bad_names(name: str) -> None:
    assert name_problem(name)
    with pytest.raises(ValueError):
        check_name(name)


def test_label_fits_a_dns_label() -> None:
    from cloudsd.machine import label_for

    assert len(label_for("a" * MAX_LENGTH)) <= 63


@pytest.mark.parametrize("name", ["../../home/.ssh", "..", "a/b", "x\nssh-rsa AAAA", "a" * 300])
def test_up_refuses_a_bad_name_before_writing_anything(name: str, cloudsd_home: Path, tmp_path: Path) -> None:
    ssh = tmp_path / "user-home" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "known_hosts").write_text("kept\n")
    code, out, err = run_in_process("up", name, "--provider", "local", "--yes")
    assert code == 2, (out, err)
    assert "is not a machine name" in err or "at most" in err
    assert "internal error" not in err
    assert not cloudsd_home.exists() or not any(cloudsd_home.rglob("*")), "nothing is written for a bad name"
    assert (ssh / "known_hosts").read_text() == "kept\n"
    assert sorted(p.name for p in ssh.iterdir()) == ["known_hosts"]


def test_keys_never_leave_the_keys_folder() -> None:
    with pytest.raises(ConfigError):
        keys.create_key_pair("../../escape")
