"""The fake RunPod's network volumes (a mixin of the REST v2 routes), as RunPod's OpenAPI document describes them.

- `GET/POST /v2/network-volumes`, `GET/DELETE /v2/network-volumes/{id}`: bodies checked against the derived
  schema by the server (CreateNetworkVolumeRequest: name, size 10-4096, dataCenter, optional type); a data
  center that has no network storage is refused (400).
- A pod that mounts one (`mounts.network[{volumeId, path}]`) must be in the volume's data center: a create whose
  placement (its cloud's data center here: SECURE in US-TX-3, COMMUNITY in CA-MTL-1, or `dataCenterIds`) is
  elsewhere is refused with 400, as NetworkMount says ("an existing NetworkVolume in the same data center as the
  pod"). Its machine mounts a real named Docker volume at the path.
- Each volume bills $0.07/GB/month (standard tier, docs: storage/network-volumes), per second, 720-hour month,
  from create to delete; `GET /v2/billing/network-volumes` answers one record per volume per bucket.
- Deleting a volume that a pod not terminated still mounts is refused (400): cloudsd never asks for that.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

PRICE_PER_GB_MONTH = 0.07
HOURS_PER_MONTH = 720.0
DATA_CENTERS = {"US-TX-3": "US Texas 3", "CA-MTL-1": "CA Montreal 1", "EU-RO-1": "EU Romania 1"}
CLOUD_DATA_CENTER = {"SECURE": "US-TX-3", "COMMUNITY": "CA-MTL-1"}


@dataclass
class FakeNetworkVolume:
    id: str
    name: str
    size: int
    data_center: str
    type: str
    created_at: float
    docker_name: str
    deleted_at: float | None = None

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "size": self.size, "dataCenter": self.data_center,
                "type": self.type}

    def billed_between(self, start: float, end: float) -> float:
        lo, hi = max(start, self.created_at), min(end, self.deleted_at or time.time())
        return self.size * PRICE_PER_GB_MONTH * max(0.0, hi - lo) / 3600.0 / HOURS_PER_MONTH


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class NetworkVolumeRoutes:
    """Routes and placement for RestV2; state lives on the FakeCloud (`network_volumes`)."""

    cloud: Any

    @property
    def volumes(self) -> dict[str, FakeNetworkVolume]:
        if not hasattr(self.cloud, "network_volumes"):
            self.cloud.network_volumes = {}
        return self.cloud.network_volumes  # type: ignore[no-any-return]

    def volume_routes(self, route: tuple[str, str], params: dict[str, Any], q: dict[str, str],
                      body: Any) -> tuple[int, Any] | None:
        """The answer for a network-volume route, or None for any other route."""
        if route == ("get", "/v2/network-volumes"):
            return 200, {"networkVolumes": [v.view() for v in self.volumes.values() if v.deleted_at is None]}
        if route == ("post", "/v2/network-volumes"):
            return self._create_volume(body)
        if route == ("get", "/v2/billing/network-volumes"):
            return self._volume_billing(q)
        if route[1] != "/v2/network-volumes/{id}":
            return None
        volume = self.volumes.get(params["id"])
        if volume is None or volume.deleted_at is not None:
            return 404, {"title": "Not Found", "status": 404, "detail": "resource not found"}
        if route[0] == "get":
            return 200, volume.view()
        users = [p.id for p in self.cloud.live_pods() if getattr(p, "network_volume", None) == volume.id]
        if users:
            return 400, {"title": "Bad Request", "status": 400,
                         "detail": f"network volume {volume.id} is in use by pod {users[0]}"}
        volume.deleted_at = time.time()
        self._remove_docker_volume(volume)
        return 204, None

    def _create_volume(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body["dataCenter"] not in DATA_CENTERS:
            return 400, {"title": "Bad Request", "status": 400,
                         "detail": f"data center {body['dataCenter']} does not offer network volumes"}
        volume_id = secrets.token_hex(5)
        volume = FakeNetworkVolume(volume_id, body["name"], int(body["size"]), body["dataCenter"],
                                   body.get("type") or "STANDARD", time.time(), f"cloudsd-fake-runpod-vol-{volume_id}")
        self.volumes[volume_id] = volume
        return 201, volume.view()

    def placement(self, body: dict[str, Any], cloud: str) -> tuple[str | None, str | None, tuple[int, Any] | None]:
        """(volume id, mount path, refusal) of a pod create's `mounts.network`."""
        network = (body.get("mounts") or {}).get("network") or []
        if not network:
            return None, None, None
        mount = network[0]
        volume = self.volumes.get(mount["volumeId"])
        if volume is None or volume.deleted_at is not None:
            return None, None, (400, {"title": "Bad Request", "status": 400,
                                      "detail": f"network volume {mount['volumeId']} not found"})
        wanted = body.get("dataCenterIds") or [volume.data_center]
        here = CLOUD_DATA_CENTER.get(cloud)
        if here != volume.data_center or here not in wanted:
            return None, None, (400, {"title": "Bad Request", "status": 400, "detail":
                                      f"network volume {volume.id} is in data center {volume.data_center}; a pod "
                                      f"that mounts it must be placed there (this one would run in {here})"})
        return volume.id, mount["path"], None

    def volume_mounts(self, volume_id: str | None, path: str | None) -> dict[str, dict[str, str]]:
        if not volume_id or not path:
            return {}
        return {self.volumes[volume_id].docker_name: {"bind": path, "mode": "rw"}}

    def _volume_billing(self, q: dict[str, str]) -> tuple[int, Any]:
        end = datetime.fromisoformat(q["endTime"].replace("Z", "+00:00")).timestamp() if "endTime" in q \
            else time.time()
        start = datetime.fromisoformat(q["startTime"].replace("Z", "+00:00")).timestamp() if "startTime" in q \
            else end - 30 * 86400
        size = {"hour": 3600, "day": 86400}.get(q.get("bucketSize", "day"), 86400)
        records = []
        for volume in self.volumes.values():
            if q.get("networkVolumeId") not in (None, volume.id):
                continue
            bucket = start // size * size
            while bucket < end:
                amount = volume.billed_between(max(bucket, start), min(bucket + size, end))
                if amount > 0:
                    records.append({"startTime": _iso(bucket), "endTime": _iso(bucket + size),
                                    "networkVolumeId": volume.id, "totalAmount": round(amount, 8),
                                    "standardAmount": round(amount, 8), "highPerformanceAmount": 0.0})
                bucket += size
        total = round(sum(r["totalAmount"] for r in records), 8)
        return 200, {"records": records, "metadata": {
            "query": {"startTime": _iso(start), "endTime": _iso(end), "bucketSize": q.get("bucketSize", "day"),
                      "networkVolumeId": q.get("networkVolumeId")},
            "recordCount": len(records), "uniqueNetworkVolumeCount": len({r["networkVolumeId"] for r in records}),
            "totals": {"totalAmount": total, "standardAmount": total, "highPerformanceAmount": 0.0}}}

    def _remove_docker_volume(self, volume: FakeNetworkVolume) -> None:
        machines = self.cloud.machines
        if machines is None:
            return
        try:
            machines.client.volumes.get(volume.docker_name).remove(force=True)
        except Exception:  # never mounted, or already gone
            pass

    def remove_all_volumes(self) -> None:
        for volume in self.volumes.values():
            self._remove_docker_volume(volume)
