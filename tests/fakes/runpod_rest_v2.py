"""RunPod REST v2 (beta) over the fake's state, for a second client beside GraphQL.

Shapes follow runpodctl's v2 client (`internal/api/pods_v2.go`, `podcreate_v2.go`): `POST /v2/pods` with
`{name, image, cloud, gpu:{id,count}, disk, mounts:{persistent:{size,path}}, ports[], env{}}`; `GET /v2/pods`
→ `{"pods": [...]}`; `GET|DELETE /v2/pods/{id}`; `POST /v2/pods/{id}/stop`; `GET /v2/catalog/gpus`.
v2 has no spot pods and no account route. Pod `status`: STARTING | RUNNING | EXITED; refusals are
`{"error": msg}` with 400 (bad body), 404 (unknown pod) or 409 (no capacity).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from tests.fakes.runpod_cloud import CATALOG, CloudError, FakeCloud, FakePod


def handle(cloud: FakeCloud, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    parts = path.strip("/").split("/")[1:]  # drop "v2"
    if parts == ["catalog", "gpus"] and method == "GET":
        return 200, {"gpus": [_catalog_row(gpu) for gpu in CATALOG]}
    if parts == ["pods"] and method == "GET":
        return 200, {"pods": [pod_view(cloud, pod) for pod in cloud.live_pods()], "nextToken": None}
    if parts == ["pods"] and method == "POST":
        return _create(cloud, body if isinstance(body, dict) else {})
    if len(parts) >= 2 and parts[0] == "pods":
        pod = cloud.find(parts[1])
        if pod is None:
            return 404, {"error": f"pod {parts[1]} not found"}
        if len(parts) == 2 and method == "GET":
            return 200, pod_view(cloud, pod)
        if len(parts) == 2 and method == "DELETE":
            cloud.terminate_pod(pod)
            return 200, {}
        if parts[2:] == ["stop"] and method == "POST":
            cloud.stop_pod(pod)
            return 200, pod_view(cloud, pod)
    return 404, {"error": f"no route {method} {path}"}


def _create(cloud: FakeCloud, body: dict[str, Any]) -> tuple[int, Any]:
    gpu = body.get("gpu") or {}
    persistent = (body.get("mounts") or {}).get("persistent") or {}
    if not body.get("image") or not gpu.get("id"):
        return 400, {"error": "image and gpu.id are required"}
    try:
        pod = cloud.create_pod(
            name=body.get("name") or body["image"].split(":")[0],
            image=body["image"],
            gpu_type_id=gpu["id"],
            gpu_count=gpu.get("count") or 1,
            cloud_type=body.get("cloud") or "ALL",
            bid_per_gpu=None,
            env=dict(body.get("env") or {}),
            volume_gb=persistent.get("size") or 0,
            volume_mount_path=persistent.get("path") or "/workspace",
            container_disk_gb=body.get("disk") or 10,
            ports=",".join(body.get("ports") or []),
        )
    except CloudError as exc:
        return (409 if exc.code == "CAPACITY" else 400), {"error": exc.message}
    return 201, pod_view(cloud, pod)


def pod_view(cloud: FakeCloud, pod: FakePod) -> dict[str, Any]:
    port = cloud.ssh_port(pod)
    status = pod.status if pod.status != "RUNNING" else ("RUNNING" if port else "STARTING")
    return {
        "id": pod.id,
        "name": pod.name,
        "status": status,
        "createdAt": datetime.fromtimestamp(pod.created_at, timezone.utc).isoformat().replace("+00:00", "Z"),
        "image": pod.image,
        "gpu": {"id": pod.gpu.id, "count": pod.gpu_count, "vcpuCount": 8 * pod.gpu_count, "memory": 31 * pod.gpu_count},
        "disk": pod.container_disk_gb,
        "mounts": {"persistent": {"size": pod.volume_gb, "path": pod.volume_mount_path}, "network": []},
        "ports": [p for p in pod.ports.split(",") if p],
        "cost": round(pod.running_rate, 6),
        "env": dict(pod.env),
        "dataCenterId": "US-TX-3" if pod.cloud == "SECURE" else "CA-MTL-1",
        "cloud": pod.cloud,
        "ssh": {"direct": {"host": "127.0.0.1", "port": port}} if port else None,
        "runtime": None
        if port is None
        else {"uptime": pod.uptime_s, "ports": [{"ip": "127.0.0.1", "private": 22, "public": port, "type": "tcp"}]},
    }


def _catalog_row(gpu: Any) -> dict[str, Any]:
    available = gpu.secure is not None or gpu.community is not None
    return {
        "id": gpu.id,
        "displayName": gpu.display_name,
        "memoryInGb": gpu.memory_gb,
        "maxGpuCount": gpu.max_count,
        "prices": {
            "secure": {"onDemand": gpu.secure, "spot": gpu.secure_spot},
            "community": {"onDemand": gpu.community, "spot": gpu.community_spot},
        },
        "availability": "HIGH" if available else "NONE",
    }
