"""One cloudsd sync operation in a process of its own, as `cloudsd sync` runs: prints one JSON line.

    python benchmarks/sync_client.py push|pull|fetch --ssh 127.0.0.1:PORT --key KEY [--host-key K] ...

`seconds` covers the SSH connect (as scp's time does) and the whole operation; `connect_s` is the connect.
`cpu_s` is the process's CPU seconds (user + system), imports and connect included.

The link is chosen as `cloudsd sync` chooses it: the machine's OpenSSH master (under CLOUDSD_HOME) when the
system `ssh` can be used, else paramiko (CLOUDSD_SSH_CLIENT=paramiko forces that). `--cold` ends a master left
by an earlier run first, so the time includes starting one (connect and auth), as scp's includes its own.
`client` in the output says which one ran, `reused` whether a master was already up.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("op", choices=("push", "pull", "fetch"))
    parser.add_argument("--ssh", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--host-key", default=None)
    parser.add_argument("--source", help="push: the local folder")
    parser.add_argument("--output-dir", help="pull: the folder under the UI's data dir to pull")
    parser.add_argument("--dest", help="pull: where to")
    parser.add_argument("--url", help="fetch: the URL")
    parser.add_argument("--sha256", help="fetch: the file's sha256")
    parser.add_argument("--remote", help="fetch: where it goes on the machine")
    parser.add_argument("--cold", action="store_true", help="end the machine's OpenSSH master first")
    parser.add_argument("--record", help="push: what earlier pushes put on this machine (read, then written), "
                        "as `cloudsd sync models` reads it from its ledger; the benchmark removes it when it "
                        "empties the machine")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    from cloudsd.machine import SSHEndpoint
    from cloudsd.openssh import Master, Target
    from cloudsd.ssh import connect
    from cloudsd.sync import timeline
    from cloudsd.sync.agent import Link
    from cloudsd.ui import profile

    # the operation's own modules too: Python's import time is reported apart (import_s), not in `seconds`
    importlib.import_module({"push": "cloudsd.sync.models", "pull": "cloudsd.sync.outputs"}.get(args.op, "cloudsd.sync.agent"))
    imported = time.perf_counter()
    host, port = args.ssh.rsplit(":", 1)
    endpoint = SSHEndpoint(host, int(port))
    master = Master.for_target(Target(endpoint, Path(args.key), args.host_key)) if args.host_key else None
    if master is not None and args.cold:
        master.exit()
        imported = time.perf_counter()
    timeline.start()
    connection: Link
    if master is not None:
        master.ensure()
        connection = master
    else:
        connection = connect(endpoint, Path(args.key), args.host_key, deadline_s=30)
    connected = time.perf_counter()
    timeline.mark("connected")
    ui = profile("a1111")
    result: dict[str, object] = {}
    if args.op == "push":
        from cloudsd.sync.manifest import ModelRequest
        from cloudsd.sync.models import push_models

        record = Path(args.record) if args.record else None
        present = json.loads(record.read_text()) if record is not None and record.exists() else []
        summary = push_models(connection, ui, [ModelRequest(args.source)], present=present)
        if record is not None:
            record.write_text(json.dumps(sorted(
                {r.remote for r in summary.results if r.outcome in ("sent", "resumed", "present")} | set(present))))
        outcomes = sorted({r.outcome for r in summary.results})
        result = {"outcomes": outcomes, "files": len(summary.results), "bytes": summary.bytes_sent,
                  "agent_runs": summary.agent_runs, "failed": [r.message for r in summary.failed]}
    elif args.op == "pull":
        from cloudsd.sync.outputs import pull_outputs

        pulled = pull_outputs(connection, replace(ui, output_dir=args.output_dir), Path(args.dest))
        result = {"files": len(pulled.pulled), "bytes": pulled.bytes_pulled, "problems": pulled.problems,
                  "agent_runs": pulled.agent_runs}
    else:
        from cloudsd.sync.agent import Agent, state_dir_for

        agent = Agent(connection, state_dir_for(ui))
        serve = agent.serve()
        serve.request("index", files=[])  # the agent is there and running: time the download alone
        fetch_started = time.perf_counter()
        reply = serve.request("fetch", items=[{"path": args.remote, "url": args.url, "sha256": args.sha256,
                                               "identity": args.url}], parallel=1)
        result = {"fetch_s": time.perf_counter() - fetch_started, "reply": reply["files"][args.remote]}
        serve.close()
    done = time.perf_counter()
    if master is None:
        connection.close()  # a master stays for the next command, as after `cloudsd sync`
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the stream processes (not the master: detached)
    print(json.dumps({"seconds": done - imported, "connect_s": connected - imported, "import_s": imported - started,
                      "cpu_s": usage.ru_utime + usage.ru_stime, "children_cpu_s": children.ru_utime + children.ru_stime,
                      "client": "paramiko" if master is None else "openssh",
                      "reused": bool(master is not None and master.reused), **result,
                      "timeline": [[name, round(at, 4)] for name, at in timeline.marks()]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
