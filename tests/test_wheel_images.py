"""A pip-installed cloudsd (a wheel, no checkout) still carries what install-on-boot sends to a machine."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_boot_layer_and_every_install_script(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("cloudsd-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {"boot/entrypoint.sh", "ui/start", "ui/install-steps.sh", "ui/install-on-boot",
              # cloudsd's code inside the UI, which install-on-boot copies beside it
              "ui/extension/scripts/cloudsd_ui_activity.py", "ui/comfyui/extra_model_paths.yaml",
              "ui/comfyui/cloudsd_custom_nodes/cloudsd_ui_activity/__init__.py",
              *(f"{ui}/install.sh" for ui in ("a1111", "forge", "comfyui")),
              *(f"{ui}/upstream.env" for ui in ("a1111", "forge", "comfyui"))}
    missing = sorted(w for w in wanted if f"cloudsd/images_data/{w}" not in names)
    assert not missing, f"not in the wheel: {missing}"
    for name in wanted:  # the same bytes as the checkout's images/
        assert zipfile.ZipFile(wheel).read(f"cloudsd/images_data/{name}") == (ROOT / "images" / name).read_bytes()
