"""RunPod: payload builders and parsers, key resolution, and the client against the fake over real HTTP."""

from __future__ import annotations

import io
import json
import re
import socket
import time
from typing import Any

import httpx
import paramiko
import pytest
from graphql import parse, validate

from cloudsd.errors import ConfigError, CredentialsError, NoCapacity, ProviderError
from cloudsd.machine import CreateRequest, MachineStatus, Offer, OfferSpec
from cloudsd.providers import runpod_graphql as gql
from cloudsd.providers.runpod import (
    RunPodProvider,
    bid_per_gpu,
    machine_from_pod,
    offers_from_gpu_types,
    parse_simple_toml,
    resolve_api_key,
)
from tests.fakes.runpod_server import SCHEMA, FakeRunPod

NASTY_ENV = {"QUOTE": 'say "hi"', "NEWLINE": "line1\nline2", "BRACES": "}) { myself { id } }", "BACKSLASH": "a\\b"}
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFake cloudsd-test"


def provider_for(fake: FakeRunPod, **kwargs: Any) -> RunPodProvider:
    return RunPodProvider(api_key=fake.api_key, base_url=fake.base_url, **kwargs)


def request_for(name: str, public_key: str = PUBLIC_KEY, **kwargs: Any) -> CreateRequest:
    return CreateRequest(name=name, image="example/sd-webui:1.0", public_key=public_key, disk_gb=20, **kwargs)


def deploy_bodies(fake: FakeRunPod) -> list[dict[str, Any]]:
    return [body for body in fake.requests if "podFindAndDeployOnDemand" in body.get("query", "")]


# -- pure: builders and documents -----------------------------------------------------------------
def test_every_document_is_valid_against_the_schema() -> None:
    documents = (gql.GPU_TYPES, gql.POD, gql.PODS, gql.DEPLOY_ON_DEMAND, gql.DEPLOY_SPOT, gql.STOP, gql.TERMINATE,
                 gql.ACCOUNT)
    for document in documents:
        assert validate(SCHEMA, parse(document)) == [], document


def test_deploy_payload_carries_values_only_in_variables() -> None:
    data = gql.deploy_input(name="cloudsd-x", image="img:1", gpu_type_id="NVIDIA GeForce RTX 4090",
                            cloud_type="SECURE", gpu_count=1, volume_gb=40, public_key=PUBLIC_KEY,
                            env={**NASTY_ENV, "PUBLIC_KEY": "ignored"}, cuda="12.4", terminate_after=0,
                            create_id="abc")
    body = gql.payload(gql.DEPLOY_ON_DEMAND, {"input": data})
    for value in [*NASTY_ENV.values(), PUBLIC_KEY, "cloudsd-x", "img:1", "RTX 4090"]:
        assert value not in body["query"]
    assert json.loads(json.dumps(body)) == body
    assert data["ports"] == "22/tcp" and "http" not in data["ports"]
    assert data["env"][0] == {"key": "PUBLIC_KEY", "value": PUBLIC_KEY}
    assert {"key": "NEWLINE", "value": "line1\nline2"} in data["env"]
    assert {"key": gql.CREATE_ID_ENV, "value": "abc"} in data["env"]
    assert [e["key"] for e in data["env"]].count("PUBLIC_KEY") == 1
    assert data["startSsh"] is True and data["supportPublicIp"] is True
    assert data["volumeMountPath"] == "/workspace" and data["volumeInGb"] == 40
    assert data["allowedCudaVersions"][0] == "12.4" and "12.3" not in data["allowedCudaVersions"]
    assert data["terminateAfter"] == "1970-01-01T00:00:00Z"
    assert "bidPerGpu" not in data


def test_optional_create_fields_are_left_out() -> None:
    data = gql.deploy_input(name="n", image="i", gpu_type_id="g", cloud_type="COMMUNITY", gpu_count=2,
                            volume_gb=10, public_key="k", env={}, bid_per_gpu=0.2)
    assert "allowedCudaVersions" not in data and "terminateAfter" not in data
    assert data["bidPerGpu"] == 0.2


def test_allowed_cuda_versions() -> None:
    assert gql.allowed_cuda_versions("12.8") == ["12.8", "12.9", "13.0"]
    assert gql.allowed_cuda_versions("12.4.1")[0] == "12.4"
    assert gql.allowed_cuda_versions("14.2") == ["14.2"]


GPU_TYPES = [
    {"id": "NVIDIA GeForce RTX 4090", "memoryInGb": 24, "maxGpuCount": 8, "secureCloud": True, "communityCloud": True,
     "securePrice": 0.69, "communityPrice": 0.34, "secureSpotPrice": 0.35, "communitySpotPrice": 0.2,
     "lowestPrice": {"minimumBidPrice": 0.2, "uninterruptablePrice": 0.34}},
    {"id": "NVIDIA L4", "memoryInGb": 24, "maxGpuCount": 8, "secureCloud": True, "communityCloud": False,
     "securePrice": 0.43, "communityPrice": 0, "secureSpotPrice": 0.22, "communitySpotPrice": None,
     "lowestPrice": {"minimumBidPrice": 0.22, "uninterruptablePrice": 0.43}},
    {"id": "Tesla V100-SXM2-16GB", "memoryInGb": 16, "maxGpuCount": 8, "secureCloud": False, "communityCloud": False,
     "securePrice": None, "communityPrice": None, "lowestPrice": {"minimumBidPrice": None, "uninterruptablePrice": None}},
    {"id": "NVIDIA H100 80GB HBM3", "memoryInGb": 80, "maxGpuCount": 8, "secureCloud": True, "communityCloud": True,
     "securePrice": 2.99, "communityPrice": 2.69, "lowestPrice": None},  # none in stock for this count
]


def test_offers_from_gpu_types_one_per_cloud_priced_with_storage() -> None:
    offers = offers_from_gpu_types(GPU_TYPES, OfferSpec(disk_gb=73, gpu_count=2, gpus=("A100",), max_price_per_hour=0.01))
    assert [o.offer_id for o in offers] == [
        "NVIDIA GeForce RTX 4090|COMMUNITY", "NVIDIA L4|SECURE", "NVIDIA GeForce RTX 4090|SECURE"]
    cheapest = offers[0]
    assert cheapest.gpu_name == "RTX 4090" and cheapest.gpu_count == 2 and cheapest.vram_gb == 24
    assert cheapest.price_per_hour == pytest.approx(0.34 * 2 + 73 * 0.10 / 730)
    assert cheapest.storage_price_per_hour == pytest.approx(73 * 0.20 / 730)
    assert cheapest.reliability is None and cheapest.region is None and cheapest.cuda_version is None
    assert cheapest.disk_gb == 73 and not cheapest.interruptible


def test_spot_offers_use_spot_prices_and_bid_back() -> None:
    offers = offers_from_gpu_types(GPU_TYPES, OfferSpec(disk_gb=40, interruptible=True, gpu_count=3))
    assert [(o.offer_id, o.interruptible) for o in offers][0] == ("NVIDIA GeForce RTX 4090|COMMUNITY", True)
    assert bid_per_gpu(offers[0]) == 0.2
    assert bid_per_gpu(offers[1]) == 0.22


def test_machine_from_pod_states() -> None:
    base = {"id": "p1", "name": "cloudsd-a", "desiredStatus": "RUNNING", "costPerHr": 0.35, "imageName": "i",
            "machine": {"gpuDisplayName": "RTX 4090"}}
    assert machine_from_pod({**base, "runtime": None}).status is MachineStatus.BOOTING
    private = {"ip": "10.0.0.2", "isIpPublic": False, "privatePort": 22, "publicPort": 22, "type": "tcp"}
    http = {"ip": "203.0.113.5", "isIpPublic": True, "privatePort": 8888, "publicPort": 60001, "type": "http"}
    booting = machine_from_pod({**base, "runtime": {"ports": [private, http]}})
    assert booting.status is MachineStatus.BOOTING and booting.ssh is None
    public = {"ip": "203.0.113.5", "isIpPublic": True, "privatePort": 22, "publicPort": 40022, "type": "tcp"}
    running = machine_from_pod({**base, "runtime": {"uptimeInSeconds": 5, "ports": [private, http, public]}})
    assert running.status is MachineStatus.RUNNING
    assert running.ssh is not None
    assert (running.ssh.host, running.ssh.port, running.ssh.user) == ("203.0.113.5", 40022, "root")
    assert running.name == "a" and running.price_per_hour == 0.35 and running.gpu_name == "RTX 4090"
    assert machine_from_pod({**base, "desiredStatus": "EXITED", "runtime": None}).status is MachineStatus.STOPPED
    assert machine_from_pod({**base, "desiredStatus": "DEAD"}).status is MachineStatus.FAILED


# -- keys ------------------------------------------------------------------------------------------
def _write_config(home: Any, text: str) -> None:
    (home / ".runpod").mkdir(parents=True, exist_ok=True)
    (home / ".runpod" / "config.toml").write_text(text)


def test_key_order_argument_env_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _write_config(tmp_path, '[default]\napi_key = "rpa_FILEKEY1234"\n')
    assert resolve_api_key() == ("rpa_FILEKEY1234", "~/.runpod/config.toml")
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_ENVKEY5678")
    assert resolve_api_key() == ("rpa_ENVKEY5678", "env RUNPOD_API_KEY")
    assert resolve_api_key("rpa_ARGKEY9999") == ("rpa_ARGKEY9999", "argument")
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://127.0.0.1:9/")
    provider = RunPodProvider()
    assert (provider.credential_source, provider.key_last4) == ("env RUNPOD_API_KEY", "5678")
    assert provider.base_url == "http://127.0.0.1:9" and "rpa_ENVKEY5678" not in repr(provider)
    assert RunPodProvider(base_url="http://127.0.0.1:7").base_url == "http://127.0.0.1:7"
    monkeypatch.delenv("RUNPOD_API_BASE_URL")
    assert RunPodProvider().base_url == "https://api.runpod.io"


def test_runpodctl_config_and_bad_toml(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _write_config(tmp_path, "apikey = 'rpa_CTLKEY'\napiurl = 'https://api.runpod.io/graphql'\n")
    assert resolve_api_key()[0] == "rpa_CTLKEY"
    _write_config(tmp_path, "[default\napi_key = 1")
    with pytest.raises(ConfigError, match="config.toml"):
        resolve_api_key()


def test_missing_key_names_both_places(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CredentialsError) as caught:
        RunPodProvider()
    assert "RUNPOD_API_KEY" in str(caught.value) and "~/.runpod/config.toml" in str(caught.value)


def test_simple_toml_reader_for_python_310() -> None:
    text = '# c\napikey = "top"\n[default]\napi_key = "rpa_\\"x\\"" # note\nother = bare\n[profile.b]\napi_key = \'lit\'\n'
    assert parse_simple_toml(text) == {"apikey": "top", "default": {"api_key": 'rpa_"x"', "other": "bare"},
                                       "profile.b": {"api_key": "lit"}}
    with pytest.raises(ValueError):
        parse_simple_toml("[broken\n")


# -- against the fake's API (no containers needed) -------------------------------------------------
def test_offers_cheapest_first_from_one_query(fake_runpod_api: FakeRunPod) -> None:
    provider = provider_for(fake_runpod_api)
    offers = provider.offers(OfferSpec(disk_gb=40))
    assert len(fake_runpod_api.requests) == 1
    assert [o.price_per_hour for o in offers] == sorted(o.price_per_hour for o in offers)
    ids = {o.offer_id for o in offers}
    assert {"NVIDIA GeForce RTX 4090|COMMUNITY", "NVIDIA GeForce RTX 4090|SECURE", "NVIDIA L4|SECURE"} <= ids
    assert "NVIDIA L4|COMMUNITY" not in ids and not any(i.startswith("Tesla V100") for i in ids)
    assert fake_runpod_api.requests[0]["variables"] == {"gpuCount": 1}
    double = provider.offers(OfferSpec(disk_gb=40, gpu_count=2))
    one = {o.offer_id: o.price_per_hour for o in offers}
    for offer in double:
        assert offer.price_per_hour == pytest.approx(2 * one[offer.offer_id] - 40 * 0.10 / 730, abs=1e-5)


def _offer(provider: RunPodProvider, offer_id: str = "NVIDIA GeForce RTX 4090|COMMUNITY", **spec: Any) -> Offer:
    return next(o for o in provider.offers(OfferSpec(disk_gb=20, **spec)) if o.offer_id == offer_id)


def test_create_get_list_destroy_on_records(fake_runpod_api: FakeRunPod) -> None:
    fake = fake_runpod_api
    provider = provider_for(fake)
    deadline = time.time() + 3600
    request = request_for("nasty", env=NASTY_ENV, cuda="12.4", deadline_at=deadline)
    pod_id = provider.create(_offer(provider), request)
    pod = fake.pods[pod_id]
    assert pod.name == "cloudsd-nasty" and pod.ports == "22/tcp" and pod.volume_mount_path == "/workspace"
    assert {k: pod.env[k] for k in NASTY_ENV} == NASTY_ENV and pod.env["PUBLIC_KEY"] == PUBLIC_KEY
    assert pod.terminate_after == pytest.approx(deadline, abs=1)
    (body,) = deploy_bodies(fake)
    for value in [*NASTY_ENV.values(), "cloudsd-nasty", PUBLIC_KEY]:
        assert value not in body["query"]
    assert body["variables"]["input"]["allowedCudaVersions"][0] == "12.4"

    info = provider.get(pod_id)
    assert info is not None and info.status is MachineStatus.BOOTING and info.label == "cloudsd-nasty"
    assert info.price_per_hour == pytest.approx(0.34 + 20 * 0.10 / 730)
    assert [m.provider_id for m in provider.list_machines()] == [pod_id]

    provider.destroy(pod_id)
    assert provider.get(pod_id) is None
    provider.destroy(pod_id)  # quiet when gone
    provider.destroy("doesnotexist0")
    billed = fake.billed_usd(pod_id)
    assert billed > 0 and fake.live_pods() == [] and provider.list_machines() == []
    time.sleep(0.05)
    assert fake.billed_usd(pod_id) == billed
    records = httpx.get(f"{fake.base_url}/billing/pods", params={"podId": pod_id, "grouping": "podId"},
                        headers={"Authorization": f"Bearer {fake.api_key}"}).json()
    assert [(r["podId"], r["amount"]) for r in records] == [(pod_id, round(billed, 6))]


def test_stop_bills_storage_only_and_account_reports_it(fake_runpod_api: FakeRunPod) -> None:
    fake = fake_runpod_api
    provider = provider_for(fake)
    pod_id = provider.create(_offer(provider), request_for("stopper"))
    running = provider.account()
    assert running["spend_usd_per_hour"] == pytest.approx(0.34 + 20 * 0.10 / 730, abs=1e-5)
    provider.stop(pod_id)
    info = provider.get(pod_id)
    assert info is not None and info.status is MachineStatus.STOPPED
    stopped = provider.account()
    assert stopped["spend_usd_per_hour"] == pytest.approx(20 * 0.20 / 730, abs=1e-5)
    assert stopped["balance_usd"] < 25.0 and stopped["balance_usd"] == pytest.approx(25.0 - fake.spend_total(), abs=1e-4)
    line = provider.check()
    assert re.fullmatch(rf"key …{fake.api_key[-4:]} from argument works; balance \$2\d\.\d\d, spending \$0\.01/h", line)
    assert fake.api_key not in line


def test_spot_create_bids_the_offer_price(fake_runpod_api: FakeRunPod) -> None:
    provider = provider_for(fake_runpod_api)
    pod_id = provider.create(_offer(provider, interruptible=True), request_for("spot"))
    pod = fake_runpod_api.pods[pod_id]
    assert pod.spot and pod.gpu_price == pytest.approx(0.20)
    assert any("podRentInterruptable" in b["query"] for b in fake_runpod_api.requests)


def test_provider_side_deadline_terminates(fake_runpod_api: FakeRunPod) -> None:
    provider = provider_for(fake_runpod_api)
    pod_id = provider.create(_offer(provider), request_for("deadline", deadline_at=time.time() + 0.3))
    for _ in range(50):
        if provider.get(pod_id) is None:
            break
        time.sleep(0.1)
    assert provider.get(pod_id) is None and fake_runpod_api.live_pods() == []


def test_rate_limit_burst_is_retried(fake_runpod_api: FakeRunPod) -> None:
    provider = provider_for(fake_runpod_api)
    fake_runpod_api.faults.rate_limit_burst = 3
    assert provider.offers(OfferSpec())
    assert len(fake_runpod_api.requests) == 4
    fake_runpod_api.faults.rate_limit_burst = 2  # a 429 proves the create was refused unseen: safe to repeat
    pod_id = provider.create(_offer(provider), request_for("limited"))
    assert [p.id for p in fake_runpod_api.live_pods()] == [pod_id]


def test_html_502_is_retried_then_reported_cleanly(fake_runpod_api: FakeRunPod) -> None:
    fake_runpod_api.faults.html_502 = 2
    assert provider_for(fake_runpod_api).offers(OfferSpec())
    fake_runpod_api.faults.html_502 = 100
    with pytest.raises(ProviderError) as caught:
        provider_for(fake_runpod_api, retry_deadline_s=0.5).offers(OfferSpec())
    assert "HTTP 502" in str(caught.value) and "<html" not in str(caught.value)


def test_capacity_error_is_no_capacity_and_creates_nothing(fake_runpod_api: FakeRunPod) -> None:
    provider = provider_for(fake_runpod_api)
    offer = _offer(provider)
    fake_runpod_api.faults.capacity_error = True
    with pytest.raises(NoCapacity, match="no longer any instances"):
        provider.create(offer, request_for("full"))
    assert fake_runpod_api.pods == {} and len(deploy_bodies(fake_runpod_api)) == 1


def test_lost_create_answer_is_found_by_name_not_repeated(fake_runpod_api: FakeRunPod) -> None:
    fake = fake_runpod_api
    provider = provider_for(fake, create_timeout_s=0.5)
    older = provider.create(_offer(provider), request_for("lost"))  # same name, an older pod: not ours
    fake.faults.create_timeout_once = True
    fake.faults.create_delay_s = 3.0
    pod_id = provider.create(_offer(provider), request_for("lost"))
    assert pod_id != older and pod_id in fake.pods
    assert len(deploy_bodies(fake)) == 2 and len(fake.live_pods()) == 2


def test_unreachable_create_says_it_could_not_confirm() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = RunPodProvider(api_key="rpa_UNREACHABLE", base_url=f"http://127.0.0.1:{port}", retry_deadline_s=0.5)
    offer = Offer(provider="runpod", offer_id="NVIDIA L4|SECURE", gpu_name="L4", gpu_count=1, vram_gb=24,
                  price_per_hour=0.43, disk_gb=20)
    with pytest.raises(ProviderError, match="could not confirm|did not confirm") as caught:
        provider.create(offer, request_for("unreachable"))
    assert "rpa_UNREACHABLE" not in str(caught.value) and "cloudsd-unreachable" in str(caught.value)


def test_bad_key_is_a_credentials_error_without_the_key(fake_runpod_api: FakeRunPod) -> None:
    secret = "rpa_WRONGKEYWRONGKEY0042"
    provider = RunPodProvider(api_key=secret, base_url=fake_runpod_api.base_url)
    with pytest.raises(CredentialsError) as caught:
        provider.offers(OfferSpec())
    text = f"{caught.value} {caught.value!r}"
    assert "RUNPOD_API_KEY" in text and secret not in text and "0042" in text


def test_graphql_errors_become_provider_errors(fake_runpod_api: FakeRunPod) -> None:
    backend = provider_for(fake_runpod_api)._backend
    with pytest.raises(gql.RunPodApiError, match="Syntax Error"):
        backend.call("gpuTypes", "query { gpuTypes { id ", idempotent=True)  # type: ignore[attr-defined]
    with pytest.raises(gql.RunPodApiError, match="Cannot query field"):
        backend.call("gpuTypes", "query { gpuTypes { priceInGold } }", idempotent=True)  # type: ignore[attr-defined]


def test_pod_scoped_key_only_stops_or_terminates_its_pod(fake_runpod_api: FakeRunPod) -> None:
    fake = fake_runpod_api
    provider = provider_for(fake)
    mine, other = (provider.create(_offer(provider), request_for(n)) for n in ("mine", "other"))
    scoped = {"Authorization": f"Bearer {fake.pods[mine].scoped_key}"}

    def call(query: str, pod_id: str) -> dict[str, Any]:
        return httpx.post(f"{fake.base_url}/graphql", headers=scoped,
                          json={"query": query, "variables": {"input": {"podId": pod_id}}}).json()

    assert call(gql.STOP, other)["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert call(gql.POD, mine)["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert call(gql.STOP, mine)["data"]["podStop"]["desiredStatus"] == "EXITED"
    assert call(gql.TERMINATE, mine) == {"data": {"podTerminate": None}}
    assert httpx.post(f"{fake.base_url}/graphql", headers=scoped, json={"query": "{ myself { id } }"}).status_code == 401
    assert [p.id for p in fake.live_pods()] == [other]


# -- with real containers --------------------------------------------------------------------------
def _ed25519() -> tuple[paramiko.PKey, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem)), public.decode() + " cloudsd-test"


def _wait_running(provider: RunPodProvider, pod_id: str, deadline_s: float = 60) -> Any:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        info = provider.get(pod_id)
        assert info is not None
        if info.status is MachineStatus.RUNNING and info.ssh is not None:
            return info
        time.sleep(0.3)
    raise AssertionError(f"pod {pod_id} not running after {deadline_s} s: {info}")


def _ssh_run(host: str, port: int, pkey: paramiko.PKey, command: str, deadline_s: float = 30) -> str:
    """Authenticate with `pkey`, pinning the host key seen on the first handshake; return the output."""
    started, pinned = time.monotonic(), None
    while True:
        try:
            with paramiko.Transport((host, port)) as transport:
                transport.start_client(timeout=10)
                pinned = transport.get_remote_server_key()
            break
        except (paramiko.SSHException, OSError):
            if time.monotonic() - started > deadline_s:
                raise
            time.sleep(0.3)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(f"[{host}]:{port}", pinned.get_name(), pinned)
    try:
        client.connect(host, port=port, username="root", pkey=pkey, allow_agent=False, look_for_keys=False,
                       timeout=10)
        _, stdout, _ = client.exec_command(command, timeout=10)
        return stdout.read().decode()
    finally:
        client.close()


@pytest.mark.docker
def test_lifecycle_with_ssh(fake_runpod: FakeRunPod) -> None:
    fake = fake_runpod
    provider = provider_for(fake)
    pkey, public_line = _ed25519()
    fake.faults.boot_delay_s = 0.3
    pod_id = provider.create(_offer(provider), request_for("life", public_key=public_line, env={"HELLO": "a b"}))
    first = provider.get(pod_id)
    assert first is not None and first.status is MachineStatus.BOOTING
    info = _wait_running(provider, pod_id)
    assert info.ssh.host == "127.0.0.1"
    out = _ssh_run(info.ssh.host, info.ssh.port, pkey, "cat /root/.ssh/authorized_keys; tr '\\0' '\\n' </proc/1/environ")
    assert public_line.split()[1] in out and f"RUNPOD_POD_ID={pod_id}" in out and "HELLO=a b" in out
    code, scoped = fake.machines.exec(pod_id, ["printenv", "RUNPOD_API_KEY"])
    assert code == 0 and scoped.strip() == fake.pods[pod_id].scoped_key != fake.api_key

    provider.destroy(pod_id)
    assert provider.get(pod_id) is None
    assert fake.live_pods() == [] and fake.machines.state(pod_id) == "gone"
    billed = fake.billed_usd(pod_id)
    time.sleep(0.05)
    assert fake.billed_usd(pod_id) == billed > 0


@pytest.mark.docker
def test_stop_stops_the_container(fake_runpod: FakeRunPod) -> None:
    provider = provider_for(fake_runpod)
    pod_id = provider.create(_offer(provider), request_for("stopme"))
    _wait_running(provider, pod_id)
    provider.stop(pod_id)
    info = provider.get(pod_id)
    assert info is not None and info.status is MachineStatus.STOPPED and info.ssh is None
    assert fake_runpod.machines.state(pod_id) == "exited"
    provider.destroy(pod_id)


@pytest.mark.docker
def test_never_ready_stays_booting(fake_runpod: FakeRunPod) -> None:
    provider = provider_for(fake_runpod)
    fake_runpod.faults.never_ready = True
    pod_id = provider.create(_offer(provider), request_for("stuck"))
    for _ in range(5):
        info = provider.get(pod_id)
        assert info is not None and info.status is MachineStatus.BOOTING and info.ssh is None
        time.sleep(0.2)
    provider.destroy(pod_id)
    assert provider.get(pod_id) is None
