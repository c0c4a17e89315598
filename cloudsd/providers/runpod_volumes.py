"""RunPod network volumes on REST v2, from RunPod's OpenAPI document (github:runpod/docs
`api-reference-v2/openapi.json`): pure request bodies and parsers; the provider makes the calls.

- `POST /v2/network-volumes` `{name, size, dataCenter}` (CreateNetworkVolumeRequest: size 10-4096 GB, no other
  keys) answers 201 with the NetworkVolume `{id, name, size, dataCenter, type}`; `GET /v2/network-volumes` lists
  them as `{"networkVolumes": […]}`; `DELETE /v2/network-volumes/{id}` answers 204 (404 when unknown).
- A volume lives in one data center. A pod mounts it with `mounts: {"network": [{volumeId, path}]}` (not
  beside a `persistent` mount) and must be placed there: `dataCenterIds: [its data center]`. The catalog's
  `dataCenters` (with `include=AVAILABILITY`) says which data centers have stock of a GPU type.
- Standard storage bills $0.07/GB/month for the first TB (docs: storage/network-volumes), hourly, used or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from cloudsd.errors import NoCapacity
from cloudsd.machine import LABEL_PREFIX
from cloudsd.volumes import MOUNT_PATH, VolumeInfo, VolumeRequest

PRICE_PER_GB_MONTH = 0.07  # standard tier, first TB
MIN_SIZE_GB, MAX_SIZE_GB = 10, 4096  # CreateNetworkVolumeRequest.size bounds
NO_STOCK = "NONE"


def create_volume_body(request: VolumeRequest) -> dict[str, Any]:
    """The CreateNetworkVolumeRequest. `dataCenter` is required: the caller picks one when the user did not."""
    if not request.region:
        raise ValueError("a RunPod network volume needs a data center")
    return {"name": request.label, "size": int(request.size_gb), "dataCenter": request.region}


def parse_volume(raw: Mapping[str, Any], used_by: tuple[str, ...] = ()) -> VolumeInfo:
    size = float(raw.get("size") or 0)
    per_gb = PRICE_PER_GB_MONTH
    return VolumeInfo(provider="runpod", provider_id=str(raw.get("id")), label=str(raw.get("name") or "") or None,
                      size_gb=size, placement=str(raw.get("dataCenter") or ""), price_per_gb_month=per_gb,
                      used_by=used_by, region=str(raw.get("dataCenter") or "") or None)


def network_mount(volume_id: str) -> dict[str, Any]:
    """`mounts` of a pod that uses the volume at /workspace (instead of a persistent volume disk)."""
    return {"network": [{"volumeId": volume_id, "path": MOUNT_PATH}]}


def pod_volume_id(pod: Mapping[str, Any]) -> str | None:
    network = ((pod.get("mounts") or {}).get("network") or []) if isinstance(pod.get("mounts"), Mapping) else []
    first = network[0] if network and isinstance(network[0], Mapping) else {}
    return str(first["volumeId"]) if first.get("volumeId") else None


def in_stock_at(gpu: Mapping[str, Any], data_center: str) -> bool:
    """Whether the catalog row has stock of its GPU in `data_center` (its `dataCenters` availability)."""
    for row in gpu.get("dataCenters") or []:
        if isinstance(row, Mapping) and row.get("id") == data_center:
            return row.get("availability") not in (None, NO_STOCK)
    return False


def data_centers_with_stock(gpus: list[Mapping[str, Any]]) -> list[str]:
    """Data centers with stock of any of these GPU types, the most-stocked first (for a volume without --region)."""
    order = {"HIGH": 0, "MEDIUM": 1, "LOW": 2}
    best: dict[str, int] = {}
    for gpu in gpus:
        for row in gpu.get("dataCenters") or []:
            if isinstance(row, Mapping) and row.get("availability") in order and row.get("id"):
                rank = order[str(row["availability"])]
                best[str(row["id"])] = min(rank, best.get(str(row["id"]), rank))
    return sorted(best, key=lambda dc: (best[dc], dc))


class RunPodVolumes:
    """The volume half of RunPodProvider (a mixin over its `_api`, the REST v2 transport)."""

    _api: Any

    def create_volume(self, request: VolumeRequest) -> VolumeInfo:
        if not request.region:  # a data center with stock of some GPU now, the best stocked first
            rows = self._api.gpu_types("SECURE", 1, request.cuda)
            found = data_centers_with_stock(rows)
            if not found:
                raise NoCapacity("RunPod lists no data center with GPUs in stock for a network volume.",
                                 hint="Name one with --region (a data center id such as US-TX-3).")
            request = replace(request, region=found[0])
        size = min(max(int(request.size_gb), MIN_SIZE_GB), MAX_SIZE_GB)  # the API's bounds
        volume = self._api.create_network_volume(create_volume_body(replace(request, size_gb=size)))
        return parse_volume(volume)

    def list_volumes(self) -> list[VolumeInfo]:
        users: dict[str, list[str]] = {}
        for pod in self._api.pods():
            volume_id = pod_volume_id(pod)
            if volume_id and pod.get("status") != "TERMINATED":
                users.setdefault(volume_id, []).append(str(pod.get("id")))
        return [parse_volume(v, tuple(users.get(str(v.get("id")), ())))
                for v in self._api.network_volumes() if str(v.get("name") or "").startswith(LABEL_PREFIX)]

    def delete_volume(self, provider_id: str) -> None:
        self._api.delete_network_volume(provider_id)  # a 404 is gone already: quiet

    def volume_billing(self, since: float, until: float) -> dict[str, float]:
        billed: dict[str, float] = {}
        for record in self._api.billing_network_volumes(since, until):
            volume_id = str(record.get("networkVolumeId") or "")
            amount = record.get("totalAmount")
            if volume_id and isinstance(amount, (int, float)):
                billed[volume_id] = billed.get(volume_id, 0.0) + float(amount)
        return billed
