"""A stand-in upstream for the UI install scripts (images/<flavor>/install.sh), made locally and offline:

    upstream = make_standin_upstream(tmp_path, "comfyui")
    # upstream.repo: a git repository (file:// URL, or a path mounted into a container) whose commit holds
    #                the testbed's stand-in entry points and a requirements.txt
    # upstream.wheels: a folder of wheels for `pip install --no-index --find-links`, built with `pip wheel`

Every wheel has the name and version the flavor's real pins name (constraints.txt, torch-cu124.txt, the venv
step's pip/setuptools/wheel), so the script's own pins and PIP_CONSTRAINT are what the test exercises. The
wheels are tiny packages made here, built by a build backend in this folder that needs nothing installed
(so `pip wheel` reaches no index), except `pip`, which is the running interpreter's real pip under the
pinned version number: the script goes on using the venv's pip after it installs that one.

`torch` says which CUDA build it is (`torch.version.cuda`), as the scripts check. `torchvision` carries a
`.pth` file that holds every interpreter start of the venv while /tmp/standin-hold exists (and says so in
/tmp/standin-held), so a test can interrupt the install at a known point: inside the torch step's check.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pip as host_pip

IMAGES = Path(__file__).resolve().parents[2] / "images"
TESTBED_APP = IMAGES / "testbed" / "app"
HOLD_FLAG, HELD_FLAG = "/tmp/standin-hold", "/tmp/standin-held"

BACKEND = '''\
"""A PEP 517 backend that needs nothing: packs src/ and the name and version in NAME into a wheel."""
import base64, hashlib, os, zipfile

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name, version = open("NAME").read().split()
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    records = []
    fname = f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, fname), "w") as wheel:
        def add(arcname, data):
            wheel.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{arcname},sha256={digest},{len(data)}")
        for root, dirs, files in os.walk("src"):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for f in sorted(files):
                path = os.path.join(root, f)
                add(os.path.relpath(path, "src"), open(path, "rb").read())
        add(f"{info}/METADATA", f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n".encode())
        add(f"{info}/WHEEL", b"Wheel-Version: 1.0\\nGenerator: cloudsd-standin\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n")
        if os.path.exists("ENTRY_POINTS"):
            add(f"{info}/entry_points.txt", open("ENTRY_POINTS", "rb").read())
        wheel.writestr(f"{info}/RECORD", "\\n".join(records + [f"{info}/RECORD,,"]) + "\\n")
    return fname
'''
PYPROJECT = '[build-system]\nrequires = []\nbuild-backend = "standin_backend"\nbackend-path = ["."]\n'
PIP_ENTRY_POINTS = "[console_scripts]\npip = pip._internal.cli.main:main\npip3 = pip._internal.cli.main:main\n"
# (site runs a .pth line with exec, so names bound on it are not seen inside the comprehension: __import__)
HOLD_PTH = (f"import os, pathlib; os.path.exists({HOLD_FLAG!r}) and (pathlib.Path({HELD_FLAG!r}).touch(), "
            f"[__import__('time').sleep(0.2) for _ in iter(lambda: __import__('os').path.exists({HOLD_FLAG!r}), "
            "False)])\n")
# What each flavor's last step imports (images/comfyui/install.sh step_requirements), as distributions.
COMFYUI_REQUIREMENTS = ("aiohttp", "av", "comfyui-frontend-package", "kornia", "spandrel", "transformers")


@dataclass(frozen=True)
class StandinUpstream:
    repo: Path  # a bare git repository
    commits: tuple[str, ...]  # oldest first; the last is the head
    wheels: Path

    @property
    def url(self) -> str:
        return f"file://{self.repo}"


def pins(flavor: str) -> dict[str, str]:
    """name -> version from the flavor's constraints.txt, torch-cu124.txt and install.sh's venv step."""
    found: dict[str, str] = {}
    folder = IMAGES / flavor
    text = "\n".join((folder / name).read_text() for name in ("constraints.txt", "torch-cu124.txt"))
    venv_step = re.search(r"^step_venv\(\) \{\n(.*?)\n\}$", (folder / "install.sh").read_text(), re.M | re.S)
    assert venv_step, "no step_venv in install.sh"
    for name, version in re.findall(r"(?<![\w.-])([A-Za-z][\w.-]*)==([\w.+!-]+)", text + venv_step.group(1)):
        found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def _package(where: Path, name: str, version: str, files: dict[str, str]) -> Path:
    src = where / f"{name}-{version}"
    (src / "src").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "standin_backend.py").write_text(BACKEND)
    (src / "NAME").write_text(f"{name} {version}\n")
    for rel, text in files.items():
        (src / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / "src" / rel).write_text(text)
    return src


def _cuda_of(version: str) -> str:
    """`2.6.0+cu124` -> `12.4`"""
    tag = version.split("+cu", 1)[1]
    return f"{tag[:-1]}.{tag[-1]}"


def make_wheels(where: Path, flavor: str = "comfyui") -> Path:
    versions = pins(flavor)
    sources = where / "sources"
    packages = [
        _package(sources, "setuptools", versions["setuptools"], {"setuptools/__init__.py": ""}),
        _package(sources, "wheel", versions["wheel"], {"wheel/__init__.py": ""}),
        _package(sources, "torch", versions["torch"], {
            "torch/__init__.py": "from torch import version\n__version__ = " + repr(versions["torch"]) + "\n",
            "torch/version.py": f"cuda = {_cuda_of(versions['torch'])!r}\n",
        }),
        _package(sources, "torchvision", versions["torchvision"],
                 {"torchvision/__init__.py": "", "zz_standin_hold.pth": HOLD_PTH}),
        _package(sources, "torchaudio", versions["torchaudio"], {"torchaudio/__init__.py": ""}),
    ]
    for name in COMFYUI_REQUIREMENTS:
        module = name.replace("-", "_")
        packages.append(_package(sources, name, versions[name], {f"{module}/__init__.py": ""}))
    packages.append(_pip_package(sources, versions["pip"]))  # the real one (the venv keeps using it)
    return _wheels(packages, where / "wheels")


def _pip_package(sources: Path, version: str) -> Path:
    """The running interpreter's real pip, under `version`."""
    pip_src = _package(sources, "pip", version, {})
    shutil.copytree(Path(host_pip.__file__).parent, pip_src / "src" / "pip",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (pip_src / "ENTRY_POINTS").write_text(PIP_ENTRY_POINTS)
    return pip_src


def _wheels(packages: list[Path], wheels: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "-q", "-w", str(wheels),
                    *map(str, packages)], check=True, capture_output=True)
    return wheels


def pip_and_one_package(where: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A folder of two wheels: the running interpreter's pip (run it from its wheel where no pip is installed:
    `python3 <folder>/pip-<version>-py3-none-any.whl/pip install …`) and a small package `name`."""
    sources = where / "sources"
    return _wheels([_pip_package(sources, host_pip.__version__), _package(sources, name, version, files)],
                   where / "wheels")


def _git(*args: str, cwd: Path) -> str:
    env = {"GIT_AUTHOR_NAME": "standin", "GIT_AUTHOR_EMAIL": "standin@localhost", "GIT_COMMITTER_NAME": "standin",
           "GIT_COMMITTER_EMAIL": "standin@localhost", "HOME": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(where: Path, flavor: str = "comfyui") -> tuple[Path, tuple[str, ...]]:
    """A bare repository with two commits of the testbed's stand-in entry points: the second adds a file."""
    work = where / "work"
    shutil.copytree(TESTBED_APP, work, ignore=shutil.ignore_patterns("__pycache__"))
    for standin in (IMAGES / "testbed").glob("standin_*.py"):  # what the stand-in main.py runs (CLOUDSD_STANDIN)
        shutil.copy(standin, work / standin.name)
    versions = pins(flavor)
    (work / "requirements.txt").write_text("".join(f"{name}\n" for name in COMFYUI_REQUIREMENTS))
    assert all(name in versions for name in COMFYUI_REQUIREMENTS)
    _git("init", "-q", "-b", "master", cwd=work)
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "stand-in upstream", cwd=work)
    first = _git("rev-parse", "HEAD", cwd=work)
    (work / "CHANGELOG").write_text("a newer commit\n")
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "a newer commit", cwd=work)
    second = _git("rev-parse", "HEAD", cwd=work)
    bare = where / "upstream.git"
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=where)
    return bare, (first, second)


def make_standin_upstream(where: Path, flavor: str = "comfyui") -> StandinUpstream:
    where.mkdir(parents=True, exist_ok=True)
    repo, commits = make_repo(where, flavor)
    return StandinUpstream(repo, commits, make_wheels(where, flavor))


STOCK_START = Path(__file__).resolve().parents[1] / "fakes" / "stock" / "start.sh"


def build_stock_standin(client: Any, base: str, upstream: StandinUpstream, tag: str, where: Path) -> str:
    """An image standing in for a provider's stock PyTorch image with this stand-in upstream inside it (at
    /standin), its inputs in the image's environment as a provider template would set them, the stand-in
    UI's server where the testbed's stand-in main.py looks for it, and RunPod's start behaviour
    (tests/fakes/stock/start.sh). Nothing of cloudsd."""
    context = where / "stock-context"
    shutil.copytree(upstream.repo.parent, context / "standin", ignore=shutil.ignore_patterns("sources", "work"))
    for standin in (IMAGES / "testbed").glob("standin_*.py"):
        shutil.copy(standin, context / standin.name)
    shutil.copy(STOCK_START, context / "start.sh")
    (context / "Dockerfile").write_text(
        "ARG BASE\nFROM ${BASE}\nCOPY standin/ /standin/\nCOPY standin_*.py /opt/cloudsd/ui/\n"
        "COPY start.sh /start.sh\n"
        f"ENV COMFYUI_REPO=file:///standin/upstream.git COMFYUI_COMMIT={upstream.commits[0]} "
        "PIP_NO_INDEX=1 PIP_FIND_LINKS=/standin/wheels\n"
        'CMD ["/start.sh"]\n')
    client.images.build(path=str(context), tag=tag, buildargs={"BASE": base}, pull=False, rm=True, forcerm=True)
    return tag
