#!/usr/bin/env python3
"""Prove offline-buildable pins: resolve every image flavor's complete pinned set with pip's resolver.

    scripts/resolve_pins.py [--flavor a1111|forge|comfyui ...] [--cuda 12.4|12.8 ...] [--jobs N] [--images DIR]

For each flavor and CUDA variant, pip resolves (a dry run: metadata only, nothing installed) every package
of images/<flavor>/constraints.txt plus the variant's PyTorch pins, under the same constraints, against the
package index. It fails on any conflict (ResolutionImpossible), and on any package the resolution pulls in
that constraints.txt does not pin (the file claims to pin every package), apart from PyTorch's own CUDA
packages, which the torch-cu*.txt pins decide.

What is left out, and why:
- PyTorch's CUDA index is tried first; where it cannot be reached, the `+cuNNN` pins are replaced by the
  same release from the package index (a build for another CUDA version with the same Python metadata
  apart from its nvidia-* packages, which are left out of the completeness check anyway).
- Packages installed from an archive or a wheel URL (CLIP's archive, Forge's three extension wheels) are
  not on the package index: their versions are checked against constraints.txt by
  tests/test_dockerfiles.py, their dependencies are not resolved here.
- The resolution runs on this machine's Python; the images run CPython 3.10 on Ubuntu 22.04. pip refuses
  `--python-version` unless every package is a wheel, and some pins are source-only, so packages whose
  requirements differ by Python version are resolved for this Python.

The machine's own pip configuration (extra indexes, a global constraints file) is ignored, so the answer
is the package index's. Run by scripts/test.sh; it needs the package index, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
import venv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1] / "images"  # --images changes it
FLAVORS = ("a1111", "forge", "comfyui")
CUDA_VARIANTS = ("12.4", "12.8")
# The resolver's pip. The images build with pip 24.2 (pinned in each constraints.txt), whose dry run
# downloads every wheel it resolves (about 2.5 GB of PyTorch and CUDA wheels per set) wherever the index
# serves no separate metadata files (PEP 658), as the one this project's machines reach does. pip 26.3
# with fast-deps reads a wheel's metadata through HTTP range requests and, since pip PR #13482, downloads
# nothing else in a dry run: one set takes about 25 s instead of 80 s, with the same answer.
PIP_VERSION = "26.3"
TORCH_INDEX = "https://download.pytorch.org/whl/"
# PyTorch's own packages: torch-cu*.txt pins torch, torchvision and torchaudio; these follow from them.
TORCH_OWNED = re.compile(r"^(nvidia-.*|triton|sympy|mpmath|torch|torchvision|torchaudio)$")
# Installed from a URL, not by name (see the Dockerfiles): not on the package index.
FROM_URLS = {"clip", "handrefinerportable", "depth-anything", "depth-anything-v2"}
PIN = re.compile(r"^([A-Za-z0-9][\w.-]*)==([^\s;#]+)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins_in(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    return pins


@dataclass(frozen=True)
class Job:
    flavor: str
    cuda: str
    images: Path = IMAGES

    @property
    def tag(self) -> str:
        return "cu" + self.cuda.replace(".", "")

    def requirements(self, cuda_index: bool) -> list[str]:
        """The complete pinned set as requirement lines; PyTorch from its CUDA index or the package index."""
        folder = self.images / self.flavor
        lines = [f"{name}=={version}" for name, version in sorted(pins_in(folder / "constraints.txt").items())
                 if name not in FROM_URLS]
        for name, version in pins_in(folder / f"torch-{self.tag}.txt").items():
            lines.append(f"{name}=={version if cuda_index else version.split('+', 1)[0]}")
        if cuda_index:
            lines.insert(0, f"--extra-index-url {TORCH_INDEX}{self.tag}")
        return lines


def problems_in_report(job: Job, report: dict) -> list[str]:
    """Packages the resolution installs that the pins do not account for."""
    folder = job.images / job.flavor
    pins = pins_in(folder / "constraints.txt")
    problems = []
    for item in report.get("install", []):
        name = normalize(item["metadata"]["name"])
        version = item["metadata"]["version"]
        if TORCH_OWNED.match(name):
            continue
        if name not in pins:
            problems.append(f"{job.flavor} {job.tag}: the resolution pulls in {name}=={version}, "
                            f"which {folder.name}/constraints.txt does not pin")
        elif pins[name] != version:
            problems.append(f"{job.flavor} {job.tag}: {name} resolved to {version}, pinned {pins[name]}")
    return problems


def reachable(url: str, timeout_s: float = 5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return True
    except OSError:
        return False


def pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def make_pip(where: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"pip=={PIP_VERSION}"], env=pip_env(),
                   check=True)
    return python


def resolve(python: Path, job: Job, cuda_index: bool, workdir: Path) -> tuple[Job, list[str]]:
    folder = job.images / job.flavor
    requirements = workdir / f"{job.flavor}-{job.tag}.txt"
    requirements.write_text("\n".join(job.requirements(cuda_index)) + "\n")
    report = workdir / f"{job.flavor}-{job.tag}.json"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--use-feature=fast-deps",
         "--report",
         str(report), "-r", str(requirements), "-c", str(folder / "constraints.txt")],
        env=pip_env(), capture_output=True, text=True,
    )
    if result.returncode != 0:
        return job, [f"{job.flavor} {job.tag}: pip cannot resolve the pinned set:"] + pip_error(result.stdout
                                                                                               + result.stderr)
    return job, problems_in_report(job, json.loads(report.read_text()))


def pip_error(output: str) -> list[str]:
    """pip's explanation of a failed resolution: from the conflict's cause (or the first error) on."""
    lines = [line for line in output.splitlines() if line.strip() and "fast-deps" not in line]
    start = next((i for i, line in enumerate(lines)
                  if line.startswith("ERROR") or "The conflict is caused by" in line), max(0, len(lines) - 25))
    return ["    " + line for line in lines[start:start + 30]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavor", action="append", choices=FLAVORS)
    parser.add_argument("--cuda", action="append", choices=CUDA_VARIANTS)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--images", type=Path, default=IMAGES, help="the images/ folder to check")
    args = parser.parse_args(argv)
    jobs = [Job(f, c, args.images) for f in (args.flavor or FLAVORS) for c in (args.cuda or CUDA_VARIANTS)]
    cuda_index = reachable(TORCH_INDEX)
    print(f"resolve_pins: PyTorch from {'its CUDA index' if cuda_index else 'the package index (CUDA index unreachable)'};"
          f" {len(jobs)} sets, pip {PIP_VERSION}, Python {sys.version_info.major}.{sys.version_info.minor}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="cloudsd-pins-") as tmp:
        workdir = Path(tmp)
        python = make_pip(workdir / "venv")
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda job: resolve(python, job, cuda_index, workdir), jobs))
    failed = False
    for job, problems in results:
        print(f"  {job.flavor} {job.tag}: {'ok' if not problems else 'FAILED'}")
        for problem in problems:
            print(f"    {problem}")
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
