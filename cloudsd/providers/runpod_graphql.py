"""RunPod's GraphQL API as cloudsd speaks it: documents, pure payload builders, and one transport.

`RunPodBackend` is the small interface `RunPodProvider` talks to. `GraphQLBackend` implements it over
`POST {base}/graphql`; a REST v2 backend can replace it by answering in the same shapes (pods as the GraphQL
`Pod` dicts selected by POD_FIELDS, GPU types as the GraphQL `GpuType` dicts selected by GPU_TYPES).

Every value travels in `variables`, never in the document text: the runpod SDK pastes values into the
query, so a `"` or a newline in an env value breaks its documents (runpod-python PR #584).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Protocol

import httpx

from cloudsd.errors import NoCapacity, ProviderError
from cloudsd.providers.http import JsonApi

POD_FIELDS = """
fragment PodFields on Pod {
  id name imageName desiredStatus costPerHr gpuCount volumeInGb env lastStatusChange
  machine { podHostId gpuDisplayName location }
  runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } }
}
"""
GPU_TYPES = """
query GpuTypes($gpuCount: Int) {
  gpuTypes {
    id displayName memoryInGb maxGpuCount secureCloud communityCloud
    securePrice communityPrice secureSpotPrice communitySpotPrice
    lowestPrice(input: {gpuCount: $gpuCount}) { minimumBidPrice uninterruptablePrice }
  }
}
"""
POD = "query Pod($input: PodFilter!) { pod(input: $input) { ...PodFields } }" + POD_FIELDS
PODS = "query Pods { myself { pods { ...PodFields } } }" + POD_FIELDS
DEPLOY_ON_DEMAND = """
mutation Deploy($input: PodFindAndDeployOnDemandInput!) {
  podFindAndDeployOnDemand(input: $input) { id machineId machine { podHostId } }
}
"""
DEPLOY_SPOT = """
mutation DeploySpot($input: PodRentInterruptableInput!) {
  podRentInterruptable(input: $input) { id machineId machine { podHostId } }
}
"""
STOP = "mutation Stop($input: PodStopInput!) { podStop(input: $input) { id desiredStatus } }"
TERMINATE = "mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }"
ACCOUNT = "query Account { myself { id clientBalance currentSpendPerHr spendLimit } }"

SSH_PORTS = "22/tcp"  # never an http port: the web UI is reached through the SSH tunnel only
VOLUME_MOUNT_PATH = "/workspace"
CONTAINER_DISK_GB = 20
CREATE_ID_ENV = "CLOUDSD_CREATE_ID"  # tells our pod from an older one of the same name after a lost answer
# CUDA versions RunPod hosts report; `allowedCudaVersions` lists every acceptable one, not a minimum.
KNOWN_CUDA_VERSIONS = (
    "11.8", "12.0", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.7", "12.8", "12.9", "13.0",
)
CAPACITY_PHRASE = "no longer any instances available"
NOT_FOUND = re.compile(r"not found|does not exist|no pod", re.IGNORECASE)


class GatewayError(ProviderError):
    """RunPod, or a proxy in front of it, answered 5xx or a body that is not JSON: the call may or may not
    have taken effect."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class RunPodApiError(ProviderError):
    """RunPod answered with GraphQL `errors`; `messages` holds each one's text."""

    def __init__(self, message: str, *, messages: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.messages = messages


# -- pure builders ---------------------------------------------------------------------------------
def payload(document: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of one GraphQL call."""
    return {"query": document, "variables": dict(variables or {})}


def allowed_cuda_versions(minimum: str) -> list[str]:
    """Every known CUDA version at or above `minimum` ("12.4" -> ["12.4", "12.5", …])."""
    def key(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())

    versions = [v for v in KNOWN_CUDA_VERSIONS if key(v) >= key(minimum)]
    return versions or [".".join(minimum.split(".")[:2])]


def iso_utc(epoch_s: float) -> str:
    """Epoch seconds as the ISO 8601 UTC time RunPod's DateTime inputs take."""
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def deploy_input(
    *,
    name: str,
    image: str,
    gpu_type_id: str,
    cloud_type: str,
    gpu_count: int,
    volume_gb: int,
    public_key: str,
    env: Mapping[str, str],
    cuda: str | None = None,
    terminate_after: float | None = None,
    bid_per_gpu: float | None = None,
    create_id: str | None = None,
) -> dict[str, Any]:
    """The `input` variable of podFindAndDeployOnDemand (or podRentInterruptable with `bid_per_gpu`)."""
    variables = {"PUBLIC_KEY": public_key, **{k: v for k, v in env.items() if k != "PUBLIC_KEY"}}
    if create_id:
        variables[CREATE_ID_ENV] = create_id
    data: dict[str, Any] = {
        "name": name,
        "imageName": image,
        "gpuTypeId": gpu_type_id,
        "cloudType": cloud_type,
        "gpuCount": gpu_count,
        "volumeInGb": volume_gb,
        "containerDiskInGb": CONTAINER_DISK_GB,
        "ports": SSH_PORTS,
        "volumeMountPath": VOLUME_MOUNT_PATH,
        "env": [{"key": k, "value": v} for k, v in variables.items()],
        "startSsh": True,
        "supportPublicIp": True,
    }
    if cuda:
        data["allowedCudaVersions"] = allowed_cuda_versions(cuda)
    if terminate_after is not None:
        data["terminateAfter"] = iso_utc(terminate_after)
    if bid_per_gpu is not None:
        data["bidPerGpu"] = bid_per_gpu
    return data


def env_dict(pod: Mapping[str, Any]) -> dict[str, str]:
    """A pod's `env` (["K=V", …]) as a dict."""
    pairs = (item.partition("=") for item in pod.get("env") or [] if isinstance(item, str))
    return {k: v for k, _, v in pairs}


# -- the interface and its GraphQL implementation --------------------------------------------------
class RunPodBackend(Protocol):
    def gpu_types(self, gpu_count: int) -> list[dict[str, Any]]: ...
    def deploy(self, input: dict[str, Any], *, spot: bool, timeout_s: float | None = None) -> dict[str, Any]: ...
    def pod(self, pod_id: str) -> dict[str, Any] | None: ...
    def pods(self) -> list[dict[str, Any]]: ...
    def stop(self, pod_id: str) -> None: ...
    def terminate(self, pod_id: str) -> None: ...
    def account(self) -> dict[str, Any]: ...
    def billing_pods(self, since: float, until: float) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


class GraphQLBackend:
    """`RunPodBackend` over `POST {base}/graphql`. Queries, stop and terminate retry; creates do not."""

    def __init__(self, api: JsonApi) -> None:
        self.api = api

    def close(self) -> None:
        self.api.close()

    def call(
        self,
        field: str,
        document: str,
        variables: Mapping[str, Any] | None = None,
        *,
        idempotent: bool,
        timeout_s: float | None = None,
    ) -> Any:
        """Run one document; return `data[field]`, or raise the project error for what RunPod said."""
        response = self.api.request(
            "POST",
            "/graphql",
            json=payload(document, variables),
            idempotent=idempotent,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)) if timeout_s else None,
            retry_statuses=frozenset({429}),
        )
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("errors"):
            raise _graphql_error(field, body["errors"])
        if response.status_code >= 500 or not isinstance(body, dict):
            kind = "an error" if isinstance(body, dict) else "a page that is not JSON (a gateway error)"
            raise GatewayError(
                f"RunPod answered {field} with HTTP {response.status_code} and {kind}.",
                status=response.status_code,
                hint="RunPod may be having trouble; try again in a minute.",
            )
        if not response.is_success:
            self.api.json_or_error(response, field)
        return (body.get("data") or {}).get(field)

    def gpu_types(self, gpu_count: int) -> list[dict[str, Any]]:
        return list(self.call("gpuTypes", GPU_TYPES, {"gpuCount": gpu_count}, idempotent=True) or [])

    def deploy(self, input: dict[str, Any], *, spot: bool, timeout_s: float | None = None) -> dict[str, Any]:
        field, document = ("podRentInterruptable", DEPLOY_SPOT) if spot else ("podFindAndDeployOnDemand", DEPLOY_ON_DEMAND)
        pod = self.call(field, document, {"input": input}, idempotent=False, timeout_s=timeout_s)
        if not isinstance(pod, dict) or not pod.get("id"):
            raise ProviderError(f"RunPod accepted {field} but returned no pod id.")
        return pod

    def pod(self, pod_id: str) -> dict[str, Any] | None:
        """The pod, or None when RunPod no longer knows it (`pod: null`, or a not-found error)."""
        try:
            pod = self.call("pod", POD, {"input": {"podId": pod_id}}, idempotent=True)
        except RunPodApiError as exc:
            if any(NOT_FOUND.search(message) for message in exc.messages):
                return None
            raise
        return pod if isinstance(pod, dict) else None

    def pods(self) -> list[dict[str, Any]]:
        myself = self.call("myself", PODS, idempotent=True) or {}
        return [pod for pod in myself.get("pods") or [] if isinstance(pod, dict)]

    def stop(self, pod_id: str) -> None:
        self.call("podStop", STOP, {"input": {"podId": pod_id}}, idempotent=True)

    def terminate(self, pod_id: str) -> None:
        self.call("podTerminate", TERMINATE, {"input": {"podId": pod_id}}, idempotent=True)

    def account(self) -> dict[str, Any]:
        return dict(self.call("myself", ACCOUNT, idempotent=True) or {})

    def billing_pods(self, since: float, until: float) -> list[dict[str, Any]]:
        """runpodctl's `GET /billing/pods`, grouped by pod, hourly buckets, between two epoch times."""
        params = {"bucketSize": "hour", "grouping": "podId", "startTime": iso_utc(since), "endTime": iso_utc(until)}
        response = self.api.request("GET", "/billing/pods", params=params, idempotent=True)
        body = self.api.json_or_error(response, "billing")
        if not isinstance(body, list):
            raise ProviderError("RunPod answered the billing query with something other than a list of records.")
        return [record for record in body if isinstance(record, dict)]


def _graphql_error(field: str, errors: Any) -> ProviderError:
    messages = [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors] or ["unknown error"]
    if any(CAPACITY_PHRASE in m.lower() for m in messages):
        return NoCapacity(
            f"RunPod has no capacity left for this offer ({messages[0]})",
            hint="Try the next offer or another GPU type.",
        )
    extra = f" (+{len(messages) - 1} more)" if len(messages) > 1 else ""
    return RunPodApiError(f"RunPod refused {field}: {messages[0]}{extra}", messages=messages)
