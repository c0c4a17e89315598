"""The fake Vast.ai's local volumes (a mixin of FakeVast), from Vast's published OpenAPI and official CLI.

- `POST /api/v0/volumes/search/` answers `{"offers": [VolumeOffer…]}`: one volume offer per catalog machine
  (`id`, `machine_id`, `host_id`, `disk_space` free, `storage_cost` in $/GB/month, `geolocation`, …), filtered
  and ordered as bundle searches are.
- `PUT /api/v0/volumes/ {id, size, name}` rents one: `{"success": true, "volume_name": "V.<id>"}`. Names are
  letters, digits and `_`, at most 64 (the vendor's guide); a size above the offer's free space is refused.
- `GET /api/v0/volumes?owner=me&type=…` answers `{"volumes": [Volume…]}` with the `instances` using each.
- `DELETE /api/v0/volumes/` with `id` (query, as the CLI sends it, or JSON body, as the OpenAPI says): 404
  `no_such_volume` when unknown; refused while an instance that is not destroyed uses it (the guide: "only
  work if all instances using the volume have been destroyed").
- A create with `volume_info {create_new: false, volume_id, mount_path}` mounts it; an ask on another machine is
  refused, as the guide says a volume "can only be attached to instances running on the same physical machine".
Each volume is a real named Docker volume, and bills `size × storage_cost` per month, per second, on a
720-hour month (the vendor's own $/h → $/month example), from rent to delete.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from .vast_catalog import matches, order_rows
from .vast_routes import ROUTES, ApiError

VOLUME_HOURS_PER_MONTH = 720.0
_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")

ROUTES[:0] = [  # before the instance routes; `/volumes/search/` before `/volumes/`
    ("POST", re.compile(r"/api/v0/volumes/search/?"), "volume_search"),
    ("PUT", re.compile(r"/api/v0/volumes/?"), "volume_rent"),
    ("GET", re.compile(r"/api/v0/volumes/?"), "volume_list"),
    ("DELETE", re.compile(r"/api/v0/volumes/?"), "volume_delete"),
]


@dataclass
class VastVolume:
    id: int
    offer: dict[str, Any]  # the machine's catalog row
    size_gb: int
    name: str
    created_at: float
    docker_name: str
    deleted_at: float | None = None

    @property
    def price_per_month(self) -> float:
        return float(self.size_gb * self.offer["storage_cost"])

    def billed(self, now: float | None = None) -> float:
        end = self.deleted_at or now or time.time()
        return self.price_per_month * max(0.0, end - self.created_at) / 3600.0 / VOLUME_HOURS_PER_MONTH


class VastVolumes:
    """Volume routes and state; FakeVast calls `_volume_for_create` and `_volume_mounts` from its create."""

    @property
    def volumes(self: Any) -> dict[int, VastVolume]:
        if not hasattr(self, "_volumes_state"):
            self._volumes_state = {}
        return self._volumes_state  # type: ignore[no-any-return]

    def volume_billed_usd(self: Any, volume_id: int | str) -> float:
        return float(self.volumes[int(volume_id)].billed())

    def _volume_charge_rows(self: Any, since: float, until: float | None) -> list[dict[str, Any]]:
        """`/api/v0/charges/` rows of type `volume` (the CLI's `--charge-type volume`), per second in the window."""
        now = time.time()
        rows = []
        with self._lock:
            volumes = sorted(self.volumes.values(), key=lambda v: v.id)
        for volume in volumes:
            start = max(volume.created_at, since)
            end = min(volume.deleted_at or now, until if until is not None else now)
            if end <= start:
                continue
            amount = volume.price_per_month * (end - start) / 3600.0 / VOLUME_HOURS_PER_MONTH
            rows.append({"id": volume.id, "type": "volume", "source": f"volume-{volume.id}", "start": start,
                         "end": end, "amount": round(amount, 8), "description": f"Volume {volume.id} "
                         f"({volume.size_gb} GB)", "metadata": {"label": volume.name},
                         "items": [{"type": "disk", "description": f"{volume.size_gb} GB volume",
                                    "amount": round(amount, 8)}]})
        return rows

    def _volume_offers(self: Any) -> list[dict[str, Any]]:
        offers = []
        for row in self.catalog:
            used = sum(v.size_gb for v in self.volumes.values()
                       if v.deleted_at is None and v.offer["machine_id"] == row["machine_id"])
            offers.append({
                "id": 70_000_000 + int(row["machine_id"]), "ask_contract_id": 70_000_000 + int(row["machine_id"]),
                "machine_id": row["machine_id"], "host_id": row["host_id"],
                "disk_space": float(row["disk_space"]) - used, "storage_cost": row["storage_cost"],
                "geolocation": row["geolocation"], "verified": row["verified"], "external": row["external"],
                "reliability": row["reliability"], "reliability2": row["reliability2"],
                "inet_up": row["inet_up"], "inet_down": row["inet_down"], "cuda_max_good": row["cuda_max_good"],
                "driver_version": row["driver_version"], "disk_bw": 2000.0, "duration": 90.0,
            })
        return offers

    def _api_volume_search(self: Any, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            rows = [r for r in self._volume_offers() if matches(r, body)]
        limit = int(body.get("limit") or 64)
        return 200, {"offers": order_rows(rows, body.get("order") or [["storage_cost", "asc"]])[:limit]}

    def _api_volume_rent(self: Any, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        if not isinstance(body.get("id"), int):
            raise ApiError(400, "invalid_args", "id (a volume offer id from search volumes) is required")
        size = int(body.get("size") or 15)  # the API's default
        name = str(body.get("name") or "")
        if name and not _NAME.fullmatch(name):
            raise ApiError(400, "invalid_args", "volume name must be alphanumeric with underscores, at most 64")
        with self._lock:
            offer = next((o for o in self._volume_offers() if o["id"] == body["id"]), None)
            if offer is None:
                raise ApiError(404, "no_such_ask", f"Volume offer {body['id']} is not available.")
            if size > offer["disk_space"]:
                raise ApiError(400, "invalid_args", f"size {size} GB exceeds the {offer['disk_space']:g} GB free")
            row = next(r for r in self.catalog if r["machine_id"] == offer["machine_id"])
            volume_id = self._next_id
            self._next_id += 1
            docker_name = f"cloudsd-fake-{self.owner}-vol-{volume_id}"
            self.volumes[volume_id] = VastVolume(volume_id, row, size, name, time.time(), docker_name)
        return 200, {"success": True, "volume_name": f"V.{volume_id}"}

    def _volume_view(self: Any, volume: VastVolume) -> dict[str, Any]:
        row = volume.offer
        users = [{"id": i.id} for i in self._instances.values()
                 if i.destroyed_at is None and i.volume and i.volume[0] == volume.id]
        return {
            "id": volume.id, "label": volume.name or None, "disk_space": float(volume.size_gb), "status": "online",
            "machine_id": row["machine_id"], "host_id": row["host_id"], "geolocation": row["geolocation"],
            "storage_total_cost": round(volume.price_per_month, 6), "start_date": volume.created_at,
            "instances": users, "driver_version": row["driver_version"], "cuda_max_good": row["cuda_max_good"],
            "inet_up": row["inet_up"], "inet_down": row["inet_down"], "reliability2": row["reliability2"],
            "verification": row["verification"], "public_ipaddr": row["public_ipaddr"],
        }

    def _api_volume_list(self: Any, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        kind = query.get("type", "all_volume")
        with self._lock:
            rows = [] if kind == "network_volume" else [
                self._volume_view(v) for v in sorted(self.volumes.values(), key=lambda v: v.id)
                if v.deleted_at is None]
        return 200, {"volumes": rows}

    def _api_volume_delete(self: Any, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        raw = query.get("id", body.get("id"))
        try:
            volume_id = int(raw)
        except (TypeError, ValueError):
            raise ApiError(400, "invalid_args", "Please provide a valid volume ID.") from None
        with self._lock:
            volume = self.volumes.get(volume_id)
            if volume is None or volume.deleted_at is not None:
                raise ApiError(404, "no_such_volume", "Volume with that ID does not exist.")
            if self._volume_view(volume)["instances"]:
                raise ApiError(400, "invalid_args", "All instances using the volume must be destroyed before the "
                                                    "volume can be deleted.")
            volume.deleted_at = time.time()
        self._remove_docker_volume(volume)
        return 200, {"success": True}

    # -- used by the instance create -----------------------------------------------------------------
    def _volume_for_create(self: Any, offer: dict[str, Any], body: dict[str, Any]) -> tuple[int, str] | None:
        """(volume id, mount path) of a create's `volume_info`, checked against the ask's machine."""
        info = body.get("volume_info")
        if not info:
            return None
        if not isinstance(info, dict) or info.get("create_new") or not info.get("mount_path"):
            raise ApiError(400, "invalid_args", "volume_info needs create_new false, volume_id and mount_path")
        volume = self.volumes.get(int(info.get("volume_id") or 0))
        if volume is None or volume.deleted_at is not None:
            raise ApiError(404, "no_such_volume", "Volume with that ID does not exist.")
        if volume.offer["machine_id"] != offer["machine_id"]:
            raise ApiError(400, "invalid_args", f"Volume V.{volume.id} is on machine {volume.offer['machine_id']}; "
                                                f"it can only be attached to instances on that machine.")
        return volume.id, str(info["mount_path"])

    def _volume_mounts(self: Any, volume: tuple[int, str] | None) -> dict[str, dict[str, str]]:
        if volume is None:
            return {}
        return {self.volumes[volume[0]].docker_name: {"bind": volume[1], "mode": "rw"}}

    def _remove_docker_volume(self: Any, volume: VastVolume) -> None:
        if self._machines_obj is None:
            return
        try:
            self.machines.client.volumes.get(volume.docker_name).remove(force=True)
        except Exception:  # never mounted (no instance used it), or already gone
            pass

    def _remove_all_volumes(self: Any) -> None:
        for volume in list(self.volumes.values()):
            self._remove_docker_volume(volume)
