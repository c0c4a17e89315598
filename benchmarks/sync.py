"""cloudsd sync beside OpenSSH `scp` and `rsync`, in the same run, on loopback and at 50 ms RTT; and the
machine's own fetch beside `curl` run on the machine.

    .venv/bin/python benchmarks/sync.py [--quick] [--skip-rtt] [--repeat N] [--only push,pull,noop,fetch]

One `cloudsd-testbed:latest` container (sshd, rsync, curl, python3 and the stand-in UI) on the
`cloudsd-test` network, SSH published on 127.0.0.1 only, a key made by `cloudsd.keys` under a temporary
CLOUDSD_HOME. Paths: `loopback` (the published port) and `rtt50` (benchmarks/delay_proxy.py, 25 ms each way,
its own process). For each path, taken in turn for each tool so passing load touches all alike:
- push / pull of one 1 GiB file and of 1,000 small files (64-192 KiB, 128 MB in all):
  `scp` (SFTP protocol), `rsync -a` (first copy), and cloudsd (`benchmarks/sync_client.py`, its own process:
  connect, agent, verify by sha256 on both sides, rename into place); cloudsd's time includes starting the
  machine's OpenSSH master (`--cold`, as scp's includes its connect), and a second run beside it, informative,
  goes over the master that run left, as every command after `cloudsd up` (which brings it up) does;
- the no-op re-sync of the 1,000 files (cloudsd: one exec; `rsync -a` beside it).
Remote fetch (loopback only: no SSH in the data path): the machine downloads a 1 GiB file from the
model-source stand-in (tests/fakes/model_sources.py, its own container, sendfile) with `curl -o` and with
cloudsd's agent (which also checks the sha256 before renaming into place).

Times include the SSH connect for every tool (not Python's import time, reported apart). OpenSSH uses
aes128-gcm@openssh.com, as cloudsd does. Prints a table with ratios (speed of cloudsd ÷ speed of the faster
of scp and rsync) against the goals, and writes benchmarks/results/sync.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import BENCH_DIR, MB, TESTBED_IMAGE, machine_info, require, table, write_json
from benchmarks.delay_proxy import spawn_proxy
from benchmarks.tunnel import (
    make_key,
    pin_host_key,
    published_ssh_port,
    remove_stale_containers,
    stop_process,
)

IMAGE = TESTBED_IMAGE
LABEL = "cloudsd.bench"
CIPHER = "aes128-gcm@openssh.com"
DATA = "/workspace/webui"
# Issue 15: at 50 ms, 1 GiB >= 5x and 1,000 files >= 3x the faster of scp and rsync; on loopback >= 0.9x.
GOALS = {("rtt50", "big"): 5.0, ("rtt50", "small"): 3.0, ("loopback", "big"): 0.9, ("loopback", "small"): 0.9}
NOOP_GOAL_S = 0.2
FETCH_GOAL = 0.9


@dataclass(frozen=True)
class Sizes:
    big: int
    small_files: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(1 << 30, 1000)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(128 << 20, 200)


def small_sizes(count: int) -> list[int]:
    rng = random.Random(1234)
    return [rng.randint(64 << 10, 192 << 10) for _ in range(count)]


class Bench:
    def __init__(self, workdir: Path, container: Any, key: Path, host_key: str, known_hosts: Path) -> None:
        self.workdir, self.container, self.key, self.host_key = workdir, container, key, host_key
        self.known_hosts = known_hosts

    def sh(self, command: str) -> str:
        result = self.container.exec_run(["sh", "-c", command])
        if result.exit_code != 0:
            raise RuntimeError(f"{command!r} failed on the machine: {result.output.decode(errors='replace')}")
        return str(result.output.decode())

    def ssh_opts(self, port: int) -> list[str]:
        return ["-F", "/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR", "-c", CIPHER, "-i", str(self.key), "-p", str(port)]

    def timed(self, argv: list[str], timeout: float) -> float:
        started = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
        return elapsed

    def scp(self, port: int, src: str, dst: str, timeout: float) -> float:
        opts = [o if o != "-p" else "-P" for o in self.ssh_opts(port)]
        return self.timed(["scp", "-q", "-r", *opts, src, dst], timeout)

    def rsync(self, port: int, src: str, dst: str, timeout: float) -> float:
        shell = " ".join(["ssh", *self.ssh_opts(port)])
        return self.timed(["rsync", "-a", "-e", shell, src, dst], timeout)

    def cloudsd(self, port: int, op: str, timeout: float, *args: str, tree: Path | None = None) -> dict[str, Any]:
        """One cloudsd operation in its own process; `--cold` in `args` ends the OpenSSH master first. `tree`:
        another checkout's sync_client.py and cloudsd (`--baseline`); one whose client knows no `--cold` runs
        without it (over the master this checkout's run left)."""
        client = (tree / "benchmarks" if tree else BENCH_DIR) / "sync_client.py"
        if tree is not None and "--cold" not in client.read_text():
            args = tuple(a for a in args if a != "--cold")
        if op == "push" and (tree is None or "--record" in client.read_text()):
            # what earlier pushes put on this machine, as the ledger tells `cloudsd sync models`
            args = (*args, "--record", str(self.workdir / f"pushed-{port}.json"))
        argv = [sys.executable, str(client), op, "--ssh", f"127.0.0.1:{port}",
                "--key", str(self.key), "--host-key", self.host_key, *args]
        started = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
        if result.returncode != 0:
            raise RuntimeError(f"cloudsd {op} failed: {result.stderr.strip()[-2000:]}")
        report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        report["process_s"] = time.perf_counter() - started
        if report.get("failed") or report.get("problems"):
            raise RuntimeError(f"cloudsd {op} reported failures: {report}")
        return report


def prepare(bench: Bench, sizes: Sizes) -> dict[str, Path]:
    """Local files to push, and the same shapes on the machine to pull."""
    big = bench.workdir / "push-big" / "Stable-diffusion" / "big.safetensors"
    small = bench.workdir / "push-small" / "Lora"
    big.parent.mkdir(parents=True)
    with big.open("wb") as f:
        for _ in range(sizes.big // (8 << 20)):
            f.write(os.urandom(8 << 20))
    for i, size in enumerate(small_sizes(sizes.small_files)):
        path = small / f"d{i // 100:02d}" / f"f{i:04d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    bench.sh(f"mkdir -p {DATA}/bench-big {DATA}/bench-small && "
             f"head -c {sizes.big} /dev/urandom > {DATA}/bench-big/big.png")
    sizes_arg = ",".join(map(str, small_sizes(sizes.small_files)))
    bench.sh(f"python3 -c \"import os\nfor i, n in enumerate(map(int, '{sizes_arg}'.split(','))):\n"
             f"    d = '{DATA}/bench-small/d%02d' % (i // 100); os.makedirs(d, exist_ok=True)\n"
             f"    open(d + '/%04d.png' % i, 'wb').write(os.urandom(n))\"")
    return {"big": big.parent.parent, "small": small.parent}


def clean_remote(bench: Bench) -> None:
    """Empty the machine's model folders, as a new machine has them (cloudsd's record of what it put there
    goes too)."""
    for record in bench.workdir.glob("pushed-*.json"):
        record.unlink()
    bench.sh(f"rm -rf /workspace/bench-up {DATA}/models/Stable-diffusion {DATA}/models/Lora; mkdir -p /workspace/bench-up")


def measure_path(bench: Bench, port: int, path: str, sizes: Sizes, local: dict[str, Path], repeat: int,
                 only: set[str], timeout: float, baseline: Path | None = None,
                 scp_small_once: bool = False) -> dict[str, Any]:
    runs: dict[str, list[float]] = {}
    extra: dict[str, list[dict[str, Any]]] = {}

    def note(key: str, seconds: float, report: dict[str, Any] | None = None) -> None:
        runs.setdefault(key, []).append(seconds)
        if report is not None:
            extra.setdefault(key, []).append(report)
        print(f"  {path} {key}: {seconds:.2f} s", flush=True)

    target = "root@127.0.0.1"
    for round_ in range(repeat):
        for shape in ("big", "small"):
            src = local[shape]
            with_scp = not (scp_small_once and shape == "small" and round_)
            if "push" in only:
                clean_remote(bench)
                if with_scp:
                    note(f"push_{shape}/scp", bench.scp(port, str(src), f"{target}:/workspace/bench-up/scp", timeout))
                clean_remote(bench)
                note(f"push_{shape}/rsync", bench.rsync(port, f"{src}/", f"{target}:/workspace/bench-up/rsync/",
                                                        timeout))
                clean_remote(bench)
                report = bench.cloudsd(port, "push", timeout, "--source", str(src), "--cold")
                note(f"push_{shape}/cloudsd", report["seconds"], report)
                # as after `cloudsd up`, which brings the machine's master up: the one the cold run left
                clean_remote(bench)
                report = bench.cloudsd(port, "push", timeout, "--source", str(src))
                assert report["reused"] or report["client"] != "openssh", report
                note(f"push_{shape}/cloudsd_warm", report["seconds"], report)
                if baseline is not None:
                    clean_remote(bench)
                    report = bench.cloudsd(port, "push", timeout, "--source", str(src), "--cold", tree=baseline)
                    note(f"push_{shape}/baseline", report["seconds"], report)
            if "pull" in only:
                remote = f"{DATA}/bench-{shape}"
                for tool in ("scp",) * with_scp + ("rsync", "cloudsd") + (("baseline",) if baseline else ()):
                    dest = bench.workdir / "pulled" / tool
                    shutil.rmtree(dest, ignore_errors=True)
                    dest.mkdir(parents=True)
                    if tool == "scp":
                        note(f"pull_{shape}/scp", bench.scp(port, f"{target}:{remote}", str(dest), timeout))
                    elif tool == "rsync":
                        note(f"pull_{shape}/rsync", bench.rsync(port, f"{target}:{remote}/", f"{dest}/", timeout))
                    else:
                        report = bench.cloudsd(port, "pull", timeout, "--output-dir", f"bench-{shape}",
                                               "--dest", str(dest), "--cold",
                                               tree=baseline if tool == "baseline" else None)
                        note(f"pull_{shape}/{tool}", report["seconds"], report)
                        if tool == "cloudsd":  # and over the master that run left, as after `cloudsd up`
                            shutil.rmtree(dest)
                            dest.mkdir(parents=True)
                            report = bench.cloudsd(port, "pull", timeout, "--output-dir", f"bench-{shape}",
                                                   "--dest", str(dest))
                            assert report["reused"] or report["client"] != "openssh", report
                            note(f"pull_{shape}/cloudsd_warm", report["seconds"], report)
        if "noop" in only:
            clean_remote(bench)
            bench.cloudsd(port, "push", timeout, "--source", str(local["small"]))
            # as a user's next command: the master the first one left is reused (when the system ssh runs)
            report = bench.cloudsd(port, "push", timeout, "--source", str(local["small"]))
            assert report["outcomes"] == ["present"] and report["agent_runs"] == 1, report
            note("noop_small/cloudsd", report["seconds"], report)
            report = bench.cloudsd(port, "push", timeout, "--source", str(local["small"]), "--cold")
            assert report["outcomes"] == ["present"] and report["agent_runs"] == 1, report
            note("noop_small/cloudsd_cold", report["seconds"], report)
            if baseline is not None:
                # once unmeasured: its agent (another version) replaces this checkout's, an upload not to time
                bench.cloudsd(port, "push", timeout, "--source", str(local["small"]), tree=baseline)
                report = bench.cloudsd(port, "push", timeout, "--source", str(local["small"]), tree=baseline)
                assert report["outcomes"] == ["present"], report
                note("noop_small/baseline", report["seconds"], report)
            bench.rsync(port, f"{local['small']}/", f"{target}:/workspace/bench-up/rsync/", timeout)
            note("noop_small/rsync", bench.rsync(port, f"{local['small']}/", f"{target}:/workspace/bench-up/rsync/",
                                                 timeout))
    out: dict[str, Any] = {"seconds": {k: statistics.median(v) for k, v in runs.items()}, "runs": runs,
                           "cloudsd_reports": extra}
    return out


def measure_fetch(bench: Bench, client: Any, sizes: Sizes, repeat: int, timeout: float) -> dict[str, Any]:
    from tests.fakes.sources_container import start_sources_container

    data = bench.workdir / "fetch"
    data.mkdir()
    big = data / "big.bin"
    shutil.copyfile(bench.workdir / "push-big" / "Stable-diffusion" / "big.safetensors", big)
    digest = subprocess.run(["sha256sum", str(big)], capture_output=True, text=True, check=True).stdout.split()[0]
    sources = start_sources_container(client, IMAGE, bench.workdir / "sources",
                                      [{"name": "big.bin", "path": "/data/big.bin"}], token="",
                                      extra_binds={str(data): "/data"})
    url = "http://cdn.test/files/big.bin"
    runs: dict[str, list[float]] = {"curl": [], "cloudsd": []}
    try:
        port = published_ssh_port(bench.container)
        for _ in range(repeat):
            bench.sh("rm -f /workspace/curl.bin")
            out = bench.sh(f"s=$(date +%s.%N); curl -sf -o /workspace/curl.bin {url}; e=$(date +%s.%N); echo $s $e")
            start, end = map(float, out.split())
            runs["curl"].append(end - start)
            bench.sh("rm -f /workspace/curl.bin")
            remote = f"{DATA}/models/Stable-diffusion/fetched.bin"
            bench.sh(f"rm -f {remote}")
            report = bench.cloudsd(port, "fetch", timeout, "--url", url, "--sha256", digest, "--remote", remote)
            if not report["reply"].get("ok"):
                raise RuntimeError(f"cloudsd fetch failed: {report['reply']}")
            runs["cloudsd"].append(report["fetch_s"])
            print(f"  fetch: curl {runs['curl'][-1]:.2f} s, cloudsd {runs['cloudsd'][-1]:.2f} s", flush=True)
    finally:
        sources.remove(force=True)
    return {"seconds": {k: statistics.median(v) for k, v in runs.items()}, "runs": runs, "bytes": sizes.big}


def _before(s: dict[str, float], op: str) -> str:
    """The `--baseline` checkout's time and its ratio to the faster of scp and rsync, if it ran."""
    if f"{op}/baseline" not in s:
        return ""
    return f"{s[f'{op}/baseline']:.2f} s ({min(s[f'{op}/scp'], s[f'{op}/rsync']) / s[f'{op}/baseline']:.2f})"


def report(results: dict[str, Any], sizes: Sizes) -> tuple[str, list[dict[str, Any]]]:
    """Ratios are speeds: cloudsd ÷ scp and cloudsd ÷ rsync; a goal is judged against the faster of the two."""
    rows, goals = [], []
    small_bytes = sum(small_sizes(sizes.small_files))
    for path, r in results.get("paths", {}).items():
        s = r["seconds"]
        for op in ("push_big", "push_small", "pull_big", "pull_small"):
            if f"{op}/cloudsd" not in s:
                continue
            nbytes = sizes.big if op.endswith("big") else small_bytes
            vs_scp, vs_rsync = s[f"{op}/scp"] / s[f"{op}/cloudsd"], s[f"{op}/rsync"] / s[f"{op}/cloudsd"]
            rows.append([f"{path} {op}", *(f"{s[f'{op}/{t}']:.2f} s ({nbytes / s[f'{op}/{t}'] / MB:.0f} MB/s)"
                                           for t in ("scp", "rsync", "cloudsd")), f"{vs_scp:.2f}", f"{vs_rsync:.2f}",
                         _before(s, op)])
            if f"{op}/cloudsd_warm" in s:  # informative: the goals are judged on the cold runs above
                warm = s[f"{op}/cloudsd_warm"]
                rows.append([f"{path} {op}, master up (as after `up`)", "", "",
                             f"{warm:.2f} s ({nbytes / warm / MB:.0f} MB/s)", f"{s[f'{op}/scp'] / warm:.2f}",
                             f"{s[f'{op}/rsync'] / warm:.2f}", ""])
            goal = GOALS[(path, op.split("_")[1])]
            ratio = min(vs_scp, vs_rsync)
            goals.append({"goal": f"{path} {op}: cloudsd >= {goal}x the faster of scp and rsync",
                          "value": round(ratio, 2), "vs_scp": round(vs_scp, 2), "vs_rsync": round(vs_rsync, 2),
                          "met": ratio >= goal, "met_vs_scp": vs_scp >= goal})
        if "noop_small/cloudsd" in s:
            cold = f"; {s['noop_small/cloudsd_cold']:.2f} s cold" if "noop_small/cloudsd_cold" in s else ""
            rows.append([f"{path} no-op re-sync, {sizes.small_files} files", "-",
                         f"{s['noop_small/rsync']:.2f} s", f"{s['noop_small/cloudsd']:.2f} s{cold}", "", "",
                         f"{s['noop_small/baseline']:.2f} s" if "noop_small/baseline" in s else ""])
            goals.append({"goal": f"{path} no-op re-sync of {sizes.small_files} files <= {NOOP_GOAL_S} s",
                          "value": round(s["noop_small/cloudsd"], 3), "met": s["noop_small/cloudsd"] <= NOOP_GOAL_S})
    if "fetch" in results:
        f = results["fetch"]["seconds"]
        ratio = f["curl"] / f["cloudsd"]
        rows.append(["fetch 1 file on the machine", f"curl {f['curl']:.2f} s", "",
                     f"{f['cloudsd']:.2f} s ({sizes.big / f['cloudsd'] / MB:.0f} MB/s)", f"{ratio:.2f} (vs curl)", "", ""])
        goals.append({"goal": f"remote fetch >= {FETCH_GOAL}x curl", "value": round(ratio, 2), "met": ratio >= FETCH_GOAL})
    text = table(["measure", "scp", "rsync", "cloudsd", "÷ scp", "÷ rsync", "baseline (÷ faster)"], rows)
    text += "\n\ngoals:\n" + "\n".join(
        f"  [{'met' if g['met'] else 'MISSED'}] {g['goal']}: {g['value']}"
        + (f" (vs scp {g['vs_scp']}: {'met' if g['met_vs_scp'] else 'missed'})" if "vs_scp" in g else "")
        for g in goals)
    return text, goals


def run(args: argparse.Namespace) -> int:
    import docker

    from tests.fakes.machines import ensure_test_network

    sizes = Sizes.quick() if args.quick else Sizes.full()
    only = set(args.only.split(","))
    require(["ssh", "scp", "rsync"])
    client = docker.from_env()
    remove_stale_containers(client, "sync")
    workdir = Path(tempfile.mkdtemp(prefix="cloudsd-bench-sync-"))
    container, processes = None, []
    paths_seen: list[tuple[int, str]] = []
    try:
        key_path, public_line = make_key(workdir)
        container = client.containers.run(
            IMAGE, detach=True, name=f"cloudsd-bench-sync-{os.getpid()}", environment={"PUBLIC_KEY": public_line},
            labels={LABEL: "sync", f"{LABEL}.pid": str(os.getpid())}, ports={"22/tcp": ("127.0.0.1", None)}, network=ensure_test_network(client))
        ssh_port = published_ssh_port(container)
        host_key = pin_host_key(ssh_port, key_path)
        paths = {"loopback": ssh_port}
        if args.rtt_only:
            paths = {}
        if not args.skip_rtt:
            proxy, proxy_port = spawn_proxy(("127.0.0.1", ssh_port), args.delay_ms)
            processes.append(proxy)
            paths["rtt50"] = proxy_port
        paths_seen.extend((port, host_key) for port in paths.values())
        known = workdir / "known_hosts"
        known.write_text("".join(f"[127.0.0.1]:{p} {host_key}\n" for p in paths.values()))
        bench = Bench(workdir, container, key_path, host_key, known)
        local = prepare(bench, sizes)
        results: dict[str, Any] = {"paths": {}}
        load_before = os.getloadavg()
        for path, port in paths.items():
            print(f"{path}:", flush=True)
            repeat = args.repeat if path == "loopback" else max(1, args.rtt_repeat)
            results["paths"][path] = measure_path(bench, port, path, sizes, local, repeat, only - {"fetch"},
                                                  args.timeout, args.baseline,
                                                  scp_small_once=args.scp_small_once and path == "rtt50")
        if "fetch" in only:
            print("fetch:", flush=True)
            results["fetch"] = measure_fetch(bench, client, sizes, args.repeat, args.timeout)
        text, goals = report(results, sizes)
        print("\n" + text)
        out = write_json("sync.json", {
            "benchmark": "sync", "machine": machine_info(), "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
            "options": {"quick": args.quick, "repeat": args.repeat, "rtt_repeat": args.rtt_repeat,
                        "delay_ms_each_way": args.delay_ms, "big_bytes": sizes.big, "small_files": sizes.small_files,
                        "small_bytes": sum(small_sizes(sizes.small_files)), "cipher": CIPHER,
                        "streams": os.environ.get("CLOUDSD_SYNC_STREAMS", "auto"),
                        "ssh_client": os.environ.get("CLOUDSD_SSH_CLIENT", "auto"),
                        "baseline": str(args.baseline) if args.baseline else None,
                        "scp_small_once": args.scp_small_once},
            "results": results, "goals": goals})
        print(f"\nwrote {out}")
        return 0
    finally:
        end_masters(paths_seen, workdir)
        for proc in processes:
            stop_process(proc)
        if container is not None:
            container.remove(force=True)
        shutil.rmtree(workdir, ignore_errors=True)


def end_masters(ports: list[tuple[int, str]], workdir: Path) -> None:
    """The OpenSSH masters cloudsd's runs left (one per path), ended before their machine goes."""
    from cloudsd.keys import PRIVATE
    from cloudsd.machine import SSHEndpoint
    from cloudsd.openssh import Target, end_master

    key = workdir / "cloudsd-home" / "keys" / "bench" / PRIVATE
    for port, host_key in ports:
        end_master(Target(SSHEndpoint("127.0.0.1", port), key, host_key))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 MiB and 200 files (a smoke run)")
    parser.add_argument("--skip-rtt", action="store_true", help="loopback only")
    parser.add_argument("--rtt-only", action="store_true", help="50 ms RTT only (and fetch, if asked)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement on loopback (median)")
    parser.add_argument("--rtt-repeat", type=int, default=1, help="runs per measurement at 50 ms RTT")
    parser.add_argument("--scp-small-once", action="store_true",
                        help="at 50 ms RTT, scp the 1,000 files in the first round only: it takes ~210 s each way "
                             "(a round trip per file, ~50x rsync), so it is never the faster tool")
    parser.add_argument("--only", default="push,pull,noop,fetch", help="comma-separated: push,pull,noop,fetch")
    parser.add_argument("--delay-ms", type=float, default=25.0)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (git archive REV | tar -x -C DIR): its cloudsd measured in the same "
                             "rounds, right after this one's")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
