"""RunPod on REST v2: payload builders and parsers, key resolution, and the client against the fake over
real HTTP (the fake validates every request and answer against RunPod's OpenAPI schemas)."""

from __future__ import annotations

import io
import re
import socket
import time
from typing import Any

import httpx
import paramiko
import pytest

from cloudsd.errors import ConfigError, CredentialsError, NoCapacity, ProviderError, ResumeRefused
from cloudsd.machine import CreateRequest, MachineStatus, Offer, OfferSpec
from cloudsd.providers import runpod_api as v2
from cloudsd.providers.credentials import parse_simple_toml
from cloudsd.providers.runpod import (
    RunPodProvider,
    billing_rows,
    machine_from_pod,
    offers_from_catalog,
)
from tests.fakes.runpod_server import FakeRunPod

NASTY_ENV = {"QUOTE": 'say "hi"', "NEWLINE": "line1\nline2", "BRACES": "}) { myself { id } }", "BACKSLASH": "a\\b"}
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFake cloudsd-test"


def provider_for(fake: FakeRunPod, **kwargs: Any) -> RunPodProvider:
    return RunPodProvider(api_key=fake.api_key, base_url=fake.base_url, **kwargs)


def request_for(name: str, public_key: str = PUBLIC_KEY, **kwargs: Any) -> CreateRequest:
    return CreateRequest(name=name, image="example/sd-webui:1.0", public_key=public_key, disk_gb=20, **kwargs)


def creates(fake: FakeRunPod) -> list[Any]:
    return [c for c in fake.calls if (c.method, c.path) == ("POST", "/v2/pods")]


# -- pure: builders and readers --------------------------------------------------------------------
def test_create_body_is_a_v2_create_pod_request() -> None:
    body = v2.create_pod_body(name="cloudsd-x", image="img:1", gpu_type_id="NVIDIA GeForce RTX 4090", cloud="SECURE",
                              gpu_count=2, volume_gb=40, public_key=PUBLIC_KEY,
                              env={**NASTY_ENV, "PUBLIC_KEY": "ignored"}, cuda="12.4.1", create_id="abc")
    assert body["gpu"] == {"id": "NVIDIA GeForce RTX 4090", "count": 2, "minCudaVersion": "12.4"}
    assert body["cloud"] == "SECURE" and body["ports"] == ["22/tcp"] and body["disk"] == v2.CONTAINER_DISK_GB
    assert body["mounts"] == {"persistent": {"size": 40, "path": "/workspace"}}
    assert body["env"]["PUBLIC_KEY"] == PUBLIC_KEY and body["env"]["NEWLINE"] == "line1\nline2"
    assert body["env"][v2.CREATE_ID_ENV] == "abc"
    assert "startSsh" not in body, "PUBLIC_KEY is the machine's own key; the account's keys are not wanted"
    small = v2.create_pod_body(name="n", image="i", gpu_type_id="g", cloud="COMMUNITY", gpu_count=1, volume_gb=4,
                               public_key="k", env={})
    assert "minCudaVersion" not in small["gpu"] and small["mounts"]["persistent"]["size"] == 10  # the v2 floor


def test_rate_limit_header_holds_only_an_exhausted_window() -> None:
    assert v2.rate_limit_wait_s({"RateLimit": '"minute";r=58;t=12, "hour";r=900;t=1800'}) is None
    assert v2.rate_limit_wait_s({"RateLimit": '"minute";r=0;t=12, "hour";r=900;t=1800'}) == 12
    assert v2.rate_limit_wait_s({"RateLimit": '"minute";r=0;t=12, "day";r=0;t=3600'}) == 3600
    assert v2.rate_limit_wait_s({}) is None


def test_problem_detail_is_one_line() -> None:
    body = {"title": "Unprocessable Entity", "status": 422, "detail": "Request\nvalidation failed.",
            "errors": ["gpu.count: must be >= 1", "name: required"]}
    assert v2.problem_detail(body, "x") == "Request validation failed. (gpu.count: must be >= 1; +1 more)"
    assert v2.problem_detail("<html>", "fallback") == "fallback"


def test_what_a_refused_create_or_start_means() -> None:
    """The createPod table in RunPod's OpenAPI document: 400/403 -> the next candidate; 402 -> stop; 422 -> ours."""
    def error(status: int, detail: str) -> v2.RunPodApiError:
        return v2.RunPodApiError(f"HTTP {status}", status=status, detail=detail)

    assert isinstance(v2.create_error(error(400, "no capacity"), "g|SECURE"), NoCapacity)
    assert isinstance(v2.create_error(error(403, "pool not accessible"), "g|SECURE"), NoCapacity)
    balance = v2.create_error(error(402, "insufficient balance"), "g|SECURE")
    assert not isinstance(balance, NoCapacity) and "Add funds" in (balance.hint or "")
    invalid = error(422, "Request validation failed.")
    assert v2.create_error(invalid, "g|SECURE") is invalid
    assert isinstance(v2.resume_error(error(400, "There are not enough free GPUs on the host"), "p"), ResumeRefused)
    not_now = error(409, "action start is not valid for a pod in status RUNNING")
    assert v2.resume_error(not_now, "p") is not_now


CATALOG = [
    {"id": "NVIDIA GeForce RTX 4090", "memory": 24, "secure": True, "community": True,
     "price": {"secure": 0.69, "community": 0.34}, "maxCount": {"secure": 8, "community": 8}, "availability": "HIGH",
     "cudaVersions": [{"version": "12.4", "available": True}, {"version": "12.8", "available": True}]},
    {"id": "NVIDIA L4", "memory": 24, "secure": True, "community": False, "price": {"secure": 0.43, "community": 0},
     "maxCount": {"secure": 8, "community": 0}, "availability": "LOW"},
    {"id": "Tesla V100-SXM2-16GB", "memory": 16, "secure": True, "community": True,
     "price": {"secure": 0.2, "community": 0.1}, "maxCount": {"secure": 8, "community": 8}, "availability": "NONE"},
    {"id": "NVIDIA H100 80GB HBM3", "memory": 80, "secure": True, "community": True,
     "price": {"secure": 2.99, "community": 2.69}, "maxCount": {"secure": 1, "community": 1}, "availability": "HIGH"},
    {"id": "NVIDIA A40", "memory": 48, "secure": True, "community": True, "price": {"secure": 0.4, "community": 0.3},
     "maxCount": {"secure": 8, "community": 8}, "availability": "HIGH",
     "cudaVersions": [{"version": "12.4", "available": False}]},  # offered, but every host is full
]


def test_offers_only_where_the_cloud_has_stock_for_the_count() -> None:
    spec = OfferSpec(disk_gb=73, gpu_count=2, gpus=("A100",), max_price_per_hour=0.01)
    community = offers_from_catalog("COMMUNITY", CATALOG, spec)
    secure = offers_from_catalog("SECURE", CATALOG, spec)
    assert [o.offer_id for o in community] == ["NVIDIA GeForce RTX 4090|COMMUNITY"]
    assert [o.offer_id for o in secure] == ["NVIDIA GeForce RTX 4090|SECURE", "NVIDIA L4|SECURE"]
    cheapest = community[0]
    assert cheapest.gpu_name == "RTX 4090" and cheapest.gpu_count == 2 and cheapest.vram_gb == 24
    assert cheapest.price_per_hour == pytest.approx(0.34 * 2 + 73 * 0.10 / 730)
    assert cheapest.storage_price_per_hour == pytest.approx(73 * 0.20 / 730)
    assert cheapest.cuda_version == "12.8" and secure[1].cuda_version is None
    assert offers_from_catalog("SECURE", CATALOG, OfferSpec(interruptible=True)) == []  # v2 has no spot pods


POD = {"id": "p1", "name": "cloudsd-a", "status": "RUNNING", "cost": 0.35, "image": "i",
       "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}, "mounts": {"persistent": {"size": 73, "path": "/w"}},
       "ssh": {"proxy": {"host": "ssh.runpod.io", "port": 22, "username": "p1-64411eb2", "command": "ssh …"},
               "direct": None},
       "runtime": {"uptime": 5, "ports": []}}


def test_machine_from_pod_uses_direct_ssh_only() -> None:
    waiting = machine_from_pod(POD)
    assert waiting.status is MachineStatus.BOOTING and waiting.ssh is None and "ssh.proxy" in waiting.detail
    direct = {"host": "203.0.113.5", "port": 40022, "username": "root", "command": "ssh root@203.0.113.5 -p 40022"}
    running = machine_from_pod({**POD, "ssh": {**POD["ssh"], "direct": direct}})
    assert running.status is MachineStatus.RUNNING and running.ssh is not None
    assert (running.ssh.host, running.ssh.port, running.ssh.user) == ("203.0.113.5", 40022, "root")
    assert running.name == "a" and running.price_per_hour == 0.35 and running.gpu_name == "RTX 4090"
    assert running.storage_price_per_hour == pytest.approx(73 * 0.20 / 730)
    for status, mapped in [("PROVISIONING", MachineStatus.BOOTING), ("STARTING", MachineStatus.BOOTING),
                           ("EXITED", MachineStatus.STOPPED), ("ERROR", MachineStatus.FAILED),
                           ("TERMINATED", MachineStatus.TERMINATED)]:
        assert machine_from_pod({**POD, "status": status, "runtime": None}).status is mapped


def test_billing_rows_sum_hourly_buckets_per_pod() -> None:
    records = [{"podId": "a", "startTime": "2026-12-01T10:00:00Z", "endTime": "2026-12-01T11:00:00Z", "totalAmount": 0.5},
               {"podId": "a", "startTime": "2026-12-01T11:00:00Z", "endTime": "2026-12-01T12:00:00Z", "totalAmount": 0.25},
               {"podId": "b", "startTime": "2026-12-01T11:00:00Z", "endTime": "2026-12-01T12:00:00Z", "totalAmount": 1.0}]
    rows = {r["provider_id"]: r for r in billing_rows(records)}
    assert rows["a"]["amount_usd"] == 0.75 and rows["b"]["amount_usd"] == 1.0
    assert rows["a"]["end"] - rows["a"]["start"] == 7200


# -- keys ------------------------------------------------------------------------------------------
def _write_config(home: Any, text: str) -> None:
    (home / ".runpod").mkdir(parents=True, exist_ok=True)
    (home / ".runpod" / "config.toml").write_text(text)


def _found(explicit: str | None = None) -> tuple[str, str]:
    provider = RunPodProvider(api_key=explicit, base_url="http://127.0.0.1:9")
    return provider._api.api._api_key, provider.credential_source


def test_key_order_argument_env_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    _write_config(tmp_path, '[default]\napi_key = "rpa_FILEKEY1234"\n')
    assert _found() == ("rpa_FILEKEY1234", str(tmp_path / ".runpod" / "config.toml"))
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_ENVKEY5678")
    assert _found() == ("rpa_ENVKEY5678", "env RUNPOD_API_KEY")
    assert _found("rpa_ARGKEY9999") == ("rpa_ARGKEY9999", "argument")
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://127.0.0.1:9/")
    provider = RunPodProvider()
    assert (provider.credential_source, provider.key_last4) == ("env RUNPOD_API_KEY", "5678")
    assert provider.base_url == "http://127.0.0.1:9" and "rpa_ENVKEY5678" not in repr(provider)
    assert RunPodProvider(base_url="http://127.0.0.1:7").base_url == "http://127.0.0.1:7"
    monkeypatch.delenv("RUNPOD_API_BASE_URL")
    assert RunPodProvider().base_url == "https://api.runpod.io"
    for bad in ("http://[::1", "ftp://api.runpod.io", "api.runpod.io", "http://h:port"):
        monkeypatch.setenv("RUNPOD_API_BASE_URL", bad)
        with pytest.raises(ConfigError, match="RUNPOD_API_BASE_URL"):
            RunPodProvider()


def test_runpodctl_config_and_bad_toml(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    _write_config(tmp_path, "apikey = 'rpa_CTLKEY'\napiurl = 'https://api.runpod.io/graphql'\n")
    assert _found()[0] == "rpa_CTLKEY"
    _write_config(tmp_path, "[default\napi_key = 1")
    with pytest.raises(ConfigError, match="config.toml"):
        _found()


@pytest.mark.parametrize("bad, problem", [("rpa_AB\r\nX-Evil: 1", "line break"), ("rpa_AB CD", "whitespace"),
                                          ("rpa_ÄBCD", "not printable ASCII")])
def test_a_malformed_key_is_refused_naming_its_source_not_its_value(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, bad: str, problem: str) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RUNPOD_API_KEY", bad)
    with pytest.raises(CredentialsError) as caught:
        RunPodProvider()
    text = f"{caught.value} {caught.value.hint}"
    assert "env RUNPOD_API_KEY" in text and problem in text and bad.strip() not in text and "AB" not in text
    monkeypatch.delenv("RUNPOD_API_KEY")
    _write_config(tmp_path, f'[default]\napi_key = "{bad.replace(chr(13), "").replace(chr(10), " ")}"\n')
    with pytest.raises(CredentialsError) as from_file:
        RunPodProvider()
    assert str(tmp_path / ".runpod" / "config.toml") in str(from_file.value) and "AB" not in str(from_file.value)


def test_missing_key_names_both_places(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
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
def test_offers_ask_each_cloud_for_pod_stock(fake_runpod_api: FakeRunPod) -> None:
    provider = provider_for(fake_runpod_api)
    offers = provider.offers(OfferSpec(disk_gb=40))
    asked = [c.query for c in fake_runpod_api.calls if c.path == "/v2/catalog/gpus"]
    assert [q["cloud"] for q in asked] == [["SECURE"], ["COMMUNITY"]]
    assert all(q["include"] == ["AVAILABILITY"] and q["product"] == ["POD"] and q["count"] == ["1"] for q in asked)
    assert [o.price_per_hour for o in offers] == sorted(o.price_per_hour for o in offers)
    ids = {o.offer_id for o in offers}
    assert {"NVIDIA GeForce RTX 4090|COMMUNITY", "NVIDIA GeForce RTX 4090|SECURE", "NVIDIA L4|SECURE"} <= ids
    assert "NVIDIA L4|COMMUNITY" not in ids and not any(i.startswith("Tesla V100") for i in ids)
    assert {o.cuda_version for o in offers} == {"12.8", "12.4"}
    provider.offers(OfferSpec(disk_gb=40, cuda="12.6"))
    assert fake_runpod_api.calls[-1].query["minCudaVersion"] == ["12.6"]
    double = provider.offers(OfferSpec(disk_gb=40, gpu_count=2))
    one = {o.offer_id: o.price_per_hour for o in offers}
    for offer in double:
        assert offer.price_per_hour == pytest.approx(2 * one[offer.offer_id] - 40 * 0.10 / 730, abs=1e-5)


def _offer(provider: RunPodProvider, offer_id: str = "NVIDIA GeForce RTX 4090|COMMUNITY", **spec: Any) -> Offer:
    return next(o for o in provider.offers(OfferSpec(disk_gb=20, **spec)) if o.offer_id == offer_id)


def test_create_get_list_destroy_on_records(fake_runpod_api: FakeRunPod) -> None:
    fake = fake_runpod_api
    provider = provider_for(fake)
    request = request_for("nasty", env=NASTY_ENV, cuda="12.4")
    pod_id = provider.create(_offer(provider), request)
    pod = fake.pods[pod_id]
    assert pod.name == "cloudsd-nasty" and pod.ports == "22/tcp" and pod.volume_mount_path == "/workspace"
    assert {k: pod.env[k] for k in NASTY_ENV} == NASTY_ENV and pod.env["PUBLIC_KEY"] == PUBLIC_KEY
    (call,) = creates(fake)
    assert call.body["gpu"]["minCudaVersion"] == "12.4" and call.body["cloud"] == "COMMUNITY"

    info = provider.get(pod_id)
    assert info is not None and info.status is MachineStatus.BOOTING and info.label == "cloudsd-nasty"
    assert info.price_per_hour == pytest.approx(0.34 + 20 * 0.10 / 730)
    assert [m.provider_id for m in provider.list_machines()] == [pod_id]

    provider.destroy(pod_id)
    assert provider.get(pod_id) is None
    provider.destroy(pod_id)  # quiet when gone
    provider.destroy("doesnotexist0")
    assert ("account", "terminate", pod_id) in fake.cloud.actions
    billed = fake.billed_usd(pod_id)
    assert billed > 0 and fake.live_pods() == [] and provider.list_machines() == []
    time.sleep(0.05)
    assert fake.billed_usd(pod_id) == billed
    (row,) = provider.billing(time.time() - 3600, time.time() + 60)
    assert row["provider_id"] == pod_id and row["amount_usd"] == pytest.approx(billed, abs=1e-5)


def test_a_cuda_floor_no_host_meets_is_no_capacity(fake_runpod_api: FakeRunPod) -> None:
    provider = provider_for(fake_runpod_api)
    assert provider.offers(OfferSpec(disk_gb=20, cuda="13.0")) == []
    with pytest.raises(NoCapacity):
        provider.create(_offer(provider), request_for("newcuda", cuda="13.0"))
    assert fake_runpod_api.pods == {}


def test_stop_start_and_their_conflicts(fake_runpod_api: FakeRunPod) -> None:
    fake = fake_runpod_api
    provider = provider_for(fake)
    pod_id = provider.create(_offer(provider), request_for("stopper"))
    assert provider.account()["spend_usd_per_hour"] == pytest.approx(0.34 + 20 * 0.10 / 730, abs=1e-5)
    provider.stop(pod_id)
    info = provider.get(pod_id)
    assert info is not None and info.status is MachineStatus.STOPPED and info.price_per_hour is None
    assert fake.cloud.pods[pod_id].rate == pytest.approx(20 * 0.20 / 730)
    provider.stop(pod_id)  # 409 from RunPod (not valid when EXITED): already stopped is fine
    account = provider.account()
    assert account["balance_usd"] is None and account["spend_usd_per_hour"] == 0.0 and "balance" in account["missing"]
    fake.faults.resume_refused = True
    with pytest.raises(ResumeRefused, match="not enough free GPUs") as caught:
        provider.start(pod_id)
    assert "disk is kept" in (caught.value.hint or "")
    assert fake.pods[pod_id].status == "EXITED", "a refused resume keeps the pod and its disk"
    fake.faults.resume_refused = False
    provider.start(pod_id)
    assert fake.pods[pod_id].status == "RUNNING"
    provider.start(pod_id)  # 409 (not valid while starting): already starting is fine
    assert [a for _, a, p in fake.cloud.actions if p == pod_id] == ["stop", "start"], "what RunPod carried out"
    line = provider.check()
    assert re.fullmatch(rf"key …{fake.api_key[-4:]} from argument works on REST v2 at \S+; 1 pod\(s\), "
                        r"spending \$0\.34/h \(v2 reports no balance\)", line)
    assert fake.api_key not in line


def test_rate_limit_burst_is_retried(fake_runpod_api: FakeRunPod) -> None:
    provider = provider_for(fake_runpod_api)
    fake_runpod_api.faults.rate_limit_burst = 3
    assert provider.offers(OfferSpec())
    assert len(fake_runpod_api.calls) == 5  # three 429s, then one catalog read per cloud
    fake_runpod_api.faults.rate_limit_burst = 2  # a 429 proves the create was refused unseen: safe to repeat
    pod_id = provider.create(_offer(provider), request_for("limited"))
    assert [p.id for p in fake_runpod_api.live_pods()] == [pod_id]


def test_an_exhausted_rate_window_holds_the_next_request(fake_runpod_api: FakeRunPod) -> None:
    provider = provider_for(fake_runpod_api)
    fake_runpod_api.faults.rate_limit_exhausted = 1  # the first answer says: nothing left for 1 s
    started = time.monotonic()
    provider.offers(OfferSpec())
    assert time.monotonic() - started >= 0.9, "the second request waited for the window to reset"
    assert len(fake_runpod_api.calls) == 2


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
    assert fake_runpod_api.pods == {} and len(creates(fake_runpod_api)) == 1


def test_lost_create_answer_is_found_by_name_not_repeated(fake_runpod_api: FakeRunPod) -> None:
    fake = fake_runpod_api
    provider = provider_for(fake, create_timeout_s=0.5)
    older = provider.create(_offer(provider), request_for("lost"))  # same name, an older pod: not ours
    fake.faults.create_timeout_once = True
    fake.faults.create_delay_s = 3.0
    pod_id = provider.create(_offer(provider), request_for("lost"))
    assert pod_id != older and pod_id in fake.pods
    assert len(creates(fake)) == 2 and len(fake.live_pods()) == 2


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
    text = f"{caught.value} {caught.value!r} {caught.value.hint}"
    assert "RUNPOD_API_KEY" in text and secret not in text and "0042" in text
    assert "missing or invalid bearer token" in str(caught.value), "the problem's detail, on one line"


def test_a_problem_that_echoes_the_key_is_shown_redacted(fake_runpod_api: FakeRunPod) -> None:
    provider = provider_for(fake_runpod_api)
    api = provider._api
    response = httpx.Response(400, json={"title": "Bad Request", "status": 400,
                                         "detail": f"you sent Bearer {fake_runpod_api.api_key}\r\nand more"})
    error = api.error("create", response, response.json())
    assert fake_runpod_api.api_key not in str(error) and "****" in str(error) and "\n" not in str(error)
    escaped = httpx.Response(400, text='{"detail": "key=' + fake_runpod_api.api_key + '"}')
    assert fake_runpod_api.api_key not in str(api.error("x", escaped, escaped.json()))


def test_the_fake_refuses_a_body_off_the_schema_with_422(fake_runpod_api: FakeRunPod) -> None:
    client = httpx.Client(base_url=fake_runpod_api.base_url,
                          headers={"Authorization": f"Bearer {fake_runpod_api.api_key}"})
    bad = client.post("/v2/pods", json={"name": "x", "image": "i", "gpu": {"id": "NVIDIA L4", "count": 0},
                                        "terminateAfter": "2027-01-01T00:00:00Z"})
    assert bad.status_code == 422 and bad.headers["Content-Type"] == "application/problem+json"
    errors = " ".join(bad.json()["errors"])
    assert "terminateAfter" in errors and "gpu/count" in errors and bad.json()["title"] == "Unprocessable Entity"
    both = client.post("/v2/pods", json={"name": "x", "image": "i", "gpu": {"id": "NVIDIA L4"},
                                         "mounts": {"persistent": {"size": 10, "path": "/w"},
                                                    "network": [{"volumeId": "v", "path": "/n"}]}})
    assert both.status_code == 400
    assert client.get("/v2/catalog/gpus", params={"cloud": "SECURE"}).status_code == 400  # needs include
    assert client.get("/v2/catalog/gpus", params={"include": "AVAILABILITY", "product": "POD",
                                                  "minCudaVersion": "twelve"}).status_code == 422
    assert client.post("/v2/pods/abc/action", json={"action": "pause"}).status_code == 422
    assert client.put("/v2/pods").status_code == 405
    assert "RateLimit" in bad.headers and "RateLimit-Policy" in bad.headers
    client.close()


def test_pod_scoped_key_only_reads_stops_or_terminates_its_pod(fake_runpod_api: FakeRunPod) -> None:
    fake = fake_runpod_api
    provider = provider_for(fake)
    mine, other = (provider.create(_offer(provider), request_for(n)) for n in ("mine", "other"))
    scoped = httpx.Client(base_url=fake.base_url, headers={"Authorization": f"Bearer {fake.pods[mine].scoped_key}"})
    assert scoped.post(f"/v2/pods/{other}/action", json={"action": "stop"}).status_code == 403
    assert scoped.get(f"/v2/pods/{other}").status_code == 403
    assert scoped.get("/v2/pods").status_code == 403
    assert scoped.post(f"/v2/pods/{mine}/action", json={"action": "start"}).status_code == 403
    assert scoped.get(f"/v2/pods/{mine}").json()["id"] == mine
    assert scoped.post(f"/v2/pods/{mine}/action", json={"action": "stop"}).json()["status"] == "EXITED"
    terminated = scoped.post(f"/v2/pods/{mine}/action", json={"action": "terminate"})
    assert terminated.status_code == 204 and terminated.content == b""
    assert scoped.get(f"/v2/pods/{mine}").status_code == 401  # the key died with its pod
    assert [p.id for p in fake.live_pods()] == [other]
    scoped.close()


def test_graphql_is_never_spoken(fake_runpod_api: FakeRunPod) -> None:
    """The whole provider surface, then the proof: every request went to a documented v2 route."""
    provider = provider_for(fake_runpod_api)
    pod_id = provider.create(_offer(provider), request_for("v2only"))
    provider.get(pod_id), provider.list_machines(), provider.stop(pod_id), provider.start(pod_id), provider.check()
    provider.billing(time.time() - 60, time.time())
    provider.destroy(pod_id)
    assert fake_runpod_api.calls and all(c.path.startswith("/v2/") for c in fake_runpod_api.calls)
    assert not any("graphql" in c.path or "query" in (c.body or {}) for c in fake_runpod_api.calls)
    answer = httpx.post(f"{fake_runpod_api.base_url}/graphql", json={"query": "{ myself { id } }"},
                        headers={"Authorization": f"Bearer {fake_runpod_api.api_key}"})
    assert answer.status_code == 404
    fake_runpod_api.retired_calls.clear()  # this test made that one call on purpose


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
    proxy = fake.pod_view(pod_id)["ssh"]["proxy"]
    assert (proxy["host"], proxy["port"]) != (info.ssh.host, info.ssh.port), "never the proxy"
    with pytest.raises((paramiko.SSHException, OSError, EOFError)):
        _ssh_run(proxy["host"], proxy["port"], pkey, "true", deadline_s=1)  # the proxy cannot even carry this

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
