from __future__ import annotations

import json
import os
import signal
from collections import defaultdict
from pathlib import Path

import pytest

pytest_plugins = ["tests.fakes.fixtures_vast", "tests.fakes.fixtures_runpod", "tests.fixtures_local",
                  "tests.fixtures_memory"]

# Each long test's wall time (setup to teardown, seconds) in an earlier run of the whole suite: the order tests
# are handed to the pytest-xdist workers in (scripts/test.sh). `scripts/test.sh --store-durations` updates it with
# the times of the tests it ran.
DURATIONS_FILE = Path(__file__).with_name("durations.json")
STORED_FROM_S = 2.0  # shorter tests keep pytest's own order, after the long ones
_durations: defaultdict[str, float] = defaultdict(float)


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the commands the tests start, however the run was started. A shell starts a background
    job (`scripts/test.sh &`, `nohup … &`) with SIGINT ignored, every process below inherits that, and a Python
    started with SIGINT ignored keeps ignoring it: each test that interrupts a `cloudsd tunnel` or `up` would
    then wait out its timeout on a command that never sees the signal."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--store-durations", action="store_true",
                     help=f"store the wall time of each test of this run in {DURATIONS_FILE.name} (those of "
                          f"{STORED_FROM_S:g} s or more), the longest-first order of the next runs")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first. The workers take tests one at a time (--dist load --maxschedchunk 1), so a long test started
    last would run on alone while the other workers have finished: started first, the short ones fill in around
    it. The sort is stable: every test without a stored time keeps pytest's order, after the long ones."""
    try:
        stored = json.loads(DURATIONS_FILE.read_text())
    except (OSError, ValueError):
        return
    items.sort(key=lambda item: -float(stored.get(item.nodeid, 0.0)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] += report.duration  # in the controller, the workers' reports of all three phases


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if not config.getoption("store_durations") or hasattr(config, "workerinput"):
        return
    try:
        stored = json.loads(DURATIONS_FILE.read_text())
    except (OSError, ValueError):
        stored = {}
    stored.update({nodeid: round(s, 1) for nodeid, s in _durations.items()})  # a partial run updates its own tests
    long_ones = {nodeid: s for nodeid, s in sorted(stored.items(), key=lambda kv: (-kv[1], kv[0]))
                 if s >= STORED_FROM_S}
    DURATIONS_FILE.write_text(json.dumps(long_ones, indent=0) + "\n")


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
