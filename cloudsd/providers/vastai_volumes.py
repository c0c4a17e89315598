"""Vast.ai volumes: a local volume lives on one machine, and only instances on that machine can mount it.

From Vast's published OpenAPI (github:vast-ai/docs `api-reference/openapi.yaml`) and its official CLI
(github:vast-ai/vast-cli `vast.py`): offers of type volume from `POST /api/v0/volumes/search/` (`storage_cost`
in $/GB/month, `machine_id`, `disk_space` free), `PUT /api/v0/volumes/ {id, size, name}` rents one (answering
`volume_name` "V.<id>", not the id), `GET /api/v0/volumes?owner=me&type=local_volume` lists them with the
`instances` using each, `DELETE /api/v0/volumes/` deletes one (the CLI sends `?id=`, the OpenAPI a JSON `id`;
both are sent), and an instance mounts one at create with `volume_info {create_new: false, volume_id,
mount_path}` on `PUT /api/v0/asks/{id}/`. A volume's name is letters, digits and `_` (at most 64), so cloudsd's
label `cloudsd-NAME` is written with `_` for `-` (names never hold `_`, so the way back is exact).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloudsd.errors import NoCapacity
from cloudsd.machine import LABEL_PREFIX, Offer, OfferSpec
from cloudsd.providers.vastai_api import parse_offers, search_body
from cloudsd.volumes import MOUNT_PATH, VolumeInfo, VolumeRequest

LABEL = "Vast.ai"
VOLUME_SEARCH_LIMIT = 64  # the API's default


def vast_name(label: str) -> str:
    return label.replace("-", "_")


def label_of(vast_volume_name: Any) -> str | None:
    text = str(vast_volume_name or "")
    label = text.replace("_", "-")
    return label if label.startswith(LABEL_PREFIX) else (text or None)


def volume_search_body(request: VolumeRequest) -> dict[str, Any]:
    """The `POST /api/v0/volumes/search/` query: verified hosts with room for the volume and a machine's disk
    beside it, cheapest first."""
    body: dict[str, Any] = {
        "verified": {"eq": True}, "external": {"eq": False},
        "disk_space": {"gte": request.size_gb + request.machine_disk_gb},
        "order": [["storage_cost", "asc"]], "limit": VOLUME_SEARCH_LIMIT, "allocated_storage": request.size_gb,
    }
    if request.region:  # a two-letter country code, as `geolocation` takes it
        body["geolocation"] = {"eq": request.region}
    if request.cuda:  # the volume's machine is every later machine's: it must run the image
        body["cuda_max_good"] = {"gte": float(request.cuda)}
    if request.hosts:  # hosts with a GPU offer that fits the user's filters now
        body["machine_id"] = {"in": [int(h) for h in request.hosts]}
    return body


def create_volume_body(offer_id: int, request: VolumeRequest) -> dict[str, Any]:
    return {"id": offer_id, "size": int(request.size_gb), "name": vast_name(request.label)}


def volume_info(volume_id: str) -> dict[str, Any]:
    """The `volume_info` of an instance create that mounts an existing volume at /workspace."""
    return {"create_new": False, "volume_id": int(volume_id), "mount_path": MOUNT_PATH}


def placed_search_body(spec: OfferSpec, machine_id: str) -> dict[str, Any]:
    """The offer search for a machine using a volume: only asks on the volume's machine."""
    return {**search_body(spec), "machine_id": {"eq": int(machine_id)}}


def parse_volume(raw: Mapping[str, Any], price_per_gb_month: float | None = None) -> VolumeInfo:
    instances = raw.get("instances") or []
    used_by = tuple(str(i.get("id") if isinstance(i, Mapping) else i) for i in instances)
    size = float(raw.get("disk_space") or 0.0)
    if price_per_gb_month is None:  # `storage_total_cost` is the volume's $/month
        total = raw.get("storage_total_cost")
        price_per_gb_month = float(total) / size if total is not None and size else 0.0
    return VolumeInfo(provider="vastai", provider_id=str(raw.get("id")), label=label_of(raw.get("label")),
                      size_gb=size, placement=str(raw.get("machine_id")), price_per_gb_month=price_per_gb_month,
                      used_by=used_by, region=raw.get("geolocation"))


class VastVolumes:
    """The volume half of VastProvider (a mixin: it uses the provider's `_call` and `_fail`)."""

    def create_volume(self: Any, request: VolumeRequest) -> VolumeInfo:
        response, body = self._call("POST", "/api/v0/volumes/search/", json=volume_search_body(request))
        if not response.is_success or not isinstance(body, dict):
            raise self._fail("volume offer search", response, body)
        offers = [o for o in body.get("offers") or [] if isinstance(o, dict)]
        if not offers:
            where = f" in {request.region}" if request.region else ""
            hosts = " on a host with a fitting GPU offer" if request.hosts else ""
            raise NoCapacity(f"{LABEL} has no volume offer with {request.size_gb} GB free{where}{hosts}.",
                             hint="Try a smaller --size, another --region or --gpu.")
        offer = offers[0]
        response, body = self._call("PUT", "/api/v0/volumes/", json=create_volume_body(int(offer["id"]), request),
                                    idempotent=False)
        if not response.is_success or not isinstance(body, dict) or body.get("success") is False:
            raise self._fail("volume create", response, body)
        mine = [v for v in self.list_volumes() if v.label == request.label]
        if not mine:
            raise self._fail(f"volume create (no volume labelled {request.label} appeared; look in the console "
                             "under Storage)", response, body)
        return mine[0]

    def list_volumes(self: Any) -> list[VolumeInfo]:
        response, body = self._call("GET", "/api/v0/volumes", params={"owner": "me", "type": "local_volume"})
        if not response.is_success or not isinstance(body, dict):
            raise self._fail("volume list", response, body)
        return [parse_volume(raw) for raw in body.get("volumes") or [] if isinstance(raw, dict)]

    def delete_volume(self: Any, provider_id: str) -> None:
        response, body = self._call("DELETE", "/api/v0/volumes/", params={"id": provider_id},
                                    json={"id": int(provider_id)})
        if response.status_code == 404:
            return  # already gone
        if not response.is_success or (isinstance(body, dict) and body.get("success") is False):
            raise self._fail(f"delete of volume {provider_id}", response, body,
                             hint="Destroy every instance using it first (`cloudsd status`).")

    def volume_billing(self: Any, since: float, until: float) -> dict[str, float]:
        """Charges of type volume (`source: volume-<id>`) from the same `/api/v0/charges/` as the instances'."""
        billed: dict[str, float] = {}
        for row in self.billing(since, until):
            if row.get("volume_id"):
                billed[str(row["volume_id"])] = billed.get(str(row["volume_id"]), 0.0) + float(row["amount_usd"])
        return billed

    def volume_offers(self: Any, spec: OfferSpec, volume: VolumeInfo) -> list[Offer]:
        response, body = self._call("POST", "/api/v0/bundles/", json=placed_search_body(spec, volume.placement))
        if not response.is_success or not isinstance(body, dict):
            raise self._fail("offer search", response, body)
        return parse_offers(body, spec)
