"""Cost from the ledger: pure functions from ledger rows and events to billed intervals and dollars.

The rules, per second:
- Billing starts at the `created` event (the provider returned an id) at the $/h quoted at create, storage
  included (`price_per_hour`), and stays at that rate while the machine boots or runs.
- A stopped machine bills its storage (`storage_price_per_hour`) from `stopped` (or a watchdog stop) until
  `resumed`; both clouds keep charging for the disk of a stopped machine.
- Billing ends at the first `destroying` event (the destroy call), or where the machine was found gone
  (`gone`, `terminated`), or at a watchdog's `terminate` (`watchdog-ended`).

- Bandwidth, where the provider bills it per GB (Vast.ai: the offer's `inet_down_cost`/`inet_up_cost`, kept in
  the `created` event), is an estimate from what cloudsd itself moved: bytes into the machine (models pushed
  or fetched by it: `models-synced` `bytes_in`) at the download rate, bytes out (outputs pulled:
  `outputs-pulled` `bytes_out`) at the upload rate, 1 GB = 10^9 bytes, counted when the transfer was recorded.
  Traffic cloudsd did not make (the UI's own downloads) is not in it.

Times are the laptop's, from events cloudsd wrote itself. The only other times are estimates of when the
watchdog acted, which are converted to the laptop's clock before they are written (`data["at"]`). Events are
read in the order they were written and time never runs backwards along a session: a time earlier than the
previous transition (a skewed clock, an estimate) is moved up to it, so no second is counted twice and none
is negative.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cloudsd.ledger import EventKind, MachineRecord

Event = tuple[float, str, str, dict[str, Any]]  # (at, machine name, kind, data), as Ledger.events() returns
RUNNING, STOPPED, ENDED = "running", "stopped", "ended"
_TRANSITIONS: dict[str, str] = {EventKind.CREATED: RUNNING, EventKind.RESUMED: RUNNING, EventKind.STOPPED: STOPPED,
                EventKind.DESTROYING: ENDED, EventKind.TERMINATED: ENDED, EventKind.GONE: ENDED}


@dataclass(frozen=True)
class Interval:
    """A stretch of a session at one rate: running, or stopped and billing storage."""

    start: float
    end: float
    state: str  # running | stopped
    rate_per_hour: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def cost_usd(self) -> float:
        return self.rate_per_hour * self.seconds / 3600.0

    def clipped(self, since: float | None, until: float | None) -> Interval | None:
        start = self.start if since is None else max(self.start, since)
        end = self.end if until is None else min(self.end, until)
        return Interval(start, end, self.state, self.rate_per_hour) if end > start else None


@dataclass(frozen=True)
class SessionCost:
    """One session's billing as cloudsd estimates it from its own ledger."""

    record_id: int
    name: str
    provider: str
    provider_id: str | None
    gpu: str | None
    price_per_hour: float
    storage_price_per_hour: float
    started_at: float | None  # the create; None: never created, nothing billed
    ended_at: float | None  # None while it may still bill
    state: str  # running | stopped | ended | never created
    intervals: tuple[Interval, ...] = ()
    ended_by: str | None = None  # "down", "the watchdog: time budget 45m reached", "gone", …
    extra: dict[str, Any] = field(default_factory=dict)
    transfers: tuple[tuple[float, float], ...] = ()  # (when, $) of bandwidth billed per GB: an estimate

    @property
    def bandwidth_usd(self) -> float:
        return sum(usd for _, usd in self.transfers)

    @property
    def cost_usd(self) -> float:
        return sum(i.cost_usd for i in self.intervals) + self.bandwidth_usd

    def bandwidth_between(self, since: float | None, until: float | None) -> float:
        return sum(usd for at, usd in self.transfers
                   if (since is None or at >= since) and (until is None or at <= until))

    @property
    def running_s(self) -> float:
        return sum(i.seconds for i in self.intervals if i.state == RUNNING)

    @property
    def stopped_s(self) -> float:
        return sum(i.seconds for i in self.intervals if i.state == STOPPED)

    @property
    def duration_s(self) -> float:
        return sum(i.seconds for i in self.intervals)

    @property
    def accruing_per_hour(self) -> float:
        """What it bills now: the running or the storage rate, 0 once ended."""
        if self.ended_at is not None or not self.intervals:
            return 0.0
        return self.intervals[-1].rate_per_hour

    def cost_between(self, since: float | None, until: float | None) -> float:
        return sum(c.cost_usd for i in self.intervals if (c := i.clipped(since, until)) is not None) + \
            self.bandwidth_between(since, until)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_id": self.record_id, "name": self.name, "provider": self.provider,
            "provider_id": self.provider_id, "gpu": self.gpu, "price_per_hour": self.price_per_hour,
            "storage_price_per_hour": self.storage_price_per_hour, "started_at": self.started_at,
            "ended_at": self.ended_at, "state": self.state, "ended_by": self.ended_by,
            "running_s": round(self.running_s, 3), "stopped_s": round(self.stopped_s, 3),
            "cost_usd": round(self.cost_usd, 6), "accruing_per_hour": round(self.accruing_per_hour, 6),
            "stopped_by": self.extra.get("stopped_by"),
            "bandwidth_usd": round(self.bandwidth_usd, 6) if self.transfers else None,  # an estimate
        }


def _transition(kind: str, data: dict[str, Any]) -> str | None:
    if kind == EventKind.WATCHDOG_ENDED:
        return STOPPED if data.get("action") == "stop" else ENDED
    return _TRANSITIONS.get(kind)


GB = 1e9


def transfers(events: Sequence[Event]) -> tuple[tuple[float, float], ...]:
    """(when, $) for each transfer cloudsd recorded, priced per GB at the rates in the `created` event; empty
    where the provider bills no bandwidth per GB."""
    down = up = None
    out = []
    for at, _, kind, data in events:
        if kind == "created":
            down, up = data.get("download_usd_per_gb"), data.get("upload_usd_per_gb")
        elif kind == "models-synced" and isinstance(down, (int, float)) and data.get("bytes_in"):
            out.append((at, float(data["bytes_in"]) / GB * down))
        elif kind == "outputs-pulled" and isinstance(up, (int, float)) and data.get("bytes_out"):
            out.append((at, float(data["bytes_out"]) / GB * up))
    return tuple(out)


def session_cost(record: MachineRecord, events: Sequence[Event], now: float | None = None) -> SessionCost:
    """Intervals and dollars for one session, from its events (in ledger order)."""
    now = time.time() if now is None else now
    rates = {RUNNING: record.price_per_hour, STOPPED: record.storage_price_per_hour}
    state: str | None = None
    since = started = last = 0.0
    ended_at: float | None = None
    ended_by: str | None = None
    stopped_by: str | None = None
    intervals: list[Interval] = []
    for at, _, kind, data in events:
        if kind == EventKind.BUDGET_REACHED:  # the attached CLI ends the machine next: say why it ended
            ended_by = f"cloudsd: {data.get('reason', 'budget reached')}"
        target = _transition(kind, data)
        if target is None:
            continue
        when = float(data["at"]) if kind in (EventKind.WATCHDOG_ENDED, EventKind.STOPPED) and data.get("at") is not None else at
        if state is None:
            if kind == EventKind.CREATED:
                state, since, started, last = RUNNING, when, when, when
            continue
        when = max(when, last)
        if target == state:
            continue
        intervals.append(Interval(since, when, state, rates[state]))
        state, since, last = target, when, when
        if kind == EventKind.WATCHDOG_ENDED:
            why = f"the watchdog: {data.get('reason', 'budget reached')}"
            ended_by, stopped_by = (why, stopped_by) if state == ENDED else (None, why)
        elif state == STOPPED:
            stopped_by = str(data.get("reason") or "stopped")
        if state == ENDED:
            ended_at = when
            ended_by = ended_by or str(data.get("reason") or kind)
            break
    if state is None:
        return SessionCost(record.id, record.name, record.provider, record.provider_id, record.gpu,
                           record.price_per_hour, record.storage_price_per_hour, None, None, "never created")
    if state in (RUNNING, STOPPED):
        intervals.append(Interval(since, max(now, since), state, rates[state]))
    return SessionCost(record.id, record.name, record.provider, record.provider_id, record.gpu,
                       record.price_per_hour, record.storage_price_per_hour, started, ended_at, state,
                       tuple(intervals), ended_by, {"stopped_by": stopped_by} if state == STOPPED else {},
                       transfers(events))


def session_costs(sessions: Iterable[tuple[MachineRecord, Sequence[Event]]],
                  now: float | None = None) -> list[SessionCost]:
    """Each session's cost; `sessions` pairs each ledger row with its own events (`Ledger.sessions()`)."""
    now = time.time() if now is None else now
    return [session_cost(record, evs, now) for record, evs in sessions]


def to_laptop_time(machine_time: float, offset_s: float) -> float:
    """A time read on the machine's clock, on the laptop's: offset = machine clock - laptop clock."""
    return machine_time - offset_s


def clock_offset(machine_time: float, sent_at: float, received_at: float) -> float:
    """The machine's clock minus the laptop's, from one reading taken between `sent_at` and `received_at`."""
    return machine_time - (sent_at + received_at) / 2.0


# -- periods ---------------------------------------------------------------------------------------------------
def month_start(now: float) -> float:
    moment = datetime.fromtimestamp(now)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def month_end(now: float) -> float:
    start = datetime.fromtimestamp(month_start(now))
    return (start.replace(year=start.year + 1, month=1) if start.month == 12
            else start.replace(month=start.month + 1)).timestamp()


def day_of(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d")


def split_by_day(interval: Interval) -> list[tuple[str, Interval]]:
    """The interval cut at local midnights, each piece with its date."""
    pieces = []
    start = interval.start
    while start < interval.end:
        day = datetime.fromtimestamp(start).replace(hour=0, minute=0, second=0, microsecond=0)
        next_day = (day + timedelta(days=1)).timestamp()
        end = min(interval.end, next_day)
        pieces.append((day.strftime("%Y-%m-%d"), Interval(start, end, interval.state, interval.rate_per_hour)))
        start = end
    return pieces


@dataclass(frozen=True)
class Group:
    """Sessions summed under one key: a provider, a GPU, a day or a machine's name."""

    key: str
    sessions: int
    seconds: float
    cost_usd: float

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "sessions": self.sessions, "seconds": round(self.seconds, 3),
                "cost_usd": round(self.cost_usd, 6)}


def group(costs: Iterable[SessionCost], by: str, since: float | None, until: float | None) -> list[Group]:
    """Totals per provider, GPU or day (local time) inside [since, until]."""
    totals: dict[str, list[Any]] = {}
    for cost in costs:
        seen: set[str] = set()
        for interval in cost.intervals:
            clipped = interval.clipped(since, until)
            if clipped is None:
                continue
            pieces = split_by_day(clipped) if by == "day" else [
                (cost.provider if by == "provider" else (cost.gpu or "-") if by == "gpu" else cost.name, clipped)]
            for key, piece in pieces:
                entry = totals.setdefault(key, [0, 0.0, 0.0])
                if key not in seen:
                    entry[0] += 1
                    seen.add(key)
                entry[1] += piece.seconds
                entry[2] += piece.cost_usd
    return [Group(k, n, s, c) for k, (n, s, c) in sorted(totals.items())]
