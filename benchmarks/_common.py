"""Helpers shared by the benchmark scripts: percentiles, result files, tables."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
MB = 1_000_000
# The test image the benchmarks boot (CLOUDSD_TESTBED_IMAGE: another tag, as for the tests).
TESTBED_IMAGE = os.environ.get("CLOUDSD_TESTBED_IMAGE") or "cloudsd-testbed:latest"
INSTALL_HINTS = {"ssh": "apt-get install openssh-client", "scp": "apt-get install openssh-client",
                 "rsync": "apt-get install rsync"}


def missing_prerequisites(tools: list[str], image: str) -> list[str]:
    """What is not there of: local programs, a running Docker engine, the test image. Each with how to get it."""
    missing = [f"local {tool} ({INSTALL_HINTS.get(tool, 'install it')})" for tool in tools if shutil.which(tool) is None]
    try:
        import docker
        import docker.errors

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no SDK, no socket, engine down: docker raises several kinds
        return [*missing, f"a running Docker engine ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"]
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        missing.append(f"the image {image} (scripts/bootstrap.sh builds it)")
    finally:
        client.close()
    return missing


def require(tools: list[str], image: str = TESTBED_IMAGE) -> None:
    """Stop with one line naming everything missing, before anything starts."""
    missing = missing_prerequisites(tools, image)
    if missing:
        raise SystemExit(f"cannot run this benchmark: missing {'; '.join(missing)}.")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation, as numpy's default."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def machine_info() -> dict[str, Any]:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stderr.strip() or ""
        except (OSError, subprocess.TimeoutExpired):
            return ""

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "openssh": run(["ssh", "-V"]),
    }


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table (first column left, the others right)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(out)

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])
