"""RunPod as a cloudsd provider, spoken over plain HTTP (no runpod SDK).

Only this module and `runpod_graphql.py` know RunPod. The vendor's GPU types become `Offer`s here and its
pods become `MachineInfo`s; its errors become cloudsd errors in `runpod_graphql`.

- Offers: one `gpuTypes` query; one offer per GPU type and cloud (SECURE, COMMUNITY), `offer_id`
  "<gpuTypeId>|<cloud>", priced per GPU x count plus the volume at $0.10/GB/month while running
  ($0.20 stopped). RunPod publishes no reliability figure, so `reliability` is None.
- Machines are pods named `cloudsd-<name>` with only `22/tcp` exposed; the UI is tunnelled over SSH.
- A create is never repeated blindly: after a lost answer the pod is looked up by its name and a
  one-off id in its env (`CLOUDSD_CREATE_ID`).
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cloudsd.errors import ConfigError, CredentialsError, ProviderError
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
from cloudsd.providers import KeyedAccount, Provider, ReportsBilling, Stoppable
from cloudsd.providers.http import ConnectFailed, JsonApi
from cloudsd.providers.runpod_graphql import (
    CREATE_ID_ENV,
    GatewayError,
    GraphQLBackend,
    RunPodApiError,
    RunPodBackend,
    deploy_input,
    env_dict,
)

DEFAULT_BASE_URL = "https://api.runpod.io"
CONFIG_FILE = Path(".runpod") / "config.toml"  # under the home directory
HOURS_PER_MONTH = 730.0
VOLUME_RUNNING_USD_PER_GB_MONTH = 0.10
VOLUME_STOPPED_USD_PER_GB_MONTH = 0.20
# (cloudType, availability field, on-demand price field, spot price field) on a GpuType
CLOUDS = (
    ("SECURE", "secureCloud", "securePrice", "secureSpotPrice"),
    ("COMMUNITY", "communityCloud", "communityPrice", "communitySpotPrice"),
)
KEY_HINT = (
    "Set RUNPOD_API_KEY, or put `api_key = \"…\"` under [default] in ~/.runpod/config.toml "
    "(create a key at https://www.runpod.io/console/user/settings)."
)
STATUS = {
    "RUNNING": MachineStatus.RUNNING,
    "CREATED": MachineStatus.BOOTING,
    "RESTARTING": MachineStatus.BOOTING,
    "EXITED": MachineStatus.STOPPED,
    "PAUSED": MachineStatus.STOPPED,
    "DEAD": MachineStatus.FAILED,
    "TERMINATED": MachineStatus.TERMINATED,
}


# -- keys ------------------------------------------------------------------------------------------
def resolve_api_key(explicit: str | None = None) -> tuple[str, str]:
    """(key, where it came from): the argument, then RUNPOD_API_KEY, then ~/.runpod/config.toml."""
    if explicit and explicit.strip():
        return explicit.strip(), "argument"
    from_env = os.environ.get("RUNPOD_API_KEY", "").strip()
    if from_env:
        return from_env, "env RUNPOD_API_KEY"
    path = Path.home() / CONFIG_FILE
    from_file = _key_from_config(path)
    if from_file:
        return from_file, f"~/{CONFIG_FILE}"
    raise CredentialsError("No RunPod API key found.", hint=KEY_HINT)


def _key_from_config(path: Path) -> str | None:
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = parse_toml(text)
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}).", hint=KEY_HINT) from None
    section = data.get("default")
    key = section.get("api_key") if isinstance(section, dict) else None
    key = key or data.get("apikey")  # runpodctl writes a top-level `apikey`
    return key.strip() if isinstance(key, str) and key.strip() else None


def parse_toml(text: str) -> dict[str, Any]:
    """TOML via tomllib on Python 3.11+; on 3.10 a tiny reader of `[section]` and `key = "string"` lines."""
    if sys.version_info >= (3, 11):
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(str(exc)) from None
    return parse_simple_toml(text)


_SECTION = re.compile(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]$")
_PAIR = re.compile(r"""^([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([^\s#"']+))\s*(?:#.*)?$""")


def parse_simple_toml(text: str) -> dict[str, Any]:
    """Tables and string values only: enough for RunPod's config file. Other lines are skipped."""
    data: dict[str, Any] = {}
    table = data
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if section := _SECTION.match(line):
            table = data.setdefault(section.group(1), {})
            continue
        pair = _PAIR.match(line)
        if pair is None:
            if line.startswith("[") or "=" not in line:
                raise ValueError(f"line {number}: cannot read {line[:40]!r}")
            continue
        basic, literal, bare = pair.group(2), pair.group(3), pair.group(4)
        if basic is not None:
            value = basic.replace('\\"', '"').replace("\\\\", "\\")
        else:
            value = literal if literal is not None else bare
        table[pair.group(1)] = value
    return data


# -- pure conversions ------------------------------------------------------------------------------
def storage_price_per_hour(disk_gb: int, *, running: bool) -> float:
    per_month = VOLUME_RUNNING_USD_PER_GB_MONTH if running else VOLUME_STOPPED_USD_PER_GB_MONTH
    return disk_gb * per_month / HOURS_PER_MONTH


def offers_from_gpu_types(gpu_types: Sequence[Mapping[str, Any]], spec: OfferSpec) -> list[Offer]:
    """One offer per GPU type and cloud with a price for `spec.gpu_count` GPUs, cheapest first.

    No filtering by GPU, VRAM or price: the core does that one filter at a time to say which one emptied
    the list. Types out of stock for that many GPUs (no `lowestPrice`) are skipped.
    """
    spot = spec.interruptible
    running_storage = storage_price_per_hour(spec.disk_gb, running=True)
    stopped_storage = storage_price_per_hour(spec.disk_gb, running=False)
    offers = []
    for gpu in gpu_types:
        lowest = gpu.get("lowestPrice") or {}
        max_count = gpu.get("maxGpuCount")
        if not lowest.get("minimumBidPrice" if spot else "uninterruptablePrice"):
            continue
        if isinstance(max_count, int) and max_count < spec.gpu_count:
            continue
        for cloud, available, price_field, spot_field in CLOUDS:
            per_gpu = gpu.get(spot_field if spot else price_field)
            if not gpu.get(available) or not isinstance(per_gpu, (int, float)) or per_gpu <= 0:
                continue
            offers.append(
                Offer(
                    provider="runpod",
                    offer_id=f"{gpu['id']}|{cloud}",
                    gpu_name=canonical_gpu_name(str(gpu["id"])),
                    gpu_count=spec.gpu_count,
                    vram_gb=float(gpu.get("memoryInGb") or 0),
                    price_per_hour=round(per_gpu * spec.gpu_count + running_storage, 6),
                    disk_gb=spec.disk_gb,
                    interruptible=spot,
                    storage_price_per_hour=round(stopped_storage, 6),
                )
            )
    return sorted(offers, key=lambda o: (o.price_per_hour, o.gpu_name, o.offer_id))


def parse_time(value: Any) -> float | None:
    """An ISO 8601 time from RunPod ("2026-01-02T03:04:05Z") as epoch seconds; None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def parse_offer_id(offer_id: str) -> tuple[str, str]:
    """("NVIDIA GeForce RTX 4090", "COMMUNITY") from "NVIDIA GeForce RTX 4090|COMMUNITY"."""
    gpu_type_id, _, cloud = offer_id.rpartition("|")
    if not gpu_type_id or cloud not in ("SECURE", "COMMUNITY"):
        raise ProviderError(f"not a RunPod offer id: {offer_id!r}", hint="Run `cloudsd offers` again.")
    return gpu_type_id, cloud


def bid_per_gpu(offer: Offer) -> float:
    """The spot bid an interruptible offer was priced at: its per-GPU price, storage taken out."""
    compute = offer.price_per_hour - storage_price_per_hour(offer.disk_gb, running=True)
    return round(compute / max(offer.gpu_count, 1), 6)


def ssh_endpoint(pod: Mapping[str, Any]) -> SSHEndpoint | None:
    """Full SSH: the runtime port with privatePort 22, a public IP and type tcp."""
    for port in (pod.get("runtime") or {}).get("ports") or []:
        if (
            port.get("privatePort") == 22
            and port.get("isIpPublic")
            and port.get("type") == "tcp"
            and port.get("ip")
            and port.get("publicPort")
        ):
            return SSHEndpoint(host=str(port["ip"]), port=int(port["publicPort"]))
    return None


def machine_from_pod(pod: Mapping[str, Any]) -> MachineInfo:
    desired = str(pod.get("desiredStatus") or "")
    status = STATUS.get(desired, MachineStatus.UNKNOWN)
    ssh = None
    detail = desired.lower()
    if status is MachineStatus.RUNNING:
        ssh = ssh_endpoint(pod)
        if pod.get("runtime") is None:
            status, detail = MachineStatus.BOOTING, "starting the container (pulling the image)"
        elif ssh is None:
            status, detail = MachineStatus.BOOTING, "running, but no public 22/tcp port yet"
        else:
            detail = f"up {(pod['runtime'] or {}).get('uptimeInSeconds') or 0} s"
    machine = pod.get("machine") or {}
    gpu = machine.get("gpuDisplayName")
    cost = pod.get("costPerHr")
    return MachineInfo(
        provider="runpod",
        provider_id=str(pod["id"]),
        label=pod.get("name"),
        status=status,
        ssh=ssh,
        price_per_hour=float(cost) if isinstance(cost, (int, float)) else None,
        gpu_name=canonical_gpu_name(gpu) if gpu else None,
        image=pod.get("imageName"),
        detail=detail,
        storage_price_per_hour=storage_price_per_hour(int(pod.get("volumeInGb") or 0), running=False),
    )


# -- the provider ----------------------------------------------------------------------------------
class RunPodProvider(Stoppable, ReportsBilling, KeyedAccount, Provider):
    name = "runpod"
    supports_stop = True  # the volume (/workspace) survives; the container disk does not
    supports_self_stop = True  # each pod gets a RUNPOD_API_KEY scoped to itself
    supports_deadline = True  # terminateAfter, enforced by RunPod even while the laptop sleeps
    reports_billing = True

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        backend: RunPodBackend | None = None,
        create_timeout_s: float = 60.0,
        retry_deadline_s: float = 90.0,
        **_ignored: Any,
    ) -> None:
        key, self.credential_source = resolve_api_key(api_key)
        self.key_last4 = key[-4:]
        self.base_url = (base_url or os.environ.get("RUNPOD_API_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.create_timeout_s = create_timeout_s
        hint = f"{KEY_HINT} The key in use (…{self.key_last4}) came from {self.credential_source}."
        self._backend: RunPodBackend = backend or GraphQLBackend(
            JsonApi(
                provider_label="RunPod",
                base_url=self.base_url,
                api_key=key,
                key_hint=hint,
                deadline_s=retry_deadline_s,
            )
        )

    def __repr__(self) -> str:
        return f"RunPodProvider({self.base_url}, key …{self.key_last4} from {self.credential_source})"

    def close(self) -> None:
        self._backend.close()

    def offers(self, spec: OfferSpec) -> list[Offer]:
        return offers_from_gpu_types(self._backend.gpu_types(spec.gpu_count), spec)

    def create(self, offer: Offer, request: CreateRequest) -> str:
        gpu_type_id, cloud = parse_offer_id(offer.offer_id)
        create_id = uuid.uuid4().hex
        variables = deploy_input(
            name=request.label,
            image=request.image,
            gpu_type_id=gpu_type_id,
            cloud_type=cloud,
            gpu_count=offer.gpu_count,
            volume_gb=request.disk_gb,
            public_key=request.public_key,
            env=request.env,
            cuda=request.cuda,
            terminate_after=request.deadline_at,
            bid_per_gpu=bid_per_gpu(offer) if offer.interruptible else None,
            create_id=create_id,
        )
        try:
            pod = self._backend.deploy(variables, spot=offer.interruptible, timeout_s=self.create_timeout_s)
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
                hint="It may still appear and bill: check https://www.runpod.io/console/pods "
                f"for a pod named {request.label} and terminate it before trying again.",
            ) from None
        return str(pod["id"])

    def _find_created(self, label: str, create_id: str) -> str | None:
        named = [pod for pod in self._backend.pods() if pod.get("name") == label]
        ours = [pod for pod in named if env_dict(pod).get(CREATE_ID_ENV) == create_id]
        if not ours and len(named) == 1 and CREATE_ID_ENV not in env_dict(named[0]):
            ours = named  # a backend that does not echo env: the name alone must do
        return str(ours[0]["id"]) if ours else None

    def get(self, provider_id: str) -> MachineInfo | None:
        pod = self._backend.pod(provider_id)
        if pod is None or pod.get("desiredStatus") == "TERMINATED":
            return None
        return machine_from_pod(pod)

    def destroy(self, provider_id: str) -> None:
        try:
            self._backend.terminate(provider_id)
        except RunPodApiError:
            if self.get(provider_id) is None:
                return  # already gone
            raise

    def stop(self, provider_id: str) -> None:
        self._backend.stop(provider_id)

    def list_machines(self) -> list[MachineInfo]:
        return [
            machine_from_pod(pod)
            for pod in self._backend.pods()
            if str(pod.get("name") or "").startswith(LABEL_PREFIX) and pod.get("desiredStatus") != "TERMINATED"
        ]

    def account(self) -> dict[str, Any]:
        """Balance and spend rate for cost reports: {"balance_usd", "spend_usd_per_hour", "spend_limit_usd"}."""
        me = self._backend.account()

        def number(field: str) -> float | None:
            value = me.get(field)
            return float(value) if isinstance(value, (int, float)) else None

        return {
            "balance_usd": number("clientBalance"),
            "spend_usd_per_hour": number("currentSpendPerHr"),
            "spend_limit_usd": number("spendLimit"),
        }

    def billing(self, since: float, until: float) -> list[dict[str, Any]]:
        """What RunPod billed per pod between two epoch times (runpodctl's `GET /billing/pods`), one dict per
        pod: provider_id, amount_usd, start (the first bucket's time), end (None: RunPod gives no end)."""
        records = self._backend.billing_pods(since, until)
        totals: dict[str, dict[str, Any]] = {}
        for record in records:
            pod_id = record.get("podId")
            amount = record.get("amount")
            if not pod_id or not isinstance(amount, (int, float)):
                continue
            row = totals.setdefault(str(pod_id), {"provider": "runpod", "provider_id": str(pod_id), "label": None,
                                                  "start": None, "end": None, "amount_usd": 0.0})
            row["amount_usd"] += float(amount)
            started = parse_time(record.get("time"))
            if started is not None and (row["start"] is None or started < row["start"]):
                row["start"] = started
        return list(totals.values())

    def check(self) -> str:
        """One cheap live call for `cloudsd doctor`: a short line, or CredentialsError/ProviderError."""
        account = self.account()
        balance = account["balance_usd"]
        spend = account["spend_usd_per_hour"]
        money = f"; balance ${balance:.2f}" if balance is not None else ""
        money += f", spending ${spend:.2f}/h" if spend else ""
        return f"key …{self.key_last4} from {self.credential_source} works{money}"
