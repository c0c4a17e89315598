#!/usr/bin/env python3
"""Stand-in for the launch.py of A1111 and Forge, at /opt/cloudsd/app/launch.py in the testbed image.

It takes the flags the real launch.py takes (those images/ui/start may pass, and the ones a user is likely
to add), refuses any other flag as the real parser does, behaves as the real one would about the bind
address, the API and the default-model download, then runs the stand-in UI. So CI checks the start
script's command line against the real UIs' rules, without the UIs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STANDIN = Path(os.environ.get("CLOUDSD_STANDIN", "/opt/cloudsd/ui/standin_ui.py"))
CHECKPOINT_EXTS = (".safetensors", ".ckpt")


def parser(flavor: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--listen", action="store_true")
    p.add_argument("--server-name", default=None)
    p.add_argument("--share", action="store_true")
    p.add_argument("--ngrok", default=None)
    p.add_argument("--api", action="store_true")
    p.add_argument("--nowebui", action="store_true")
    p.add_argument("--data-dir", default=str(HERE))
    p.add_argument("--no-download-sd-model", action="store_true")
    p.add_argument("--do-not-download-clip", action="store_true")
    p.add_argument("--skip-prepare-environment", action="store_true")
    p.add_argument("--skip-install", action="store_true")
    p.add_argument("--skip-python-version-check", action="store_true")
    p.add_argument("--skip-torch-cuda-test", action="store_true")
    p.add_argument("--skip-version-check", action="store_true")
    p.add_argument("--use-cpu", nargs="+", default=[], type=str.lower)
    p.add_argument("--precision", choices=["full", "half", "autocast"], default="autocast")
    p.add_argument("--no-half", action="store_true")
    p.add_argument("--no-half-vae", action="store_true")
    p.add_argument("--medvram", action="store_true")
    p.add_argument("--medvram-sdxl", action="store_true")
    p.add_argument("--lowvram", action="store_true")
    p.add_argument("--xformers", action="store_true")
    p.add_argument("--opt-sdp-attention", action="store_true")
    p.add_argument("--no-hashing", action="store_true")
    if flavor == "forge":  # Forge's own backend flags (backend/args.py)
        p.add_argument("--always-cpu", action="store_true")
        p.add_argument("--always-low-vram", action="store_true")
    return p


def main() -> None:
    flavor = os.environ.get("CLOUDSD_UI_FLAVOR", "a1111")
    # As A1111's and Forge's modules/paths_internal.py: COMMANDLINE_ARGS extends the command line.
    sys.argv += shlex.split(os.environ.get("COMMANDLINE_ARGS", ""))
    args = parser(flavor).parse_args()
    data_dir = Path(args.data_dir)
    checkpoints = data_dir / "models" / "Stable-diffusion"
    has_model = checkpoints.is_dir() and any(p.suffix in CHECKPOINT_EXTS for p in checkpoints.rglob("*"))
    if not has_model and not args.no_download_sd_model:
        sys.exit("launch.py (stand-in): no checkpoint, and the real UI would now download SD 1.5 from a "
                 "repository that no longer exists; pass --no-download-sd-model")
    # As in A1111's webui.py: --listen means 0.0.0.0; otherwise --server-name, else Gradio's default,
    # which GRADIO_SERVER_NAME may change.
    if args.listen or args.share:
        host = "0.0.0.0"
    else:
        host = args.server_name or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    env = dict(os.environ)
    env["CLOUDSD_STANDIN_CMD_FLAGS"] = json.dumps(vars(args))
    env["CLOUDSD_STANDIN_API"] = "1" if args.api or args.nowebui else "0"
    argv = [sys.executable, "-u", str(STANDIN), "--host", host, "--port", str(args.port or 7860),
            "--flavor", flavor, "--data-dir", str(data_dir), "--app-dir", str(HERE)]
    os.execve(sys.executable, argv, env)


if __name__ == "__main__":
    main()
