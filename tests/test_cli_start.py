"""`cloudsd --help` and `cloudsd status` start without click (cloudsd/cli/main.py): what they import, and that
they print, exit and fail exactly as the click group does for the same arguments."""

from __future__ import annotations

import errno
import gc
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cloudsd.cli.main as entry
from cloudsd.cli.help_text import HELP
from cloudsd.errors import ConfigError
from cloudsd.providers.memory import World
from tests.test_cli_inprocess import Ran, cloudsd

# What `cloudsd --help` may import beyond `python -c pass`: cloudsd's entry and its text, and gc (built into
# the interpreter), nothing else.
HELP_IMPORTS = {"cloudsd", "cloudsd.cli", "cloudsd.cli.main", "cloudsd.errors", "cloudsd.cli.help_text", "gc"}
# `cloudsd status` with no machines and no keys: no click, no rich/yaml/vendor library, nothing that only
# `--help` or another command needs, none of the rules and data that only a machine, a volume or a key
# brings in (each made at import: dataclasses, compiled patterns, threading), and no `typing` (cloudsd's
# annotations are strings, its type-only names imported for the type checker alone).
STATUS_NEVER = ("click", "rich", "yaml", "httpx", "docker", "paramiko", "shutil", "threading", "typing",
                "cloudsd.core.reporter",
                "cloudsd.cli.commands", "cloudsd.cli.machines", "cloudsd.cli.params", "cloudsd.cli.help_text",
                "cloudsd.machine", "cloudsd.core.cost", "cloudsd.core.offers", "cloudsd.core.lifecycle",
                "cloudsd.names", "cloudsd.redact", "cloudsd.sync", "cloudsd.volumes",
                "cloudsd.core.status", "cloudsd.core.volumes")


def _imported(args: list[str], home: Path) -> tuple[str, set[str]]:
    """Run `main(args)` in a fresh interpreter; its stdout and the modules it added to `python -c pass`'s."""
    code = ("import sys\nbefore = set(sys.modules)\nfrom cloudsd.cli.main import main\ntry:\n"
            f"    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print('MODULES=' + ','.join(sorted(set(sys.modules) - before)))\n")
    env = {**os.environ, "CLOUDSD_HOME": str(home / "cloudsd"), "HOME": str(home), "COLUMNS": "100"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    text, _, modules = out.rpartition("MODULES=")
    return text, set(filter(None, modules.strip().split(",")))


def test_help_imports_only_cloudsds_entry(tmp_path: Path) -> None:
    text, modules = _imported(["--help"], tmp_path)
    assert text == HELP + "\n"
    assert modules <= HELP_IMPORTS, sorted(modules - HELP_IMPORTS)


def test_status_with_no_machines_imports_no_click(tmp_path: Path) -> None:
    for args in (["status"], ["ls"], ["status", "--json"]):
        text, modules = _imported(args, tmp_path)
        assert text in ("No machines. Start one with `cloudsd up`.\n", "[]\n")
        never = (*STATUS_NEVER, "json") if "--json" not in args else STATUS_NEVER  # no event read, no JSON
        assert not {m for m in modules if m.split(".")[0] in never or m in never}, sorted(modules)


def test_status_with_only_ended_machines_imports_no_rules(tmp_path: Path) -> None:
    """A returning user's `status` with every machine ended: the rows are read, none may bill and none was ended
    by its watchdog, so the rules behind a row (cost, budgets, reconciling with a provider) are not imported."""
    from cloudsd.ledger import Ledger

    ledger = Ledger(tmp_path / "cloudsd" / "ledger.sqlite3")
    ledger.reserve("old", "local", "img")
    ledger.update("old", status="terminated", terminated_at=1.0)
    ledger.close()
    listing = ("cloudsd.core.status", "cloudsd.core.volumes")  # a ledger with rows is listed by these
    never = (*(m for m in STATUS_NEVER if m not in listing), "json", "cloudsd.core.guard", "cloudsd.core.budget")
    text, modules = _imported(["status"], tmp_path)
    assert text == "No machines. Start one with `cloudsd up`.\n"
    assert set(listing) <= modules
    assert not {m for m in modules if m.split(".")[0] in never or m in never}, sorted(modules)


def _help_by(code: str, columns: int) -> str:
    """What `code` prints in its own process (click's CliRunner would force a width of 80)."""
    env = {**os.environ, "COLUMNS": str(columns)}
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert (ran.returncode, ran.stderr) == (0, ""), ran
    return ran.stdout


def _click_help(columns: int) -> str:
    return _help_by("from cloudsd.cli.commands import cli\n"
                    "cli.main(['--help'], prog_name='cloudsd', standalone_mode=False)", columns)


def test_the_stored_help_is_what_click_prints() -> None:
    """Fails when a docstring changed without `scripts/help_text.py` being run again."""
    assert _click_help(80) == HELP + "\n", "run .venv/bin/python scripts/help_text.py"


@pytest.mark.parametrize("columns", [80, 200, 79, 60])
def test_help_is_clicks_at_any_width(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for flag in ("--help", "-h"):
        assert _help_by(f"from cloudsd.cli.main import main\nmain([{flag!r}])", columns) == _click_help(columns)
    monkeypatch.setenv("COLUMNS", str(columns))
    assert (entry._without_click(["--help"]) == entry._print_help) is (columns >= 80)


@pytest.mark.parametrize("value", [None, "120", "0", "-3", "wide", "79"])
def test_columns_are_shutils(value: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", value)
    assert entry._columns() == shutil.get_terminal_size().columns


def test_an_ascii_stdout_gets_clicks_help() -> None:
    """click writes UTF-8 past an ASCII stdout; the stored text is then left to click."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "COLUMNS": "100"}
    run = [sys.executable, "-m", "cloudsd", "--help"]
    ran = subprocess.run(run, capture_output=True, env=env)
    assert (ran.returncode, ran.stdout.decode(), ran.stderr) == (0, HELP + "\n", b"")


def test_shell_completion_is_clicks() -> None:
    env = {**os.environ, "_CLOUDSD_COMPLETE": "bash_complete", "COMP_WORDS": "cloudsd sta", "COMP_CWORD": "1"}
    for args in (["status"], ["--help"]):
        out = subprocess.run([sys.executable, "-m", "cloudsd", *args], capture_output=True, text=True, env=env)
        assert out.stdout.splitlines() == ["plain,start", "plain,status"], out


def _both_ways(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[Ran, Ran]:
    fast = cloudsd(*args)
    with monkeypatch.context() as patch:
        patch.setattr(entry, "_without_click", lambda args: None)
        slow = cloudsd(*args)
    return fast, slow


def test_status_prints_what_the_click_command_prints(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    for args in (["status"], ["ls"], ["status", "--json"], ["ls", "--json"]):
        fast, slow = _both_ways(monkeypatch, *args)
        assert fast == slow and fast.code == 0
    world.add_offer("a")
    world.fails_boot.add("a")
    assert cloudsd("up", "box", "--provider", "memory", "--yes", "--keep-on-failure").code == 1
    fast, slow = _both_ways(monkeypatch, "status", "--json")
    timeless = [[{k: v for k, v in row.items() if k not in ("uptime_s", "cost_usd")} for row in json.loads(ran.out)]
                for ran in (fast, slow)]
    assert timeless[0] == timeless[1] and [r["name"] for r in timeless[0]] == ["box"]
    fast, slow = _both_ways(monkeypatch, "status")
    digitless = [(ran.code, re.sub(r"\d", "0", ran.out), ran.err) for ran in (fast, slow)]
    assert digitless[0] == digitless[1] and "box" in fast.out


@pytest.mark.parametrize("raised", [KeyboardInterrupt(), BrokenPipeError(errno.EPIPE, "Broken pipe"),
                                    RuntimeError("a bug"), FileNotFoundError(errno.ENOENT, "gone"),
                                    ConfigError("bad config.yaml", hint="fix it")])
def test_status_fails_as_the_click_command_does(raised: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    import cloudsd.cli.app
    import cloudsd.cli.status

    closed: list[bool] = []
    real_close = cloudsd.cli.app.App.close

    def close(app: cloudsd.cli.app.App) -> None:
        closed.append(True)
        real_close(app)

    def fail(app: cloudsd.cli.app.App, as_json: bool) -> None:
        app.ledger  # noqa: B018 - opened, so closing it matters
        raise raised

    monkeypatch.setattr(cloudsd.cli.status, "show_status", fail)
    monkeypatch.setattr(cloudsd.cli.app.App, "close", close)
    fast, slow = _both_ways(monkeypatch, "status")
    assert fast == slow and closed == [True, True]
    assert fast.code == {KeyboardInterrupt: 130, BrokenPipeError: 1, RuntimeError: 70, FileNotFoundError: 70,
                         ConfigError: ConfigError.exit_code}[type(raised)], fast


def test_help_into_a_closed_pipe_ends_as_clicks(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudsd.cli import help_text

    class Closed(str):
        def __add__(self, other: str) -> str:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")  # where the write would fail

    monkeypatch.setattr(help_text, "HELP", Closed(HELP))
    monkeypatch.setenv("COLUMNS", "100")
    assert entry._without_click(["--help"]) is entry._print_help
    ran = cloudsd("--help")
    assert (ran.code, ran.err) == (1, "")


def test_cloudsd_alone_prints_the_help_as_click_does() -> None:
    """click 8.2+ answers no arguments with the help on stderr and exit 2 (it was one squashed error line)."""
    env = {**os.environ, "COLUMNS": "100"}
    ran = subprocess.run([sys.executable, "-m", "cloudsd"], capture_output=True, text=True, env=env)
    assert (ran.returncode, ran.stdout, ran.stderr) == (2, "", HELP + "\n")


def test_the_console_script_runs_them_without_garbage_collection(tmp_path: Path) -> None:
    """The process ends with the command (main() without arguments, as the console script calls it): no
    collection while it runs, its objects frozen out of the exit's last one. A caller in its own process
    (main with arguments: tests, a script) keeps its collector as it was."""
    code = ("import gc, sys\nfrom cloudsd.cli.main import main\nsys.argv = ['cloudsd'] + sys.argv[1:]\n"
            "main(sys.argv[1:])\nprint(gc.isenabled(), gc.get_freeze_count() > 0)\nmain()\n"
            "print(gc.isenabled(), gc.get_freeze_count() > 0)\n")
    env = {**os.environ, "CLOUDSD_HOME": str(tmp_path / "cloudsd"), "HOME": str(tmp_path), "COLUMNS": "100"}
    for args in (["status"], ["--help"]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                             check=True).stdout.splitlines()
        assert [out[i] for i in range(len(out)) if out[i].startswith(("True", "False"))] == [
            "True False", "False True"], out
    ran = cloudsd("version")  # any click command, in this process: untouched
    assert ran.code == 2 and gc.isenabled()


@pytest.mark.parametrize("code", [0, 3, 130])
def test_an_exit_code_set_by_a_command_comes_through(code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ctx.exit(code)` ends cloudsd with that code, as in click's standalone mode (with standalone_mode=False,
    which `main` uses, click returns the code instead of exiting); a command's return value is no exit code."""
    import click

    from cloudsd.cli.commands import LazyGroup, cli

    @click.command()
    @click.pass_context
    def exits(ctx: click.Context) -> None:
        ctx.exit(code)

    @click.command()
    def returns() -> int:
        return code

    real = LazyGroup.get_command
    extra = {"exits": exits, "returns": returns}
    monkeypatch.setattr(LazyGroup, "get_command", lambda self, ctx, name: extra.get(name) or real(self, ctx, name))
    assert cloudsd("exits").code == code
    assert cloudsd("returns").code == 0
    for name, expected in (("exits", code), ("returns", 0)):  # what click itself does, standalone
        with pytest.raises(SystemExit) as exc:
            cli.main([name], prog_name="cloudsd")
        assert exc.value.code == expected


def test_python_m_cloudsd_runs_it_and_importing_its_main_module_does_not(tmp_path: Path) -> None:
    """`python -m cloudsd` runs the CLI; importing cloudsd.__main__ (pkgutil.walk_packages, pydoc, a
    multiprocessing child that imports its parent's main module as `__mp_main__`) runs nothing."""
    from cloudsd import __version__

    env = {**os.environ, "CLOUDSD_HOME": str(tmp_path / "cloudsd"), "HOME": str(tmp_path)}
    code = ("import runpy\nrunpy.run_module('cloudsd.__main__', run_name='__mp_main__')\n"
            "import cloudsd.__main__\nprint('imported')\n")
    ran = subprocess.run([sys.executable, "-c", code, "status"], capture_output=True, text=True, env=env)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "imported\n", ""), ran
    ran = subprocess.run([sys.executable, "-m", "cloudsd", "--version"], capture_output=True, text=True, env=env)
    assert (ran.returncode, ran.stdout) == (0, f"cloudsd, version {__version__}\n"), ran
