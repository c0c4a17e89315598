from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.fakes.fixtures_vast", "tests.fakes.fixtures_runpod", "tests.fixtures_local",
                  "tests.fixtures_memory"]


@pytest.fixture(autouse=True)
def cloudsd_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own CLOUDSD_HOME, and no provider key or setting leaks in from the environment."""
    home = tmp_path / "cloudsd-home"
    monkeypatch.setenv("CLOUDSD_HOME", str(home))
    for var in list(os.environ):
        if var.startswith(("CLOUDSD_", "RUNPOD_", "VAST_")) and var not in ("CLOUDSD_HOME", "CLOUDSD_REQUIRE_DOCKER",
                                                                            "CLOUDSD_BASE_IMAGE", "CLOUDSD_DEBUG",
                                                                            "CLOUDSD_TESTBED_IMAGE"):
            monkeypatch.delenv(var, raising=False)
    # Keys in the user's real files must not be found either.
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user-home" / ".config"))
    return home
