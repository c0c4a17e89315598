"""Start-up time of `cloudsd --help` beside `python -c pass`.

    .venv/bin/python benchmarks/cli_start.py [--runs 20] [--goal 0.15]

Runs each command `--runs` times, alternating, after one untimed warm-up of each (so the page cache is
warm for both), and prints median and p90 wall time, the difference of the medians, and whether the
median of `cloudsd --help` is within the goal. Writes benchmarks/results/cli_start.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import REPO_ROOT, machine_info, percentile, table, write_json

GOAL_S = 0.15
RUN_TIMEOUT_S = 30.0


def cloudsd_command(python: str) -> list[str]:
    """The installed console script next to `python` if there is one, else `python -m cloudsd`."""
    script = Path(python).parent / "cloudsd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "--help"]
    return [python, "-m", "cloudsd", "--help"]


def time_once(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=RUN_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {result.returncode}: {result.stderr.decode(errors='replace')}")
    return elapsed


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(samples),
        "p90_s": percentile(samples, 90),
        "min_s": min(samples),
        "max_s": max(samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each command (default 20)")
    parser.add_argument("--goal", type=float, default=GOAL_S, help=f"goal for the median, seconds (default {GOAL_S})")
    parser.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    args = parser.parse_args(argv)
    runs = max(1, min(args.runs, 1000))

    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    commands = {
        "python -c pass": [args.python, "-c", "pass"],
        "cloudsd --help": cloudsd_command(args.python),
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for cmd in commands.values():
        time_once(cmd, env)  # warm-up, untimed
    for _ in range(runs):
        for name, cmd in commands.items():
            samples[name].append(time_once(cmd, env))

    stats = {name: summary(values) for name, values in samples.items()}
    base, cli = stats["python -c pass"], stats["cloudsd --help"]
    overhead = cli["median_s"] - base["median_s"]
    met = cli["median_s"] <= args.goal

    rows = [
        [name, f"{s['median_s'] * 1000:.1f}", f"{s['p90_s'] * 1000:.1f}", f"{s['min_s'] * 1000:.1f}"]
        for name, s in stats.items()
    ]
    print(f"{runs} runs each, wall time in ms")
    print(table(["command", "median", "p90", "min"], rows))
    print(f"cloudsd --help minus python -c pass (medians): {overhead * 1000:.1f} ms")
    print(f"goal: median of cloudsd --help <= {args.goal * 1000:.0f} ms: {'met' if met else 'MISSED'}")

    path = write_json(
        "cli_start.json",
        {
            "benchmark": "cli_start",
            "machine": machine_info(),
            "runs": runs,
            "commands": {name: " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))
                         for name, cmd in commands.items()},
            "results": stats,
            "samples_s": samples,
            "overhead_median_s": overhead,
            "goal": {"cloudsd_help_median_s_max": args.goal, "met": met},
            "cwd": str(REPO_ROOT),
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
