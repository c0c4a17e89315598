"""scripts/resolve_pins.py, the resolver dry run that scripts/test.sh runs against the package index: its pure
parts, offline. (The run itself needs the index, so it is a step of scripts/test.sh, not a test here.)"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from tests.test_dockerfiles import ARCHIVES, IMAGES, REAL, normalize, wheel_pin

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "resolve_pins.py"
_spec = importlib.util.spec_from_file_location("resolve_pins", SCRIPT)
assert _spec and _spec.loader
resolve_pins = importlib.util.module_from_spec(_spec)
sys.modules["resolve_pins"] = resolve_pins
_spec.loader.exec_module(resolve_pins)


def test_the_set_is_every_pin_with_pytorch_from_the_package_index_when_its_own_is_unreachable() -> None:
    job = resolve_pins.Job("comfyui", "12.8")
    offline = job.requirements(cuda_index=False)
    assert "torch==2.7.1" in offline and "torchaudio==2.7.1" in offline
    assert not any("+cu" in line or line.startswith("--") for line in offline)
    online = job.requirements(cuda_index=True)
    assert online[0] == "--extra-index-url https://download.pytorch.org/whl/cu128"
    assert "torch==2.7.1+cu128" in online
    constraints = [line for line in (IMAGES / "comfyui" / "constraints.txt").read_text().splitlines()
                   if line and not line.startswith("#")]
    assert set(constraints) <= set(offline)


def test_packages_installed_from_urls_are_left_to_the_dockerfile_checks() -> None:
    """What the resolver skips (not on the index) is exactly what test_dockerfiles checks by version."""
    from_urls = {name for name, _ in ARCHIVES.values()} - {"open-clip-torch"}  # open_clip comes from PyPI now
    for flavor in REAL:
        extras = IMAGES / flavor / "extension-requirements.txt"
        if extras.is_file():
            from_urls |= {pin[0] for line in extras.read_text().splitlines() if (pin := wheel_pin(line))}
    assert from_urls == resolve_pins.FROM_URLS
    forge = resolve_pins.Job("forge", "12.4").requirements(cuda_index=False)
    assert not any(normalize(re.split("==", line)[0]) in from_urls for line in forge)
    assert "mediapipe==0.10.11" in forge


def test_a_resolution_that_pulls_in_an_unpinned_package_is_a_problem() -> None:
    job = resolve_pins.Job("a1111", "12.4")

    def item(name: str, version: str) -> dict:
        return {"metadata": {"name": name, "version": version}}

    report = {"install": [item("Jinja2", "3.1.4"), item("nvidia-cudnn-cu12", "9.1.0.70"), item("torch", "2.4.1"),
                          item("sympy", "1.14.0"), item("yacs", "0.1.8"), item("numpy", "2.0.0")]}
    assert resolve_pins.problems_in_report(job, report) == [
        "a1111 cu124: the resolution pulls in yacs==0.1.8, which a1111/constraints.txt does not pin",
        "a1111 cu124: numpy resolved to 2.0.0, pinned 1.26.2",
    ]


def test_pips_explanation_is_kept_and_its_noise_dropped() -> None:
    output = ("WARNING: pip is using lazily downloaded wheels ... --use-feature=fast-deps ...\nCollecting x\n"
              "The conflict is caused by:\n    a 1 depends on b<2\nERROR: ResolutionImpossible: ...\n")
    assert resolve_pins.pip_error(output) == ["    The conflict is caused by:", "        a 1 depends on b<2",
                                              "    ERROR: ResolutionImpossible: ..."]
