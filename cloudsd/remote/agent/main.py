"""The agent's entry point: `python3 -I agent-<hash>.pyz serve|recv|send`."""

from __future__ import annotations

import os
import sys

from .serve import Serve
from .streams import run_recv, run_send


def main(argv: list[str]) -> int:
    state_dir = os.path.dirname(os.path.abspath(argv[0]))  # the agent lives in its state folder
    command = argv[1] if len(argv) == 2 else ""
    if command == "serve":
        return Serve(state_dir).run()
    if command == "recv":
        return run_recv()
    if command == "send":
        return run_send()
    sys.stderr.write("usage: python3 -I agent.pyz serve|recv|send\n")
    return 2
