"""Entry point: the one place where errors become one line and an exit code.

Everything runs through the click group in `commands.py`, except the two invocations people type dozens of
times a day, which start without importing click (click's import alone takes longer than Python's own
start-up, ~25 ms on a 2-core machine): `cloudsd --help` prints the text click renders for it (`help_text.py`,
which a test compares with click's output), and `cloudsd status` calls the function the click command calls
(`status.py`). Each takes that way only when click would do exactly the same: otherwise (a terminal narrower
than 80 columns, an ASCII-only stdout, a shell-completion request, any other argument) click runs.
"""

from __future__ import annotations

import gc
import os
import sys

from cloudsd.errors import CloudsdError

TYPE_CHECKING = False  # typing itself is not imported: `--help` imports nothing it does not print with
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70


def _debug() -> bool:
    return os.environ.get("CLOUDSD_DEBUG", "") not in ("", "0")


def say_error(text: str) -> None:
    """Every error line goes out here: secrets masked in any form they may take (`cloudsd.redact`), and
    one line, whatever a provider's message held."""
    import click

    from cloudsd.redact import scrub  # only an error needs it: `--help` starts without its json and urllib

    click.echo(" ".join(scrub(text).splitlines()), err=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; turn cloudsd errors and Ctrl-C into one line and an exit code."""
    try:
        run = _without_click(sys.argv[1:] if argv is None else argv)
        if run is not None:
            owned = argv is None  # run by the console script: the process ends with the command
            if owned:
                gc.disable()  # see SHORT_LIVED_GC
            _as_click_runs(run)
            if owned:
                gc.freeze()
        else:
            from cloudsd.cli.commands import cli

            code = cli.main(args=argv, prog_name="cloudsd", standalone_mode=False)
            if code:  # a `ctx.exit(code)`: click returns its code instead of exiting (LazyGroup.invoke)
                sys.exit(code)
    except KeyboardInterrupt:
        import click

        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except CloudsdError as exc:
        if _debug():
            raise
        say_error(f"error: {exc}")
        sys.exit(exc.exit_code)
    except _click_errors() as exc:
        _click_exit(exc)
    except Exception as exc:  # a bug: still one line, the traceback on request
        if _debug():
            raise
        say_error(f"internal error: {type(exc).__name__}: {exc} (run with CLOUDSD_DEBUG=1 for the traceback)")
        sys.exit(EXIT_INTERNAL)


def _click_errors() -> tuple[type[Exception], ...]:
    """Click's exceptions, when click is loaded (none can be raised before)."""
    if "click" not in sys.modules:
        return ()
    import click

    return (click.exceptions.Abort, click.ClickException, click.exceptions.Exit)


def _click_exit(exc: Exception) -> NoReturn:
    import click

    if isinstance(exc, click.exceptions.Abort):
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    no_args = getattr(click.exceptions, "NoArgsIsHelpError", ())  # `cloudsd` alone, click 8.2 on
    if isinstance(exc, no_args):
        exc.show()  # the help, as click prints it, not squashed into one error line
        sys.exit(exc.exit_code)
    if isinstance(exc, click.ClickException):
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
            hint = f"Try '{exc.ctx.command_path} {exc.ctx.help_option_names[0]}' for help."
            click.echo(hint, err=True)
        say_error(f"Error: {exc.format_message()}")
        sys.exit(exc.exit_code)
    assert isinstance(exc, click.exceptions.Exit)
    sys.exit(exc.exit_code)


# ---- the two invocations that start without click ----

HELP_MIN_COLUMNS = 80  # click wraps its help at min(columns, 80) - 2: from 80 columns up, one text

# SHORT_LIVED_GC: no garbage collection while these two run in their own process. The imports alone make
# ~100,000 objects, which Python scans again and again as they are made (each 700 new objects, the older
# ones less often) and once more as the process exits; frozen at the end, they are left out of that last
# scan and freed as usual. Nothing here makes garbage worth collecting in that time, and what needs closing
# (the ledger, providers) is closed explicitly. ~10 ms of CPU of a `status` on an empty ledger here.


def _without_click(args: list[str]) -> Callable[[], None] | None:
    """What runs `args` without click, when that prints exactly what click would; else None."""
    if os.environ.get("_CLOUDSD_COMPLETE"):  # click's shell completion for prog_name "cloudsd"
        return None
    if args in (["--help"], ["-h"]) and _columns() >= HELP_MIN_COLUMNS and _stdout_is_utf8():
        return _print_help
    if args in (["status"], ["ls"]):
        return lambda: _status(as_json=False)
    if args in (["status", "--json"], ["ls", "--json"]):
        return lambda: _status(as_json=True)
    return None


def _columns() -> int:
    """`shutil.get_terminal_size().columns`, which click's help formatter reads, without importing shutil
    (and its compression modules): $COLUMNS if positive, else the terminal's width, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    stdout = sys.__stdout__
    if columns <= 0 and stdout is not None:
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns
        except (AttributeError, ValueError, OSError):  # closed, detached, not a terminal
            columns = 0
    return columns or 80


def _stdout_is_utf8() -> bool:
    """click.echo writes to sys.stdout as it is unless its encoding is ASCII (then it writes UTF-8 bytes
    itself); the help text holds a non-ASCII character, so the fast way needs a UTF-8 stdout."""
    import codecs

    encoding = getattr(sys.stdout, "encoding", None)
    try:
        return encoding is not None and codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


def _print_help() -> None:
    from cloudsd.cli.help_text import HELP

    sys.stdout.write(HELP + "\n")
    sys.stdout.flush()


def _status(as_json: bool) -> None:
    """`cloudsd status` as click runs it: one App for the run (the group's callback), closed at the end
    whatever happens (the context's close)."""
    from cloudsd.cli.app import App
    from cloudsd.cli.status import show_status

    app = App()
    try:
        show_status(app, as_json)
    finally:
        app.close()


def _as_click_runs(run: Callable[[], None]) -> None:
    """What click's `main` does around a command: Ctrl-C (or EOF) is a new line, then Abort; a closed stdout
    (`cloudsd status | head -0`) exits 1 without a traceback."""
    try:
        run()
    except (EOFError, KeyboardInterrupt) as exc:
        import click

        click.echo(file=sys.stderr)
        raise click.exceptions.Abort() from exc
    except OSError as exc:
        import errno

        if exc.errno != errno.EPIPE:
            raise
        _exit_on_broken_pipe()


def _exit_on_broken_pipe() -> NoReturn:
    from click import utils

    names = vars(utils)  # click's own wrapper, so both ways end alike (`PacifyFlushWrapper` before click 8.2)
    pacify = names.get("_PacifyFlushWrapper") or names["PacifyFlushWrapper"]
    sys.stdout = pacify(sys.stdout)
    sys.stderr = pacify(sys.stderr)
    sys.exit(1)
