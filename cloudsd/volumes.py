"""Plain data for volumes: storage that outlives a machine and is mounted at /workspace. Units in the names.

A volume is placed once, when it is created (a data center, one host, this computer), and a machine that uses it
must be placed there too; `Provider.volume_fits` says whether an offer is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MOUNT_PATH = "/workspace"  # where every provider mounts a volume: the UI's data folder and the agent's index
# Vendors quote storage per GB-month and bill it per hour (or second) with a 720-hour month in their examples.
HOURS_PER_MONTH = 720.0


@dataclass(frozen=True)
class VolumeRequest:
    """What to create: `cloudsd volume create NAME --size GB [--region R]`."""

    name: str
    size_gb: int
    region: str | None = None  # a data center or country; None lets the provider choose
    cuda: str | None = None  # least CUDA the host must run, where a volume is tied to one host (the image's)
    machine_disk_gb: int = 0  # room the host must also have for a machine's own disk, where tied to one host
    hosts: tuple[str, ...] = ()  # where tied to one host: only these (hosts of offers that fit the user's filters)

    @property
    def label(self) -> str:
        from cloudsd.machine import label_for  # here: `status` lists volumes without cloudsd.machine

        return label_for(self.name)


@dataclass(frozen=True)
class VolumeInfo:
    """The provider's live view of one volume."""

    provider: str
    provider_id: str
    label: str | None
    size_gb: float
    placement: str  # where it lives and machines must be: a data center id, a host's machine id, "this computer"
    price_per_gb_month: float
    used_by: tuple[str, ...] = ()  # provider ids of the machines it is attached to now
    region: str | None = None  # for people: a country or data center name

    @property
    def name(self) -> str | None:
        from cloudsd.machine import LABEL_PREFIX

        if self.label and self.label.startswith(LABEL_PREFIX):
            return self.label[len(LABEL_PREFIX):]
        return None

    @property
    def price_per_month(self) -> float:
        return self.size_gb * self.price_per_gb_month

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
