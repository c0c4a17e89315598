"""`doctor`: one live call per provider, saying which credential it used (last four characters only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cloudsd.core.machines import Providers
from cloudsd.errors import CloudsdError
from cloudsd.providers import KeyedAccount, provider_names


@dataclass(frozen=True)
class Check:
    provider: str
    ok: bool
    credential: str  # "RUNPOD_API_KEY (…abcd)", "~/.config/vastai/vast_api_key (…wxyz)", "-" for local
    detail: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def check_all(providers: Providers) -> list[Check]:
    results = []
    for name in provider_names():
        try:
            provider = providers.get(name)
        except CloudsdError as exc:
            results.append(Check(name, False, "-", str(exc)))
            continue
        credential = "-"
        if isinstance(provider, KeyedAccount) and provider.credential_source and provider.key_last4:
            credential = f"{provider.credential_source} (…{provider.key_last4})"
        try:
            detail = provider.check()
        except CloudsdError as exc:
            results.append(Check(name, False, credential, str(exc)))
            continue
        results.append(Check(name, True, credential, detail))
    return results
