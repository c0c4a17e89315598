"""The state behind the fake RunPod: a GPU catalog, pods that bill per second, and their real containers.

Transport-free: `runpod_rest_v2.py` (REST v2, served by `runpod_server.py`) drives one `FakeCloud`.
Billing: a running pod bills `running_rate` (GPU price x count + volume at $0.10/GB/month), a stopped pod bills
its volume at $0.20/GB/month, a terminated pod nothing; a month is 730 hours.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

CAPACITY_MESSAGE = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
RESUME_REFUSED_MESSAGE = "There are not enough free GPUs on the host machine to start this pod."
HOURS_PER_MONTH = 730.0
VOLUME_RUNNING_USD_PER_GB_MONTH = 0.10
VOLUME_STOPPED_USD_PER_GB_MONTH = 0.20


class CloudError(Exception):
    """A refusal the API turns into its own error shape. `code`: CAPACITY, BAD_INPUT, NOT_FOUND."""

    def __init__(self, message: str, code: str = "BAD_INPUT") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class GpuSpec:
    """One catalog row: $/GPU/h on-demand and spot per cloud; None where that cloud does not offer it."""

    id: str
    display_name: str
    memory_gb: int
    max_count: int
    secure: float | None
    community: float | None
    secure_spot: float | None
    community_spot: float | None
    cuda_cores: int = 10752

    def price(self, cloud: str, spot: bool) -> float | None:
        if cloud == "SECURE":
            return self.secure_spot if spot else self.secure
        return self.community_spot if spot else self.community


CATALOG: tuple[GpuSpec, ...] = (
    GpuSpec("NVIDIA GeForce RTX 3090", "RTX 3090", 24, 8, 0.43, 0.22, 0.23, 0.11),
    GpuSpec("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 8, 0.69, 0.34, 0.35, 0.20, 16384),
    GpuSpec("NVIDIA GeForce RTX 5090", "RTX 5090", 32, 8, 0.94, 0.69, 0.55, 0.45, 21760),
    GpuSpec("NVIDIA RTX A4000", "RTX A4000", 16, 8, 0.25, 0.17, 0.13, 0.09, 6144),
    GpuSpec("NVIDIA RTX A5000", "RTX A5000", 24, 8, 0.27, 0.16, 0.14, 0.10, 8192),
    GpuSpec("NVIDIA RTX A6000", "RTX A6000", 48, 8, 0.49, 0.33, 0.25, 0.232),
    GpuSpec("NVIDIA L4", "L4", 24, 8, 0.43, None, 0.22, None, 7424),
    GpuSpec("NVIDIA L40S", "L40S", 48, 8, 0.86, 0.79, 0.53, 0.40, 18176),
    GpuSpec("NVIDIA A100 80GB PCIe", "A100 PCIe", 80, 8, 1.64, 1.19, 0.82, 0.60, 6912),
    GpuSpec("NVIDIA A100-SXM4-80GB", "A100 SXM", 80, 8, 1.89, 1.39, 0.95, 0.70, 6912),
    GpuSpec("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 8, 2.99, 2.69, 1.75, 1.50, 16896),
    GpuSpec("NVIDIA H100 PCIe", "H100 PCIe", 80, 8, 2.39, 1.99, 1.25, 1.10, 14592),
    GpuSpec("Tesla V100-SXM2-16GB", "V100 SXM2", 16, 8, None, None, None, None, 5120),  # out of stock
)
CATALOG_BY_ID = {gpu.id: gpu for gpu in CATALOG}


@dataclass
class Faults:
    """Failure switches, settable between calls: `fake.faults.rate_limit_burst = 3`."""

    rate_limit_burst: int = 0  # the next N requests answer 429
    retry_after_s: float | None = 0.0  # Retry-After on those 429s (None: no header)
    html_502: int = 0  # the next N requests answer an HTML 502 from the "gateway"
    capacity_error: bool = False  # creates fail with RunPod's out-of-capacity error
    boot_delay_s: float = 0.0  # containers start this long after the create
    never_ready: bool = False  # containers never start: runtime stays null
    create_timeout_once: bool = False  # the next create makes the pod, then answers after create_delay_s
    create_delay_s: float = 5.0
    billing_unavailable: bool = False  # GET /v2/billing/pods answers HTTP 500
    resume_refused: bool = False  # a `start` finds the host's GPUs taken: 400, the pod stays EXITED
    rate_limit_exhausted: int = 0  # the next N answers say no request is left in the minute (RateLimit r=0)


@dataclass
class FakePod:
    id: str
    name: str
    image: str
    gpu: GpuSpec
    cloud: str  # SECURE | COMMUNITY
    gpu_count: int
    gpu_price: float  # $/GPU/h: the on-demand price, or the bid for a spot pod
    spot: bool
    env: dict[str, str]  # what the user set; the machine also gets PUBLIC_KEY and RUNPOD_* variables
    scoped_key: str  # the pod's own RUNPOD_API_KEY: may stop or terminate this pod, nothing else
    volume_gb: int = 0
    container_disk_gb: int = 10
    volume_mount_path: str = "/runpod-volume"
    ports: str = ""
    stop_after: float | None = None  # epoch seconds: the provider-side deadlines
    terminate_after: float | None = None
    created_at: float = field(default_factory=time.time)
    host_suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    status: str = "RUNNING"  # desiredStatus: RUNNING | EXITED | TERMINATED
    status_changed_at: float = field(default_factory=time.time)
    billed_usd: float = 0.0
    billed_until: float = field(default_factory=time.monotonic)
    billed_until_wall: float = field(default_factory=time.time)
    cuda_version: str | None = None  # the host's
    network_volume: str | None = None  # the network volume mounted (mounts.network), its id
    network_path: str = ""
    extra_volumes: dict[str, dict[str, str]] = field(default_factory=dict)  # named Docker volumes to mount
    # hourly buckets: bucket start (epoch) -> [gpu $, disk $]
    buckets: dict[int, list[float]] = field(default_factory=dict)

    @property
    def running_rate(self) -> float:
        """`costPerHr`: what the pod bills per hour while it runs."""
        storage = self.volume_gb * VOLUME_RUNNING_USD_PER_GB_MONTH / HOURS_PER_MONTH
        return self.gpu_price * self.gpu_count + storage

    @property
    def rate(self) -> float:
        """What the pod bills per hour in its current state."""
        if self.status == "RUNNING":
            return self.running_rate
        if self.status == "EXITED":
            return self.volume_gb * VOLUME_STOPPED_USD_PER_GB_MONTH / HOURS_PER_MONTH
        return 0.0

    @property
    def gpu_rate(self) -> float:
        return self.gpu_price * self.gpu_count if self.status == "RUNNING" else 0.0

    def accrue(self) -> None:
        now = time.monotonic()
        seconds = max(0.0, now - self.billed_until)
        self.billed_usd += self.rate * seconds / 3600.0
        self.billed_until = now
        gpu_rate, disk_rate = self.gpu_rate, self.rate - self.gpu_rate
        start, end = self.billed_until_wall, self.billed_until_wall + seconds
        while start < end:  # split the time at hour boundaries
            hour = int(start // 3600 * 3600)
            piece = min(end, hour + 3600) - start
            bucket = self.buckets.setdefault(hour, [0.0, 0.0])
            bucket[0] += gpu_rate * piece / 3600.0
            bucket[1] += disk_rate * piece / 3600.0
            start += piece
        self.billed_until_wall = end

    @property
    def uptime_s(self) -> int:
        return int(time.time() - self.status_changed_at) if self.status == "RUNNING" else 0


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_pod_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(14))


class FakeCloud:
    """Pods, billing and provider-side deadlines. `machines` is a FakeMachines, or None for records only."""

    def __init__(self, *, pub_key: str = "", balance_usd: float = 25.0, machines: Any = None) -> None:
        self.pub_key = pub_key
        self.initial_balance_usd = balance_usd
        self.machines = machines
        self.faults = Faults()
        self.pods: dict[str, FakePod] = {}
        self.lock = threading.RLock()
        self.machine_api_url: str | None = None  # the API base a machine sees (machine_api.py), if it has one
        self.actions: list[tuple[str, str, str]] = []  # (key scope: "account" or the pod id, action, pod id)

    # -- billing -------------------------------------------------------------------------------------
    def billed_usd(self, pod_id: str) -> float:
        with self.lock:
            pod = self.pods[pod_id]
            pod.accrue()
            return pod.billed_usd

    def spend_total(self) -> float:
        with self.lock:
            for pod in self.pods.values():
                pod.accrue()
            return sum(pod.billed_usd for pod in self.pods.values())

    def spend_per_hour(self) -> float:
        with self.lock:
            return sum(pod.rate for pod in self.pods.values())

    def balance_usd(self) -> float:
        return self.initial_balance_usd - self.spend_total()

    # -- pods ----------------------------------------------------------------------------------------
    def live_pods(self) -> list[FakePod]:
        """Pods not terminated: running or stopped, both still bill."""
        with self.lock:
            return [pod for pod in self.pods.values() if pod.status != "TERMINATED"]

    def find(self, pod_id: str) -> FakePod | None:
        """A pod not terminated, or None."""
        with self.lock:
            pod = self.pods.get(pod_id)
        return None if pod is None or pod.status == "TERMINATED" else pod

    def pod_for_key(self, key: str) -> FakePod | None:
        with self.lock:
            for pod in self.pods.values():
                if pod.status != "TERMINATED" and secrets.compare_digest(key, pod.scoped_key):
                    return pod
        return None

    def create_pod(
        self,
        *,
        name: str,
        image: str,
        gpu_type_id: str,
        gpu_count: int,
        cloud_type: str,
        bid_per_gpu: float | None,
        env: dict[str, str],
        **fields: Any,
    ) -> FakePod:
        """Place a pod on the cheapest cloud that has it and boot its container in the background."""
        gpu = CATALOG_BY_ID.get(gpu_type_id)
        if gpu is None:
            raise CloudError(f"Invalid GPU type: {gpu_type_id!r}")
        spot = bid_per_gpu is not None
        prices = {c: p for c in ("SECURE", "COMMUNITY") if cloud_type in (c, "ALL") and (p := gpu.price(c, spot))}
        if self.faults.capacity_error or not prices or gpu_count > gpu.max_count:
            raise CloudError(CAPACITY_MESSAGE, "CAPACITY")
        cloud = min(prices, key=lambda c: prices[c])
        if bid_per_gpu is not None and bid_per_gpu + 1e-9 < prices[cloud]:
            raise CloudError(
                f"Your bid price of ${bid_per_gpu:.3f}/hr is below the minimum bid of ${prices[cloud]:.3f}/hr."
            )
        pod = FakePod(
            id=new_pod_id(),
            name=name,
            image=image,
            gpu=gpu,
            cloud=cloud,
            gpu_count=gpu_count,
            gpu_price=prices[cloud] if bid_per_gpu is None else float(bid_per_gpu),
            spot=spot,
            env=dict(env),
            scoped_key=f"rpa_pod_{secrets.token_hex(12)}",
            **fields,
        )
        machine_env = {"PUBLIC_KEY": self.pub_key} if self.pub_key else {}
        machine_env.update(env)
        machine_env.update(
            {"RUNPOD_POD_ID": pod.id, "RUNPOD_API_KEY": pod.scoped_key, "RUNPOD_GPU_COUNT": str(gpu_count)}
        )
        if self.machine_api_url:
            machine_env["RUNPOD_API_BASE_URL"] = self.machine_api_url
        with self.lock:
            self.pods[pod.id] = pod
        if self.machines is not None:
            self.machines.boot(
                pod.id, machine_env, boot_delay_s=self.faults.boot_delay_s, never_ready=self.faults.never_ready,
                volumes=pod.extra_volumes,
            )
        return pod

    def record_action(self, scope: str, action: str, pod: FakePod) -> None:
        with self.lock:
            self.actions.append((scope, action, pod.id))

    def _set_status(self, pod: FakePod, status: str) -> None:
        with self.lock:
            pod.accrue()
            pod.status = status
            pod.status_changed_at = time.time()

    def stop_pod(self, pod: FakePod) -> None:
        if pod.status == "RUNNING":
            self._set_status(pod, "EXITED")
            if self.machines is not None:
                self.machines.stop(pod.id)

    def resume_pod(self, pod: FakePod, bid_per_gpu: float | None = None) -> None:
        if bid_per_gpu is not None:
            floor = pod.gpu.price(pod.cloud, True) or 0.0
            if bid_per_gpu + 1e-9 < floor:
                raise CloudError(f"Your bid price is below the minimum bid of ${floor:.3f}/hr.")
            with self.lock:
                pod.accrue()
                pod.gpu_price = float(bid_per_gpu)
        if pod.status != "RUNNING":
            self._set_status(pod, "RUNNING")
            if self.machines is not None:
                self.machines.start(pod.id)

    def terminate_pod(self, pod: FakePod) -> None:
        self._set_status(pod, "TERMINATED")
        if self.machines is not None:
            self.machines.remove(pod.id)

    def ssh_port(self, pod: FakePod) -> int | None:
        """The host port of the pod's sshd on 127.0.0.1, once the pod runs and its container is up."""
        if pod.status != "RUNNING" or self.machines is None:
            return None
        port: int | None = self.machines.ssh_port(pod.id)
        return port

    def enforce_deadlines(self) -> None:
        """Stop or terminate pods whose stopAfter/terminateAfter has passed (the fake's scheduler calls this)."""
        now = time.time()
        for pod in self.live_pods():
            if pod.terminate_after is not None and now >= pod.terminate_after:
                self.terminate_pod(pod)
            elif pod.stop_after is not None and now >= pod.stop_after:
                pod.stop_after = None
                self.stop_pod(pod)

    def billing_buckets(self, size_s: int, start: float, end: float, pod_id: str | None) -> list[dict[str, Any]]:
        """`GET /v2/billing/pods` records: one per pod per bucket of `size_s` (3600 or 86400) in [start, end)."""
        with self.lock:
            pods = [pod for pod in self.pods.values() if pod_id in (None, pod.id)]
            for pod in pods:
                pod.accrue()
            sums: dict[tuple[str, int], list[float]] = {}
            for pod in pods:
                for hour, (gpu, disk) in pod.buckets.items():
                    bucket = int(hour // size_s * size_s)
                    if start <= bucket < end:
                        total = sums.setdefault((pod.id, bucket), [0.0, 0.0])
                        total[0] += gpu
                        total[1] += disk
        return [
            {"startTime": _iso(bucket), "endTime": _iso(bucket + size_s), "podId": pid,
             "totalAmount": round(gpu + disk, 6), "gpuAmount": round(gpu, 6), "cpuAmount": 0.0,
             "diskAmount": round(disk, 6)}
            for (pid, bucket), (gpu, disk) in sorted(sums.items(), key=lambda item: (item[0][1], item[0][0]))
        ]

    def close(self) -> None:
        if self.machines is not None:
            self.machines.remove_all()
