"""RunPod as a cloudsd provider, over its REST API v2 with plain httpx (no SDK; REST v2 is the only RunPod API it speaks).

Only this module and `runpod_api.py` know RunPod. Catalog rows become `Offer`s here and pods become
`MachineInfo`s; RunPod's problems become cloudsd errors in `runpod_api`.

- Offers: `GET /v2/catalog/gpus?include=AVAILABILITY&product=POD`, asked once per cloud (SECURE, COMMUNITY)
  because stock differs per cloud. An offer is listed only on a cloud that has stock for `gpu_count` GPUs,
  at that cloud's price x count plus the `/workspace` volume at $0.10/GB/month while running ($0.20 stopped,
  docs.runpod.io), with the highest host CUDA version that has capacity (the core's CUDA floor filters it).
  `offer_id` is "<gpu type id>|<cloud>". v2 has no spot pods, so an interruptible search finds nothing here.
- Machines are pods named `cloudsd-<name>` with only `22/tcp` exposed; cloudsd connects to `ssh.direct`
  only (`ssh.proxy` is a shell-only proxy that cannot forward the UI's port).
- A create is never repeated blindly: after a lost answer the pod is looked up by its name and a one-off id
  in its env (`CLOUDSD_CREATE_ID`).
- v2 has no `terminateAfter`: the on-machine watchdog is the only deadline on the machine
  (`supports_deadline` is False), and it ends the pod with the pod-scoped key (`self_stop_call`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from cloudsd.errors import ConfigError, ProviderError
from cloudsd.gpus import canonical_gpu_name
from cloudsd.machine import (
    LABEL_PREFIX,
    CreateRequest,
    MachineInfo,
    MachineStatus,
    Offer,
    OfferSpec,
    SSHEndpoint,
)
from cloudsd.providers import KeyedAccount, Provider, ReportsBilling, SelfStopCall, Stoppable
from cloudsd.providers.credentials import RUNPOD_KEY
from cloudsd.providers.http import ConnectFailed, JsonApi
from cloudsd.providers.runpod_api import (
    CLOUDS,
    CREATE_ID_ENV,
    DEFAULT_BASE_URL,
    GatewayError,
    RestV2,
    RunPodApiError,
    create_error,
    create_pod_body,
    parse_time,
    rate_limit_wait_s,
    resume_error,
)
from cloudsd.providers.runpod_volumes import RunPodVolumes, in_stock_at, network_mount
from cloudsd.volumes import VolumeInfo

KEY_ENV = "RUNPOD_API_KEY"
URL_ENV = "RUNPOD_API_BASE_URL"
POD_ENV = "RUNPOD_POD_ID"
HOURS_PER_MONTH = 730.0
VOLUME_RUNNING_USD_PER_GB_MONTH = 0.10
VOLUME_STOPPED_USD_PER_GB_MONTH = 0.20
CONSOLE_URL = "https://www.runpod.io/console/pods"
KEY_HINT = RUNPOD_KEY.hint
STATUS = {
    "PROVISIONING": MachineStatus.BOOTING,
    "STARTING": MachineStatus.BOOTING,
    "RUNNING": MachineStatus.RUNNING,
    "EXITED": MachineStatus.STOPPED,
    "ERROR": MachineStatus.FAILED,
    "TERMINATED": MachineStatus.TERMINATED,
}
NO_STOCK = "NONE"


# -- pure conversions ------------------------------------------------------------------------------
def storage_price_per_hour(disk_gb: int, *, running: bool) -> float:
    per_month = VOLUME_RUNNING_USD_PER_GB_MONTH if running else VOLUME_STOPPED_USD_PER_GB_MONTH
    return disk_gb * per_month / HOURS_PER_MONTH


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def offers_from_catalog(cloud: str, gpus: Sequence[Mapping[str, Any]], spec: OfferSpec) -> list[Offer]:
    """Offers on one cloud from its `GET /v2/catalog/gpus?include=AVAILABILITY` rows, cheapest first.

    Listed only where the cloud offers the type (`secure`/`community`), has stock (`availability` not NONE),
    takes `spec.gpu_count` GPUs (`maxCount`) and has a price. `cuda_version` is the highest host CUDA version
    with free capacity; a type whose every CUDA version is full is not listed. No filtering by GPU, VRAM or
    price: the core does that one filter at a time to say which one emptied the list.
    """
    if spec.interruptible:
        return []  # REST v2 creates no spot pods
    tier = cloud.lower()
    running_storage = storage_price_per_hour(spec.disk_gb, running=True)
    stopped_storage = storage_price_per_hour(spec.disk_gb, running=False)
    offers = []
    for gpu in gpus:
        per_gpu = (gpu.get("price") or {}).get(tier)
        max_count = (gpu.get("maxCount") or {}).get(tier)
        if not gpu.get(tier) or gpu.get("availability") in (None, NO_STOCK):
            continue
        if not isinstance(per_gpu, (int, float)) or per_gpu <= 0:
            continue
        if isinstance(max_count, int) and max_count < spec.gpu_count:
            continue
        cuda = None
        versions = gpu.get("cudaVersions")
        if isinstance(versions, list):
            free = [str(v["version"]) for v in versions if isinstance(v, dict) and v.get("available")]
            if not free:
                continue
            cuda = max(free, key=_version_key)
        offers.append(
            Offer(
                provider="runpod",
                offer_id=f"{gpu['id']}|{cloud}",
                gpu_name=canonical_gpu_name(str(gpu["id"])),
                gpu_count=spec.gpu_count,
                vram_gb=float(gpu.get("memory") or 0),
                price_per_hour=round(per_gpu * spec.gpu_count + running_storage, 6),
                disk_gb=spec.disk_gb,
                cuda_version=cuda,
                storage_price_per_hour=round(stopped_storage, 6),
            )
        )
    return offers


def parse_offer_id(offer_id: str) -> tuple[str, str]:
    """("NVIDIA GeForce RTX 4090", "COMMUNITY") from "NVIDIA GeForce RTX 4090|COMMUNITY"."""
    gpu_type_id, _, cloud = offer_id.rpartition("|")
    if not gpu_type_id or cloud not in CLOUDS:
        raise ProviderError(f"not a RunPod offer id: {offer_id!r}", hint="Run `cloudsd offers` again.")
    return gpu_type_id, cloud


def ssh_endpoint(pod: Mapping[str, Any]) -> SSHEndpoint | None:
    """`ssh.direct`: the pod's own sshd over its public 22/tcp mapping. Never `ssh.proxy` (no forwarding)."""
    direct = (pod.get("ssh") or {}).get("direct")
    if isinstance(direct, dict) and direct.get("host") and isinstance(direct.get("port"), int):
        return SSHEndpoint(host=str(direct["host"]), port=int(direct["port"]),
                           user=str(direct.get("username") or "root"))
    return None


def volume_gb(pod: Mapping[str, Any]) -> int:
    persistent = (pod.get("mounts") or {}).get("persistent") or {}
    size = persistent.get("size")
    return int(size) if isinstance(size, int) else 0


def running_price(pod: Mapping[str, Any], catalog: Sequence[Mapping[str, Any]]) -> float | None:
    """What a stopped pod bills per hour once started: its cloud's list price x count plus its volume (v2 says
    `cost` 0.0 for an EXITED pod)."""
    gpu = pod.get("gpu") or {}
    row = next((g for g in catalog if g.get("id") == gpu.get("id")), None)
    per_gpu = ((row or {}).get("price") or {}).get(str(pod.get("cloud") or "").lower())
    if not isinstance(per_gpu, (int, float)) or per_gpu <= 0:
        return None
    count = gpu["count"] if isinstance(gpu.get("count"), int) else 1
    return round(per_gpu * count + storage_price_per_hour(volume_gb(pod), running=True), 6)


def machine_from_pod(pod: Mapping[str, Any], *, stopped_price: float | None = None) -> MachineInfo:
    """`stopped_price`: the running rate of a stopped pod, which v2 does not report on the pod."""
    raw = str(pod.get("status") or "")
    status = STATUS.get(raw, MachineStatus.UNKNOWN)
    ssh = None
    detail = raw.lower()
    if status is MachineStatus.RUNNING:
        ssh = ssh_endpoint(pod)
        if ssh is None:
            proxy = " (RunPod's ssh.proxy cannot forward ports, so cloudsd waits for direct SSH)" \
                if (pod.get("ssh") or {}).get("proxy") else ""
            status, detail = MachineStatus.BOOTING, f"running, but no direct SSH on a public 22/tcp port yet{proxy}"
        else:
            detail = f"up {(pod.get('runtime') or {}).get('uptime') or 0} s"
    gpu = (pod.get("gpu") or {}).get("id")
    cost = pod.get("cost")
    return MachineInfo(
        provider="runpod",
        provider_id=str(pod["id"]),
        label=pod.get("name"),
        status=status,
        ssh=ssh,
        price_per_hour=stopped_price if status is MachineStatus.STOPPED
        else float(cost) if isinstance(cost, (int, float)) else None,
        gpu_name=canonical_gpu_name(str(gpu)) if gpu else None,
        image=pod.get("image"),
        detail=detail,
        storage_price_per_hour=storage_price_per_hour(volume_gb(pod), running=False),
    )


def billing_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`GET /v2/billing/pods` records (one per pod per bucket) summed per pod: provider_id, amount_usd, and
    the first bucket's start and the last bucket's end."""
    totals: dict[str, dict[str, Any]] = {}
    for record in records:
        pod_id, amount = record.get("podId"), record.get("totalAmount")
        if not pod_id or not isinstance(amount, (int, float)):
            continue
        row = totals.setdefault(str(pod_id), {"provider": "runpod", "provider_id": str(pod_id), "label": None,
                                              "start": None, "end": None, "amount_usd": 0.0})
        row["amount_usd"] += float(amount)
        start, end = parse_time(record.get("startTime")), parse_time(record.get("endTime"))
        if start is not None and (row["start"] is None or start < row["start"]):
            row["start"] = start
        if end is not None and (row["end"] is None or end > row["end"]):
            row["end"] = end
    return list(totals.values())


def self_stop_call(action: str) -> SelfStopCall:
    """`POST /v2/pods/{RUNPOD_POD_ID}/action` with the pod-scoped RUNPOD_API_KEY: stop answers 200 with the pod,
    terminate 204; a 404 means the pod is gone already."""
    return SelfStopCall(
        method="POST",
        url=f"${{{URL_ENV}:-{DEFAULT_BASE_URL}}}/v2/pods/${{{POD_ENV}}}/action",
        headers={"Authorization": f"Bearer ${{{KEY_ENV}}}", "Content-Type": "application/json"},
        body={"action": action},
        ok_statuses=(204,) if action == "terminate" else (200,),
        ok_fields={} if action == "terminate" else {"id": f"${{{POD_ENV}}}"},
        gone_statuses=(404,),
        needs_env=(KEY_ENV, POD_ENV),
    )


# -- the provider ----------------------------------------------------------------------------------
class RunPodProvider(RunPodVolumes, Stoppable, ReportsBilling, KeyedAccount, Provider):
    name = "runpod"
    supports_volumes = True  # network volumes: in one data center, where every pod that mounts one must run
    reports_volume_billing = True
    supports_stop = True  # the volume (/workspace) survives; the container disk does not
    stop_keeps = "/workspace (models, outputs; the container disk is lost)"
    supports_self_stop = True  # each pod gets a RUNPOD_API_KEY scoped to itself
    supports_deadline = False  # v2 has no terminateAfter: the watchdog is the deadline
    reports_billing = True

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        create_timeout_s: float = 60.0,
        retry_deadline_s: float = 90.0,
        **_ignored: Any,
    ) -> None:
        credential = RUNPOD_KEY.resolve(api_key)
        self.credential_source = credential.source
        self.key_last4 = credential.last4
        self.base_url = (base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        try:
            parts = urlsplit(self.base_url)
            _ = parts.port  # raises on a port that is not a number
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError(f"the RunPod base URL {self.base_url!r} is not an http(s) URL.",
                              hint=f"Fix runpod.base_url or {URL_ENV}.")
        self.create_timeout_s = create_timeout_s
        hint = f"{KEY_HINT} The key in use (…{self.key_last4}) came from {self.credential_source}."
        self._api = RestV2(
            JsonApi(
                provider_label="RunPod",
                base_url=self.base_url,
                api_key=credential.key,
                key_hint=hint,
                deadline_s=retry_deadline_s,
                credential_statuses=frozenset(),  # 401 is read in runpod_api (its detail); 403 is a pool or pod
                pace=rate_limit_wait_s,
            ),
            hint,
        )

    def __repr__(self) -> str:
        return f"RunPodProvider({self.base_url}, key …{self.key_last4} from {self.credential_source})"

    def close(self) -> None:
        self._api.close()

    def offers(self, spec: OfferSpec) -> list[Offer]:
        if spec.interruptible:
            return []
        offers: list[Offer] = []
        for cloud in CLOUDS:
            offers += offers_from_catalog(cloud, self._api.gpu_types(cloud, spec.gpu_count, spec.cuda), spec)
        return sorted(offers, key=lambda o: (o.price_per_hour, o.gpu_name, o.offer_id))

    def create(self, offer: Offer, request: CreateRequest) -> str:
        gpu_type_id, cloud = parse_offer_id(offer.offer_id)
        create_id = uuid.uuid4().hex
        body = create_pod_body(
            name=request.label,
            image=request.image,
            gpu_type_id=gpu_type_id,
            cloud=cloud,
            gpu_count=offer.gpu_count,
            volume_gb=request.disk_gb,
            public_key=request.public_key,
            env=request.env,
            cuda=request.cuda,
            create_id=create_id,
        )
        if request.volume_id:  # the network volume at /workspace instead of a volume disk, in its data center
            volume = self._api.network_volume(request.volume_id)
            if volume is None:
                raise ProviderError(f"RunPod has no network volume {request.volume_id}.",
                                    hint="`cloudsd volume ls` shows what the account holds.")
            body["mounts"] = network_mount(request.volume_id)
            body["dataCenterIds"] = [str(volume.get("dataCenter"))]
        try:
            pod = self._api.create(body, self.create_timeout_s)
        except (ConnectFailed, GatewayError) as exc:
            # The answer was lost, so the pod may exist and bill. Look before anyone tries again.
            try:
                found = self._find_created(request.label, create_id)
            except ProviderError as lookup:
                found, seen = None, f"and listing the pods failed too ({lookup.message})"
            else:
                seen = "and no pod of that name exists yet"
            if found:
                return found
            raise ProviderError(
                f"RunPod did not confirm the create of {request.label} ({exc.message}), {seen}.",
                hint=f"It may still appear and bill: check {CONSOLE_URL} "
                f"for a pod named {request.label} and terminate it before trying again.",
            ) from None
        except RunPodApiError as exc:
            raise create_error(exc, offer.offer_id) from None
        return str(pod["id"])

    def volume_offers(self, spec: OfferSpec, volume: VolumeInfo) -> list[Offer]:
        """Offers of GPU types with stock in the volume's data center (the catalog's `dataCenters`)."""
        if spec.interruptible:
            return []
        offers: list[Offer] = []
        for cloud in CLOUDS:
            rows = [g for g in self._api.gpu_types(cloud, spec.gpu_count, spec.cuda)
                    if in_stock_at(g, volume.placement)]
            offers += [replace(o, region=volume.placement) for o in offers_from_catalog(cloud, rows, spec)]
        return sorted(offers, key=lambda o: (o.price_per_hour, o.gpu_name, o.offer_id))

    def _find_created(self, label: str, create_id: str) -> str | None:
        named = [pod for pod in self._api.pods() if pod.get("name") == label and pod.get("status") != "TERMINATED"]
        ours = [pod for pod in named if (pod.get("env") or {}).get(CREATE_ID_ENV) == create_id]
        return str(ours[0]["id"]) if ours else None

    def get(self, provider_id: str) -> MachineInfo | None:
        try:
            pod = self._api.pod(provider_id)
        except RunPodApiError as exc:
            if exc.detail == "not a pod id":
                return None
            raise
        if pod is None or pod.get("status") == "TERMINATED":
            return None
        return machine_from_pod(pod)

    def destroy(self, provider_id: str) -> None:
        try:
            self._api.action(provider_id, "terminate")
        except RunPodApiError as exc:
            if exc.status == 404 or self.get(provider_id) is None:
                return  # already gone
            raise ProviderError(exc.message, hint=f"It may still bill: terminate it at {CONSOLE_URL}, "
                                "or run `cloudsd down` again.") from None

    def stop(self, provider_id: str) -> None:
        try:
            self._api.action(provider_id, "stop")
        except RunPodApiError as exc:
            pod = self._api.pod(provider_id) if exc.status == 409 else None
            if pod is not None and pod.get("status") == "EXITED":
                return  # stopped already
            raise

    def start(self, provider_id: str) -> None:
        try:
            self._api.action(provider_id, "start")
        except RunPodApiError as exc:
            refused = resume_error(exc, provider_id)
            if refused is not exc:
                raise refused from None
            pod = self._api.pod(provider_id) if exc.status == 409 else None
            if pod is not None and pod.get("status") in ("PROVISIONING", "STARTING", "RUNNING"):
                return  # starting or running already
            raise

    def list_machines(self) -> list[MachineInfo]:
        ours = [pod for pod in self._api.pods()
                if str(pod.get("name") or "").startswith(LABEL_PREFIX) and pod.get("status") != "TERMINATED"]
        catalog = self._api.list_prices() if any(pod.get("status") == "EXITED" for pod in ours) else []
        return [machine_from_pod(pod, stopped_price=running_price(pod, catalog)) for pod in ours]

    def account(self) -> dict[str, Any]:
        """Spend rate for cost reports: {"balance_usd": None (v2 has no balance route), "spend_usd_per_hour":
        the sum of `cost` over the account's pods, "spend_limit_usd": None, "missing": what v2 does not give}."""
        rate = sum(float(pod["cost"]) for pod in self._api.pods() if isinstance(pod.get("cost"), (int, float)))
        return {"balance_usd": None, "spend_usd_per_hour": round(rate, 6), "spend_limit_usd": None,
                "missing": "RunPod's v2 API reports no account balance"}

    def billing(self, since: float, until: float) -> list[dict[str, Any]]:
        """What RunPod billed per pod between two epoch times (`GET /v2/billing/pods`, hourly buckets)."""
        return billing_rows(self._api.billing_pods(since, until))

    def self_stop_call(self, action: str) -> SelfStopCall:
        return self_stop_call(action)

    def check(self) -> str:
        """One cheap live call for `cloudsd doctor` (`GET /v2/pods`): a short line, or an error."""
        pods = self._api.pods()
        rate = sum(float(p["cost"]) for p in pods if isinstance(p.get("cost"), (int, float)))
        money = f"; {len(pods)} pod(s), spending ${rate:.2f}/h" if pods else "; no pods"
        return (f"key …{self.key_last4} from {self.credential_source} works on REST v2 at {self.base_url}{money} "
                "(v2 reports no balance)")
