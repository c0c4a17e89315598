"""The fake Vast.ai's routes (a mixin of FakeVast) and its instance record.

Every handler takes the path's groups plus `query`/`body` keywords and returns `(status, json)`, or raises
`ApiError`, which the server turns into `{"success": false, "error": …, "msg": …}`.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .vast_catalog import HOURS_PER_MONTH, QueryError, matches, order_rows, search

OCI_FAILURE = (
    "Error response from daemon: failed to create task for container: failed to create shim task: "
    "OCI runtime create failed: runc create failed: unable to start container process: exec: "
    '"/start.sh": stat /start.sh: no such file or directory: unknown'
)

ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern), name)
    for method, pattern, name in [
        ("POST", r"/api/v0/bundles/?", "search_body"),
        ("GET", r"/api/v0/bundles/?", "search_get"),
        ("PUT", r"/api/v0/search/asks/", "search_put"),
        ("PUT", r"/api/v0/asks/(\d+)/", "create"),
        ("GET", r"/api/v1/instances/", "instances_v1"),
        ("GET", r"/api/v0/instances/", "instances_v0"),
        ("GET", r"/api/v0/instances/(\d+)/", "instance_get"),
        ("PUT", r"/api/v0/instances/(\d+)/", "instance_put"),
        ("DELETE", r"/api/v0/instances/(\d+)/", "instance_delete"),
        ("PUT", r"/api/v0/instances/reboot/(\d+)/", "reboot"),
        ("PUT", r"/api/v0/instances/bid_price/(\d+)/", "bid_price"),
        ("POST", r"/api/v0/instances/(\d+)/ssh/", "instance_ssh"),
        ("PUT", r"/api/v0/instances/request_logs/(\d+)/", "request_logs"),
        ("PUT", r"/api/v0/instances/command/(\d+)/", "command"),
        ("POST", r"/api/v0/ssh/", "account_keys_add"),
        ("GET", r"/api/v0/ssh/", "account_keys"),
        ("GET", r"/api/v0/users/current/?", "user"),
        ("GET", r"/api/v0/users/me/invoices/?", "invoices_v0"),
        ("GET", r"/api/v1/invoices/", "invoices_v1"),
        ("GET", r"/api/v0/charges/", "charges"),
    ]
]


class ApiError(Exception):
    def __init__(self, status: int, error: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status, self.error, self.msg, self.extra = status, error, msg, extra


@dataclass
class VastInstance:
    """One instance as the fake keeps it; `segments` are its billing intervals."""

    id: int
    offer: dict[str, Any]
    label: str | None
    image: str
    env: dict[str, str]
    onstart: str | None
    runtype: str
    disk_gb: float
    bid: float | None
    container_key: str
    created_at: float
    intended: str = "running"
    backed: bool = True  # a container stands behind it
    failure: str | None = None
    host_port: int | None = None
    ssh_keys: list[str] = field(default_factory=list)
    keys_installed: int = 0
    destroyed_at: float | None = None
    segments: list[list[Any]] = field(default_factory=list)  # [kind, start, end | None, $/h]
    volume: tuple[int, str] | None = None  # (volume id, mount path) from the create's volume_info

    @property
    def storage_per_hour(self) -> float:
        return float(self.offer["storage_cost"]) * self.disk_gb / HOURS_PER_MONTH

    @property
    def dph_total(self) -> float:
        compute = self.bid if self.bid is not None else float(self.offer["dph_base"])
        return compute + self.storage_per_hour

    def switch(self, kind: str | None, now: float) -> None:
        """Close the open billing interval and open one of `kind` ("running"/"stopped"), or none (destroyed)."""
        if self.segments and self.segments[-1][2] is None:
            self.segments[-1][2] = now
        if kind is not None:
            self.segments.append([kind, now, None, self.dph_total if kind == "running" else self.storage_per_hour])

    def billed(self, since: float, until: float | None) -> tuple[float, float, float, float]:
        """(total $, compute part $, first second billed, last second billed) inside [since, until]."""
        now = time.time()
        limit = now if until is None else min(until, now)
        total = compute = 0.0
        first, last = float("inf"), 0.0
        for kind, start, end, rate in self.segments:
            lo, hi = max(start, since), min(end if end is not None else now, limit)
            if hi <= lo:
                continue
            hours = (hi - lo) / 3600.0
            total += rate * hours
            if kind == "running":
                compute += (rate - self.storage_per_hour) * hours
            first, last = min(first, lo), max(last, hi)
        return total, compute, first, last


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"values": {"offset": offset}, "os_page": 0}).encode()).decode()


def decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(token.encode()))["values"]["offset"])
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "invalid_args", "after_token is not a valid token") from None


def _json_param(query: dict[str, str], name: str, default: Any) -> Any:
    try:
        return json.loads(query[name]) if query.get(name) else default
    except ValueError:
        raise ApiError(400, "invalid_args", f"{name} is not valid JSON") from None


def _page(rows: list[Any], query: dict[str, str], default_limit: int) -> tuple[list[Any], str | None]:
    try:
        limit = max(1, min(int(query.get("limit") or default_limit), 100))
    except ValueError:
        raise ApiError(400, "invalid_args", "limit must be a number") from None
    offset = decode_token(query.get("after_token"))
    nxt = encode_token(offset + limit) if offset + limit < len(rows) else None
    return rows[offset: offset + limit], nxt


class VastRoutes:
    """Route handlers of FakeVast. `self` is the FakeVast (its state, lock, machines and model helpers)."""

    # -- offers --------------------------------------------------------------------------------------
    def _api_search_body(self, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return self._search(body)

    def _api_search_get(self, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return self._search(_json_param(query, "q", {}))

    def _api_search_put(self, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return self._search(body.get("q") or {})

    def _search(self: Any, q: Any) -> tuple[int, Any]:
        if self.faults.search_quota_exceeded:
            raise ApiError(429, "search_quota_exceeded", "You have used your daily search quota; it resets at 00:00 UTC.")
        if not isinstance(q, dict):
            raise ApiError(400, "invalid_args", "the search query must be a JSON object")
        try:
            with self._lock:
                return 200, {"offers": search(self.catalog, q)}
        except (QueryError, ValueError, TypeError) as exc:
            raise ApiError(400, "invalid_args", str(exc)) from None

    # -- create --------------------------------------------------------------------------------------
    def _api_create(self: Any, ask_id: str, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        if not body.get("image"):
            raise ApiError(400, "invalid_args", "image is required")
        if not isinstance(body.get("env") or {}, dict):
            raise ApiError(400, "invalid_args", "env must be an object of docker options and variables")
        if self.faults.create_forbidden:
            raise ApiError(403, "forbidden", f"Offer {ask_id} is not available to this account.")
        with self._lock:
            offer = self._offers.get(int(ask_id))
            if self.faults.capacity_error or offer is None or offer["rented"] or not offer["rentable"]:
                raise ApiError(404, "no_such_ask", f"Instance type by id {ask_id} is not available.")
            disk = body.get("disk")
            if disk is not None and float(disk) > float(offer["disk_space"]):
                raise ApiError(400, "invalid_args", f"disk {disk} GB exceeds the {offer['disk_space']} GB available")
            volume = self._volume_for_create(offer, body)
            price = body.get("price")
            low_bid = price is not None and float(price) < float(offer["min_bid"])
            inst = self._new_instance(offer, body)
            inst.volume = volume
            if self.faults.create_errors_but_creates or low_bid:
                inst.intended, inst.backed = "stopped", False
                inst.switch("stopped", time.time())
                raise ApiError(
                    400, "insufficient_bid",
                    f"Your bid is below the current minimum of ${offer['min_bid']}/hr for ask {ask_id}; the "
                    "instance was created stopped and will start when the price allows.",
                    new_contract=inst.id,
                )
            if self.faults.oci_failure:
                inst.backed, inst.failure = False, OCI_FAILURE
                inst.switch("stopped", time.time())
            elif self.faults.never_ready:
                inst.backed = False
            delay, self.faults.create_timeout_once = self.faults.create_timeout_once, 0.0
        if inst.backed:
            self._boot(inst)
        if delay:
            time.sleep(delay)
        return 200, {"success": True, "new_contract": inst.id}

    # -- instances -----------------------------------------------------------------------------------
    def _api_instances_v1(self: Any, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        filters = _json_param(query, "select_filters", {})
        order_by = _json_param(query, "order_by", [{"col": "id", "dir": "asc"}])
        with self._lock:
            live = [i for i in self._instances.values() if i.destroyed_at is None]
        rows = [self._view(i) for i in live]
        try:
            rows = [r for r in rows if matches(r, filters, skip=frozenset())]
            rows = order_rows(rows, [[o["col"], o.get("dir", "asc")] for o in order_by])
        except (QueryError, KeyError, TypeError) as exc:
            raise ApiError(400, "invalid_args", f"bad select_filters or order_by: {exc}") from None
        page, nxt = _page(rows, query, 25)
        return 200, {"instances": page, "next_token": nxt, "total_instances": len(rows)}

    def _api_instances_v0(self, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        raise ApiError(410, "gone", "This endpoint is retired; use GET /api/v1/instances/.")

    def _api_instance_get(self: Any, inst_id: str, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"instances": self._view(self._get(inst_id))}

    def _api_instance_put(self: Any, inst_id: str, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        inst = self._get(inst_id)
        state = body.get("state")
        if not body or state not in (None, "running", "stopped"):
            raise ApiError(400, "invalid_args", "expected {'state': 'running'|'stopped'} or {'label': …}")
        if "label" in body:
            inst.label = None if body["label"] is None else str(body["label"])
        if state == "running" and inst.intended == "stopped" and self.faults.resume_refused:
            raise ApiError(400, "insufficient_resources",
                           "Required resources are not available on this machine: its GPU is rented by another client.")
        if state and state != inst.intended:
            waiting = state == "running" and inst.id in self.hosts_taken
            with self._lock:
                inst.intended = state
                if not waiting:  # a start the host cannot honour waits in "scheduling", billing only storage
                    inst.switch(state, time.time())
            if inst.backed and not waiting:
                (self.machines.stop if state == "stopped" else self.machines.start)(str(inst.id))
        return 200, {"success": True}

    def _api_instance_delete(self: Any, inst_id: str, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        inst = self._get(inst_id)
        with self._lock:
            inst.destroyed_at = time.time()
            inst.switch(None, inst.destroyed_at)
            inst.offer["rented"], inst.offer["rentable"] = False, True
        if inst.backed:
            self.machines.remove(str(inst.id))
        return 200, {"success": True}

    def _api_reboot(self: Any, inst_id: str, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        inst = self._get(inst_id)
        if inst.backed:
            self.machines.stop(str(inst.id))
            self.machines.start(str(inst.id))
        return 200, {"success": True}

    def _api_bid_price(self: Any, inst_id: str, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        inst = self._get(inst_id)
        try:
            price = float(body["price"])
        except (KeyError, TypeError, ValueError):
            raise ApiError(400, "invalid_args", "price is required") from None
        with self._lock:
            inst.bid = price
            inst.switch(inst.segments[-1][0] if inst.segments else inst.intended, time.time())
        return 200, {"success": True}

    def _api_instance_ssh(self: Any, inst_id: str, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        inst = self._get(inst_id)
        key = str(body.get("ssh_key") or "").strip()
        if not key.startswith(("ssh-", "ecdsa-", "sk-")):
            raise ApiError(400, "invalid_args", "ssh_key must be an OpenSSH public key")
        inst.ssh_keys.append(key)
        if inst.backed and self.machines.state(str(inst.id)) == "running":
            self._install_keys(inst)
        return 200, {"success": True, "msg": f"SSH key attached to instance {inst.id}."}

    def _api_request_logs(self: Any, inst_id: str, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        inst = self._get(inst_id)
        token = secrets.token_urlsafe(12)
        self._results[token] = ("logs", inst.id, str(body.get("tail") or "1000"))
        return 200, {"success": True, "result_url": f"{self.base_url}/logs/{token}.txt", "msg": "Logs requested."}

    def _api_command(self: Any, inst_id: str, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        inst = self._get(inst_id)
        command = str(body.get("command") or "")
        output = ""
        if inst.backed and command:
            try:
                output = self.machines.exec(str(inst.id), ["sh", "-c", command])[1]
            except RuntimeError as exc:
                output = str(exc)
        token = secrets.token_urlsafe(12)
        self._results[token] = ("text", inst.id, output)
        return 200, {"success": True, "result_url": f"{self.base_url}/logs/{token}.txt"}

    def _serve_log(self: Any, req: Any, name: str) -> None:
        entry = self._results.get(name.removesuffix(".txt"))
        if entry is None:
            return req.send(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
        kind, inst_id, value = entry
        text = value if kind == "text" else ""
        if kind == "logs" and self._machines_obj is not None:
            container_id = self._machines_obj.container_id(str(inst_id))
            if container_id:
                try:
                    raw = self._machines_obj.client.containers.get(container_id).logs(tail=int(value))
                    text = raw.decode(errors="replace")
                except Exception:  # the container is gone: an empty log, as Vast serves one
                    text = ""
        req.send(200, text.encode(), "text/plain")

    # -- account -------------------------------------------------------------------------------------
    def _api_account_keys_add(self: Any, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        key = str(body.get("ssh_key") or "").strip()
        if not key.startswith(("ssh-", "ecdsa-", "sk-")):
            raise ApiError(400, "invalid_args", "ssh_key must be an OpenSSH public key")
        with self._lock:
            self.account_keys.append(key)
            live = [i for i in self._instances.values() if i.destroyed_at is None]
        for inst in live:
            inst.ssh_keys.append(key)
        return 200, {"success": True, "key": {"id": len(self.account_keys), "public_key": key}}

    def _api_account_keys(self: Any, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return 200, [{"id": n + 1, "public_key": k} for n, k in enumerate(self.account_keys)]

    def _api_user(self: Any, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return 200, {
            "id": 424242, "username": "cloudsd-fake", "email": "fake@example.invalid", "fullname": "Fake User",
            "balance": 0.0, "credit": round(self.starting_credit - self.total_billed_usd(), 6),
            "ssh_key": self.account_keys[0] if self.account_keys else None, "api_key": self.api_key,
            "has_billing": True, "can_pay": True,
        }

    def _charge_rows(self: Any, since: float, until: float | None) -> list[dict[str, Any]]:
        if self.faults.billing_unavailable:
            raise ApiError(500, "server_error", "billing is temporarily unavailable")
        rows = []
        with self._lock:
            instances = sorted(self._instances.values(), key=lambda i: i.id)
        for inst in instances:
            total, compute, first, last = inst.billed(since, until)
            if total <= 0:
                continue
            gpu = f"{inst.offer['num_gpus']}x {inst.offer['gpu_name']}"
            rows.append({  # the shape of Vast's OpenAPI `/api/v0/charges` (github:vast-ai/docs openapi.yaml)
                "type": "instance", "source": f"instance-{inst.id}",
                "description": f"Instance {inst.id} Charges ({gpu})", "start": int(first), "end": int(last),
                "amount": round(total, 3),
                **({"metadata": {"label": inst.label}} if inst.label else {}),
                "items": [
                    {"start": int(first), "end": int(last), "type": "gpu", "source": None,
                     "description": f"{gpu} compute", "amount": round(compute, 3)},
                    {"start": int(first), "end": int(last), "type": "disk", "source": None,
                     "description": f"{inst.disk_gb:g} GB disk", "amount": round(total - compute, 3)},
                ],
            })
        return rows + self._volume_charge_rows(since, until)

    def _api_charges(self, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        day = (_json_param(query, "select_filters", {}) or {}).get("day") or {}
        until = day.get("lte")
        rows = self._charge_rows(float(day.get("gte") or 0), float(until) if until is not None else None)
        if query.get("latest_first") in ("true", "True", "1"):
            rows.reverse()
        page, nxt = _page(rows, query, 20)
        return 200, {"results": page, "count": len(page), "total": len(rows), "next_token": nxt}

    def _api_invoices_v0(self: Any, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        try:
            since = float(query.get("sdate") or 0)
            until = float(query["edate"]) if query.get("edate") else None
        except ValueError:
            raise ApiError(400, "invalid_args", "sdate/edate must be epoch seconds") from None
        rows = self._charge_rows(since, until)
        invoices = [
            {"type": "charge", "instance_id": int(r["source"].split("-", 1)[1]), "amount": r["amount"], "timestamp": r["end"],
             "description": r["description"], "start": r["start"], "end": r["end"]}
            for r in rows
        ]
        total = self.total_billed_usd()
        return 200, {"invoices": invoices, "current": {"charges": round(total, 8), "service_fee": 0.0, "total": round(total, 8)}}

    def _api_invoices_v1(self: Any, *, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        deposit = {
            "id": 1, "type": "payment", "service": "stripe_payments", "amount": self.starting_credit,
            "when": self.started_at, "start": self.started_at, "end": self.started_at,
            "description": "Stripe payment", "items": [],
        }
        return 200, {"results": [deposit], "count": 1, "total": 1, "next_token": None}
