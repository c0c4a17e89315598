"""Run cloudsd's tunnel (`cloudsd.ssh.connect` + `cloudsd.tunnel.LocalForward`) as a process of its own.

    python benchmarks/cloudsd_forward.py --ssh 127.0.0.1:PORT --key KEY [--user root] [--remote-port 7860]
        [--local-port N] [--host-key "ssh-ed25519 AAAA…"]

Prints `listening 127.0.0.1:PORT` once the forward accepts connections and serves until SIGTERM, Ctrl-C
or EOF on stdin, then prints one JSON line with the tunnel's counters. benchmarks/tunnel.py uses it so
that the forwarder, like `ssh -N -L`, does not share a process (and a GIL) with the HTTP clients that
measure it, just as a browser and `cloudsd tunnel` do not.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudsd.machine import SSHEndpoint
from cloudsd.ssh import connect
from cloudsd.tunnel import LocalForward


def raise_fd_limit(wanted: int = 16384) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ssh", required=True, help="HOST:PORT of sshd")
    parser.add_argument("--key", required=True, type=Path, help="the machine's private key file")
    parser.add_argument("--user", default="root")
    parser.add_argument("--remote-port", type=int, default=7860)
    parser.add_argument("--local-port", type=int, required=True)
    parser.add_argument("--host-key", default=None, help="pinned host key (default: accept the first one)")
    parser.add_argument("--deadline-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    raise_fd_limit()

    host, _, port = args.ssh.rpartition(":")
    endpoint = SSHEndpoint(host or "127.0.0.1", int(port), args.user)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def stop_on_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=stop_on_eof, daemon=True).start()

    connection = connect(endpoint, args.key, args.host_key, deadline_s=args.deadline_s)
    forward = LocalForward(connection, args.remote_port, args.local_port)
    try:
        forward.start()
        print(f"listening 127.0.0.1:{forward.local_port}", flush=True)
        while not stop.wait(0.5):
            if not connection.active:
                print("the SSH connection dropped", file=sys.stderr, flush=True)
                break
    finally:
        forward.close()
        connection.close()
    print(json.dumps({"connections_served": forward.connections_served, "reconnects": forward.reconnects}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
