"""Budgets: what a machine may cost or last, turned into deadlines the CLI and the on-machine watchdog enforce.

Plain data and pure functions. Every time here is laptop-clock epoch seconds; the watchdog gets the same
deadlines shifted by the machine's measured clock offset (`core/watchdog.py`).

- A time budget ends the machine `max_time_s` after billing started (the `created` event).
- A spend budget becomes a deadline too: the moment the cost so far plus the running rate reaches it.
- An idle budget stops (or terminates) the machine after `idle_s` with no web UI request, no shell in use
  and an idle GPU. It has no fixed deadline; the watchdog reports the current one.
- A provider that can end a machine itself at a time set at create (`supports_deadline`; none does today:
  RunPod's REST v2 has no `terminateAfter`) gets the earliest deadline plus `PROVIDER_GRACE_S`: a backstop
  that fires even if the watchdog dies. The grace lets the watchdog (which acts at the deadline) go first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cloudsd.durations import format_written
from cloudsd.errors import BudgetError

PROVIDER_GRACE_S = 120.0


IDLE_ACTIONS = ("stop", "terminate")


@dataclass(frozen=True)
class Budget:
    """What the user allows one machine. None means no limit."""

    max_time_s: float | None = None
    max_spend_usd: float | None = None
    idle_s: float | None = None
    idle_action: str = "stop"
    warn_at: float = 0.8

    @property
    def enforced(self) -> bool:
        """Whether anything needs the watchdog."""
        return any(v is not None for v in (self.max_time_s, self.max_spend_usd, self.idle_s))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Budget:
        known = {k: data[k] for k in ("max_time_s", "max_spend_usd", "idle_s", "idle_action", "warn_at") if k in data}
        return cls(**known)

    @classmethod
    def from_settings(cls, settings: Any) -> Budget:
        return cls(max_time_s=settings["max_time"], max_spend_usd=settings["max_spend"],
                   idle_s=settings["idle_stop"], idle_action=settings["idle_action"], warn_at=settings["warn_at"])

    def describe(self) -> str:
        parts = []
        if self.max_time_s is not None:
            parts.append(f"ends after {format_written(self.max_time_s)}")
        if self.max_spend_usd is not None:
            parts.append(f"ends at ${self.max_spend_usd:.2f} spent")
        if self.idle_s is not None:
            parts.append(f"{'stops' if self.idle_action == 'stop' else 'ends'} after "
                         f"{format_written(self.idle_s)} idle")
        return ", ".join(parts) or "no budget"


@dataclass(frozen=True)
class Deadline:
    at: float  # laptop-clock epoch seconds
    reason: str  # "time budget 45m reached"
    kind: str  # "time" | "spend"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_reason(max_time_s: float) -> str:
    return f"time budget {format_written(max_time_s)} reached"


def spend_reason(max_spend_usd: float) -> str:
    return f"spend budget ${max_spend_usd:.2f} reached"


def idle_reason(idle_s: float) -> str:
    return f"idle for {format_written(idle_s)}"


def deadlines(budget: Budget, *, started_at: float, now: float, spent_usd: float,
              price_per_hour: float) -> list[Deadline]:
    """The time and spend deadlines, earliest first. The spend deadline assumes the machine runs from `now`
    at `price_per_hour` (a stopped machine bills less, so it is never late)."""
    found = []
    if budget.max_time_s is not None:
        found.append(Deadline(started_at + budget.max_time_s, time_reason(budget.max_time_s), "time"))
    if budget.max_spend_usd is not None and price_per_hour > 0:
        left = max(0.0, budget.max_spend_usd - spent_usd)
        found.append(Deadline(now + left / price_per_hour * 3600.0, spend_reason(budget.max_spend_usd), "spend"))
    return sorted(found, key=lambda d: d.at)


def provider_deadline(budget: Budget, *, now: float, price_per_hour: float) -> float | None:
    """The server-side deadline to ask for at create (`supports_deadline`), or None without a time or spend
    budget."""
    found = deadlines(budget, started_at=now, now=now, spent_usd=0.0, price_per_hour=price_per_hour)
    return found[0].at + PROVIDER_GRACE_S if found else None


def check_new_budget(budget: Budget, *, started_at: float, now: float, spent_usd: float) -> None:
    """Refuse a budget that is already used up, with the numbers."""
    if budget.max_spend_usd is not None:
        if budget.max_spend_usd <= 0:
            raise BudgetError("a spend budget must be above $0.", hint="Give --max-spend in USD, e.g. 2.50.")
        if budget.max_spend_usd <= spent_usd:
            raise BudgetError(
                f"the machine has already cost ${spent_usd:.4f}; a spend budget of ${budget.max_spend_usd:.2f} is "
                "not above that.",
                hint=f"Give more than ${spent_usd:.2f}, or end it now with `cloudsd down NAME`.",
            )
    if budget.max_time_s is not None:
        if budget.max_time_s <= 0:
            raise BudgetError("a time budget must be longer than 0 s.", hint="Give --max-time like 45m or 2h.")
        ran = now - started_at
        if budget.max_time_s <= ran:
            raise BudgetError(
                f"the machine has already run {format_written(ran)}; a time budget of "
                f"{format_written(budget.max_time_s)} is not above that.",
                hint=f"Give more than {format_written(ran)}, or end it now with `cloudsd down NAME`.",
            )
    if budget.idle_s is not None and budget.idle_s <= 0:
        raise BudgetError("an idle budget must be longer than 0 s.", hint="Give --idle-stop like 15m.")
    if budget.idle_action not in IDLE_ACTIONS:
        raise BudgetError(f"idle action {budget.idle_action!r} is not one of {', '.join(IDLE_ACTIONS)}.")


@dataclass(frozen=True)
class BudgetUse:
    """How much of each budget is used now; shares are 0..1+ (None: no such budget)."""

    time_share: float | None
    spend_share: float | None
    reached: Deadline | None  # a time or spend budget that is used up now

    @property
    def share(self) -> float | None:
        shares = [s for s in (self.time_share, self.spend_share) if s is not None]
        return max(shares) if shares else None


def use(budget: Budget, *, started_at: float, now: float, spent_usd: float, price_per_hour: float) -> BudgetUse:
    time_share = None if budget.max_time_s is None else (now - started_at) / max(budget.max_time_s, 1e-9)
    spend_share = None if budget.max_spend_usd is None else spent_usd / max(budget.max_spend_usd, 1e-9)
    reached = None
    if budget.max_spend_usd is not None and spent_usd >= budget.max_spend_usd:
        reached = Deadline(now, spend_reason(budget.max_spend_usd), "spend")
    if budget.max_time_s is not None and now >= started_at + budget.max_time_s:
        reached = Deadline(started_at + budget.max_time_s, time_reason(budget.max_time_s), "time")
    return BudgetUse(time_share, spend_share, reached)
