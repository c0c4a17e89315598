"""A fake RunPod API on 127.0.0.1: GraphQL executed by graphql-core, pods that are real containers.

`POST /graphql` is parsed, validated and executed against `runpod_schema.graphql`, so literal arguments,
`variables`, malformed documents and wrong types behave as they do at api.runpod.io: syntax and validation
errors answer 400, a failing field `{"errors":[{message,path,extensions}],"data":{op:null}}` at 200.
Auth is `Authorization: Bearer <key>` or `?api_key=`; anything else is a 401. A pod's own `RUNPOD_API_KEY`
is accepted only for `podStop`/`podTerminate` of that pod.

Also served over the same state: runpodctl's `GET /billing/pods` and REST v2 (`runpod_rest_v2.py`).
Pods, billing and faults live in `runpod_cloud.FakeCloud`; this module is the wire.
"""

from __future__ import annotations

import json
import secrets
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from graphql import GraphQLError, build_schema, execute, parse, validate

from tests.fakes import runpod_rest_v2
from tests.fakes.machine_api import MACHINE_API_URL, MachineApi
from tests.fakes.runpod_cloud import CATALOG, CloudError, FakeCloud, FakePod, Faults, GpuSpec

SCHEMA = build_schema(Path(__file__).with_name("runpod_schema.graphql").read_text())
ACCOUNT = "account"  # the scope of the account key; a pod-scoped key's scope is its pod id
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
    b"</center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)


def _epoch(value: Any) -> float | None:
    """A DateTime input (ISO 8601, or epoch seconds) as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise GraphQLError(f"DateTime cannot represent value: {value!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def _gql_error(exc: CloudError) -> GraphQLError:
    extensions = {"code": "INTERNAL_SERVER_ERROR" if exc.code == "CAPACITY" else exc.code}
    return GraphQLError(exc.message, extensions=extensions)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # the tests read fake.requests instead
        pass

    def do_GET(self) -> None:
        self.server.fake._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.fake._handle(self, "DELETE")


class _UnixHandler(_Handler):
    """The same handler on the machines' Unix socket, where TCP options do not apply."""

    disable_nagle_algorithm = False


class FakeRunPod:
    """RunPod's API on 127.0.0.1; `with FakeRunPod() as fake:` or start()/stop().

    `boot_machines=False` keeps pods as records only (no Docker needed); `image` is the container image
    every pod boots, whatever `imageName` asked for; `machines` injects a FakeMachines.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        pub_key: str = "",
        balance_usd: float = 25.0,
        boot_machines: bool = True,
        image: str | None = None,
        machines: Any = None,
    ) -> None:
        self.api_key = api_key or "rpa_" + secrets.token_hex(20).upper()
        self.machine_api: MachineApi | None = None  # the API as the pods see it (a Unix socket + relay)
        if machines is None and boot_machines:
            from tests.fakes.machines import TEST_IMAGE, FakeMachines

            self.machine_api = MachineApi()
            machines = FakeMachines(f"runpod-{secrets.token_hex(3)}", image=image or TEST_IMAGE,
                                    api_dir=self.machine_api.dir)
        self.cloud = FakeCloud(pub_key=pub_key, balance_usd=balance_usd, machines=machines)
        if self.machine_api is not None:
            self.cloud.machine_api_url = MACHINE_API_URL
        self.requests: list[Any] = []  # every parsed JSON body, in arrival order
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._root = {
            "gpuTypes": self._gpu_types,
            "pod": self._pod,
            "myself": self._myself,
            "podFindAndDeployOnDemand": lambda info, input: self._deploy(info, input, spot=False),
            "podRentInterruptable": lambda info, input: self._deploy(info, input, spot=True),
            "podStop": self._stop,
            "podResume": self._resume,
            "podBidResume": self._resume,
            "podTerminate": self._terminate,
            "updateUserSettings": self._update_user_settings,
        }

    # -- lifecycle and the test-facing surface ---------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._server is not None, "FakeRunPod is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def faults(self) -> Faults:
        return self.cloud.faults

    @property
    def pods(self) -> dict[str, FakePod]:
        return self.cloud.pods

    @property
    def machines(self) -> Any:
        return self.cloud.machines

    def billed_usd(self, pod_id: str) -> float:
        return self.cloud.billed_usd(pod_id)

    def spend_total(self) -> float:
        return self.cloud.spend_total()

    def live_pods(self) -> list[FakePod]:
        return self.cloud.live_pods()

    def start(self) -> FakeRunPod:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        threading.Thread(target=self._enforce_deadlines, daemon=True).start()
        if self.machine_api is not None:
            self.machine_api.start(_UnixHandler, fake=self)
        return self

    def stop(self) -> None:
        """Stop serving and remove every container this fake started."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.cloud.close()
        if self.machine_api is not None:
            self.machine_api.stop()

    def __enter__(self) -> FakeRunPod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _enforce_deadlines(self) -> None:
        while not self._stopping.wait(0.2):
            self.cloud.enforce_deadlines()

    # -- HTTP ----------------------------------------------------------------------------------------
    def _handle(self, handler: _Handler, method: str) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = ...
        if body is not ... and body is not None:
            self.requests.append(body)
        if self._gateway_fault(handler):
            return
        scope = self._scope(handler, url.query)
        if scope is None:
            return self._send(handler, 401, {"error": "Unauthorized"})
        if body is ...:
            return self._send(handler, 400, {"errors": [{"message": "POST body sent invalid JSON."}]})
        if url.path == "/graphql" and method == "POST":
            status, payload, delay_s = self._graphql(body, scope)
            if delay_s:
                self._stopping.wait(delay_s)
            return self._send(handler, status, payload)
        if scope != ACCOUNT:
            return self._send(handler, 403, {"error": "Forbidden"})
        if url.path == "/billing/pods" and method == "GET":
            if self.faults.billing_unavailable:
                return self._send(handler, 500, {"error": "billing is temporarily unavailable"})
            pod_id = next(iter(parse_qs(url.query).get("podId") or []), None)
            return self._send(handler, 200, self.cloud.billing_records(pod_id))
        if url.path.startswith("/v2/"):
            status, payload = runpod_rest_v2.handle(self.cloud, method, url.path, parse_qs(url.query), body)
            return self._send(handler, status, payload)
        return self._send(handler, 404, {"error": f"no route {method} {url.path}"})

    def _gateway_fault(self, handler: _Handler) -> bool:
        """429s and HTML 502s come from in front of the API, before auth."""
        faults = self.faults
        with self.cloud.lock:
            fault = 429 if faults.rate_limit_burst > 0 else 502 if faults.html_502 > 0 else None
            if fault == 429:
                faults.rate_limit_burst -= 1
            elif fault == 502:
                faults.html_502 -= 1
        if fault == 429:
            headers = {} if faults.retry_after_s is None else {"Retry-After": f"{faults.retry_after_s:g}"}
            self._send(handler, 429, {"errors": [{"message": "Too Many Requests"}]}, headers)
        elif fault == 502:
            self._send_raw(handler, 502, HTML_502, "text/html")
        return fault is not None

    def _scope(self, handler: _Handler, query: str) -> str | None:
        auth = handler.headers.get("Authorization") or ""
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        key = key or next(iter(parse_qs(query).get("api_key") or []), None)
        if not key:
            return None
        if secrets.compare_digest(key, self.api_key):
            return ACCOUNT
        pod = self.cloud.pod_for_key(key)
        return pod.id if pod else None

    def _send(self, handler: _Handler, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_raw(handler, status, json.dumps(payload).encode(), "application/json", headers)

    @staticmethod
    def _send_raw(
        handler: _Handler, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client gave up waiting (the timeout fault): nobody to answer
            handler.close_connection = True

    def _graphql(self, body: Any, scope: str) -> tuple[int, dict[str, Any], float]:
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return 400, {"errors": [{"message": "Must provide query string."}]}, 0.0
        try:
            document = parse(body["query"])
        except GraphQLError as exc:
            return 400, {"errors": [exc.formatted]}, 0.0
        errors = validate(SCHEMA, document)
        if errors:
            return 400, {"errors": [error.formatted for error in errors]}, 0.0
        context: dict[str, Any] = {"scope": scope, "delay_s": 0.0}
        result: Any = execute(
            SCHEMA,
            document,
            root_value=self._root,
            context_value=context,
            variable_values=body.get("variables") or None,
            operation_name=body.get("operationName"),
        )
        status = 400 if result.data is None and result.errors else 200  # bad variables: nothing ran
        return status, result.formatted, context["delay_s"]

    # -- resolvers -----------------------------------------------------------------------------------
    @staticmethod
    def _require_account(info: Any) -> None:
        if info.context["scope"] != ACCOUNT:
            raise GraphQLError(
                "This API key may only stop or terminate its own pod.", extensions={"code": "FORBIDDEN"}
            )

    def _find(self, info: Any, pod_id: str, *, pod_key_ok: bool = False) -> FakePod:
        if not (pod_key_ok and info.context["scope"] == pod_id):
            self._require_account(info)
        pod = self.cloud.find(pod_id)
        if pod is None:
            raise GraphQLError(f"Pod not found: {pod_id}", extensions={"code": "NOT_FOUND"})
        return pod

    def _gpu_types(self, info: Any, input: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self._require_account(info)
        filters = input or {}
        ids = set(filters.get("ids") or ()) | ({filters["id"]} if filters.get("id") else set())
        return [self._gpu_view(gpu) for gpu in CATALOG if not ids or gpu.id in ids]

    @staticmethod
    def _gpu_view(gpu: GpuSpec) -> dict[str, Any]:
        return {
            "id": gpu.id,
            "displayName": gpu.display_name,
            "manufacturer": "Nvidia",
            "memoryInGb": gpu.memory_gb,
            "cudaCores": gpu.cuda_cores,
            "maxGpuCount": gpu.max_count,
            "secureCloud": gpu.secure is not None,
            "communityCloud": gpu.community is not None,
            "securePrice": gpu.secure,
            "communityPrice": gpu.community,
            "secureSpotPrice": gpu.secure_spot,
            "communitySpotPrice": gpu.community_spot,
            "oneWeekPrice": gpu.secure and round(gpu.secure * 0.95, 3),
            "oneMonthPrice": gpu.secure and round(gpu.secure * 0.9, 3),
            "threeMonthPrice": gpu.secure and round(gpu.secure * 0.85, 3),
            "lowestPrice": lambda info, input=None: _lowest_price(gpu, input or {}),
        }

    def _pod(self, info: Any, input: dict[str, Any]) -> dict[str, Any] | None:
        self._require_account(info)
        pod = self.cloud.find(input["podId"])
        return None if pod is None else self._pod_view(pod)

    def _pod_view(self, pod: FakePod) -> dict[str, Any]:
        return {
            "id": pod.id,
            "name": pod.name,
            "imageName": pod.image,
            "env": [f"{k}={v}" for k, v in pod.env.items()],
            "machineId": f"m{pod.host_suffix}",
            "machine": {
                "podHostId": f"{pod.id}-{pod.host_suffix}",
                "gpuDisplayName": pod.gpu.display_name,
                "gpuTypeId": pod.gpu.id,
                "location": "US-TX-3" if pod.cloud == "SECURE" else "CA",
                "secureCloud": pod.cloud == "SECURE",
                "gpuAvailable": 8 - pod.gpu_count,
                "maintenanceStart": None,
                "maintenanceEnd": None,
                "maintenanceNote": None,
            },
            "desiredStatus": pod.status,
            "lastStatusChange": datetime.fromtimestamp(pod.status_changed_at, timezone.utc).strftime(
                f"{pod.status.title()}: %a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)"
            ),
            "podType": "INTERRUPTABLE" if pod.spot else "RESERVED",
            "costPerHr": round(pod.running_rate, 6),
            "adjustedCostPerHr": round(pod.running_rate, 6),
            "gpuCount": pod.gpu_count,
            "vcpuCount": 8.0 * pod.gpu_count,
            "memoryInGb": 31.0 * pod.gpu_count,
            "containerDiskInGb": pod.container_disk_gb,
            "volumeInGb": float(pod.volume_gb),
            "volumeMountPath": pod.volume_mount_path,
            "dockerArgs": "",
            "dockerId": None,
            "port": None,
            "ports": pod.ports,
            "uptimeSeconds": pod.uptime_s,
            "runtime": lambda info: self._runtime(pod),
        }

    def _runtime(self, pod: FakePod) -> dict[str, Any] | None:
        port = self.cloud.ssh_port(pod)
        if port is None:
            return None
        return {
            "uptimeInSeconds": pod.uptime_s,
            "ports": [  # the private entry first: a client must pick the public one
                {"ip": "100.65.13.7", "isIpPublic": False, "privatePort": 22, "publicPort": 22, "type": "tcp"},
                {"ip": "127.0.0.1", "isIpPublic": True, "privatePort": 22, "publicPort": port, "type": "tcp"},
            ],
        }

    def _myself(self, info: Any) -> dict[str, Any]:
        self._require_account(info)
        return {
            "id": "user_2fakerunpod",
            "email": "tester@example.invalid",
            "pubKey": self.cloud.pub_key,
            "clientBalance": lambda info: round(self.cloud.balance_usd(), 6),
            "currentSpendPerHr": lambda info: round(self.cloud.spend_per_hour(), 6),
            "spendLimit": 80.0,
            "notifyPodsStale": True,
            "notifyPodsGeneral": True,
            "notifyLowBalance": True,
            "pods": lambda info: [self._pod_view(pod) for pod in self.cloud.live_pods()],
            "networkVolumes": [],
        }

    def _update_user_settings(self, info: Any, input: dict[str, Any] | None = None) -> dict[str, Any]:
        self._require_account(info)
        if input and input.get("pubKey") is not None:
            self.cloud.pub_key = input["pubKey"]
        return self._myself(info)

    def _deploy(self, info: Any, input: dict[str, Any], *, spot: bool) -> dict[str, Any]:
        self._require_account(info)
        try:
            pod = self.cloud.create_pod(
                name=input.get("name") or (input.get("imageName") or "pod").split(":")[0],
                image=input.get("imageName") or "",
                gpu_type_id=input.get("gpuTypeId") or "",
                gpu_count=input.get("gpuCount") or 1,
                cloud_type=input.get("cloudType") or "ALL",
                bid_per_gpu=input["bidPerGpu"] if spot else None,
                env={item["key"]: item["value"] for item in input.get("env") or []},
                volume_gb=input.get("volumeInGb") or 0,
                container_disk_gb=input.get("containerDiskInGb") or 10,
                volume_mount_path=input.get("volumeMountPath") or "/runpod-volume",
                ports=(input.get("ports") or "").replace(" ", ""),
                stop_after=_epoch(input.get("stopAfter")),
                terminate_after=_epoch(input.get("terminateAfter")),
            )
        except CloudError as exc:
            raise _gql_error(exc) from None
        if self.faults.create_timeout_once:
            self.faults.create_timeout_once = False
            info.context["delay_s"] = self.faults.create_delay_s
        return self._pod_view(pod)

    def _stop(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        pod = self._find(info, input["podId"], pod_key_ok=True)
        self.cloud.actions.append((info.context["scope"], "podStop", pod.id))
        self.cloud.stop_pod(pod)
        return self._pod_view(pod)

    def _resume(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        pod = self._find(info, input["podId"])
        try:
            self.cloud.resume_pod(pod, input.get("bidPerGpu"))
        except CloudError as exc:
            raise _gql_error(exc) from None
        return self._pod_view(pod)

    def _terminate(self, info: Any, input: dict[str, Any]) -> None:
        pod = self._find(info, input["podId"], pod_key_ok=True)
        self.cloud.actions.append((info.context["scope"], "podTerminate", pod.id))
        self.cloud.terminate_pod(pod)


def _lowest_price(gpu: GpuSpec, filters: dict[str, Any]) -> dict[str, Any]:
    """`lowestPrice(input: {gpuCount})`: the cheapest per-GPU prices across clouds for that many GPUs."""
    count = filters.get("gpuCount") or 1
    clouds = ["SECURE"] if filters.get("secureCloud") else ["SECURE", "COMMUNITY"]
    on_demand = [p for c in clouds if (p := gpu.price(c, False)) is not None]
    spot = [p for c in clouds if (p := gpu.price(c, True)) is not None]
    if count > gpu.max_count:
        on_demand = spot = []
    return {
        "gpuName": gpu.display_name,
        "gpuTypeId": gpu.id,
        "minimumBidPrice": min(spot, default=None),
        "uninterruptablePrice": min(on_demand, default=None),
        "minMemory": 31 * count,
        "minVcpu": 8 * count,
        "stockStatus": "High" if on_demand else None,
    }
