#!/usr/bin/env python3
"""Stand-in for ComfyUI's main.py, at /opt/cloudsd/app/main.py in the testbed image.

It takes the flags the real main.py takes (comfy/cli_args.py; those images/ui/start may pass and a few
more), refuses any other flag as the real parser does, binds where the real one would (a bare --listen
means every address), then runs the stand-in UI, which reports this command line in /system_stats and loads
the custom nodes the real one would (<base>/custom_nodes and those of extra_model_paths.yaml beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STANDIN = Path(os.environ.get("CLOUDSD_STANDIN", "/opt/cloudsd/ui/standin_ui.py"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py")
    p.add_argument("--listen", type=str, default="127.0.0.1", nargs="?", const="0.0.0.0,::")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--base-directory", default=None)
    p.add_argument("--disable-auto-launch", action="store_true")
    p.add_argument("--database-url", default=f"sqlite:///{HERE / 'user' / 'comfyui.db'}")
    vram = p.add_mutually_exclusive_group()
    for flag in ("--gpu-only", "--highvram", "--normalvram", "--lowvram", "--novram", "--cpu"):
        vram.add_argument(flag, action="store_true")
    return p


def main() -> None:
    args = parser().parse_args()
    base = Path(args.base_directory or HERE).resolve()
    host = args.listen.split(",")[0] or "0.0.0.0"
    env = dict(os.environ)
    env["CLOUDSD_STANDIN_ARGV"] = json.dumps(["main.py", *sys.argv[1:]])
    argv = [sys.executable, "-u", str(STANDIN), "--host", host, "--port", str(args.port),
            "--flavor", "comfyui", "--data-dir", str(base), "--app-dir", str(HERE)]
    os.execve(sys.executable, argv, env)


if __name__ == "__main__":
    main()
