"""A small JSON-over-HTTP client on httpx, shared by the provider modules.

- Explicit timeouts on every call.
- Bounded retries with full jitter on 429/502/503/504 and connection errors, only for calls marked safe to
  repeat; `Retry-After` is honoured; the whole call keeps to a deadline.
- The API key is sent as a Bearer header and never appears in an error, log line or repr.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from cloudsd import __version__
from cloudsd.errors import CredentialsError, ProviderError, RateLimited
from cloudsd.providers.credentials import redact

RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class HttpError(ProviderError):
    """An HTTP answer the provider module did not expect; carries status and parsed body for it to map."""

    def __init__(self, message: str, *, status: int, body: Any = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.body = body


class ConnectFailed(ProviderError):
    """The provider could not be reached at all (DNS, refused, timed out)."""


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class JsonApi:
    """One provider's HTTP endpoint: a base URL, a key, and a retry policy."""

    def __init__(
        self,
        *,
        provider_label: str,
        base_url: str,
        api_key: str,
        key_hint: str,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_attempts: int = 5,
        deadline_s: float = 90.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
        no_retry: Callable[[httpx.Response], bool] | None = None,
        credential_statuses: frozenset[int] = frozenset({401, 403}),
        pace: Callable[[httpx.Headers], float | None] | None = None,
    ) -> None:
        self.provider_label = provider_label
        self.key_hint = key_hint  # what to do about a rejected key, e.g. "set RUNPOD_API_KEY …"
        self.max_attempts = max_attempts
        self.deadline_s = deadline_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._sleep = sleep
        self._no_retry = no_retry  # answers that look retryable but are final (a daily quota's 429)
        self._api_key = api_key
        self._credential_statuses = credential_statuses  # answers that mean "this key is not accepted"
        self._pace = pace  # seconds to hold the next request, read from an answer's rate-limit headers
        self._not_before = 0.0  # monotonic time before which no request is sent
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            headers={
                "Authorization": f"Bearer {api_key}",
                "User-Agent": f"cloudsd/{__version__}",
                "Accept": "application/json",
            },
            follow_redirects=False,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"JsonApi({self.provider_label}, {self._client.base_url})"

    def close(self) -> None:
        self._client.close()

    def redact(self, text: str) -> str:
        return redact(text, self._api_key)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        idempotent: bool,
        timeout: httpx.Timeout | None = None,
        retry_statuses: frozenset[int] = frozenset(),
        own_statuses: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """Send one call; retry it only if `idempotent`. Returns any non-retryable response for the caller.

        `retry_statuses` lets a call that is not idempotent still retry answers that prove the server did
        nothing (a create may retry 429: the rate limiter refused it before the API saw it). `own_statuses` are
        returned to the caller even where they would otherwise mean a rejected key (a 403 on one call).
        """
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            hold = self._not_before - time.monotonic()
            if hold > 0:
                if time.monotonic() - started + hold > self.deadline_s:
                    raise RateLimited(
                        f"{self.provider_label} asks cloudsd to wait {hold:.0f} s before the next request.",
                        hint="Wait a minute and run the command again.",
                    )
                self._sleep(hold)
            try:
                response = self._client.request(
                    method, path, json=json, params=params, timeout=timeout or self._client.timeout
                )
            except httpx.TransportError as exc:
                reason = self.redact(f"{type(exc).__name__}: {exc}".strip())
                if not idempotent or not self._may_retry(attempt, started, None):
                    raise ConnectFailed(
                        f"could not reach {self.provider_label} at {self._client.base_url} ({reason})",
                        hint="Check the network, or the base URL in `cloudsd config show`.",
                    ) from None
                continue
            if self._pace is not None and not (response.status_code == 429 and "Retry-After" in response.headers):
                wait = self._pace(response.headers)
                if wait:
                    self._not_before = time.monotonic() + wait
            if response.status_code in self._credential_statuses and response.status_code not in own_statuses:
                raise CredentialsError(
                    f"{self.provider_label} rejected the API key (HTTP {response.status_code}).",
                    hint=self.key_hint,
                )
            if response.status_code in RETRY_STATUSES:
                if self._no_retry is not None and self._no_retry(response):
                    return response  # final: the caller turns it into its own error
                retryable = idempotent or response.status_code in retry_statuses
                if retryable and self._may_retry(attempt, started, response):
                    continue
                if response.status_code == 429:
                    raise RateLimited(
                        f"{self.provider_label} is rate-limiting cloudsd (HTTP 429) and kept doing so "
                        f"for {time.monotonic() - started:.0f} s.",
                        hint="Wait a minute and run the command again.",
                    )
            return response

    def _may_retry(self, attempt: int, started: float, response: httpx.Response | None) -> bool:
        if attempt >= self.max_attempts:
            return False
        delay = _retry_after_s(response) if response is not None else None
        if delay is None:
            delay = random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1)))
        if time.monotonic() - started + delay > self.deadline_s:
            return False
        self._sleep(delay)
        return True

    def json_or_error(self, response: httpx.Response, what: str) -> Any:
        """The parsed JSON body, or an HttpError that names the call and the provider's own message."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success and body is not None:
            return body
        snippet = "" if body is not None else self.redact(response.text[:120].strip().replace("\n", " "))
        message = _message_from(body) or snippet or response.reason_phrase
        raise HttpError(
            f"{self.provider_label} {what} failed (HTTP {response.status_code}): {message}",
            status=response.status_code,
            body=body,
        )


def _message_from(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in ("msg", "message", "error"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("message", ""))
    return None
