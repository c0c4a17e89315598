"""Vast.ai as a provider, over its REST API with plain httpx (no SDK).

Wire details (bodies, parsing, status mapping) live in `vastai_api.py` as pure functions; this module does
the calls and turns Vast's answers and errors into cloudsd's. Rules kept here:
- a create is never repeated blindly: after a timeout or a gateway error cloudsd looks the instance up by
  its label, and says so when it cannot tell;
- a create that errors but still makes an instance (Vast does that) destroys it before raising;
- the daily search quota (a 429) is not retried; other 429s and 5xx are, for calls safe to repeat;
- the key never appears in an error, a log line or a repr.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import httpx

from cloudsd.errors import CloudsdError, ConfigError, NoCapacity, ProviderError, RateLimited, ResumeRefused
from cloudsd.machine import LABEL_PREFIX, CreateRequest, MachineInfo, MachineStatus, Offer, OfferSpec
from cloudsd.providers import KeyedAccount, Provider, ReportsBilling, SelfStopCall, Stoppable
from cloudsd.providers.credentials import VAST_KEY
from cloudsd.providers.http import ConnectFailed, JsonApi
from cloudsd.providers.vastai_api import (
    CONSOLE_URL,
    DEFAULT_BASE_URL,
    URL_ENV,
    create_body,
    error_message,
    is_capacity_error,
    is_gone_error,
    key_hint,
    parse_account,
    parse_charge,
    parse_instance,
    parse_offers,
    search_body,
)
from cloudsd.providers.vastai_volumes import VastVolumes, volume_info

LABEL = "Vast.ai"
GATEWAY_STATUSES = frozenset({502, 503, 504})


def _is_daily_quota(response: httpx.Response) -> bool:
    return response.status_code == 429 and "search_quota_exceeded" in response.text[:2000]


def self_stop_call(action: str) -> SelfStopCall:
    """With the CONTAINER_API_KEY Vast puts in each instance: `PUT state stopped` or `DELETE`, both answered
    `{"success": true}`; a 404 means the instance is gone already."""
    return SelfStopCall(
        method="DELETE" if action == "terminate" else "PUT",
        url=f"${{{URL_ENV}:-{DEFAULT_BASE_URL}}}/api/v0/instances/${{CONTAINER_ID}}/",
        headers={"Authorization": "Bearer ${CONTAINER_API_KEY}", "Content-Type": "application/json"},
        body={} if action == "terminate" else {"state": "stopped"},
        ok_statuses=(200,),
        ok_fields={"success": True},
        gone_statuses=(404,),
        needs_env=("CONTAINER_API_KEY", "CONTAINER_ID"),
    )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class VastProvider(VastVolumes, Stoppable, ReportsBilling, KeyedAccount, Provider):
    """Vast.ai instances: offers from `bundles`, instances with direct SSH, labels `cloudsd-NAME`."""

    name = "vastai"
    supports_stop = True
    supports_self_stop = True  # CONTAINER_API_KEY + CONTAINER_ID inside the machine can stop/destroy it
    supports_deadline = False
    reports_billing = True
    supports_volumes = True  # local volumes: on one machine, mounted by instances on that machine only
    reports_volume_billing = True
    boot_timeout_s = 900.0  # hosts pull multi-GB images over their own links
    poll_interval_s = 2.5  # Vast limits each endpoint to a minimum interval and sends no Retry-After
    list_page_size = 25
    recover_settle_s = 2.0  # pause before the second label lookup after an unconfirmed create

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout_s: float = 30.0,
        create_timeout_s: float = 60.0,
        deadline_s: float = 90.0,
        backoff_base_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        **_ignored: Any,
    ) -> None:
        credential = VAST_KEY.resolve(api_key)
        key, source = credential.key, credential.source
        self.credential_source = source
        self.key_last4 = credential.last4
        self.base_url = (base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        if not self.base_url.startswith(("https://", "http://")):
            raise ConfigError(f"the Vast.ai base URL {self.base_url!r} is not an http(s) URL.",
                              hint=f"Fix vastai.base_url or {URL_ENV}.")
        self._api = JsonApi(
            provider_label=LABEL,
            base_url=self.base_url,
            api_key=key,
            key_hint=key_hint(source, self.key_last4),
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            deadline_s=deadline_s,
            backoff_base_s=backoff_base_s,
            transport=transport,
            no_retry=_is_daily_quota,
        )
        self._create_timeout = httpx.Timeout(create_timeout_s, connect=min(10.0, create_timeout_s))
        self._fresh: set[str] = set()  # created here and not yet seen running: a terminal state means failed
        self.warnings: list[str] = []  # things that went wrong without failing the call

    def __repr__(self) -> str:
        return f"VastProvider({self.base_url}, key …{self.key_last4} from {self.credential_source})"

    def close(self) -> None:
        self._api.close()

    # -- plumbing ------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any) -> tuple[httpx.Response, Any]:
        response = self._api.request(method, path, idempotent=idempotent, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        return response, body

    def _why(self, response: httpx.Response, body: Any) -> str:
        """The server's message on one line; for a non-JSON page, its title or first words."""
        message = error_message(body)
        if not message:
            text = response.text[:2000]
            title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
            message = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
            message = " ".join(message.split())[:160] or response.reason_phrase
        return self._api.redact(message)

    def _fail(self, what: str, response: httpx.Response, body: Any, hint: str | None = None) -> ProviderError:
        if _is_daily_quota(response):
            return RateLimited(
                f"{LABEL} daily search quota is used up: {self._why(response, body)}",
                hint="It resets at 00:00 UTC; until then use another provider (--provider) or wait.",
            )
        return ProviderError(f"{LABEL} {what} failed (HTTP {response.status_code}): {self._why(response, body)}",
                             hint=hint)

    # -- offers --------------------------------------------------------------------------------------
    def offers(self, spec: OfferSpec) -> list[Offer]:
        response, body = self._call("POST", "/api/v0/bundles/", json=search_body(spec))
        if not response.is_success or not isinstance(body, dict):
            raise self._fail("offer search", response, body)
        return parse_offers(body, spec)

    # -- create --------------------------------------------------------------------------------------
    def create(self, offer: Offer, request: CreateRequest) -> str:
        started = time.time()
        payload = create_body(offer, request)
        if request.volume_id:
            payload["volume_info"] = volume_info(request.volume_id)
        try:
            response, body = self._call(
                "PUT", f"/api/v0/asks/{offer.offer_id}/", json=payload, idempotent=False,
                timeout=self._create_timeout, retry_statuses=frozenset({429}),
                own_statuses=frozenset({403}),  # may mean the offer is not rentable by this account
            )
        except ConnectFailed as exc:
            return self._recover(request, started, f"no answer: {exc.message}")
        if response.status_code in GATEWAY_STATUSES:
            return self._recover(request, started, f"HTTP {response.status_code}: {self._why(response, body)}")
        contract = body.get("new_contract") if isinstance(body, dict) else None
        if response.is_success and contract and body.get("success") is not False:
            return self._created(str(contract), request)
        if contract:
            self._clean_up_refused(str(contract), response, body)
        if response.is_success:
            return self._recover(request, started, "the answer carried no instance id")
        if is_capacity_error(body):
            raise NoCapacity(f"{LABEL} offer {offer.offer_id} is no longer available: {self._why(response, body)}",
                             hint="Choose another offer; `cloudsd up` tries the next cheapest.")
        if response.status_code == 403:
            raise ProviderError(
                f"{LABEL} refused to rent offer {offer.offer_id} to this account (HTTP 403): {self._why(response, body)}",
                hint="Some offers are open only to some accounts; `cloudsd up` tries the next cheapest. If every "
                     f"offer is refused, check the key ({self.credential_source}).")
        raise self._fail(f"create from offer {offer.offer_id}", response, body)

    def _created(self, provider_id: str, request: CreateRequest) -> str:
        self._fresh.add(provider_id)
        try:  # the env's PUBLIC_KEY already installs it; attaching it too covers images that ignore the env
            response, body = self._call("POST", f"/api/v0/instances/{provider_id}/ssh/",
                                        json={"ssh_key": request.public_key})
            if not response.is_success:
                self.warnings.append(f"attaching the SSH key to {provider_id}: {self._why(response, body)}")
        except CloudsdError as exc:
            self.warnings.append(f"attaching the SSH key to {provider_id}: {exc.message}")
        return provider_id

    def _recover(self, request: CreateRequest, started: float, reason: str) -> str:
        """The create may or may not have happened: find it by label instead of asking again."""
        label = request.label
        for look in range(2):  # a create that timed out can register a moment later: look twice
            try:
                matches = [raw for raw in self._list_raw() if raw.get("label") == label
                           and float(raw.get("start_date") or started) >= started - 300]
            except CloudsdError as exc:
                raise ProviderError(
                    f"{LABEL} did not confirm the create of {label} ({reason}), and the instance list could "
                    f"not be read to check ({exc.message}).",
                    hint=f"An instance labelled {label} may exist and bill: look for it at {CONSOLE_URL} and "
                         "destroy it there, or run `cloudsd down` with this name later.",
                ) from None
            if matches:
                newest = max(matches, key=lambda raw: (float(raw.get("start_date") or 0), int(raw.get("id") or 0)))
                return self._created(str(newest["id"]), request)
            if look == 0 and self.recover_settle_s > 0:
                time.sleep(self.recover_settle_s)
        raise ProviderError(
            f"{LABEL} did not confirm the create of {label} ({reason}), and no instance has that label, so "
            "none was created as far as Vast.ai shows.",
            hint=f"Run the command again. Should an instance labelled {label} appear at {CONSOLE_URL}, "
                 "destroy it there.",
        )

    def _clean_up_refused(self, provider_id: str, response: httpx.Response, body: Any) -> None:
        """Vast answered an error yet made a (stopped) instance that bills storage: destroy it, then raise."""
        why = self._why(response, body)
        try:
            self.destroy(provider_id)
        except CloudsdError as exc:
            raise ProviderError(
                f"{LABEL} refused the create ({why}) but still made instance {provider_id}, and destroying it "
                f"failed ({exc.message}).",
                hint=f"It bills storage until destroyed: destroy it at {CONSOLE_URL} or with "
                     f"`vastai destroy instance {provider_id}`.",
            ) from None
        error = NoCapacity if is_capacity_error(body) else ProviderError
        raise error(f"{LABEL} refused the create ({why}) but still made instance {provider_id} (stopped); "
                    "cloudsd destroyed it.", hint="Choose another offer; `cloudsd up` tries the next cheapest.")

    # -- one machine ---------------------------------------------------------------------------------
    def get(self, provider_id: str) -> MachineInfo | None:
        if not str(provider_id).isdigit():
            return None  # Vast ids are numbers: anything else was never an instance here
        response, body = self._call("GET", f"/api/v0/instances/{provider_id}/", params={"owner": "me"})
        if is_gone_error(response.status_code, body):
            return None
        if not response.is_success or not isinstance(body, dict):
            raise self._fail(f"lookup of instance {provider_id}", response, body)
        raw = body.get("instances")
        if isinstance(raw, list):
            raw = raw[0] if raw else None
        if not isinstance(raw, dict):
            return None
        info = parse_instance(raw, fresh=provider_id in self._fresh)
        if info is not None and info.status is MachineStatus.RUNNING:
            self._fresh.discard(provider_id)
        return info

    def destroy(self, provider_id: str) -> None:
        if not str(provider_id).isdigit():
            return
        response, body = self._call("DELETE", f"/api/v0/instances/{provider_id}/", json={})
        refused = isinstance(body, dict) and body.get("success") is False
        if response.is_success and not refused:
            self._fresh.discard(provider_id)
            return
        if is_gone_error(response.status_code, body):
            return
        raise self._fail(f"destroy of instance {provider_id}", response, body,
                         hint=f"It may still bill: destroy it at {CONSOLE_URL}, or run `cloudsd down` again.")

    def stop(self, provider_id: str) -> None:
        response, body = self._call("PUT", f"/api/v0/instances/{provider_id}/", json={"state": "stopped"})
        if not response.is_success or (isinstance(body, dict) and body.get("success") is False):
            gone = is_gone_error(response.status_code, body)
            raise self._fail(f"stop of instance {provider_id}", response, body,
                             hint="It no longer exists." if gone else f"Stop or destroy it at {CONSOLE_URL}.")

    def start(self, provider_id: str) -> None:
        """`PUT state running`. When the host's GPU was rented by someone else meanwhile, Vast refuses (or
        accepts and leaves the instance "scheduling"): that is ResumeRefused, and the disk is kept."""
        response, body = self._call("PUT", f"/api/v0/instances/{provider_id}/", json={"state": "running"})
        if response.is_success and not (isinstance(body, dict) and body.get("success") is False):
            return
        if is_gone_error(response.status_code, body):
            raise self._fail(f"start of instance {provider_id}", response, body, hint="It no longer exists.")
        if is_capacity_error(body) or response.status_code in (409, 410):
            raise ResumeRefused(
                f"{LABEL} cannot resume instance {provider_id} now: {self._why(response, body)}",
                hint="Its disk is kept (and bills storage). Try `start` again later, or end it with `cloudsd down`.",
            )
        raise self._fail(f"start of instance {provider_id}", response, body, hint=f"Start it at {CONSOLE_URL}.")

    def self_stop_call(self, action: str) -> SelfStopCall:
        return self_stop_call(action)

    # -- many machines -------------------------------------------------------------------------------
    def _list_raw(self) -> list[dict[str, Any]]:
        """Every instance on the account, following `next_token` through `/api/v1/instances/`."""
        rows: list[dict[str, Any]] = []
        token: str | None = None
        seen: set[str] = set()
        while True:
            params: dict[str, Any] = {"select_filters": _compact({}),
                                      "order_by": _compact([{"col": "id", "dir": "asc"}]),
                                      "limit": self.list_page_size}
            if token:
                params["after_token"] = token
            response, body = self._call("GET", "/api/v1/instances/", params=params)
            if not response.is_success or not isinstance(body, dict):
                raise self._fail("instance list", response, body)
            page = [row for row in body.get("instances") or [] if isinstance(row, dict)]
            rows.extend(page)
            token = body.get("next_token") or None
            if not token or not page or token in seen:
                return rows
            seen.add(token)

    def list_machines(self) -> list[MachineInfo]:
        machines = []
        for raw in self._list_raw():
            if not str(raw.get("label") or "").startswith(LABEL_PREFIX):
                continue
            info = parse_instance(raw, fresh=str(raw.get("id")) in self._fresh)
            if info is not None:
                machines.append(info)
        return machines

    # -- account -------------------------------------------------------------------------------------
    def account(self) -> dict[str, Any]:
        """{"balance_usd", "credit_usd", "email", "user_id"} from `users/current` (its api_key is dropped)."""
        response, body = self._call("GET", "/api/v0/users/current")
        if not response.is_success or not isinstance(body, dict):
            raise self._fail("account lookup", response, body)
        return parse_account(body)

    def check(self) -> str:
        """One cheap live call for `cloudsd doctor`: is the key accepted, and what credit is left."""
        account = self.account()
        credit = account.get("credit_usd")
        money = f"; credit ${credit:.2f}" if isinstance(credit, float) else ""
        return f"{LABEL} accepted the key …{self.key_last4} from {self.credential_source}{money}"

    def billing(self, since: float, until: float) -> list[dict[str, Any]]:
        """Charges between two epoch times, one dict per instance: provider_id, label, start, end, amount_usd."""
        charges: list[dict[str, Any]] = []
        token: str | None = None
        seen: set[str] = set()
        while True:
            params: dict[str, Any] = {"select_filters": _compact({"day": {"gte": int(since), "lte": int(until) + 1}}),
                                      "limit": 100}
            if token:
                params["after_token"] = token
            response, body = self._call("GET", "/api/v0/charges/", params=params)
            if not response.is_success or not isinstance(body, dict):
                raise self._fail("charges lookup", response, body)
            results = [row for row in body.get("results") or [] if isinstance(row, dict)]
            charges.extend(parse_charge(row) for row in results)
            token = body.get("next_token") or None
            if not token or not results or token in seen:
                return charges
            seen.add(token)

    def logs(self, provider_id: str, tail: int = 200, deadline_s: float = 30.0) -> str:
        """The machine's container log (Vast serves it from a separate, unauthenticated URL)."""
        response, body = self._call("PUT", f"/api/v0/instances/request_logs/{provider_id}/",
                                    json={"tail": str(tail)})
        url = body.get("result_url") if isinstance(body, dict) else None
        if not response.is_success or not url:
            raise self._fail(f"log request for instance {provider_id}", response, body)
        started = time.monotonic()
        while True:
            try:
                result = httpx.get(url, timeout=10.0)  # no Authorization: the key stays with the API host
                if result.status_code == 200:
                    return result.text
            except httpx.TransportError:
                pass
            if time.monotonic() - started > deadline_s:
                raise ProviderError(f"{LABEL} did not publish the log of instance {provider_id} within "
                                    f"{deadline_s:.0f} s.", hint="Try again in a minute.")
            time.sleep(1.0)

