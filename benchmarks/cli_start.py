"""Start-up time of `cloudsd --help` and `cloudsd status` (no machines) beside `python -c pass`.

    .venv/bin/python benchmarks/cli_start.py [--runs 20] [--goal 0.06] [--python PATH] [--baseline PATH]

Runs each command `--runs` times, alternating, after one untimed warm-up of each (so the page cache is
warm for all), and prints median and p90 wall time, the difference of the medians, and whether the
medians of `cloudsd --help` and `cloudsd status` are within the goal. `status` runs with an empty
CLOUDSD_HOME and HOME and no provider keys in the environment: an empty ledger and no cloud to ask, the
case where nothing but start-up is measured. `status, ended` runs with a ledger that holds one ended machine
and nothing else: a returning user with nothing running (the rows are read; none may bill). `--baseline` names another install's interpreter (another
version of cloudsd, e.g. main's); its `--help` and `status` run in the same rounds, for a before/after.
Writes benchmarks/results/cli_start.json.

What is measured is the install behind `--python`: the project's .venv holds an editable install, whose
import finder (`__editable___cloudsd_…_finder`, loaded by `site` in every run of that interpreter, `python -c
pass` included) costs time a regular `pip install .` does not; the run says which kind it measured, and the
load average before and after. PYTHONDONTWRITEBYTECODE is dropped from the runs' environment: a user's
Python caches bytecode, and without the cache every run of an editable install compiles cloudsd anew.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import REPO_ROOT, machine_info, percentile, table, write_json

GOAL_S = 0.06
RUN_TIMEOUT_S = 30.0


def cloudsd_command(python: str, *args: str) -> list[str]:
    """The installed console script next to `python` if there is one, else `python -m cloudsd`."""
    script = Path(python).parent / "cloudsd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), *args]
    return [python, "-m", "cloudsd", *args]


def empty_home_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """The environment with an empty cloudsd home and user home, and no provider keys."""
    clean = {k: v for k, v in env.items() if not k.startswith(("CLOUDSD_", "RUNPOD_", "VAST_"))}
    return {**clean, "CLOUDSD_HOME": str(home / "cloudsd"), "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


ENDED_LEDGER = ("from cloudsd.ledger import Ledger\nledger = Ledger()\nledger.reserve('old', 'local', 'img')\n"
                "ledger.update('old', status='terminated', terminated_at=1.0)\nledger.close()\n")


def ended_home_env(python: str, env: dict[str, str], home: Path) -> dict[str, str]:
    """An empty home as above whose ledger holds one ended machine, written by `python`'s own cloudsd."""
    ended = empty_home_env(env, home)
    subprocess.run([python, "-c", ENDED_LEDGER], env=ended, check=True, timeout=RUN_TIMEOUT_S)
    return ended


def install_kind(python: str) -> str:
    """"editable" when `python` finds cloudsd through an editable install's finder, else "regular"."""
    code = ("import glob, site, sys; dirs = site.getsitepackages() + [site.getusersitepackages()]; "
            "print('editable' if any(glob.glob(d + '/__editable__*cloudsd*') for d in dirs) else 'regular')")
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    return result.stdout.strip() or "unknown"


def time_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds, and the child's CPU seconds (user + system), which other load on the machine disturbs
    much less than wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=RUN_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {result.returncode}: {result.stderr.decode(errors='replace')}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


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
    parser.add_argument("--baseline", help="another install's interpreter, run in the same rounds (before/after)")
    args = parser.parse_args(argv)
    runs = max(1, min(args.runs, 1000))

    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the warm-up writes the bytecode cache, as any first run does
    kind = install_kind(args.python)
    load_before = os.getloadavg()
    home = Path(tempfile.mkdtemp(prefix="cloudsd-start-"))
    status_env = empty_home_env(env, home)
    commands = {
        "python -c pass": ([args.python, "-c", "pass"], env),
        "cloudsd --help": (cloudsd_command(args.python, "--help"), env),
        "cloudsd status": (cloudsd_command(args.python, "status"), status_env),
        "cloudsd status, ended": (cloudsd_command(args.python, "status"),
                                  ended_home_env(args.python, env, Path(tempfile.mkdtemp(prefix="cloudsd-start-ended-")))),
    }
    if args.baseline:
        baseline_home = Path(tempfile.mkdtemp(prefix="cloudsd-start-base-"))
        commands["baseline --help"] = (cloudsd_command(args.baseline, "--help"), env)
        commands["baseline status"] = (cloudsd_command(args.baseline, "status"), empty_home_env(env, baseline_home))
        commands["baseline status, ended"] = (
            cloudsd_command(args.baseline, "status"),
            ended_home_env(args.baseline, env, Path(tempfile.mkdtemp(prefix="cloudsd-start-base-ended-"))))
    samples: dict[str, list[float]] = {name: [] for name in commands}
    cpu_samples: dict[str, list[float]] = {name: [] for name in commands}
    for cmd, cmd_env in commands.values():
        time_once(cmd, cmd_env)  # warm-up, untimed
    for _ in range(runs):
        for name, (cmd, cmd_env) in commands.items():
            wall, cpu = time_once(cmd, cmd_env)
            samples[name].append(wall)
            cpu_samples[name].append(cpu)

    load_after = os.getloadavg()
    stats = {name: summary(values) for name, values in samples.items()}
    base = stats["python -c pass"]
    measured = [name for name in commands if name != "python -c pass"]
    overhead = {name: stats[name]["median_s"] - base["median_s"] for name in measured}
    met = {name: stats[name]["median_s"] <= args.goal for name in ("cloudsd --help", "cloudsd status")}

    cpu_median = {name: statistics.median(values) for name, values in cpu_samples.items()}
    rows = [
        [name, f"{s['median_s'] * 1000:.1f}", f"{s['p90_s'] * 1000:.1f}", f"{s['min_s'] * 1000:.1f}",
         f"{cpu_median[name] * 1000:.1f}"]
        for name, s in stats.items()
    ]
    print(f"{runs} runs each, ms; {kind} install ({args.python}); load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
    if args.baseline:
        print(f"baseline: {install_kind(args.baseline)} install ({args.baseline})")
    print(table(["command", "median", "p90", "min", "CPU median"], rows))
    for name, extra in overhead.items():
        print(f"{name} minus python -c pass (medians): {extra * 1000:.1f} ms")
    for name, ok in met.items():
        print(f"goal: median of {name} <= {args.goal * 1000:.0f} ms: {'met' if ok else 'MISSED'}")

    path = write_json(
        "cli_start.json",
        {
            "benchmark": "cli_start",
            "machine": machine_info(),
            "runs": runs,
            "install": kind,
            "python": args.python,
            "baseline": args.baseline,
            "load_average": {"before": load_before, "after": load_after},
            "commands": {name: " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))
                         for name, (cmd, _) in commands.items()},
            "results": stats,
            "samples_s": samples,
            "cpu_median_s": cpu_median,
            "cpu_samples_s": cpu_samples,
            "overhead_median_s": overhead,
            "goal": {"median_s_max": args.goal, "met": met},
            "cwd": str(REPO_ROOT),
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
