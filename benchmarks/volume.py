"""`up --volume` for a machine whose volume already holds the models, beside the first `up` that pushed them,
on the fake Vast.ai with every SSH connection at 50 ms round trip.

    .venv/bin/python benchmarks/volume.py [--size-gb 5] [--delay-ms 25] [--timeout 1800]

The fake Vast (tests/fakes/vast_server.py) runs in this process with real containers from
`cloudsd-testbed:latest` (or CLOUDSD_TESTBED_IMAGE); each instance's SSH port is reached through benchmarks/delay_proxy.py (its own
process, 25 ms each way), so cloudsd sees about 50 ms of round-trip time on every SSH byte. The fake's HTTP API
is on loopback (its calls are the same in both runs). cloudsd runs as its own process under a temporary
CLOUDSD_HOME, as a user would run it:

1. `cloudsd volume create bench --provider vastai --size …` (one Vast local volume, on one host);
2. first evening: `cloudsd up one --volume bench --models DIR --detach --yes` (boot, SSH, ready UI, and the
   models pushed onto the volume at /workspace), then `cloudsd down one`;
3. second evening: `cloudsd up two --volume bench --models DIR --detach --yes` (a new instance on the same host,
   the same volume: the models step finds them by the agent's index there), then `cloudsd sync models two DIR
   --json` alone, to show its agent runs and bytes sent.

Prints both wall times (from the command's start until it returns with the UI ready and the models in place),
their ratio against the goal (≥ 10×), and the model step's agent runs and bytes; writes results/volume.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import TESTBED_IMAGE, machine_info, require, table, write_json
from benchmarks.delay_proxy import spawn_proxy
from benchmarks.tunnel import stop_process

IMAGE = TESTBED_IMAGE
GOAL = 10.0
BLOCK = 64 * 1024 * 1024


def make_models(root: Path, size_gb: float) -> Path:
    """A checkpoint (70 %) and a LoRA (30 %) of incompressible bytes; made once, reused by later runs."""
    total = int(size_gb * 1_000_000_000)
    block = os.urandom(BLOCK)
    for rel, share in (("Stable-diffusion/bench.safetensors", 0.7), ("Lora/bench-style.safetensors", 0.3)):
        path = root / rel
        want = int(total * share)
        if path.exists() and path.stat().st_size == want:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            left = want
            while left > 0:
                out.write(block[:min(left, BLOCK)])
                left -= min(left, BLOCK)
    return root


def delayed_fake(delay_ms: float) -> Any:
    """FakeVast whose instances' SSH ports are reached through a delay proxy each."""
    from tests.fakes.vast_server import FakeVast

    class DelayedVast(FakeVast):
        proxies: dict[int, tuple[subprocess.Popen[str], int]] = {}

        def _actual(self, inst: Any) -> tuple[str | None, str, int | None]:
            actual, msg, port = super()._actual(inst)
            if port is None:
                return actual, msg, port
            if port not in self.proxies:
                self.proxies[port] = spawn_proxy(("127.0.0.1", port), delay_ms)
            return actual, msg, self.proxies[port][1]

        def stop(self) -> None:
            super().stop()
            for proc, _ in self.proxies.values():
                stop_process(proc)

    return DelayedVast(image=IMAGE)


def cloudsd(env: dict[str, str], *args: str, timeout: float) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "cloudsd", *args], capture_output=True, text=True, env=env,
                            timeout=timeout)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"cloudsd {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return elapsed, result


def run(args: argparse.Namespace) -> int:
    require([])
    models = make_models(Path(args.models_dir), args.size_gb)
    fake = delayed_fake(args.delay_ms).start()
    home = tempfile.mkdtemp(prefix="cloudsd-bench-volume-")
    env = {**os.environ, "CLOUDSD_HOME": home, "VAST_API_KEY": fake.api_key, "VAST_URL": fake.base_url,
           "CLOUDSD_IMAGE": IMAGE, "HOME": home}
    try:
        size = str(max(10, int(args.size_gb * 2) + 5))
        cloudsd(env, "volume", "create", "bench", "--provider", "vastai", "--size", size, timeout=60)
        first_s, first = cloudsd(env, "up", "one", "--volume", "bench", "--models", str(models), "--detach",
                                 "--yes", timeout=args.timeout)
        cloudsd(env, "down", "one", "--yes", "--no-outputs", timeout=300)
        second_s, _ = cloudsd(env, "up", "two", "--volume", "bench", "--models", str(models), "--detach", "--yes",
                              timeout=args.timeout)
        sync_s, sync = cloudsd(env, "sync", "models", "two", str(models), "--json", timeout=300)
        report = json.loads(sync.stdout)
        cloudsd(env, "down", "two", "--yes", "--no-outputs", timeout=300)
        cloudsd(env, "volume", "rm", "bench", "--yes", timeout=60)
    finally:
        fake.stop()
    ratio = first_s / second_s
    outcomes = sorted({r["outcome"] for r in report["results"]})
    rows = [
        ["first up (pushes the models)", f"{first_s:.1f} s", ""],
        ["second up (models on the volume)", f"{second_s:.1f} s", f"{ratio:.1f}× sooner (goal ≥ {GOAL:g}×)"],
        ["model step alone (sync models)", f"{sync_s:.2f} s",
         f"agent runs {report['agent_runs']}, bytes sent {report['bytes_sent']}, outcomes {','.join(outcomes)}"],
    ]
    print(f"{args.size_gb:g} GB of models, {2 * args.delay_ms:g} ms SSH round trip, fake Vast.ai")
    print(table(["run", "wall", "note"], rows))
    print(f"goal {'met' if ratio >= GOAL else 'NOT met'}: {ratio:.1f}× (≥ {GOAL:g}×)")
    path = write_json("volume.json", {
        "machine": machine_info(), "size_gb": args.size_gb, "rtt_ms": 2 * args.delay_ms,
        "first_up_s": first_s, "second_up_s": second_s, "ratio": ratio, "goal": GOAL,
        "model_step_s": sync_s, "model_step_agent_runs": report["agent_runs"],
        "model_step_bytes_sent": report["bytes_sent"], "model_step_outcomes": outcomes,
        "first_up_stderr_tail": first.stderr.splitlines()[-12:],
    })
    print(f"wrote {path}")
    return 0 if ratio >= GOAL else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=5.0, help="Models on the volume, GB (10^9 B).")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="One-way SSH delay (RTT is twice this).")
    parser.add_argument("--models-dir", default=os.path.join(tempfile.gettempdir(), "cloudsd-bench-volume-models"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="Seconds each `up` may take.")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
