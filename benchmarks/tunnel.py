"""cloudsd's tunnel beside `ssh -N -L`, in the same run, on loopback and at 50 ms round-trip time.

    .venv/bin/python benchmarks/tunnel.py [--quick] [--skip-rtt] [--repeat N] [--only cloudsd|ssh]
        [--baseline DIR]

Boots one container of the test image (`cloudsd-testbed:latest`: sshd plus a stand-in web UI on
127.0.0.1:7860 inside), published on 127.0.0.1 only, on the `cloudsd-test` network, with a key made for
this run in a temp dir (CLOUDSD_HOME points there; ~/.cloudsd is not touched). Then, for each path

- loopback: straight to the container's published SSH port;
- rtt50: through benchmarks/delay_proxy.py (25 ms each way) in front of that port;

and for each forwarder

- ssh: OpenSSH `ssh -N -L` with aes128-gcm@openssh.com and the pinned host key;
- cloudsd: `cloudsd.ssh.connect` + `cloudsd.tunnel.LocalForward`, in a process of its own
  (benchmarks/cloudsd_forward.py), as `cloudsd tunnel` runs beside a browser;
- baseline (with `--baseline DIR`): the same from another checkout (`git archive main | tar -x -C DIR`), so a
  change is measured against what it changes in the same rounds;

it measures, with every forwarder of a path up at once and each measurement taken in turn for each
(so load that comes and goes on the machine touches both alike; `--repeat N` gives medians of N):
- download: GET /bench/bytes?n=200 MiB on a new connection, MB/s (1 MB = 10^6 B), connect to last byte,
  and the forwarder process's CPU seconds per GB moved (user + system, from /proc; robust to a busy
  machine where MB/s is not);
- keep-alive: 200 sequential GET /bench/small (4 KiB, headers and body written separately, as uvicorn
  does) on one HTTP/1.1 connection, after one untimed request; p50 and p99 in ms;
- concurrent: 1,000 connections opened at once, each fetching /bench/small; how many were served, the
  seconds until the last one finished, and the forwarder's CPU seconds for them (robust to a busy machine).

Prints a table with cloudsd ÷ ssh ratios and the goals, and writes benchmarks/results/tunnel.json.
The container, the proxy and the forwarders are removed on exit, also on Ctrl-C and SIGTERM. Every wait
is bounded (`--timeout` for any one measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    BENCH_DIR,
    MB,
    TESTBED_IMAGE,
    machine_info,
    percentile,
    require,
    table,
    write_json,
)
from benchmarks.delay_proxy import spawn_proxy

IMAGE = TESTBED_IMAGE
UI_PORT = 7860
LABEL = "cloudsd.bench"
SSH_CIPHER = "aes128-gcm@openssh.com"
PROCESS_STOP_S = 5.0
CONNECT_TIMEOUT_S = 30.0

GOAL_KEEPALIVE_P50_MS = 1.0
# Issue 15: >= 5x ssh -N -L at 50 ms, <= 2 CPU-s/GB and keep-alive p99 <= 1.5 ms on loopback, and 1,000
# concurrent connections no slower than ssh -N -L.
GOAL_RTT_THROUGHPUT_RATIO = 5.0
GOAL_KEEPALIVE_P99_MS = 1.5
GOAL_CPU_S_PER_GB = 2.0


@dataclass(frozen=True)
class Sizes:
    download_bytes: int
    keepalive_requests: int
    concurrent: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(200 * 1024 * 1024, 200, 1000)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(20 * 1024 * 1024, 50, 200)


# -- plain HTTP/1.1 clients (raw sockets: no client library's own buffering or Nagle in the way) ----------


def _connect(port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _request(path: str, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


_LENGTH_RE = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class KeepAliveClient:
    def __init__(self, port: int, timeout_s: float) -> None:
        self.sock = _connect(port, timeout_s)
        self.buf = bytearray()

    def get(self, path: str) -> tuple[int, int]:
        """(status, body length) of one GET on the open connection."""
        self.sock.sendall(_request(path))
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = bytes(self.buf[:end])
        del self.buf[: end + 4]
        status = int(head.split(b" ", 2)[1])
        match = _LENGTH_RE.search(head)
        length = int(match.group(1)) if match else 0
        while len(self.buf) < length:
            self._fill()
        del self.buf[:length]
        return status, length

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def measure_download(port: int, nbytes: int, timeout_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    sock = _connect(port, timeout_s)
    try:
        sock.sendall(_request(f"/bench/bytes?n={nbytes}", close=True))
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        got = 0
        header_len: int | None = None
        deadline = started + timeout_s
        while True:
            n = sock.recv_into(view)
            if n == 0:
                break
            if header_len is None:
                end = buf.find(b"\r\n\r\n", 0, n)
                if end >= 0:
                    header_len = end + 4
                    if not buf.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"download answered {bytes(buf[:40])!r}")
            got += n
            if header_len is not None and got - header_len >= nbytes:
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"download took more than {timeout_s:.0f} s")
    finally:
        sock.close()
    elapsed = time.perf_counter() - started
    body = got - (header_len or 0)
    if body != nbytes:
        raise RuntimeError(f"download got {body} of {nbytes} bytes")
    return {"bytes": nbytes, "seconds": elapsed, "mb_per_s": nbytes / elapsed / MB}


def measure_keepalive(port: int, requests: int, timeout_s: float) -> dict[str, Any]:
    client = KeepAliveClient(port, timeout_s)
    latencies: list[float] = []
    try:
        client.get("/bench/small")  # untimed: pays for the channel open
        for _ in range(requests):
            started = time.perf_counter()
            status, length = client.get("/bench/small")
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200 or length != 4096:
                raise RuntimeError(f"/bench/small answered {status} with {length} bytes")
    finally:
        client.close()
    return {
        "requests": requests,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "mean_ms": statistics.fmean(latencies),
    }


async def _one_small(port: int, timeout_s: float) -> float | None:
    started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        reader, opened = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
        writer = opened
        opened.write(_request("/bench/small", close=True))
        await opened.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
        match = _LENGTH_RE.search(head)
        if not head.startswith(b"HTTP/1.1 200") or not match:
            return None
        await asyncio.wait_for(reader.readexactly(int(match.group(1))), timeout_s)
        return time.perf_counter() - started
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    finally:
        if writer is not None:
            writer.close()


def measure_concurrent(port: int, connections: int, timeout_s: float) -> dict[str, Any]:
    async def run() -> tuple[list[float | None], float]:
        started = time.perf_counter()
        results = await asyncio.gather(*(_one_small(port, timeout_s) for _ in range(connections)))
        return list(results), time.perf_counter() - started

    results, elapsed = asyncio.run(run())
    done = [r * 1000 for r in results if r is not None]
    return {
        "connections": connections,
        "served": len(done),
        "seconds": elapsed,
        "p50_ms": percentile(done, 50),
        "p99_ms": percentile(done, 99),
    }


def wait_until_serving(port: int, deadline_s: float) -> None:
    """GET /bench/small through the forward until it answers (the UI starts a moment after sshd)."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < deadline_s:
        try:
            client = KeepAliveClient(port, 5)
            try:
                if client.get("/bench/small")[0] == 200:
                    return
            finally:
                client.close()
        except (OSError, ValueError, IndexError) as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.25)
    raise RuntimeError(f"nothing answered through the forward on port {port} within {deadline_s:.0f} s ({last})")


# -- forwarders ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=PROCESS_STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=PROCESS_STOP_S)


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline() if proc.stdout else ""), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return box[0].strip() if box else ""


@dataclass
class Setup:
    workdir: Path
    key_path: Path
    known_hosts: Path
    host_key: str
    ssh_port: int
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)


class Forwarder:
    name = ""
    proc: subprocess.Popen[Any] | None = None
    port = 0

    def start(self, setup: Setup, ssh_port: int) -> int:
        raise NotImplementedError

    def stop(self) -> dict[str, Any]:
        stop_process(self.proc)
        return {}


class CloudsdForwarder(Forwarder):
    name = "cloudsd"

    def __init__(self, wrap: list[str] | None = None, tree: Path | None = None) -> None:
        """`tree`: another checkout (`--baseline`), whose cloudsd_forward.py imports that checkout's cloudsd."""
        self.wrap = wrap or []
        self.tree = tree
        if tree is not None:
            self.name = "baseline"
        self.log_path = Path(os.devnull)

    def start(self, setup: Setup, ssh_port: int) -> int:
        self.port = free_port()
        script = (self.tree / "benchmarks" if self.tree is not None else BENCH_DIR) / "cloudsd_forward.py"
        cmd = [*self.wrap, sys.executable, str(script), "--ssh", f"127.0.0.1:{ssh_port}",
               "--key", str(setup.key_path), "--local-port", str(self.port), "--remote-port", str(UI_PORT),
               "--host-key", setup.host_key]
        self.log_path = setup.workdir / f"{self.name}-forward-{ssh_port}.log"
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                         start_new_session=True)
        setup.processes.append(self.proc)
        line = _read_line(self.proc, 60)
        while line.startswith("py-spy>"):  # a --cloudsd-wrap profiler says hello on the same stdout
            line = _read_line(self.proc, 60)
        if not line.startswith("listening "):
            stop_process(self.proc)
            raise RuntimeError(f"{self.name} forward did not start (said {line!r})")
        self.port = int(line.rsplit(":", 1)[1])
        return self.port

    def stop(self) -> dict[str, Any]:
        if self.proc is None:
            return {}
        try:
            out, _ = self.proc.communicate(timeout=PROCESS_STOP_S * 2)  # EOF on stdin: stop, print counters
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
            return {}
        counters: dict[str, Any] = {}
        for line in reversed((out or "").splitlines()):
            if line.startswith("{"):
                counters = dict(json.loads(line))
                break
        errors = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if errors.strip():
            counters["stderr_tail"] = errors[-4000:]
            print(f"  {self.name} forward wrote to stderr ({len(errors)} chars); last lines:\n"
                  + "\n".join(errors.strip().splitlines()[-12:]), file=sys.stderr)
            self.log_path.unlink()
        return counters


class OpenSSHForwarder(Forwarder):
    name = "ssh"

    def start(self, setup: Setup, ssh_port: int) -> int:
        self.port = free_port()
        cmd = [
            "ssh", "-F", "/dev/null", "-N",
            "-L", f"127.0.0.1:{self.port}:127.0.0.1:{UI_PORT}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={setup.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "ExitOnForwardFailure=yes",
            "-o", "ServerAliveInterval=15",
            "-o", "LogLevel=ERROR",
            "-c", SSH_CIPHER,
            "-i", str(setup.key_path),
            "-p", str(ssh_port),
            "root@127.0.0.1",
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        setup.processes.append(self.proc)
        started = time.monotonic()
        while time.monotonic() - started < 30:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"ssh -N -L exited {self.proc.returncode}: {err.strip()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self.port
            except OSError:
                time.sleep(0.05)
        stop_process(self.proc)
        raise RuntimeError("ssh -N -L did not listen within 30 s")


# -- the testbed machine -------------------------------------------------------------------------------


def make_key(workdir: Path) -> tuple[Path, str]:
    """A key pair made by cloudsd itself, under a CLOUDSD_HOME in the temp dir."""
    os.environ["CLOUDSD_HOME"] = str(workdir / "cloudsd-home")
    from cloudsd.keys import create_key_pair

    pair = create_key_pair("bench")
    return pair.private_path, pair.public_line


def remove_stale_containers(client: Any, kind: str = "tunnel") -> None:
    """Containers left by an earlier run of a benchmark (`kind`) that was killed hard (its pid is gone); never
    those of a run still going (another session's, on the same engine)."""
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}={kind}"}):
        pid = int(container.labels.get(f"{LABEL}.pid", "0") or 0)
        if pid and pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            container.remove(force=True)


def start_container(client: Any, public_key: str) -> Any:
    from tests.fakes.machines import ensure_test_network

    network = ensure_test_network(client)
    return client.containers.run(
        IMAGE,
        detach=True,
        name=f"cloudsd-bench-tunnel-{os.getpid()}",
        environment={"PUBLIC_KEY": public_key},
        labels={LABEL: "tunnel", f"{LABEL}.pid": str(os.getpid())},
        ports={"22/tcp": ("127.0.0.1", None)},
        network=network,
    )


def published_ssh_port(container: Any, deadline_s: float = 30) -> int:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        container.reload()
        bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get("22/tcp") or []
        for binding in bindings:
            if binding.get("HostIp") == "127.0.0.1" and binding.get("HostPort"):
                return int(binding["HostPort"])
        time.sleep(0.2)
    raise RuntimeError("the container's SSH port was not published")


def pin_host_key(ssh_port: int, key_path: Path, deadline_s: float = 60) -> str:
    """Wait for sshd and record the host key it shows (cloudsd pins it on first connect, too)."""
    from cloudsd.machine import SSHEndpoint
    from cloudsd.ssh import connect

    with connect(SSHEndpoint("127.0.0.1", ssh_port), key_path, None, deadline_s=deadline_s) as connection:
        return connection.host_key.text


# -- the run -------------------------------------------------------------------------------------------


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_path(forwarders: list[Forwarder], setup: Setup, ssh_port: int, sizes: Sizes, repeat: int,
                 timeout_s: float) -> dict[str, dict[str, Any]]:
    """All forwarders up at once; each measurement taken in turn for each, so a load that comes and goes
    on the machine touches both alike."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        f.name: {"download": [], "keepalive": [], "concurrent": []} for f in forwarders
    }
    counters: dict[str, dict[str, Any]] = {}
    started: list[Forwarder] = []
    try:
        for forwarder in forwarders:
            forwarder.start(setup, ssh_port)
            started.append(forwarder)
            wait_until_serving(forwarder.port, 30)
        for _ in range(repeat):
            for forwarder in forwarders:
                pid = forwarder.proc.pid if forwarder.proc else 0
                cpu_before = process_cpu_s(pid)
                result = measure_download(forwarder.port, sizes.download_bytes, timeout_s)
                result["forwarder_cpu_s_per_gb"] = (process_cpu_s(pid) - cpu_before) / sizes.download_bytes * 1e9
                runs[forwarder.name]["download"].append(result)
        for _ in range(repeat):
            for forwarder in forwarders:
                runs[forwarder.name]["keepalive"].append(
                    measure_keepalive(forwarder.port, sizes.keepalive_requests, timeout_s))
        for _ in range(repeat):
            for forwarder in forwarders:
                pid = forwarder.proc.pid if forwarder.proc else 0
                cpu_before = process_cpu_s(pid)
                result = measure_concurrent(forwarder.port, sizes.concurrent, timeout_s)
                result["forwarder_cpu_s"] = process_cpu_s(pid) - cpu_before
                runs[forwarder.name]["concurrent"].append(result)
                time.sleep(1)  # let the last connections' threads and channels wind down
    finally:
        for forwarder in started:
            counters[forwarder.name] = forwarder.stop()
    out: dict[str, dict[str, Any]] = {}
    for name, r in runs.items():
        out[name] = {
            "download_mb_per_s": statistics.median(d["mb_per_s"] for d in r["download"]),
            "download_cpu_s_per_gb": statistics.median(d["forwarder_cpu_s_per_gb"] for d in r["download"]),
            "keepalive_p50_ms": statistics.median(k["p50_ms"] for k in r["keepalive"]),
            "keepalive_p99_ms": statistics.median(k["p99_ms"] for k in r["keepalive"]),
            "concurrent_served": min(c["served"] for c in r["concurrent"]),
            "concurrent_seconds": statistics.median(c["seconds"] for c in r["concurrent"]),
            "concurrent_cpu_s": statistics.median(c["forwarder_cpu_s"] for c in r["concurrent"]),
            "runs": r,
            "forwarder_counters": counters.get(name, {}),
        }
    return out


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _cell(r: dict[str, Any] | None, key: str, fmt: str) -> str:
    return fmt.format(r[key]) if r else "-"


def _ratio_cell(cl: dict[str, Any] | None, ssh: dict[str, Any] | None, key: str) -> str:
    return f"{ratio(cl[key], ssh[key]):.2f}" if cl and ssh else "-"


def report(results: dict[str, dict[str, dict[str, Any]]], sizes: Sizes) -> tuple[str, list[dict[str, Any]]]:
    rows: list[list[str]] = []
    measures = [
        ("download MB/s", "download_mb_per_s", "{:.1f}", True),
        ("download, forwarder CPU-s/GB", "download_cpu_s_per_gb", "{:.2f}", True),
        ("keep-alive p50 ms", "keepalive_p50_ms", "{:.2f}", True),
        ("keep-alive p99 ms", "keepalive_p99_ms", "{:.2f}", True),
        (f"{sizes.concurrent} concurrent: served", "concurrent_served", "{}", False),
        (f"{sizes.concurrent} concurrent: seconds", "concurrent_seconds", "{:.2f}", True),
        (f"{sizes.concurrent} concurrent: forwarder CPU-s", "concurrent_cpu_s", "{:.2f}", True),
    ]
    with_baseline = any("baseline" in by_forwarder for by_forwarder in results.values())
    for path, by_forwarder in results.items():
        ssh, cl, base = by_forwarder.get("ssh"), by_forwarder.get("cloudsd"), by_forwarder.get("baseline")
        for label, key, fmt, with_ratio in measures:
            row = [f"{path}: {label}", _cell(ssh, key, fmt), _cell(cl, key, fmt),
                   _ratio_cell(cl, ssh, key) if with_ratio else ""]
            if with_baseline:
                row += [_cell(base, key, fmt), _ratio_cell(base, ssh, key) if with_ratio else ""]
            rows.append(row)

    goals: list[dict[str, Any]] = []
    loop_cl = results.get("loopback", {}).get("cloudsd")
    if loop_cl:
        goals.append({"goal": f"loopback keep-alive p50 <= {GOAL_KEEPALIVE_P50_MS} ms",
                      "value": round(loop_cl["keepalive_p50_ms"], 3),
                      "met": loop_cl["keepalive_p50_ms"] <= GOAL_KEEPALIVE_P50_MS})
        goals.append({"goal": f"loopback keep-alive p99 <= {GOAL_KEEPALIVE_P99_MS} ms",
                      "value": round(loop_cl["keepalive_p99_ms"], 3),
                      "met": loop_cl["keepalive_p99_ms"] <= GOAL_KEEPALIVE_P99_MS})
        goals.append({"goal": f"loopback download <= {GOAL_CPU_S_PER_GB} CPU-s/GB in the forwarder",
                      "value": round(loop_cl["download_cpu_s_per_gb"], 2),
                      "met": loop_cl["download_cpu_s_per_gb"] <= GOAL_CPU_S_PER_GB})
    rtt = results.get("rtt50", {})
    if rtt.get("cloudsd") and rtt.get("ssh"):
        r = ratio(rtt["cloudsd"]["download_mb_per_s"], rtt["ssh"]["download_mb_per_s"])
        goals.append({"goal": f"50 ms RTT download >= {GOAL_RTT_THROUGHPUT_RATIO}x ssh -N -L",
                      "value": round(r, 2), "met": r >= GOAL_RTT_THROUGHPUT_RATIO})
    for path, by_forwarder in results.items():
        cl = by_forwarder.get("cloudsd")
        if cl:
            goals.append({"goal": f"{path}: all {sizes.concurrent} concurrent connections served",
                          "value": cl["concurrent_served"], "met": cl["concurrent_served"] == sizes.concurrent})
            ssh = by_forwarder.get("ssh")
            if ssh:
                goals.append({"goal": f"{path}: {sizes.concurrent} concurrent connections no slower than ssh -N -L "
                                      f"({ssh['concurrent_seconds']:.2f} s)",
                              "value": round(cl["concurrent_seconds"], 2),
                              "met": cl["concurrent_seconds"] <= ssh["concurrent_seconds"]})

    headers = ["measure", "ssh -N -L", "cloudsd", "cloudsd / ssh"]
    if with_baseline:
        headers += ["baseline", "baseline / ssh"]
    text = table(headers, rows)
    text += "\n\ngoals:\n" + "\n".join(
        f"  [{'met' if g['met'] else 'MISSED'}] {g['goal']}: {g['value']}" for g in goals
    )
    return text, goals


def raise_fd_limit(wanted: int = 16384) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(args: argparse.Namespace) -> int:
    import docker

    sizes = Sizes.quick() if args.quick else Sizes.full()
    fd_limit = raise_fd_limit()
    if fd_limit < sizes.concurrent * 2 + 64:
        print(f"warning: only {fd_limit} file descriptors allowed", file=sys.stderr)
    require([] if args.only == "cloudsd" else ["ssh"])
    client = docker.from_env()
    remove_stale_containers(client)

    wrap = args.cloudsd_wrap.split() if args.cloudsd_wrap else None
    forwarders: list[Forwarder] = []
    if args.only in (None, "ssh"):
        forwarders.append(OpenSSHForwarder())
    if args.only in (None, "cloudsd"):
        forwarders.append(CloudsdForwarder(wrap))
    if args.baseline is not None:
        forwarders.append(CloudsdForwarder(tree=args.baseline))

    container = None
    setup: Setup | None = None
    workdir = Path(tempfile.mkdtemp(prefix="cloudsd-bench-"))
    load_before = loadavg()
    try:
        key_path, public_line = make_key(workdir)
        container = start_container(client, public_line)
        ssh_port = published_ssh_port(container)
        host_key = pin_host_key(ssh_port, key_path)
        setup = Setup(workdir, key_path, workdir / "known_hosts", host_key, ssh_port)

        paths: dict[str, int] = {"loopback": ssh_port}
        if not args.skip_rtt:
            proxy, proxy_port = spawn_proxy(("127.0.0.1", ssh_port), args.delay_ms)
            setup.processes.append(proxy)
            paths["rtt50"] = proxy_port
        setup.known_hosts.write_text("".join(f"[127.0.0.1]:{p} {host_key}\n" for p in paths.values()))

        results: dict[str, dict[str, dict[str, Any]]] = {}
        for path, port in paths.items():
            print(f"{path}: {', '.join(f.name for f in forwarders)} ...", flush=True)
            results[path] = measure_path(forwarders, setup, port, sizes, args.repeat, args.timeout)
            for name, r in results[path].items():
                print(f"  {name:8} download {r['download_mb_per_s']:.1f} MB/s "
                      f"({r['download_cpu_s_per_gb']:.2f} CPU-s/GB in the forwarder), keep-alive p50 "
                      f"{r['keepalive_p50_ms']:.2f} ms p99 {r['keepalive_p99_ms']:.2f} ms, concurrent "
                      f"{r['concurrent_served']}/{sizes.concurrent} in {r['concurrent_seconds']:.2f} s "
                      f"({r['concurrent_cpu_s']:.2f} CPU-s in the forwarder)", flush=True)

        text, goals = report(results, sizes)
        print()
        print(text)
        out = write_json("tunnel.json", {
            "benchmark": "tunnel",
            "machine": machine_info(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "options": {"quick": args.quick, "skip_rtt": args.skip_rtt, "repeat": args.repeat,
                        "delay_ms_each_way": args.delay_ms, "ssh_cipher": SSH_CIPHER,
                        "download_bytes": sizes.download_bytes, "keepalive_requests": sizes.keepalive_requests,
                        "concurrent_connections": sizes.concurrent,
                        "baseline": str(args.baseline) if args.baseline else None},
            "results": results,
            "ratios_cloudsd_over_ssh": {
                path: {k: ratio(r["cloudsd"][k], r["ssh"][k])
                       for k in ("download_mb_per_s", "download_cpu_s_per_gb", "keepalive_p50_ms", "keepalive_p99_ms",
                          "concurrent_seconds", "concurrent_cpu_s")}
                for path, r in results.items() if "cloudsd" in r and "ssh" in r
            },
            "goals": goals,
        })
        print(f"\nwrote {out}")
        return 0
    finally:
        if setup is not None:
            for proc in setup.processes:
                stop_process(proc)
        if container is not None:
            try:
                container.remove(force=True)
            except docker.errors.DockerException as exc:
                print(f"could not remove container {container.name}: {exc}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 MiB, 50 requests, 200 connections (a smoke run)")
    parser.add_argument("--skip-rtt", action="store_true", help="loopback only, no delay proxy")
    parser.add_argument("--repeat", type=int, default=1, help="repeat each measurement, report medians (default 1)")
    parser.add_argument("--only", choices=("cloudsd", "ssh"), default=None, help="measure one forwarder")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay of the proxy (default 25)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for any one measurement")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (e.g. `git archive main`) whose forwarder runs in the same rounds")
    parser.add_argument("--cloudsd-wrap", default="",
                        help="prefix for the cloudsd forward process, e.g. 'py-spy record -o prof.svg --'")
    args = parser.parse_args(argv)
    args.repeat = max(1, min(args.repeat, 20))

    # SIGTERM unwinds like Ctrl-C, so the finally blocks remove the container and the processes.
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # A shell without job control starts background jobs with SIGINT ignored; `kill -INT` should still stop us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
