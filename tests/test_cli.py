from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cli_helpers import cloudsd

HEAVY = ("docker", "paramiko", "httpx", "rich")


def _imported_after(args: list[str]) -> set[str]:
    code = (
        "import sys\n"
        "from cloudsd.cli.main import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('MODULES=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(filter(None, out.strip().splitlines()[-1].removeprefix("MODULES=").split(",")))


def test_help_and_version_import_no_heavy_library() -> None:
    assert _imported_after(["--help"]) == set()
    assert _imported_after(["--version"]) == set()


def test_version() -> None:
    result = cloudsd("--version")
    assert result.returncode == 0 and "cloudsd, version" in result.stdout


def test_init_then_config_show(cloudsd_home: Path) -> None:
    assert cloudsd("init").returncode == 0
    assert (cloudsd_home / "config.yaml").exists()
    again = cloudsd("init")
    assert again.returncode != 0 and "already exists" in again.stderr
    shown = cloudsd("config", "show", "--json")
    assert '"source": ' in shown.stdout


def test_config_error_is_one_line_without_traceback(cloudsd_home: Path) -> None:
    cloudsd_home.mkdir(parents=True, exist_ok=True)
    (cloudsd_home / "config.yaml").write_text("provider: local\nimgae: x\n")
    result = cloudsd("config", "show")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {cloudsd_home / 'config.yaml'}:2: unknown setting 'imgae'. Did you mean 'image'?"
    ]


def test_unknown_machine(cloudsd_home: Path) -> None:
    result = cloudsd("down", "ghost", "--yes")
    assert result.returncode == 9
    assert "no machine named 'ghost'" in result.stderr and "Traceback" not in result.stderr


def test_bad_port_flag() -> None:
    result = cloudsd("up", "--port", "99999")
    assert result.returncode == 2 and "not a port" in result.stderr
