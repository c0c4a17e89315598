"""The agent's entry point: `python3 -I agent-<hash>.pyz serve|recv|send`."""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    state_dir = os.path.dirname(os.path.abspath(argv[0]))  # the agent lives in its state folder
    command = argv[1] if len(argv) == 2 else ""
    # each job imports only its own module: a data stream starts without the serve loop's (and the web's)
    if command == "serve":
        from .serve import Serve

        return Serve(state_dir).run()
    if command == "recv":
        from .streams import run_recv

        return run_recv()
    if command == "send":
        from .streams import run_send

        return run_send()
    sys.stderr.write("usage: python3 -I agent.pyz serve|recv|send\n")
    return 2
