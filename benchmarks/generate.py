"""`cloudsd generate` beside plain API calls over the same tunnel: wall time of a 20-picture run, and when
each picture arrives on the laptop.

    .venv/bin/python benchmarks/generate.py [--ui a1111,comfyui] [--pictures 20] [--repeat 3] [--step-s 0.05]

Starts one machine per UI family on the local engine with the test image (`cloudsd up`, under a temporary
CLOUDSD_HOME; the stand-in UI takes `--step-s` seconds per sampling step at 512x512), puts a checkpoint on
it, and opens the machine's tunnel with `cloudsd tunnel` in a process of its own. Then, alternating, `--repeat`
times each:

- plain: what a user's script does over that tunnel, one picture at a time: A1111 `POST /sdapi/v1/txt2img`
  and write the base64 PNG to disk; ComfyUI `POST /prompt`, poll `/history/{id}` every 50 ms, `GET /view`
  and write the file.
- generate: `cloudsd generate NAME PROMPT --count N` as a user runs it (its own process, its own SSH
  connection and tunnel, name checks, the progress bar, the index written at the end).

- baseline (with `--baseline SRC`): the same `cloudsd generate` from another source tree (e.g. main's:
  `git archive main cloudsd | tar -x -C /tmp/base`), in the same rounds: an A/B beside the same plain runs.

Both make the same pictures (same prompt, seeds, 20 steps, 512x512). Python caches bytecode as in a user's
install (under a temporary PYTHONPYCACHEPREFIX; a PYTHONDONTWRITEBYTECODE in the environment would have every
run compile cloudsd's modules again, 60-90 ms on an idle machine), and one unmeasured run of each variant comes
first. Reported: median wall time of each, the overhead of generate over plain (goal: at most 5 %), and for
generate the time from start to the first picture on disk, the median gap between pictures (as each finishes,
not all at the end) and the time from the last picture to its exit. JSON: `results/generate.json`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import TESTBED_IMAGE, machine_info, require, table, write_json  # noqa: E402

PROMPT = "a lighthouse at dusk, oil painting"
STEPS = 20
SEED = 1000


def cloudsd(*args: str, env: dict[str, str], timeout: float = 600, cwd: Path | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "cloudsd", *args], capture_output=True, text=True, env=env,
                            timeout=timeout, cwd=cwd)
    if result.returncode != 0:
        raise RuntimeError(f"cloudsd {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def plain_a1111(port: int, count: int, dest: Path) -> list[float]:
    """One txt2img per picture over the tunnel; returns each picture's arrival time (s from start)."""
    import base64

    dest.mkdir(parents=True, exist_ok=True)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    arrivals = []
    for i in range(count):
        body = json.dumps({"prompt": PROMPT, "seed": SEED + i, "steps": STEPS, "width": 512, "height": 512,
                           "sampler_name": "DPM++ 2M", "cfg_scale": 7.0, "batch_size": 1, "n_iter": 1,
                           "save_images": True})
        conn.request("POST", "/sdapi/v1/txt2img", body=body, headers={"Content-Type": "application/json"})
        reply = json.loads(conn.getresponse().read())
        (dest / f"{i:05d}.png").write_bytes(base64.b64decode(reply["images"][0]))
        arrivals.append(time.perf_counter() - started)
    conn.close()
    return arrivals


def plain_comfyui(port: int, count: int, dest: Path, ckpt: str) -> list[float]:
    dest.mkdir(parents=True, exist_ok=True)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def call(method: str, path: str, body: Any = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        return conn.getresponse().read()

    started = time.perf_counter()
    arrivals = []
    for i in range(count):
        graph = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
            "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": SEED + i, "steps": STEPS,
                                                       "cfg": 7.0, "sampler_name": "dpmpp_2m", "scheduler": "normal",
                                                       "positive": ["2", 0], "negative": ["3", 0],
                                                       "latent_image": ["4", 0], "denoise": 1.0}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "plain"}},
        }
        prompt_id = json.loads(call("POST", "/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex}))["prompt_id"]
        while True:
            entry = json.loads(call("GET", f"/history/{prompt_id}")).get(prompt_id)
            if entry:
                break
            time.sleep(0.05)
        for out in entry["outputs"].values():
            for image in out["images"]:
                data = call("GET", f"/view?filename={image['filename']}&subfolder={image['subfolder']}&type=output")
                (dest / image["filename"]).write_bytes(data)
        arrivals.append(time.perf_counter() - started)
    conn.close()
    return arrivals


def run_generate(name: str, count: int, env: dict[str, str], workdir: Path,
                 src: Path | None = None) -> tuple[float, list[float]]:
    """`cloudsd generate` as a process; (wall s, each picture's arrival s as its line appears)."""
    argv = [sys.executable, "-m", "cloudsd", "generate", name, PROMPT, "--count", str(count), "--steps", str(STEPS),
            "--seed", str(SEED), "--size", "512x512", "--sampler", "DPM++ 2M"]
    if src is not None:  # PYTHONPATH comes before the editable install's finder
        env = {**env, "PYTHONPATH": str(src)}
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=workdir)
    assert proc.stderr is not None
    arrivals = []
    for line in proc.stderr:
        if re.search(r"\.png\s+seed \d+", line):
            arrivals.append(time.perf_counter() - started)
    proc.wait(timeout=600)
    wall = time.perf_counter() - started
    if proc.returncode != 0 or len(arrivals) != count:
        raise RuntimeError(f"generate failed ({proc.returncode}, {len(arrivals)} pictures)")
    return wall, arrivals


def bench_ui(ui: str, args: argparse.Namespace, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    name = f"bench-{ui}"
    port = 17000 + (0 if ui == "a1111" else 1000) + os.getpid() % 500
    cloudsd("up", name, "--ui", ui, "--detach", "--port", str(port), env=env, cwd=workdir)
    ckpt = workdir / "bench_model.safetensors"
    ckpt.write_bytes(os.urandom(4096))
    cloudsd("sync", "models", name, str(ckpt), "--kind", "checkpoint", env=env, cwd=workdir)
    cloudsd("ssh", name, "--", "sh", "-c",
            f"'mkdir -p /run/cloudsd && echo {args.step_s} > /run/cloudsd/standin-step-s'", env=env)
    tunnel = subprocess.Popen([sys.executable, "-m", "cloudsd", "tunnel", name, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=workdir)
    try:
        assert tunnel.stderr is not None
        for line in tunnel.stderr:
            if "http://127.0.0.1:" in line:
                port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
                break
        variants = {"generate": None, **({"baseline": args.baseline} if args.baseline else {})}
        for src in variants.values():  # warm-up: bytecode compiled, the UI's first job done
            run_generate(name, 1, env, workdir, src)
        samples: dict[str, list[Any]] = {"plain": [], **{v: [] for v in variants}}
        for round_ in range(args.repeat):
            print(f"  {ui} round {round_ + 1}/{args.repeat}", flush=True)
            dest = workdir / f"plain-{ui}-{round_}"
            started = time.perf_counter()
            arrivals = (plain_a1111(port, args.pictures, dest) if ui == "a1111"
                        else plain_comfyui(port, args.pictures, dest, ckpt.name))
            samples["plain"].append((time.perf_counter() - started, arrivals))
            for variant, src in variants.items():
                samples[variant].append(run_generate(name, args.pictures, env, workdir, src))
    finally:
        tunnel.send_signal(signal.SIGINT)
        try:
            tunnel.wait(timeout=30)
        except subprocess.TimeoutExpired:
            tunnel.kill()
        cloudsd("down", name, "--yes", "--no-outputs", env=env, cwd=workdir)
    plain = statistics.median(s[0] for s in samples["plain"])
    gen = statistics.median(s[0] for s in samples["generate"])
    gaps = [b - a for _, arr in samples["generate"] for a, b in zip(arr, arr[1:], strict=False)]
    first = statistics.median(arr[0] for _, arr in samples["generate"])
    def after_last(variant: str) -> float:  # from the last picture on disk to the process's exit
        return statistics.median(wall - arr[-1] for wall, arr in samples[variant])

    extra = {"after_last_s": after_last("generate")}
    if "baseline" in samples:
        base = statistics.median(s[0] for s in samples["baseline"])
        extra |= {"baseline_s": base, "baseline_overhead": base / plain - 1.0,
                  "baseline_first_picture_s": statistics.median(arr[0] for _, arr in samples["baseline"]),
                  "baseline_after_last_s": after_last("baseline")}
    return {"plain_s": plain, "generate_s": gen, "overhead": gen / plain - 1.0, "first_picture_s": first, **extra,
            "median_gap_s": statistics.median(gaps) if gaps else None,
            "per_picture_plain_s": plain / args.pictures,
            "samples": {k: [{"wall_s": w, "arrivals_s": a} for w, a in v] for k, v in samples.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", default="a1111,comfyui", help="comma-separated: a1111,comfyui")
    parser.add_argument("--pictures", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--step-s", type=float, default=0.05, help="stand-in seconds per step at 512x512")
    parser.add_argument("--image", default=TESTBED_IMAGE)
    parser.add_argument("--goal", type=float, default=0.05)
    parser.add_argument("--baseline", type=Path, help="source tree of another cloudsd to run beside (A/B)")
    args = parser.parse_args(argv)
    require([], args.image)
    workdir = Path(tempfile.mkdtemp(prefix="cloudsd-bench-generate-"))
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
           "PYTHONPYCACHEPREFIX": str(workdir / "pycache"), "CLOUDSD_HOME": str(workdir / "home"), "CLOUDSD_IMAGE": args.image,
           "CLOUDSD_LOCAL_NETWORK": "cloudsd-test", "CLOUDSD_LOCAL_GPUS": "none", "CLOUDSD_IMAGE_PULL": "never"}
    load_before = os.getloadavg()
    results = {}
    try:
        for ui in args.ui.split(","):
            results[ui] = bench_ui(ui, args, env, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [[ui, f"{r['plain_s']:.2f}", f"{r['generate_s']:.2f}", f"{r['overhead']:+.1%}",
             "yes" if r["overhead"] <= args.goal else "no", f"{r['first_picture_s']:.2f}",
             f"{r['median_gap_s']:.2f}", f"{r['per_picture_plain_s']:.2f}"] for ui, r in results.items()]
    print("\n" + table(["ui", "plain s", "generate s", "overhead", f"<= {args.goal:.0%}", "first picture s",
                        "gap s", "plain s/picture"], rows))
    if args.baseline:
        print("\n" + table(["ui", "baseline s", "overhead", "first picture s", "after last s", "generate s",
                            "overhead", "first picture s", "after last s"],
                           [[ui, f"{r['baseline_s']:.2f}", f"{r['baseline_overhead']:+.1%}",
                             f"{r['baseline_first_picture_s']:.2f}", f"{r['baseline_after_last_s']:.2f}",
                             f"{r['generate_s']:.2f}", f"{r['overhead']:+.1%}", f"{r['first_picture_s']:.2f}",
                             f"{r['after_last_s']:.2f}"] for ui, r in results.items()]))
    out = write_json("generate.json", {"benchmark": "generate", "machine": machine_info(),
                                       "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
                                       "options": {**vars(args), "baseline": str(args.baseline or "") or None},
                                       "results": results})
    print(f"\nload average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
