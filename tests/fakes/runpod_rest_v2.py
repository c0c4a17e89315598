"""RunPod REST API v2 over the fake's state, as RunPod's OpenAPI document describes it.

Every request is checked against `runpod_v2_schema.json` (derived from github:runpod/docs
`api-reference-v2/openapi.json` by scripts/derive_runpod_schema.py): the path and method (404 / 405), the
query parameters (types, enums, patterns; 422 for a malformed value, 400 for an unknown parameter or a broken
cross-parameter rule), and the JSON body (422 with `errors`, as RunPod's UnprocessableEntityError; 400 for the
cross-field rules the document says the handler enforces). Every answer is checked against the response
schema for its status; a fake that would answer off-schema records it in `violations` and answers 500.

Keys: the account key may do everything; a pod's own `RUNPOD_API_KEY` may only read, stop and terminate that
pod (403 otherwise). `ssh.proxy` points at a listener that closes every connection: it cannot forward.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.fakes.runpod_cloud import (
    CAPACITY_MESSAGE,
    CATALOG,
    RESUME_REFUSED_MESSAGE,
    CloudError,
    FakeCloud,
    FakePod,
)
from tests.fakes.runpod_volumes import CLOUD_DATA_CENTER, NetworkVolumeRoutes

SCHEMA_FILE = Path(__file__).with_name("runpod_v2_schema.json")
ROOT = "urn:runpod-v2"


def _absolute(node: Any) -> Any:
    """Every `#/…` reference made absolute (`urn:runpod-v2#/…`), so a schema taken out of the document still
    resolves its references inside it."""
    if isinstance(node, dict):
        return {k: (ROOT + v if k == "$ref" and isinstance(v, str) and v.startswith("#") else _absolute(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_absolute(v) for v in node]
    return node


DOCUMENT = _absolute(json.loads(SCHEMA_FILE.read_text()))
REGISTRY: Registry = Registry().with_resource(ROOT, DRAFT202012.create_resource(DOCUMENT))
ACCOUNT = "account"
TITLES = {400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
          405: "Method Not Allowed", 409: "Conflict", 422: "Unprocessable Entity", 429: "Too Many Requests",
          500: "Internal Server Error"}
ACTIONS = {"RUNNING": ["stop", "restart", "terminate"], "EXITED": ["start", "terminate"],
           "ERROR": ["start", "terminate"], "PROVISIONING": ["stop", "terminate"], "STARTING": ["stop", "terminate"],
           "TERMINATED": []}
HOST_CUDA = {"SECURE": ("12.4", "12.8"), "COMMUNITY": ("12.2", "12.4")}  # host CUDA versions per cloud


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, registry=REGISTRY)


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        kind, name = node["$ref"].split("#/")[1].split("/")[1:3]
        node = DOCUMENT["components"][kind][name]
    return node


def schema_errors(schema: dict[str, Any], value: Any) -> list[str]:
    """Every violation of `schema` by `value`, as '<where>: <message>' lines."""
    return [f"{'/'.join(str(p) for p in e.absolute_path) or 'body'}: {e.message}"
            for e in sorted(validator(schema).iter_errors(value), key=lambda e: list(e.absolute_path))]


@dataclass
class Operation:
    path: str
    method: str
    spec: dict[str, Any]
    params: dict[str, Any]  # path parameters


def find_operation(method: str, path: str) -> tuple[int, Operation | None, list[str]]:
    """(0, operation, []) or (404 | 405, None, allowed methods)."""
    for template, item in DOCUMENT["paths"].items():
        pattern = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
        match = re.match(pattern, path)
        if not match:
            continue
        allowed = [m.upper() for m in item if m != "parameters"]
        if method.lower() not in item:
            return 405, None, allowed
        return 0, Operation(template, method.lower(), item[method.lower()], match.groupdict()), allowed
    return 404, None, []


def check_query(operation: Operation, query: dict[str, list[str]]) -> tuple[int, str, list[str]] | None:
    """(status, detail, errors) for a query the API refuses, else None."""
    declared = {_resolve(p)["name"]: _resolve(p) for p in operation.spec.get("parameters") or []
                if _resolve(p)["in"] == "query"}
    unknown = sorted(set(query) - set(declared))
    if unknown:
        return 400, f"unknown query parameter(s): {', '.join(unknown)}", []
    errors = []
    for name, values in query.items():
        param = declared[name]
        schema = _resolve(param["schema"]) if "$ref" in param["schema"] else param["schema"]
        raw = values[-1]
        value: Any = raw
        if schema.get("type") == "array":
            value = raw.split(",")
        elif schema.get("type") == "integer":
            try:
                value = int(raw)
            except ValueError:
                errors.append(f"{name}: {raw!r} is not an integer")
                continue
        errors += [f"{name}: {e.split(': ', 1)[-1]}" for e in schema_errors(param["schema"], value)]
    if errors:
        return 422, "Request validation failed.", errors
    return None


def check_body(operation: Operation, body: Any) -> tuple[int, str, list[str]] | None:
    request = (operation.spec.get("requestBody") or {}).get("content", {}).get("application/json")
    if request is None:
        return None
    if body is None:
        return 422, "Request validation failed.", ["body: a JSON body is required"]
    errors = schema_errors(request["schema"], body)
    return (422, "Request validation failed.", errors) if errors else None


def check_response(operation: Operation, status: int, payload: Any) -> list[str]:
    """Violations of the documented response for `status` (or `default`) by what the fake is about to send."""
    responses = operation.spec["responses"]
    answer = responses.get(str(status)) or responses.get("default")
    if answer is None:
        return [f"HTTP {status} is not a documented answer of {operation.method.upper()} {operation.path}"]
    answer = _resolve(answer) if "$ref" in answer else answer
    content = answer.get("content") or {}
    if not content:
        return [] if payload is None else [f"HTTP {status} of {operation.path} has no body, the fake sent one"]
    media = content.get("application/json") or content.get("application/problem+json")
    return schema_errors(media["schema"], payload)


def problem(status: int, detail: str, errors: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"title": TITLES.get(status, "Error"), "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return body


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class RestV2(NetworkVolumeRoutes):
    """The routes. `handle` returns (status, payload or None); the server adds headers and validates."""

    def __init__(self, cloud: FakeCloud, proxy_port: int) -> None:
        self.cloud = cloud
        self.proxy_port = proxy_port

    def handle(self, op: Operation, scope: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        route = (op.method, op.path)
        if scope != ACCOUNT:
            allowed = {("get", "/v2/pods/{id}"), ("delete", "/v2/pods/{id}"), ("post", "/v2/pods/{id}/action")}
            own = op.params.get("id") == scope
            action_ok = route != ("post", "/v2/pods/{id}/action") or (body or {}).get("action") in ("stop",
                                                                                                      "terminate")
            if route not in allowed or not own or not action_ok:
                return 403, problem(403, "access denied: this key may only read, stop or terminate its own pod")
        q = {k: v[-1] for k, v in query.items()}
        if route == ("get", "/v2/catalog/gpus"):
            return self._catalog(q)
        if route == ("get", "/v2/pods"):
            return 200, {"pods": [self.pod_view(p) for p in self.cloud.live_pods()]}
        if route == ("post", "/v2/pods"):
            return self._create(body)
        if route == ("get", "/v2/billing/pods"):
            return self._billing(q)
        answer = self.volume_routes(route, op.params, q, body)
        if answer is not None:
            return answer
        pod = self.cloud.find(op.params["id"])
        if pod is None:
            return 404, problem(404, "resource not found")
        if route == ("get", "/v2/pods/{id}"):
            return 200, self.pod_view(pod)
        if route == ("delete", "/v2/pods/{id}"):
            self.cloud.record_action(scope, "terminate", pod)
            self.cloud.terminate_pod(pod)
            return 204, None
        return self._action(scope, pod, body["action"])

    # -- catalog ---------------------------------------------------------------------------------------
    def _catalog(self, q: dict[str, str]) -> tuple[int, Any]:
        scoped = [k for k in ("product", "count", "cloud", "minCudaVersion", "cudaVersions") if k in q]
        if "include" not in q and scoped:
            return 400, problem(400, f"{', '.join(scoped)} is valid only with include=AVAILABILITY")
        if "include" in q and "product" not in q:
            return 400, problem(400, "product is required with include=AVAILABILITY")
        if "minCudaVersion" in q and "cudaVersions" in q:
            return 400, problem(400, "minCudaVersion and cudaVersions are mutually exclusive")
        with_stock = "include" in q
        cloud, count = q.get("cloud", "SECURE"), int(q.get("count", "1"))
        floor = _version(q["minCudaVersion"]) if "minCudaVersion" in q else None
        rows = []
        for gpu in CATALOG:
            row: dict[str, Any] = {
                "id": gpu.id, "name": gpu.display_name, "pool": None, "manufacturer": "NVIDIA",
                "memory": gpu.memory_gb, "secure": gpu.secure is not None, "community": gpu.community is not None,
                "price": {"secure": gpu.secure or 0.0, "community": gpu.community or 0.0},
                "maxCount": {"secure": gpu.max_count if gpu.secure else 0,
                             "community": gpu.max_count if gpu.community else 0},
            }
            if with_stock:
                price = gpu.price(cloud, False)
                stocked = price is not None and count <= gpu.max_count  # a create may still find it gone
                versions = [v for v in HOST_CUDA[cloud] if floor is None or _version(v) >= floor]
                row["availability"] = "HIGH" if stocked and versions else "NONE"
                if stocked and versions:
                    row["dataCenters"] = [{"id": "US-TX-3" if cloud == "SECURE" else "CA-MTL-1",
                                           "name": "US Texas 3" if cloud == "SECURE" else "CA Montreal 1",
                                           "availability": "HIGH"}]
                row["cudaVersions"] = [{"version": v, "available": stocked} for v in versions]
            rows.append(row)
        return 200, {"gpus": rows}

    # -- pods ------------------------------------------------------------------------------------------
    def _create(self, body: dict[str, Any]) -> tuple[int, Any]:
        if ("gpu" in body) == ("cpu" in body):
            return 400, problem(400, "exactly one of gpu or cpu must be set")
        if "cpu" in body:
            return 400, problem(400, "this fake rents GPU pods only")
        mounts = body.get("mounts") or {}
        if "persistent" in mounts and "network" in mounts:
            return 400, problem(400, "mounts.persistent and mounts.network are mutually exclusive")
        gpu = body["gpu"]
        if gpu.get("minCudaVersion") and gpu.get("allowedCudaVersions"):
            return 400, problem(400, "gpu.minCudaVersion and a non-empty gpu.allowedCudaVersions are exclusive")
        cloud = body.get("cloud", "SECURE")
        floor = _version(gpu["minCudaVersion"]) if gpu.get("minCudaVersion") else None
        hosts = [v for v in HOST_CUDA[cloud] if floor is None or _version(v) >= floor]
        if not hosts:
            return 400, problem(400, CAPACITY_MESSAGE)
        persistent = mounts.get("persistent") or {}
        network_volume, network_path, refused = self.placement(body, cloud)
        if refused is not None:
            return refused
        try:
            pod = self.cloud.create_pod(
                name=body["name"], image=body["image"], gpu_type_id=gpu["id"], gpu_count=gpu.get("count", 1),
                cloud_type=cloud, bid_per_gpu=None, env=dict(body.get("env") or {}),
                volume_gb=persistent.get("size") or 0, volume_mount_path=persistent.get("path") or "",
                container_disk_gb=body.get("disk") or 50, ports=",".join(body.get("ports") or []),
                cuda_version=max(hosts, key=_version), network_volume=network_volume,
                network_path=network_path or "", extra_volumes=self.volume_mounts(network_volume, network_path),
            )
        except CloudError as exc:
            return 400, problem(400, exc.message)
        return 201, self.pod_view(pod)

    def _action(self, scope: str, pod: FakePod, action: str) -> tuple[int, Any]:
        status = self.status(pod)
        if action not in ACTIONS[status]:
            return 409, problem(409, f"action {action} is not valid for a pod in status {status}")
        if action == "start" and self.cloud.faults.resume_refused:
            return 400, problem(400, RESUME_REFUSED_MESSAGE)
        self.cloud.record_action(scope, action, pod)
        if action == "terminate":
            self.cloud.terminate_pod(pod)
            return 204, None
        if action == "stop":
            self.cloud.stop_pod(pod)
        elif action == "start":
            self.cloud.resume_pod(pod)
        elif action == "restart" and self.cloud.machines is not None:
            self.cloud.machines.stop(pod.id)
            self.cloud.machines.start(pod.id)
        return 200, self.pod_view(pod)

    def status(self, pod: FakePod) -> str:
        if pod.status != "RUNNING":
            return pod.status
        if self.cloud.ssh_port(pod) is not None:
            return "RUNNING"
        return "PROVISIONING" if pod.uptime_s < 1 else "STARTING"

    def pod_view(self, pod: FakePod) -> dict[str, Any]:
        port = self.cloud.ssh_port(pod)
        status = self.status(pod)
        running = status == "RUNNING"
        stopped = status in ("EXITED", "TERMINATED")
        username = f"{pod.id}-{pod.host_suffix}"
        view: dict[str, Any] = {
            "id": pod.id, "name": pod.name, "image": pod.image, "args": "", "disk": pod.container_disk_gb,
            "ports": [p for p in pod.ports.split(",") if p], "env": dict(pod.env), "registry": None,
            "status": status, "actions": list(ACTIONS[status]),
            "mounts": ({"network": [{"volumeId": pod.network_volume, "path": pod.network_path}]} if pod.network_volume
                       else {"persistent": {"size": pod.volume_gb, "path": pod.volume_mount_path}} if pod.volume_gb
                       else {}),
            "gpu": {"id": pod.gpu.id, "count": pod.gpu_count}, "cloud": pod.cloud,
            "dataCenterId": CLOUD_DATA_CENTER[pod.cloud], "cudaVersion": pod.cuda_version,
            "ssh": {
                "proxy": {"host": "127.0.0.1", "port": self.proxy_port, "username": username,
                          "command": f"ssh {username}@127.0.0.1 -p {self.proxy_port}"},
                "direct": {"host": "127.0.0.1", "port": port, "username": "root",
                           "command": f"ssh root@127.0.0.1 -p {port}"} if running and port else None,
            },
            "template": None, "cost": 0.0 if stopped else round(pod.running_rate, 6), "locked": False,
            "globalNetworking": {"enabled": False},
            "runtime": {"uptime": pod.uptime_s, "gpus": [{"util": 0, "memoryUtil": 0}] * pod.gpu_count,
                        "ports": [{"private": 22, "public": port, "type": "tcp", "ip": "127.0.0.1"}]}
            if running and port else None,
            "createdAt": iso(pod.created_at), "startedAt": iso(pod.status_changed_at) if running else None,
        }
        return view

    # -- billing ---------------------------------------------------------------------------------------
    def _billing(self, q: dict[str, str]) -> tuple[int, Any]:
        if "lastN" in q and ("startTime" in q or "endTime" in q):
            return 400, problem(400, "lastN is mutually exclusive with startTime/endTime")
        if self.cloud.faults.billing_unavailable:
            return 500, problem(500, "billing is temporarily unavailable")
        size = {"hour": 3600, "day": 86400}.get(q.get("bucketSize", "day"))
        if size is None:
            return 400, problem(400, "this fake buckets by hour or day only")
        try:
            end = _epoch(q["endTime"]) if "endTime" in q else datetime.now(timezone.utc).timestamp()
            start = _epoch(q["startTime"]) if "startTime" in q else end - 30 * 86400
        except ValueError:
            return 422, problem(422, "Request validation failed.", ["startTime/endTime: not RFC 3339"])
        start = start // size * size
        end = -(-end // size) * size
        records = self.cloud.billing_buckets(size, start, end, q.get("podId"))
        fields = ("totalAmount", "gpuAmount", "cpuAmount", "diskAmount")
        totals = {f: round(sum(r[f] for r in records), 6) for f in fields}
        return 200, {
            "records": records,
            "metadata": {"query": {"startTime": iso(start), "endTime": iso(end), "bucketSize": q.get("bucketSize",
                                                                                                       "day"),
                                   "podId": q.get("podId")},
                         "recordCount": len(records), "uniquePodCount": len({r["podId"] for r in records}),
                         "totals": totals},
        }


def _version(value: str) -> tuple[int, ...]:
    return tuple(int(p) for p in value.split("."))
