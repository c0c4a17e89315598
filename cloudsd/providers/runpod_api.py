"""RunPod's REST API v2 as cloudsd speaks it: pure request builders, pure response readers, one transport.

Source of every shape: RunPod's OpenAPI 3.1 document (github:runpod/docs, `api-reference-v2/openapi.json`);
`tests/fakes/runpod_v2_schema.json` holds the parts cloudsd uses, derived from it by
`scripts/derive_runpod_schema.py`, and the fake validates every request and answer against it.

- `Authorization: Bearer <key>`; JSON in; JSON or `application/problem+json` (`title`, `status`, `detail`,
  `errors`) out. A problem is shown as its `detail`, on one line, with the key redacted.
- Requests are paced from the `RateLimit` header (a window with no requests left waits its reset) and a 429's
  `Retry-After` is honoured (`http.JsonApi`).
- Only REST v2 is spoken here: REST v1 is retired, and the older query API retires in early 2027.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import httpx

from cloudsd.errors import CredentialsError, NoCapacity, ProviderError, ResumeRefused
from cloudsd.providers.http import JsonApi

DEFAULT_BASE_URL = "https://api.runpod.io"
SSH_PORTS = ["22/tcp"]  # never an http port: the web UI is reached through the SSH tunnel only
VOLUME_MOUNT_PATH = "/workspace"
CONTAINER_DISK_GB = 20
PERSISTENT_MIN_GB = 10  # PersistentMount.size minimum
CREATE_ID_ENV = "CLOUDSD_CREATE_ID"  # tells our pod from an older one of the same name after a lost answer
CLOUDS = ("SECURE", "COMMUNITY")
# A stopped pod resumes on its own host; when that host's GPUs were taken, RunPod says so in `detail`.
RESUME_REFUSED = re.compile(r"not enough|no (?:longer )?(?:free |available )?gpus?|insufficient|capacity|"
                            r"no longer any instances", re.IGNORECASE)
_RATE_WINDOW = re.compile(r'"?([A-Za-z0-9_-]+)"?\s*((?:;\s*[a-z]+=[^;,]*)*)')


class RunPodApiError(ProviderError):
    """RunPod answered with an error: `status` and the problem's `detail`."""

    def __init__(self, message: str, *, status: int, detail: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.detail = detail


class GatewayError(RunPodApiError):
    """A 5xx or a page that is not JSON: the call may or may not have taken effect."""


# -- request builders (pure) ---------------------------------------------------------------------------------
def create_pod_body(
    *,
    name: str,
    image: str,
    gpu_type_id: str,
    cloud: str,
    gpu_count: int,
    volume_gb: int,
    public_key: str,
    env: Mapping[str, str],
    cuda: str | None = None,
    create_id: str | None = None,
) -> dict[str, Any]:
    """The `POST /v2/pods` body (CreatePodRequest). `PUBLIC_KEY` is the machine's own key: set here, RunPod's
    `startSsh` would not replace it, and cloudsd never needs the account's registered keys."""
    variables = {"PUBLIC_KEY": public_key, **{k: v for k, v in env.items() if k != "PUBLIC_KEY"}}
    if create_id:
        variables[CREATE_ID_ENV] = create_id
    gpu: dict[str, Any] = {"id": gpu_type_id, "count": gpu_count}
    if cuda:
        gpu["minCudaVersion"] = major_minor(cuda)
    return {
        "name": name,
        "image": image,
        "gpu": gpu,
        "cloud": cloud,
        "disk": CONTAINER_DISK_GB,
        "mounts": {"persistent": {"size": max(PERSISTENT_MIN_GB, volume_gb), "path": VOLUME_MOUNT_PATH}},
        "ports": list(SSH_PORTS),
        "env": variables,
    }


def catalog_params(cloud: str, gpu_count: int, cuda: str | None) -> dict[str, str]:
    """`GET /v2/catalog/gpus` query: stock for pods on one cloud, for `gpu_count` GPUs, above a CUDA floor."""
    params = {"include": "AVAILABILITY", "product": "POD", "cloud": cloud, "count": str(gpu_count)}
    if cuda:
        params["minCudaVersion"] = major_minor(cuda)
    return params


def major_minor(version: str) -> str:
    """"12.4" from "12.4" or "12.4.1"; "12.0" from "12" (the create body wants `major.minor`)."""
    parts = [p for p in str(version).strip().split(".") if p]
    if not parts or not all(p.isdigit() for p in parts[:2]):
        raise ProviderError(f"{version!r} is not a CUDA version.", hint="Give one like 12.4.")
    return f"{int(parts[0])}.{int(parts[1]) if len(parts) > 1 else 0}"


def iso_utc(epoch_s: float) -> str:
    """Epoch seconds as RFC 3339 UTC (the billing window's `startTime`/`endTime`)."""
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> float | None:
    """An RFC 3339 time ("2026-01-02T03:04:05Z") as epoch seconds; None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def rate_limit_wait_s(headers: Mapping[str, str]) -> float | None:
    """Seconds to hold the next request, from `RateLimit` ("minute";r=0;t=12, "hour";r=900;t=1800): the
    longest reset among windows with no request left; None when every window has some."""
    value = headers.get("RateLimit") or headers.get("ratelimit")
    if not value:
        return None
    wait = None
    for member in value.split(","):
        match = _RATE_WINDOW.match(member.strip())
        if not match:
            continue
        params = dict(p.strip().split("=", 1) for p in match.group(2).split(";") if "=" in p)
        try:
            remaining, reset = int(params.get("r", "1")), float(params.get("t", "0"))
        except ValueError:
            continue
        if remaining <= 0 and reset > 0:
            wait = max(wait or 0.0, reset)
    return wait


def problem_detail(body: Any, fallback: str) -> str:
    """The problem's `detail` (or `title`) on one line, with `errors` counted."""
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title")
        if isinstance(detail, str) and detail.strip():
            text = " ".join(detail.split())
            errors = body.get("errors")
            if isinstance(errors, list) and errors:
                first = " ".join(str(errors[0]).split())
                text += f" ({first}" + (f"; +{len(errors) - 1} more)" if len(errors) > 1 else ")")
            return text
    return fallback


# -- the transport -------------------------------------------------------------------------------------------
class RestV2:
    """RunPod REST v2 over one `JsonApi`. Reads, stop and terminate retry; a create never repeats itself."""

    def __init__(self, api: JsonApi, key_hint: str) -> None:
        self.api = api
        self.key_hint = key_hint

    def close(self) -> None:
        self.api.close()

    def _call(self, method: str, path: str, what: str, *, idempotent: bool = True, ok: tuple[int, ...] = (200,),
              **kwargs: Any) -> tuple[int, Any]:
        response = self.api.request(method, path, idempotent=idempotent, **kwargs)
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = ...
        if response.status_code in ok and body is not ...:
            return response.status_code, body
        raise self.error(what, response, None if body is ... else body)

    def error(self, what: str, response: httpx.Response, body: Any) -> RunPodApiError:
        status = response.status_code
        if body is None and response.content:
            fallback = "a page that is not JSON (a gateway error)"
        else:
            fallback = response.reason_phrase or f"HTTP {status}"
        detail = self.api.redact(problem_detail(body, fallback))
        message = f"RunPod {what} failed (HTTP {status}): {detail}"
        if status >= 500 or (body is None and response.content):
            return GatewayError(message, status=status, detail=detail,
                                hint="RunPod may be having trouble; try again in a minute.")
        if status == 401:
            raise CredentialsError(f"RunPod rejected the API key (HTTP 401): {detail}", hint=self.key_hint)
        return RunPodApiError(message, status=status, detail=detail)

    def gpu_types(self, cloud: str, gpu_count: int, cuda: str | None) -> list[dict[str, Any]]:
        _, body = self._call("GET", "/v2/catalog/gpus", "GPU catalog", params=catalog_params(cloud, gpu_count, cuda))
        gpus = body.get("gpus") if isinstance(body, dict) else None
        return [g for g in gpus or [] if isinstance(g, dict)]

    def list_prices(self) -> list[dict[str, Any]]:
        """`GET /v2/catalog/gpus` without availability: every type's list price per cloud."""
        _, body = self._call("GET", "/v2/catalog/gpus", "GPU catalog")
        gpus = body.get("gpus") if isinstance(body, dict) else None
        return [g for g in gpus or [] if isinstance(g, dict)]

    def create(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """201 and the pod. 400 (a rule or no capacity), 403 (a pool this account cannot use) and 402 (no
        balance) are mapped by the caller from the raised RunPodApiError's status."""
        _, pod = self._call("POST", "/v2/pods", "create", json=body, idempotent=False, ok=(201,),
                            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
                            retry_statuses=frozenset({429}))
        if not isinstance(pod, dict) or not pod.get("id"):
            raise ProviderError("RunPod accepted the create but returned no pod id.")
        return pod

    def pod(self, pod_id: str) -> dict[str, Any] | None:
        """The pod, or None once RunPod does not know it (404)."""
        try:
            _, pod = self._call("GET", f"/v2/pods/{_path_id(pod_id)}", f"lookup of pod {pod_id}")
        except RunPodApiError as exc:
            if exc.status == 404:
                return None
            raise
        return pod if isinstance(pod, dict) else None

    def pods(self) -> list[dict[str, Any]]:
        _, body = self._call("GET", "/v2/pods", "pod list")
        pods = body.get("pods") if isinstance(body, dict) else None
        return [p for p in pods or [] if isinstance(p, dict)]

    def action(self, pod_id: str, action: str) -> dict[str, Any] | None:
        """`POST /v2/pods/{id}/action`: the updated pod (None for terminate's 204). 409: not valid now."""
        _, body = self._call("POST", f"/v2/pods/{_path_id(pod_id)}/action", f"{action} of pod {pod_id}",
                             json={"action": action}, ok=(200, 204))
        return body if isinstance(body, dict) else None

    def billing_pods(self, since: float, until: float) -> list[dict[str, Any]]:
        """`GET /v2/billing/pods` in hourly buckets, one record per pod per bucket."""
        params = {"bucketSize": "hour", "startTime": iso_utc(since), "endTime": iso_utc(until)}
        _, body = self._call("GET", "/v2/billing/pods", "pod billing", params=params)
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list):
            raise ProviderError("RunPod answered the pod billing query without `records`.")
        return [r for r in records if isinstance(r, dict)]

    def billing_total(self, since: float, until: float) -> dict[str, Any]:
        """`GET /v2/billing` metadata totals (the account's spend across resource families) for a window."""
        params = {"bucketSize": "day", "startTime": iso_utc(since), "endTime": iso_utc(until)}
        _, body = self._call("GET", "/v2/billing", "billing", params=params)
        metadata = body.get("metadata") if isinstance(body, dict) else None
        totals = metadata.get("totals") if isinstance(metadata, dict) else None
        return totals if isinstance(totals, dict) else {}


    # -- network volumes (runpod_volumes.py has the bodies and parsers) --------------------------------
    def network_volumes(self) -> list[dict[str, Any]]:
        _, body = self._call("GET", "/v2/network-volumes", "network volume list")
        volumes = body.get("networkVolumes") if isinstance(body, dict) else None
        return [v for v in volumes or [] if isinstance(v, dict)]

    def network_volume(self, volume_id: str) -> dict[str, Any] | None:
        try:
            _, body = self._call("GET", f"/v2/network-volumes/{_path_id(volume_id)}",
                                 f"lookup of network volume {volume_id}")
        except RunPodApiError as exc:
            if exc.status == 404:
                return None
            raise
        return body if isinstance(body, dict) else None

    def create_network_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        _, volume = self._call("POST", "/v2/network-volumes", "network volume create", json=body,
                               idempotent=False, ok=(201,))
        if not isinstance(volume, dict) or not volume.get("id"):
            raise ProviderError("RunPod accepted the network volume create but returned no id.")
        return volume

    def delete_network_volume(self, volume_id: str) -> bool:
        """True once deleted, False when RunPod does not know it (404: gone already)."""
        try:
            self._call("DELETE", f"/v2/network-volumes/{_path_id(volume_id)}", f"delete of network volume {volume_id}",
                       ok=(204,))
        except RunPodApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def billing_network_volumes(self, since: float, until: float) -> list[dict[str, Any]]:
        """`GET /v2/billing/network-volumes` in hourly buckets, one record per volume per bucket."""
        params = {"bucketSize": "hour", "startTime": iso_utc(since), "endTime": iso_utc(until)}
        _, body = self._call("GET", "/v2/billing/network-volumes", "network volume billing", params=params)
        records = body.get("records") if isinstance(body, dict) else None
        return [r for r in records or [] if isinstance(r, dict)]


def _path_id(pod_id: str) -> str:
    """Pod ids are letters and digits; anything else is refused here rather than pasted into a path."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(pod_id)):
        raise RunPodApiError(f"not a RunPod pod id: {pod_id!r}", status=404, detail="not a pod id")
    return str(pod_id)


def create_error(exc: RunPodApiError, offer_id: str) -> ProviderError:
    """What a refused create means for `up`: 400 and 403 → this offer cannot be had now, try the next (see the
    createPod table in the OpenAPI document); 402 → no balance, stop; 422 → cloudsd sent a bad body."""
    if exc.status in (400, 403, 404, 409):
        return NoCapacity(f"RunPod could not place offer {offer_id}: {exc.detail}",
                          hint="Try the next offer or another GPU type.")
    if exc.status == 402:
        return ProviderError(f"RunPod refused the create: {exc.detail}",
                             hint="Add funds at https://www.runpod.io/console/user/billing.")
    return exc


def resume_error(exc: RunPodApiError, pod_id: str) -> ProviderError:
    """A refused `start`: no GPU free on the pod's host → ResumeRefused (the disk is kept)."""
    if exc.status in (400, 409) and RESUME_REFUSED.search(exc.detail):
        return ResumeRefused(
            f"RunPod cannot resume pod {pod_id} now: {exc.detail}",
            hint="Its disk is kept (and bills storage). Try `start` again later, or end it with `cloudsd down`.",
        )
    return exc

