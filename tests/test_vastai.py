"""Vast.ai: payload builders and parsers directly, then the client against the fake over real HTTP."""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path

import httpx
import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloudsd.errors import CredentialsError, NoCapacity, ProviderError, RateLimited, ResumeRefused
from cloudsd.machine import CreateRequest, MachineStatus, Offer, OfferSpec
from cloudsd.providers import vastai_api as api
from cloudsd.providers.credentials import VAST_KEY
from cloudsd.providers.vastai import VastProvider
from tests.fakes.vast_catalog import HOURS_PER_MONTH, default_catalog
from tests.fakes.vast_server import OCI_FAILURE, FakeVast

SDK_CREATE_KEYS = {"client_id", "image", "env", "price", "disk", "label", "extra", "onstart", "image_login",
                   "python_utf8", "lang_utf8", "use_jupyter_lab", "jupyter_dir", "force", "cancel_unavail",
                   "template_hash_id", "user", "runtype"}
PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMpl6wHdcWJ2pYhv8RqbbHRK4FZpPw3nZbQkYd6dXlPm test@cloudsd"


def _offer(**overrides: object) -> Offer:
    values: dict[str, object] = dict(provider="vastai", offer_id="20000000", gpu_name="RTX 4090", gpu_count=1,
                                     vram_gb=24.0, price_per_hour=0.3, disk_gb=40)
    values.update(overrides)
    return Offer(**values)  # type: ignore[arg-type]


def _request(name: str = "t1", **overrides: object) -> CreateRequest:
    values: dict[str, object] = dict(name=name, image="cloudsd-testbed:latest", public_key=PUB, disk_gb=20)
    values.update(overrides)
    return CreateRequest(**values)  # type: ignore[arg-type]


def _raw_instance(**overrides: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "id": 42, "label": "cloudsd-a", "actual_status": "running", "intended_status": "running",
        "cur_state": "running", "status_msg": "success, running x/ssh", "public_ipaddr": "203.0.113.5\n",
        "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41022"}]}, "dph_total": 0.31,
        "gpu_name": "RTX 4090", "image_uuid": "img:1",
    }
    raw.update(overrides)
    return raw


# -- pure: payloads --------------------------------------------------------------------------------------
def test_search_body_filters_only_what_makes_an_offer_usable() -> None:
    body = api.search_body(OfferSpec(gpus=("RTX 4090",), gpu_count=2, min_vram_gb=20, max_price_per_hour=1.0,
                                     disk_gb=60, min_reliability=0.99, region="US", cuda="12.4"))
    assert body["rentable"] == {"eq": True} and body["verified"] == {"eq": True}
    assert body["external"] == {"eq": False} and body["num_gpus"] == {"eq": 2}
    assert body["direct_port_count"] == {"gte": 1}
    assert body["order"] == [["dph_total", "asc"]] and body["limit"] >= 100
    assert body["allocated_storage"] == 60.0 and body["type"] == "on-demand"
    for left_to_core in ("gpu_name", "gpu_ram", "dph_total", "reliability", "geolocation", "cuda_max_good"):
        assert left_to_core not in body
    assert api.search_body(OfferSpec(interruptible=True))["type"] == "bid"


def test_create_body_has_every_key_ports_disk_and_key() -> None:
    body = api.create_body(_offer(), _request(env={"HF_TOKEN": "x=y", "QUOTE": 'a"b\nc'}, onstart="bash /s.sh"))
    assert set(body) == SDK_CREATE_KEYS
    assert body["env"] == {"-p 22:22": "1", "HF_TOKEN": "x=y", "QUOTE": 'a"b\nc', "PUBLIC_KEY": PUB}
    assert body["disk"] == 20 and body["label"] == "cloudsd-t1" and body["onstart"] == "bash /s.sh"
    assert body["runtype"] == "ssh_direc ssh_proxy" and body["cancel_unavail"] is True
    assert body["price"] is None and body["client_id"] == "me"
    assert api.create_body(_offer(), _request(ports=(22, 7860)))["env"]["-p 7860:7860"] == "1"
    # the request's env cannot replace the machine's key
    assert api.create_body(_offer(), _request(env={"PUBLIC_KEY": "other"}))["env"]["PUBLIC_KEY"] == PUB


def test_create_body_bids_the_offer_price_without_storage() -> None:
    offer = _offer(interruptible=True, price_per_hour=0.1891, storage_price_per_hour=0.0091)
    assert api.create_body(offer, _request())["price"] == pytest.approx(0.18)


# -- pure: parsing ---------------------------------------------------------------------------------------
def test_parse_offer_prices_storage_and_reads_vast_units() -> None:
    raw = next(o for o in default_catalog() if o["gpu_name"] == "RTX 4090")
    raw = {**raw, "dph_total": raw["dph_base"] + raw["storage_cost"] * 40 / HOURS_PER_MONTH}
    offer = api.parse_offer(raw, OfferSpec(disk_gb=40))
    assert offer is not None
    assert offer.provider == "vastai" and offer.offer_id == str(raw["id"]) and offer.gpu_name == "RTX 4090"
    assert offer.vram_gb == 24.0 and offer.gpu_count == 1 and offer.disk_gb == 40
    assert offer.price_per_hour == pytest.approx(raw["dph_total"])
    assert offer.storage_price_per_hour == pytest.approx(raw["storage_cost"] * 40 / 720)
    assert offer.region == raw["geolocation"] and offer.cuda_version == str(raw["cuda_max_good"])
    assert offer.reliability == raw["reliability"] and offer.download_mbps == raw["inet_down"]
    assert (offer.download_usd_per_gb, offer.upload_usd_per_gb) == (raw["inet_down_cost"], raw["inet_up_cost"])
    bid = api.parse_offer(raw, OfferSpec(disk_gb=40, interruptible=True))
    assert bid is not None and bid.interruptible
    assert bid.price_per_hour == pytest.approx(raw["min_bid"] + raw["storage_cost"] * 40 / 720)
    assert api.parse_offer({"gpu_name": "RTX 4090"}, OfferSpec()) is None
    assert api.vram_gb(81559) == 80.0 and api.vram_gb(32607) == 32.0 and api.vram_gb(40960) == 40.0


@pytest.mark.parametrize(
    ("changes", "fresh", "expected"),
    [
        ({"actual_status": None, "ports": {}}, False, MachineStatus.BOOTING),
        ({"actual_status": "loading", "ports": {}}, False, MachineStatus.BOOTING),
        ({"actual_status": "scheduling", "ports": {}}, False, MachineStatus.BOOTING),
        ({}, False, MachineStatus.RUNNING),
        ({"ports": {}}, False, MachineStatus.BOOTING),  # running, but no SSH mapping yet
        ({"actual_status": "stopped", "intended_status": "stopped"}, False, MachineStatus.STOPPED),
        ({"actual_status": "exited"}, False, MachineStatus.STOPPED),
        ({"actual_status": "frozen"}, False, MachineStatus.STOPPED),
        ({"actual_status": "exited"}, True, MachineStatus.FAILED),
        ({"actual_status": "exited", "status_msg": OCI_FAILURE}, False, MachineStatus.FAILED),
        ({"actual_status": "offline"}, False, MachineStatus.UNKNOWN),
        ({"actual_status": "unknown"}, False, MachineStatus.UNKNOWN),
        ({"actual_status": "offline"}, True, MachineStatus.FAILED),
        ({"actual_status": "something new"}, False, MachineStatus.UNKNOWN),
    ],
)
def test_status_mapping(changes: dict[str, object], fresh: bool, expected: MachineStatus) -> None:
    assert api.machine_status(_raw_instance(**changes), fresh=fresh) is expected


def test_parse_instance_reads_direct_ssh_price_and_detail() -> None:
    info = api.parse_instance(_raw_instance())
    assert info is not None and info.status is MachineStatus.RUNNING
    assert info.ssh is not None and (info.ssh.host, info.ssh.port, info.ssh.user) == ("203.0.113.5", 41022, "root")
    assert info.provider_id == "42" and info.label == "cloudsd-a" and info.name == "a"
    assert info.price_per_hour == 0.31 and info.detail == "success, running x/ssh" and info.image == "img:1"
    booting = api.parse_instance(_raw_instance(actual_status="loading", ports={}))
    assert booting is not None and booting.ssh is None
    assert api.parse_instance(_raw_instance(actual_status="destroyed")) is None
    outbid = api.parse_instance(_raw_instance(actual_status="stopped", intended_status="stopped",
                                              cur_state="stopped", next_state="stopped", is_bid=True))
    assert outbid is not None and "outbid" in outbid.detail


# -- keys and settings -----------------------------------------------------------------------------------
def test_key_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    (home / ".vast_api_key").parent.mkdir(parents=True)
    (home / ".vast_api_key").write_text("legacykey1111\n")
    def found(explicit: str | None = None) -> tuple[str, str]:
        credential = VAST_KEY.resolve(explicit)
        return credential.key, credential.source

    assert found() == ("legacykey1111", str(home / ".vast_api_key"))
    (xdg / "vastai").mkdir(parents=True)
    (xdg / "vastai" / "vast_api_key").write_text("xdgkey2222\n")
    assert found() == ("xdgkey2222", str(xdg / "vastai" / "vast_api_key"))
    monkeypatch.setenv("VAST_API_KEY", "envkey3333")
    assert found() == ("envkey3333", "env VAST_API_KEY")
    assert found("argkey4444") == ("argkey4444", "argument")
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.delenv("VAST_API_KEY")
    (home / ".config" / "vastai").mkdir(parents=True)
    (home / ".config" / "vastai" / "vast_api_key").write_text("defaultxdg5555")
    provider = VastProvider(base_url="http://127.0.0.1:9")
    assert provider.credential_source == str(home / ".config" / "vastai" / "vast_api_key")
    assert provider.key_last4 == "5555" and "defaultxdg5555" not in repr(provider)


def test_missing_key_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    with pytest.raises(CredentialsError) as caught:
        VastProvider()
    assert "VAST_API_KEY" in str(caught.value) and str(tmp_path / "cfg" / "vastai" / "vast_api_key") in str(caught.value)


def test_base_url_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAST_URL", raising=False)
    assert VastProvider(api_key="k").base_url == "https://console.vast.ai"
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:1/")
    assert VastProvider(api_key="k").base_url == "http://127.0.0.1:1"
    assert VastProvider(api_key="k", base_url="http://127.0.0.1:2").base_url == "http://127.0.0.1:2"


# -- against the fake, no containers ---------------------------------------------------------------------
def test_offers_cheapest_first_with_storage_priced_in(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    offers = vast_provider.offers(OfferSpec(disk_gb=40))
    assert offers and [o.price_per_hour for o in offers] == sorted(o.price_per_hour for o in offers)
    by_id = {str(o["id"]): o for o in fake_vast.catalog}
    for offer in offers:
        raw = by_id[offer.offer_id]
        assert offer.gpu_count == 1 and raw["verified"] and raw["direct_port_count"] >= 1
        assert offer.price_per_hour == pytest.approx(raw["dph_base"] + raw["storage_cost"] * 40 / 720, abs=1e-5)
    assert {"H100 SXM", "RTX 3090", "RTX A6000"} <= {o.gpu_name for o in offers}
    sent = fake_vast.calls("POST", "/api/v0/bundles/")[-1].body
    assert sent["allocated_storage"] == 40.0 and sent["order"] == [["dph_total", "asc"]]
    bids = vast_provider.offers(OfferSpec(disk_gb=40, interruptible=True))
    assert fake_vast.calls("POST", "/api/v0/bundles/")[-1].body["type"] == "bid"
    assert all(o.interruptible for o in bids) and bids[0].price_per_hour < offers[0].price_per_hour


def test_fake_search_routes_operators_and_error_shapes(fake_vast: FakeVast) -> None:
    base, auth = fake_vast.base_url, {"Authorization": f"Bearer {fake_vast.api_key}"}
    q = {"gpu_name": {"in": ["RTX 4090", "RTX 5090"]}, "num_gpus": {"eq": "1"}, "reliability": {"gt": "0.9"},
         "geolocation": {"notin": ["Texas, US"]}, "dph_total": {"lte": 0.6}, "verified": {"neq": False},
         "order": [["dph_total", "desc"]], "limit": 3, "allocated_storage": 100}
    post = httpx.post(f"{base}/api/v0/bundles/", json=q, headers=auth).json()["offers"]
    get = httpx.get(f"{base}/api/v0/bundles/", params={"q": json.dumps(q)}, headers=auth).json()["offers"]
    put = httpx.put(f"{base}/api/v0/search/asks/", json={"select_cols": ["*"], "q": q}, headers=auth).json()["offers"]
    assert post == get == put and 0 < len(post) <= 3
    assert [o["dph_total"] for o in post] == sorted((o["dph_total"] for o in post), reverse=True)
    for o in post:
        assert o["gpu_name"] in ("RTX 4090", "RTX 5090") and o["num_gpus"] == 1 and o["reliability"] > 0.9
        assert o["geolocation"] != "Texas, US" and o["dph_total"] <= 0.6 and o["verified"]
        assert o["dph_total"] == pytest.approx(o["dph_base"] + o["storage_cost"] * 100 / 720, abs=1e-5)
    bad = httpx.post(f"{base}/api/v0/bundles/", json={"num_gpus": {"about": 1}}, headers=auth)
    assert bad.status_code == 400 and bad.json()["success"] is False and bad.json()["error"] == "invalid_args"
    denied = httpx.get(f"{base}/api/v0/users/current", headers={"Authorization": "Bearer nope"})
    assert denied.status_code == 401 and denied.json()["error"] == "auth_error" and denied.json()["msg"]
    fake_vast.faults.rate_limit_burst = 1
    limited = httpx.get(f"{base}/api/v0/users/current", headers=auth)
    assert limited.status_code == 429 and "Retry-After" not in limited.headers
    assert limited.text.startswith("API requests too frequent")
    assert httpx.get(f"{base}/api/v0/instances/", headers=auth).status_code == 410  # the retired v0 list
    gone = httpx.request("DELETE", f"{base}/api/v0/instances/123/", json={}, headers=auth)
    assert gone.status_code == 404 and gone.json()["error"] == "no_such_instance"


def test_listing_follows_next_token(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    fake_vast.seed_instances(31, label_prefix="cloudsd-bulk-")
    fake_vast.seed_instances(3, label_prefix="someone-else-", offer_index=1)
    machines = vast_provider.list_machines()
    assert sorted(m.label for m in machines if m.label) == sorted(f"cloudsd-bulk-{n}" for n in range(31))
    assert all(m.status is MachineStatus.BOOTING for m in machines)
    pages = fake_vast.calls("GET", "/api/v1/instances/")
    assert len(pages) == 2 and "after_token" in pages[1].query and pages[0].query["limit"] == "25"


def test_rate_limit_burst_is_retried(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    fake_vast.faults.rate_limit_burst = 3
    assert vast_provider.offers(OfferSpec())
    assert len(fake_vast.calls("POST", "/api/v0/bundles/")) == 4


def test_html_502_is_retried(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    fake_vast.faults.html_502 = 2
    assert vast_provider.list_machines() == []
    assert vast_provider.get("11000000") is None


def test_daily_search_quota_is_not_retried(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    fake_vast.faults.search_quota_exceeded = True
    with pytest.raises(RateLimited, match="daily search quota"):
        vast_provider.offers(OfferSpec())
    assert len(fake_vast.calls("POST", "/api/v0/bundles/")) == 1


def test_rejected_key_names_the_variable_and_hides_the_key(fake_vast: FakeVast) -> None:
    bad = "wrong-key-9f8e7d6c5b4a"
    provider = VastProvider(api_key=bad, base_url=fake_vast.base_url)
    with pytest.raises(CredentialsError) as caught:
        provider.offers(OfferSpec())
    assert "VAST_API_KEY" in str(caught.value) and bad not in str(caught.value) and bad not in repr(provider)
    assert "…5b4a" in str(caught.value)


def test_capacity_error_leaves_nothing(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    offer = vast_provider.offers(OfferSpec())[0]
    fake_vast.faults.capacity_error = True
    with pytest.raises(NoCapacity, match="not available"):
        vast_provider.create(offer, _request())
    assert fake_vast.live_instances() == [] and len(fake_vast.calls("PUT", "/api/v0/asks/")) == 1


def test_create_that_errors_but_creates_is_cleaned_up(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    offer = vast_provider.offers(OfferSpec())[0]
    fake_vast.faults.create_errors_but_creates = True
    with pytest.raises(NoCapacity, match="destroyed it"):
        vast_provider.create(offer, _request())
    assert fake_vast.live_instances() == [] and fake_vast.billing_rate_per_hour() == 0.0
    assert len(fake_vast.calls("DELETE", "/api/v0/instances/")) == 1


def test_never_ready_stays_booting(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    fake_vast.faults.never_ready = True
    provider_id = vast_provider.create(vast_provider.offers(OfferSpec())[0], _request())
    first = vast_provider.get(provider_id)
    assert first is not None and first.status is MachineStatus.BOOTING
    time.sleep(fake_vast.provisioning_s + 0.1)
    later = vast_provider.get(provider_id)
    assert later is not None and later.status is MachineStatus.BOOTING and "Pulling" in later.detail
    assert fake_vast.calls("POST", f"/api/v0/instances/{provider_id}/ssh/")[0].body == {"ssh_key": PUB}
    vast_provider.destroy(provider_id)
    assert vast_provider.get(provider_id) is None and fake_vast.live_instances() == []


def test_create_timeout_is_resolved_by_label_not_by_a_second_create(fake_vast: FakeVast) -> None:
    provider = VastProvider(api_key=fake_vast.api_key, base_url=fake_vast.base_url, create_timeout_s=0.5)
    fake_vast.faults.never_ready = True
    fake_vast.faults.create_timeout_once = 2.0
    provider_id = provider.create(provider.offers(OfferSpec())[0], _request("slow"))
    assert fake_vast.live_instances() == [int(provider_id)]
    assert len(fake_vast.calls("PUT", "/api/v0/asks/")) == 1
    assert (fake_vast.instance(provider_id) or {})["label"] == "cloudsd-slow"
    provider.close()


def test_unconfirmed_create_says_nothing_was_made(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    offer = vast_provider.offers(OfferSpec())[0]
    fake_vast.faults.html_502 = 1  # the create's answer is a gateway page; the API never saw it
    with pytest.raises(ProviderError, match="none was created") as caught:
        vast_provider.create(offer, _request("lost"))
    assert "cloudsd-lost" in str(caught.value) and fake_vast.live_instances() == []
    assert len(fake_vast.calls("PUT", "/api/v0/asks/")) == 1


def test_unknown_ids_are_gone(vast_provider: VastProvider) -> None:
    assert vast_provider.get("999999") is None and vast_provider.get("not-a-number") is None
    vast_provider.destroy("999999")
    vast_provider.destroy("not-a-number")


def test_failed_boot_is_failed_with_the_reason(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    fake_vast.faults.oci_failure = True
    fake_vast.provisioning_s = 0.0
    provider_id = vast_provider.create(vast_provider.offers(OfferSpec())[0], _request())
    info = vast_provider.get(provider_id)
    assert info is not None and info.status is MachineStatus.FAILED and "OCI runtime create failed" in info.detail
    vast_provider.destroy(provider_id)


def test_storage_per_hour_reads_the_instance_or_derives_at_720_hours() -> None:
    assert api.storage_per_hour({"storage_total_cost": 0.000555, "storage_cost": 9, "disk_space": 9}) == 0.000555
    assert api.storage_per_hour({"storage_cost": 0.1, "disk_space": 72}) == pytest.approx(0.01)


def test_start_resumes_or_is_refused_keeping_the_disk(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    provider_id = vast_provider.create(vast_provider.offers(OfferSpec())[0], _request("resume"))
    vast_provider.stop(provider_id)
    fake_vast.faults.resume_refused = True
    with pytest.raises(ResumeRefused, match="rented by another client") as caught:
        vast_provider.start(provider_id)
    assert "disk is kept" in (caught.value.hint or "")
    assert (fake_vast.instance(provider_id) or {})["intended_status"] == "stopped"
    fake_vast.faults.resume_refused = False
    vast_provider.start(provider_id)
    assert (fake_vast.instance(provider_id) or {})["intended_status"] == "running"
    vast_provider.destroy(provider_id)


def test_stop_bills_storage_and_container_key_is_scoped(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    fake_vast.faults.never_ready = True
    provider_id = vast_provider.create(vast_provider.offers(OfferSpec(disk_gb=20))[0], _request())
    inside = VastProvider(api_key=fake_vast.container_api_key(provider_id), base_url=fake_vast.base_url)
    with pytest.raises(CredentialsError):
        inside.offers(OfferSpec())
    inside.stop(provider_id)
    info = vast_provider.get(provider_id)
    assert info is not None and info.status is MachineStatus.STOPPED
    raw = fake_vast.instance(provider_id) or {}
    assert fake_vast.billing_rate_per_hour(provider_id) == pytest.approx(raw["storage_cost"] * 20 / 720)
    inside.destroy(provider_id)
    assert fake_vast.live_instances() == [] and fake_vast.billing_rate_per_hour() == 0.0
    inside.close()


def test_account_and_billing(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    fake_vast.faults.never_ready = True
    since = time.time() - 1
    provider_id = vast_provider.create(vast_provider.offers(OfferSpec())[0], _request())
    time.sleep(0.3)
    vast_provider.destroy(provider_id)
    charges = vast_provider.billing(since, time.time() + 1)
    assert [c["provider_id"] for c in charges] == [provider_id]  # from `source`: rows carry no instance_id
    assert charges[0]["amount_usd"] == pytest.approx(fake_vast.billed_usd(provider_id), abs=5e-4)  # 3 decimals
    assert charges[0]["label"] == "cloudsd-t1"  # from metadata.label
    account = vast_provider.account()
    assert account["credit_usd"] == pytest.approx(50.0 - fake_vast.total_billed_usd(), abs=1e-5)
    assert fake_vast.api_key not in str(account)
    assert "…" + fake_vast.api_key[-4:] in vast_provider.check()


# -- against the fake, with a real machine ---------------------------------------------------------------
def _ed25519() -> tuple[paramiko.Ed25519Key, str]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem)), public.decode() + " cloudsd-test"


def _first_contact(host: str, port: int, pkey: paramiko.PKey, deadline_s: float = 30.0) -> paramiko.PKey:
    """Read the host key on first contact (to pin it) and prove our key is accepted."""
    started = time.monotonic()
    while True:
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                transport = paramiko.Transport(sock)
                try:
                    transport.start_client(timeout=10)
                    host_key = transport.get_remote_server_key()
                    transport.auth_publickey("root", pkey)
                    assert transport.is_authenticated()
                    return host_key
                finally:
                    transport.close()
        except (OSError, paramiko.SSHException):
            if time.monotonic() - started > deadline_s:
                raise
            time.sleep(0.5)


@pytest.mark.docker
def test_machine_lifecycle_over_ssh(fake_vast: FakeVast, vast_provider: VastProvider) -> None:
    pkey, public_line = _ed25519()
    offer = vast_provider.offers(OfferSpec(disk_gb=20))[0]
    request = _request("life", public_key=public_line, env={"GREETING": "hi there"},
                       onstart="env > /root/onstart-env; echo ran > /root/onstart-ran")
    provider_id = vast_provider.create(offer, request)
    info = vast_provider.get(provider_id)
    assert info is not None and info.status is MachineStatus.BOOTING and info.label == "cloudsd-life"
    deadline = time.monotonic() + 60
    while info is None or info.status is not MachineStatus.RUNNING:
        assert time.monotonic() < deadline, f"not running in time: {info}"
        assert info is not None and info.status is MachineStatus.BOOTING, info
        time.sleep(0.5)
        info = vast_provider.get(provider_id)
    assert info.ssh is not None and info.ssh.host == "127.0.0.1"
    assert info.price_per_hour == pytest.approx(offer.price_per_hour, abs=1e-5)

    host_key = _first_contact(info.ssh.host, info.ssh.port, pkey)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(f"[{info.ssh.host}]:{info.ssh.port}", host_key.get_name(), host_key)
    client.connect(info.ssh.host, info.ssh.port, username="root", pkey=pkey, timeout=10,
                   allow_agent=False, look_for_keys=False)
    try:
        # onstart sees the machine's environment (an SSH session does not, as on Vast)
        _, out, _ = client.exec_command("sleep 0.5; cat /root/onstart-ran /root/onstart-env", timeout=10)
        lines = out.read().decode().splitlines()
    finally:
        client.close()
    env = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert lines[0] == "ran" and env["GREETING"] == "hi there" and env["PUBLIC_KEY"] == public_line
    assert env["VAST_TCP_PORT_22"] == str(info.ssh.port) and env["CONTAINER_ID"] == provider_id
    assert env["CONTAINER_API_KEY"] == fake_vast.container_api_key(provider_id)
    assert not any(name.startswith("-p") for name in env)  # port requests are not variables
    assert "vast-fake: sshd started" in vast_provider.logs(provider_id)

    vast_provider.stop(provider_id)
    stopped = vast_provider.get(provider_id)
    assert stopped is not None and stopped.status is MachineStatus.STOPPED
    vast_provider.destroy(provider_id)
    assert vast_provider.get(provider_id) is None
    vast_provider.destroy(provider_id)  # safe to repeat
    assert fake_vast.running_instances() == [] and fake_vast.live_instances() == []
    assert fake_vast.billing_rate_per_hour() == 0.0 and fake_vast.billed_usd(provider_id) > 0
    assert fake_vast.machines.client.containers.list(all=True, filters={"label": f"cloudsd.fake={fake_vast.owner}"}) == []


def test_a_rate_limit_never_aborts_the_wait_for_boot(fake_vast: FakeVast) -> None:
    from cloudsd.core.machines import wait_until_running
    from cloudsd.errors import ProvisioningError

    provider = VastProvider(api_key=fake_vast.api_key, base_url=fake_vast.base_url, backoff_base_s=0.01,
                            deadline_s=0.2)
    provider_id = provider.create(provider.offers(OfferSpec())[0], _request("limited"))
    fake_vast.faults.rate_limit_burst = 40  # more 429s than one call's retries: `get` raises RateLimited
    slept: list[float] = []
    with pytest.raises(ProvisioningError) as caught:
        wait_until_running(provider, provider_id, deadline_s=1.0, sleep=lambda s: (slept.append(s), time.sleep(0.05)))
    assert "not confirmed running" in str(caught.value) or "not running" in str(caught.value)
    assert slept and slept[0] >= provider.poll_interval_s, "backs off at least at the provider's pace"
    fake_vast.faults.rate_limit_burst = 0
    provider.destroy(provider_id)
    provider.close()
