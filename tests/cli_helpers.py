"""Running the real `cloudsd` program in a subprocess, as a user would, and reading what it prints."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any


def cloudsd(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "cloudsd", *args], capture_output=True, text=True,
                            timeout=timeout, env=os.environ.copy())
    if check and result.returncode != 0:
        raise AssertionError(f"cloudsd {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def cloudsd_json(*args: str, timeout: float = 300) -> Any:
    return json.loads(cloudsd(*args, "--json", timeout=timeout, check=True).stdout)


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cloudsd", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def interrupt(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - 127.0.0.1 only
        return response.status, response.read()


def wait_http(url: str, deadline_s: float = 60) -> bytes:
    started = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - started < deadline_s:
        try:
            status, body = http_get(url)
            if status == 200:
                return body
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {deadline_s} s ({last})")


def wait_for_line(proc: subprocess.Popen[str], needle: str, deadline_s: float = 120) -> None:
    """Wait until the process's stderr shows `needle` (reads it line by line)."""
    assert proc.stderr is not None
    started = time.monotonic()
    seen = []
    while time.monotonic() - started < deadline_s:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"never saw {needle!r}; stderr so far:\n{''.join(seen)}")


def run_in_process(*args: str, env: dict[str, str | None] | None = None,
                   input: str | None = None) -> tuple[int, str, str]:
    """`cloudsd ARGS` through its real entry point (errors to exit codes included), in this process: fast.

    Returns (exit code, stdout, stderr).
    """
    from click.testing import CliRunner

    from cloudsd.cli.main import main

    with CliRunner().isolation(input=input, env=env) as (out, err, _):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    return code, out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")
