"""`cloudsd cost`: every session's cost from the ledger, totals, what accrues now, and the providers' own bills.

The figures are cloudsd's estimate (`core/cost.py`): the rate locked at create, per second, with stopped
machines at their storage rate. Where a provider reports what it actually charged (RunPod's pod billing,
Vast.ai's charges), that figure is shown beside the estimate with the difference; where it cannot be had,
the report says the figures are an estimate and why the provider's are missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cloudsd.core.cost import Group, SessionCost, group, month_end, month_start, session_costs
from cloudsd.core.machines import Providers
from cloudsd.errors import CloudsdError
from cloudsd.ledger import Ledger
from cloudsd.providers import ReportsBilling


@dataclass(frozen=True)
class Line:
    """One session inside the report's window."""

    cost: SessionCost
    window_cost_usd: float
    window_seconds: float
    billed_usd: float | None = None  # what the provider charged for this machine, where it reports that

    @property
    def difference_usd(self) -> float | None:
        return None if self.billed_usd is None else self.billed_usd - self.window_cost_usd

    def to_dict(self) -> dict[str, Any]:
        data = self.cost.to_dict()
        data["total_cost_usd"] = data.pop("cost_usd")
        data.update({"cost_usd": round(self.window_cost_usd, 6), "seconds": round(self.window_seconds, 3),
                     "billed_usd": None if self.billed_usd is None else round(self.billed_usd, 6),
                     "difference_usd": None if self.difference_usd is None else round(self.difference_usd, 6)})
        return data


@dataclass(frozen=True)
class ProviderBilling:
    provider: str
    available: bool
    why: str | None = None  # why the provider's own figures are missing
    billed_usd: float | None = None  # the provider's total for cloudsd's machines in the window
    estimate_usd: float = 0.0
    balance_usd: float | None = None
    spend_per_hour: float | None = None
    by_machine: dict[str, float] = field(default_factory=dict)
    missing: str | None = None  # a figure the provider's API does not give (RunPod v2: no balance)

    @property
    def difference_usd(self) -> float | None:
        return None if self.billed_usd is None else self.billed_usd - self.estimate_usd

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "available": self.available, "why": self.why,
                "billed_usd": None if self.billed_usd is None else round(self.billed_usd, 6),
                "estimate_usd": round(self.estimate_usd, 6),
                "difference_usd": None if self.difference_usd is None else round(self.difference_usd, 6),
                "balance_usd": self.balance_usd, "spend_per_hour": self.spend_per_hour, "missing": self.missing}


@dataclass(frozen=True)
class CostReport:
    since: float | None
    until: float | None
    by: str
    now: float
    lines: list[Line]
    groups: list[Group]
    month_to_date_usd: float
    accruing_per_hour: float
    billing: list[ProviderBilling]

    @property
    def total_usd(self) -> float:
        return sum(line.window_cost_usd for line in self.lines)

    @property
    def month_projection_usd(self) -> float:
        """Month to date plus what accrues now, kept up until the month ends."""
        return self.month_to_date_usd + self.accruing_per_hour * max(0.0, month_end(self.now) - self.now) / 3600.0

    @property
    def basis(self) -> str:
        missing = [b for b in self.billing if not b.available]
        if not missing:
            return "estimate from the ledger" + (", with the providers' own billing" if self.billing else "")
        why = "; ".join(f"{b.provider}: {b.why}" for b in missing)
        return f"estimate (provider billing unavailable: {why})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "basis": self.basis, "since": self.since, "until": self.until, "by": self.by, "now": self.now,
            "sessions": [line.to_dict() for line in self.lines],
            "groups": [g.to_dict() for g in self.groups],
            "total_usd": round(self.total_usd, 6), "month_to_date_usd": round(self.month_to_date_usd, 6),
            "accruing_per_hour": round(self.accruing_per_hour, 6),
            "month_projection_usd": round(self.month_projection_usd, 6),
            "billing": {b.provider: b.to_dict() for b in self.billing},
        }


def build(ledger: Ledger, providers: Providers | None, *, since: float | None = None, until: float | None = None,
          by: str = "session", now: float | None = None) -> CostReport:
    """The report for [since, until] (either open). `providers` None: no provider is asked for its billing."""
    now = time.time() if now is None else now
    costs = [c for c in session_costs(ledger.sessions(), now) if c.started_at is not None]
    lines = []
    for cost in costs:
        pieces = [c for i in cost.intervals if (c := i.clipped(since, until)) is not None]
        if pieces:
            lines.append(Line(cost, sum(p.cost_usd for p in pieces) + cost.bandwidth_between(since, until),
                              sum(p.seconds for p in pieces)))
    billing = _provider_billing(providers, lines, since, until, now) if providers is not None else []
    billed = {(b.provider, pid): amount for b in billing for pid, amount in b.by_machine.items()}
    lines = [Line(line.cost, line.window_cost_usd, line.window_seconds,
                  billed.get((line.cost.provider, line.cost.provider_id or ""),
                             0.0 if _available(billing, line.cost.provider) else None))
             for line in lines]
    start = month_start(now)
    return CostReport(
        since=since, until=until, by=by, now=now, lines=lines,
        groups=group(costs, by, since, until) if by != "session" else [],
        month_to_date_usd=sum(c.cost_between(start, now) for c in costs),
        accruing_per_hour=sum(c.accruing_per_hour for c in costs),
        billing=billing,
    )


def _available(billing: list[ProviderBilling], provider: str) -> bool:
    return any(b.provider == provider and b.available for b in billing)


def _provider_billing(providers: Providers, lines: list[Line], since: float | None, until: float | None,
                      now: float) -> list[ProviderBilling]:
    out = []
    for name in sorted({line.cost.provider for line in lines}):
        mine = [line for line in lines if line.cost.provider == name]
        estimate = sum(line.window_cost_usd for line in mine)
        try:
            provider = providers.get(name)
        except CloudsdError as exc:
            out.append(ProviderBilling(name, False, f"not configured here ({exc.message})", estimate_usd=estimate))
            continue
        if not provider.bills_money:
            continue
        if not provider.reports_billing:
            out.append(ProviderBilling(name, False, f"{name} reports no billing", estimate_usd=estimate))
            continue
        first = min((line.cost.started_at or now) for line in mine)
        try:
            records = provider.billing(since if since is not None else first, until if until is not None else now)
        except CloudsdError as exc:
            out.append(ProviderBilling(name, False, exc.message, estimate_usd=estimate))
            continue
        ids = {line.cost.provider_id for line in mine if line.cost.provider_id}
        by_machine: dict[str, float] = {}
        for record in records:
            pid = str(record.get("provider_id") or "")
            if pid in ids:
                by_machine[pid] = by_machine.get(pid, 0.0) + float(record.get("amount_usd") or 0.0)
        balance = spend = None
        details: dict[str, Any] = {}
        if isinstance(provider, ReportsBilling):
            try:
                details = provider.account()
            except CloudsdError:
                details = {}
            balance = details.get("credit_usd") if details.get("credit_usd") is not None else details.get(
                "balance_usd")  # Vast.ai's spendable money is its credit; RunPod's, its balance
            spend = details.get("spend_usd_per_hour")
        missing = details.get("missing") if isinstance(details.get("missing"), str) else None
        out.append(ProviderBilling(name, True, None, sum(by_machine.values()), estimate, balance, spend, by_machine,
                                   missing))
    return out
