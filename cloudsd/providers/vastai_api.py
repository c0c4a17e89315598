"""Vast.ai's wire format: request bodies built and responses parsed by small pure functions.

Only this module and `vastai.py` know Vast's JSON. Shapes follow the reference (provider-apis.md §4):
`gpu_ram` in MB, `storage_cost` in $/GB/month, `dph_total` already including storage for
`allocated_storage`, ports as `{"22/tcp": [{"HostIp": …, "HostPort": "41022"}]}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloudsd.gpus import canonical_gpu_name
from cloudsd.machine import CreateRequest, MachineInfo, MachineStatus, Offer, OfferSpec, SSHEndpoint

PROVIDER = "vastai"
DEFAULT_BASE_URL = "https://console.vast.ai"
KEY_ENV = "VAST_API_KEY"
URL_ENV = "VAST_URL"
HOURS_PER_MONTH = 720.0  # Vast's published examples convert $/GB/month at 720 hours
SEARCH_LIMIT = 500
RUNTYPE = "ssh_direc ssh_proxy"  # the SDK's spelling: ssh with a direct port, proxy as fallback
CONSOLE_URL = "https://cloud.vast.ai/instances/"

# Errors that mean "this offer cannot be had now; try the next one".
CAPACITY_ERRORS = frozenset({"no_such_ask", "ask_not_available", "insufficient_bid", "insufficient_resources"})
CAPACITY_WORDS = ("not available", "no longer available", "unavailable", "insufficient", "already rented")
GONE_ERRORS = frozenset({"no_such_instance", "not_found", "instance_not_found"})
FAILURE_MARKERS = ("oci runtime create failed", "error response from daemon", "failed to create task")


# -- the key ----------------------------------------------------------------------------------------------
# Where the key is found is `credentials.VAST_KEY` (so `status` can ask without importing this module).
def key_hint(source: str, last4: str) -> str:
    return (f"The key ending …{last4} came from {source}. Set {KEY_ENV} to a valid key, or write one to "
            "~/.config/vastai/vast_api_key (https://cloud.vast.ai/manage-keys/).")


# -- offers ----------------------------------------------------------------------------------------------
def search_body(spec: OfferSpec) -> dict[str, Any]:
    """The `POST /api/v0/bundles/` query for `spec`.

    Only what cloudsd needs to use an offer at all is filtered here; GPU, VRAM, price, reliability, region
    and CUDA are left to the core, which filters one by one and can say which filter emptied the list.
    """
    return {
        "rentable": {"eq": True},
        "verified": {"eq": True},
        "external": {"eq": False},
        "rented": {"eq": False},
        "num_gpus": {"eq": spec.gpu_count},
        "direct_port_count": {"gte": 1},  # direct SSH needs a port mapped straight to the host
        "disk_space": {"gte": spec.disk_gb},  # a host that cannot hold the disk cannot take the create
        "order": [["dph_total", "asc"]],
        "type": "bid" if spec.interruptible else "on-demand",
        "limit": SEARCH_LIMIT,
        "allocated_storage": float(spec.disk_gb),
    }


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def vram_gb(gpu_ram_mb: Any) -> float:
    """Vast reports memory in MB (MiB); people read whole GB: 24564 -> 24.0, 81559 -> 80.0."""
    mb = _float(gpu_ram_mb) or 0.0
    return float(round(mb / 1024))


def parse_offer(raw: Mapping[str, Any], spec: OfferSpec) -> Offer | None:
    """One search result as an Offer priced for `spec.disk_gb`; None if it lacks what cloudsd needs."""
    try:
        offer_id = str(int(raw["id"]))
        gpu_name = str(raw["gpu_name"])
        gpu_count = int(raw.get("num_gpus") or 0)
    except (KeyError, TypeError, ValueError):
        return None
    storage_per_hour = (_float(raw.get("storage_cost")) or 0.0) * spec.disk_gb / HOURS_PER_MONTH
    if spec.interruptible:
        min_bid = _float(raw.get("min_bid"))
        price = None if min_bid is None else min_bid + storage_per_hour
    else:
        price = _float(raw.get("dph_total"))
    if price is None or gpu_count < 1:
        return None
    cuda = _float(raw.get("cuda_max_good"))
    return Offer(
        provider=PROVIDER,
        offer_id=offer_id,
        gpu_name=canonical_gpu_name(gpu_name),
        gpu_count=gpu_count,
        vram_gb=vram_gb(raw.get("gpu_ram")),
        price_per_hour=price,
        disk_gb=spec.disk_gb,
        reliability=_float(raw.get("reliability", raw.get("reliability2"))),
        region=(str(raw["geolocation"]).strip() or None) if raw.get("geolocation") else None,
        cuda_version=None if cuda is None else str(cuda),
        download_mbps=_float(raw.get("inet_down")),
        interruptible=spec.interruptible,
        storage_price_per_hour=storage_per_hour,
        download_usd_per_gb=_float(raw.get("inet_down_cost")),
        upload_usd_per_gb=_float(raw.get("inet_up_cost")),
        host_id=None if raw.get("machine_id") is None else str(raw["machine_id"]),
    )


def parse_offers(body: Any, spec: OfferSpec) -> list[Offer]:
    rows = body.get("offers") if isinstance(body, dict) else None
    offers = [o for o in (parse_offer(r, spec) for r in rows or [] if isinstance(r, dict)) if o is not None]
    return sorted(offers, key=lambda o: (o.price_per_hour, o.offer_id))


# -- create ----------------------------------------------------------------------------------------------
def bid_price(offer: Offer) -> float | None:
    """The $/h bid for an interruptible offer (its minimum bid, storage excluded); None for on-demand."""
    if not offer.interruptible:
        return None
    return round(offer.price_per_hour - offer.storage_price_per_hour, 6)


def create_body(offer: Offer, request: CreateRequest) -> dict[str, Any]:
    """The `PUT /api/v0/asks/{id}/` body. Every key the SDK sends is present, so nothing is left to defaults."""
    env: dict[str, str] = {f"-p {port}:{port}": "1" for port in request.ports}
    env.update({str(k): str(v) for k, v in request.env.items()})
    env["PUBLIC_KEY"] = request.public_key
    return {
        "client_id": "me",
        "image": request.image,
        "env": env,
        "price": bid_price(offer),
        "disk": request.disk_gb,  # explicit: the API's default is 8 GB
        "label": request.label,
        "extra": None,
        "onstart": request.onstart,
        "image_login": None,
        "python_utf8": False,
        "lang_utf8": False,
        "use_jupyter_lab": False,
        "jupyter_dir": None,
        "force": False,
        "cancel_unavail": True,  # never leave a stopped instance when the host lacks resources
        "template_hash_id": None,
        "user": None,
        "runtype": RUNTYPE,
    }


# -- errors ----------------------------------------------------------------------------------------------
def error_code(body: Any) -> str:
    return str(body.get("error") or "") if isinstance(body, dict) else ""


def error_message(body: Any, fallback: str = "") -> str:
    """The server's own words, on one line."""
    if isinstance(body, dict):
        for key in ("msg", "message", "error"):
            if isinstance(body.get(key), str) and body[key].strip():
                return " ".join(body[key].split())
    return fallback


def is_capacity_error(body: Any) -> bool:
    message = error_message(body).lower()
    return error_code(body) in CAPACITY_ERRORS or any(word in message for word in CAPACITY_WORDS)


def is_gone_error(status: int, body: Any) -> bool:
    return status == 404 or error_code(body) in GONE_ERRORS


# -- instances -------------------------------------------------------------------------------------------
def ssh_endpoint(raw: Mapping[str, Any]) -> SSHEndpoint | None:
    """Direct SSH: `public_ipaddr` and the host port mapped to the container's 22/tcp."""
    host = str(raw.get("public_ipaddr") or "").strip()
    mappings = (raw.get("ports") or {}).get("22/tcp") if isinstance(raw.get("ports"), dict) else None
    if not host or not mappings or not isinstance(mappings, list) or not isinstance(mappings[0], dict):
        return None
    try:
        port = int(mappings[0]["HostPort"])
    except (KeyError, TypeError, ValueError):
        return None
    return SSHEndpoint(host=host, port=port, user="root")


def machine_status(raw: Mapping[str, Any], *, fresh: bool = False) -> MachineStatus | None:
    """cloudsd's status for an instance; None when Vast says it is destroyed.

    `fresh` means cloudsd created it and has not yet seen it run: then a terminal state is a failed boot.
    """
    actual = (raw.get("actual_status") or "").strip().lower() or None
    message = str(raw.get("status_msg") or "").lower()
    if actual == "destroyed" or raw.get("cur_state") == "destroyed":
        return None
    if any(marker in message for marker in FAILURE_MARKERS) and actual not in ("running", "loading"):
        return MachineStatus.FAILED
    if actual in (None, "loading", "scheduling", "created", "rebooting", "starting"):
        return MachineStatus.BOOTING
    if actual == "running":
        return MachineStatus.RUNNING if ssh_endpoint(raw) else MachineStatus.BOOTING
    if actual in ("stopped", "exited", "frozen"):
        if fresh and (actual != "stopped" or raw.get("intended_status") == "running"):
            return MachineStatus.FAILED
        return MachineStatus.STOPPED
    if actual in ("offline", "unknown") and fresh:
        return MachineStatus.FAILED
    return MachineStatus.UNKNOWN


def status_detail(raw: Mapping[str, Any]) -> str:
    detail = " ".join(str(raw.get("status_msg") or "").split())
    if (raw.get("is_bid") and raw.get("actual_status") == "stopped"
            and raw.get("intended_status") == raw.get("cur_state") == raw.get("next_state") == "stopped"):
        detail = (detail + " " if detail else "") + "(outbid: the host gave it to a higher bid)"
    return detail


def parse_instance(raw: Mapping[str, Any], *, fresh: bool = False) -> MachineInfo | None:
    status = machine_status(raw, fresh=fresh)
    if status is None:
        return None
    gpu = raw.get("gpu_name")
    return MachineInfo(
        provider=PROVIDER,
        provider_id=str(raw.get("id")),
        label=raw.get("label") or None,
        status=status,
        ssh=ssh_endpoint(raw) if status is MachineStatus.RUNNING else None,
        price_per_hour=_float(raw.get("dph_total")),
        gpu_name=canonical_gpu_name(str(gpu)) if gpu else None,
        image=raw.get("image_uuid") or None,
        detail=status_detail(raw),
        storage_price_per_hour=storage_per_hour(raw),
    )


def storage_per_hour(raw: Mapping[str, Any]) -> float | None:
    """What a stopped instance bills per hour: its own `storage_total_cost` where given, else `storage_cost`
    ($/GB/month) x `disk_space` (GB) over a 720-hour month."""
    given = _float(raw.get("storage_total_cost"))
    if given is not None and given > 0:
        return round(given, 6)
    per_gb_month, disk_gb = _float(raw.get("storage_cost")), _float(raw.get("disk_space"))
    if per_gb_month is None or disk_gb is None:
        return None
    return round(per_gb_month * disk_gb / HOURS_PER_MONTH, 6)


# -- account and billing ---------------------------------------------------------------------------------
def parse_account(body: Any) -> dict[str, Any]:
    """Balance and credit only: `users/current` also carries the API key, which must not travel further."""
    body = body if isinstance(body, dict) else {}
    return {"balance_usd": _float(body.get("balance")), "credit_usd": _float(body.get("credit")),
            "email": body.get("email"), "user_id": body.get("id")}


def parse_charge(raw: Mapping[str, Any]) -> dict[str, Any]:
    """One `/api/v0/charges/` row: the instance only in `source` ("instance-<id>"), the label under
    `metadata.label`, `amount` rounded to 3 decimals, `items` typed gpu/disk/bwd/bwu."""
    source = str(raw.get("source") or "")
    instance_id = source.split("-", 1)[1] if source.startswith("instance-") else None
    metadata = raw["metadata"] if isinstance(raw.get("metadata"), dict) else {}
    return {
        "provider": PROVIDER,
        "provider_id": instance_id,
        "label": metadata.get("label"),
        "kind": raw.get("type"),
        "start": _float(raw.get("start")),
        "end": _float(raw.get("end")),
        "amount_usd": _float(raw.get("amount")) or 0.0,
        "description": raw.get("description") or "",
        "volume_id": source.split("-", 1)[1] if source.startswith("volume-") else None,  # a volume's storage
    }
