"""The rules that guard money during `up`, `down` and `status`, in-process on the memory provider (no Docker).

A paid machine that fails before it is ready is destroyed and confirmed gone before the error reaches the
user, unless they asked to keep it; the next offer is tried after a boot or SSH failure; a provider with no
capacity leaves no machine and a closed ledger row; a failed cleanup says how to end the machine.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from cloudsd.config import resolve
from cloudsd.core.machines import Providers, QuietReporter
from cloudsd.core.status import status
from cloudsd.core.teardown import down
from cloudsd.core.up import MAX_OFFERS_TRIED, UpOptions, up
from cloudsd.errors import CloudsdError, NoCapacity, ProvisioningError, SSHError
from cloudsd.ledger import EventKind, Ledger, Status
from cloudsd.machine import MachineStatus
from cloudsd.providers.memory import World
from tests.support.memory_machines import running_machine


def _up(world: World, *, keep: bool = False, confirm: Any = None, **settings: Any) -> tuple[Ledger, QuietReporter]:
    resolved = resolve({"provider": "memory", "keep_on_failure": keep, **settings})
    options = UpOptions.from_settings(resolved, "box", ssh_timeout_s=0.3, boot_timeout_s=5.0)
    ledger, reporter = Ledger(), QuietReporter()
    providers = Providers(resolved)
    try:
        up(options, ledger, providers, reporter, confirm=confirm)
    finally:
        providers.close()
    return ledger, reporter


def _kinds(ledger: Ledger) -> list[list[str]]:
    return [[e[2] for e in events] for _, events in ledger.sessions()]


def test_a_boot_that_fails_is_destroyed_and_recorded(world: World) -> None:
    world.add_offer("a")
    world.fails_boot.add("a")
    with pytest.raises(ProvisioningError, match="failed to start"):
        _up(world)
    assert world.machines == {}, "the failed machine is destroyed"
    ledger = Ledger()
    record = ledger.get("box")
    assert record.status is Status.TERMINATED and record.detail.startswith("failed: ")
    assert _kinds(ledger) == [["reserved", "created", "destroying", "terminated"]]


def test_no_capacity_then_ssh_failure_tries_the_next_offers(world: World) -> None:
    for offer_id, price in (("a", 0.1), ("b", 0.2), ("c", 0.3), ("d", 0.4)):
        world.add_offer(offer_id, price_per_hour=price)
    world.no_capacity.add("a")  # b and c run but answer no SSH (the world's port is closed)
    with pytest.raises(NoCapacity, match=f"after {MAX_OFFERS_TRIED} tries") as caught:
        _up(world)
    assert "memory RTX 4090 (a)" in str(caught.value) and "(c)" in str(caught.value)
    assert ("create", "d") not in world.calls, f"at most {MAX_OFFERS_TRIED} offers are tried"
    assert [c for c in world.calls if c[0] == "create"] == [("create", "a"), ("create", "b"), ("create", "c")]
    assert world.machines == {}
    ledger = Ledger()
    assert _kinds(ledger) == [["reserved", "not-created"],
                              ["reserved", "created", "running", "destroying", "terminated"],
                              ["reserved", "created", "running", "destroying", "terminated"]]
    assert all(r.status is Status.TERMINATED for r in ledger.machines())


def test_one_offer_that_fails_raises_its_own_error(world: World) -> None:
    world.add_offer("a")
    with pytest.raises(SSHError):
        _up(world)
    assert world.machines == {}


def test_keep_on_failure_keeps_the_machine_and_says_how_to_end_it(world: World) -> None:
    world.add_offer("a")
    world.fails_boot.add("a")
    with pytest.raises(CloudsdError, match="was kept as asked") as caught:
        _up(world, keep=True)
    assert "cloudsd down box" in (caught.value.hint or "")
    assert list(world.machines) == ["m1"] and ("destroy", "m1") not in world.calls
    assert Ledger().get("box").active


def test_a_create_that_went_through_and_then_broke_is_found_by_label(world: World) -> None:
    world.add_offer("a")
    world.create_then_raise = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        _up(world)
    assert world.machines == {} and ("destroy", "m1") in world.calls
    record = Ledger().get("box")
    assert record.status is Status.TERMINATED and record.provider_id is None
    assert record.detail == "create failed: KeyboardInterrupt"


def test_a_cleanup_that_fails_says_the_machine_may_still_bill(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import cloudsd.core.machines as machines

    monkeypatch.setattr(machines, "POLL_S", 0.0)
    world.add_offer("a")
    world.fails_boot.add("a")
    world.refuse_destroy = True
    from cloudsd.core import teardown

    real = teardown.end_record
    monkeypatch.setattr(teardown, "end_record",
                        lambda *a, **k: real(*a, **{**k, "deadline_s": 0.05}))
    with pytest.raises(CloudsdError, match="destroying the machine failed too") as caught:
        _up(world)
    assert "cloudsd down box" in (caught.value.hint or "")
    assert list(world.machines) == ["m1"]
    assert Ledger().get("box").status is Status.DESTROYING, "the row stays until the provider confirms"


def test_nothing_is_rented_when_the_user_declines(world: World) -> None:
    world.add_offer("a")
    with pytest.raises(CloudsdError, match="nothing was rented"):
        _up(world, confirm=lambda offer: False)
    assert world.calls == [] and Ledger().machines() == []


def test_a_budget_already_used_up_fails_before_anything_is_asked(world: World) -> None:
    world.add_offer("a")
    with pytest.raises(CloudsdError):
        _up(world, max_spend=0.0)
    assert world.calls == []


def test_down_destroys_confirms_and_is_safe_to_repeat(world: World) -> None:
    ledger = Ledger()
    provider_id = running_machine(world, ledger)
    providers = Providers(resolve({"provider": "memory"}))
    assert down(["box"], ledger, providers, QuietReporter()) == [("box", "destroyed")]
    assert provider_id not in world.machines
    assert down(["box"], ledger, providers, QuietReporter()) == [("box", "already gone")]
    assert _kinds(ledger) == [["reserved", "created", "running", "destroying", "terminated"]]


def test_status_records_a_machine_that_went_away_and_one_that_stopped(world: World) -> None:
    ledger = Ledger()
    gone_id = running_machine(world, ledger, "gone")
    stopped_id = running_machine(world, ledger, "idle")
    del world.machines[gone_id]
    world.machines[stopped_id].status = MachineStatus.STOPPED
    rows = {r.name: r for r in status(ledger, Providers(resolve({"provider": "memory"})))}
    assert rows["gone"].live == "gone" and rows["gone"].note == "gone (ended outside cloudsd)"
    assert rows["idle"].live == "stopped" and "stopped outside cloudsd" in rows["idle"].note
    assert rows["idle"].rate_per_hour == pytest.approx(0.02), "a stopped machine bills its storage"
    assert ledger.get("gone").status is Status.TERMINATED
    assert ledger.get("idle").status is Status.STOPPED
    assert [e[2] for e in ledger.session("idle")[1]][-1] == EventKind.STOPPED


def test_the_ledger_has_the_machine_before_the_create_call_returns(world: World) -> None:
    """A crash between the create call and its answer must not lose a machine: the row exists first."""
    seen: list[Any] = []
    world.add_offer("a")
    world.fails_boot.add("a")
    from cloudsd.providers import memory

    real_create = memory.MemoryProvider.create

    def create(self: memory.MemoryProvider, offer: Any, request: Any) -> str:
        seen.append(Ledger().get(request.name))
        return real_create(self, offer, request)

    memory.MemoryProvider.create = create  # type: ignore[method-assign]
    try:
        with pytest.raises(ProvisioningError):
            _up(world)
    finally:
        memory.MemoryProvider.create = real_create  # type: ignore[method-assign]
    assert seen and seen[0].status is Status.CREATING and seen[0].price_per_hour == 0.5
    assert time.time() - seen[0].created_at < 60
