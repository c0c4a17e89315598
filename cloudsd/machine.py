"""Plain, frozen data passed between layers. Units are in the names."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class MachineStatus(str, enum.Enum):
    """A machine's state as cloudsd understands it, whatever the provider calls it."""

    CREATING = "creating"  # asked for; the provider has not started it yet
    BOOTING = "booting"  # the provider says it is starting (image pull, container start)
    RUNNING = "running"  # the provider says it runs; SSH may still be coming up
    STOPPED = "stopped"  # stopped but not destroyed: storage still bills
    TERMINATED = "terminated"  # gone; nothing bills
    FAILED = "failed"  # the provider gave up on it; it may still need a destroy
    UNKNOWN = "unknown"

    @property
    def bills_compute(self) -> bool:
        return self in (MachineStatus.BOOTING, MachineStatus.RUNNING)


@dataclass(frozen=True)
class OfferSpec:
    """What the user wants from an offer. Empty fields do not filter."""

    gpus: tuple[str, ...] = ()  # common names people type: "RTX 4090", "A100 80GB"
    gpu_count: int = 1
    min_vram_gb: float | None = None
    max_price_per_hour: float | None = None
    disk_gb: int = 40
    min_reliability: float | None = None
    region: str | None = None
    cuda: str | None = None  # minimum host CUDA version, "12.4"
    interruptible: bool = False
    limit: int | None = None


@dataclass(frozen=True)
class Offer:
    """One rentable machine type at a live price, normalised across providers."""

    provider: str
    offer_id: str
    gpu_name: str
    gpu_count: int
    vram_gb: float
    price_per_hour: float  # total for the machine, storage for disk_gb included
    disk_gb: int
    reliability: float | None = None
    region: str | None = None
    cuda_version: str | None = None
    download_mbps: float | None = None
    interruptible: bool = False
    storage_price_per_hour: float = 0.0  # the part of price_per_hour that still bills while stopped
    download_usd_per_gb: float | None = None  # bandwidth billed per GB where the provider does (Vast.ai)
    upload_usd_per_gb: float | None = None
    host_id: str | None = None  # the physical host, where the provider names it (a volume on one host needs it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SSHEndpoint:
    """Where a machine's sshd answers."""

    host: str
    port: int
    user: str = "root"

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class CreateRequest:
    """Everything a provider needs to start a machine from an offer."""

    name: str
    image: str
    public_key: str  # OpenSSH one-line public key, passed to the machine as PUBLIC_KEY
    env: dict[str, str] = field(default_factory=dict)
    disk_gb: int = 40
    ports: tuple[int, ...] = (22,)  # container ports to expose; cloudsd only ever needs 22
    cuda: str | None = None  # minimum host CUDA version the image needs, where the provider filters at create
    deadline_at: float | None = None  # epoch seconds; the provider ends the machine then, where it can
    onstart: str | None = None  # shell run at boot where the provider replaces the entrypoint (Vast ssh modes)
    volume_id: str | None = None  # the provider's id of a volume to mount at /workspace (`supports_volumes`)

    @property
    def label(self) -> str:
        return label_for(self.name)


LABEL_PREFIX = "cloudsd-"


def label_for(name: str) -> str:
    return f"{LABEL_PREFIX}{name}"


@dataclass(frozen=True)
class MachineInfo:
    """The provider's live view of one machine. `get` returns it without waiting."""

    provider: str
    provider_id: str
    label: str | None
    status: MachineStatus
    ssh: SSHEndpoint | None = None
    price_per_hour: float | None = None
    gpu_name: str | None = None
    image: str | None = None
    detail: str = ""  # the provider's own words about the state, for the user
    storage_price_per_hour: float | None = None  # what it bills while stopped, where the provider says

    @property
    def name(self) -> str | None:
        if self.label and self.label.startswith(LABEL_PREFIX):
            return self.label[len(LABEL_PREFIX):]
        return None
