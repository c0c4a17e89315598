"""The CLI in-process (Click's CliRunner isolation around `main`), on the memory provider: flags, output, JSON,
exit codes and the money rules as the user sees them, in seconds and without Docker."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from cloudsd.cli.main import main
from cloudsd.ledger import Ledger, Status
from cloudsd.providers.memory import World


@dataclass
class Ran:
    code: int
    out: str
    err: str


def cloudsd(*args: str, input: str | None = None) -> Ran:
    with CliRunner().isolation(input=input) as (out, err, _):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        finally:
            sys.stdout.flush()  # what was written with sys.stdout.write, as a terminal would show it
            sys.stderr.flush()
    return Ran(code, out.getvalue().decode(), err.getvalue().decode())


def test_status_with_no_machines(world: World) -> None:
    assert cloudsd("status").out == "No machines. Start one with `cloudsd up`.\n"
    assert cloudsd("ls").out == "No machines. Start one with `cloudsd up`.\n"
    ran = cloudsd("status", "--json")
    assert (ran.code, json.loads(ran.out)) == (0, [])


def test_offers_cheapest_first_with_filters(world: World) -> None:
    world.add_offer("dear", price_per_hour=0.9)
    world.add_offer("cheap", gpu_name="RTX 3090", price_per_hour=0.3)
    ran = cloudsd("offers", "--provider", "memory", "--json")
    assert [o["offer_id"] for o in json.loads(ran.out)] == ["cheap", "dear"]
    ran = cloudsd("offers", "--provider", "memory", "--gpu", "RTX 4090", "--disk", "60", "--json")
    assert [(o["offer_id"], o["disk_gb"]) for o in json.loads(ran.out)] == [("dear", 60)]


def test_the_memory_provider_is_not_offered_to_users(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUDSD_PROVIDERS")
    ran = cloudsd("up", "--provider", "memory")
    assert ran.code == 2 and "'memory' is not one of 'local', 'runpod', 'vastai', 'auto'" in ran.err
    assert "[local|runpod|vastai|auto]" in cloudsd("up", "--help").out


def test_a_failed_boot_is_one_line_and_the_machine_is_gone(world: World) -> None:
    world.add_offer("a")
    world.fails_boot.add("a")
    ran = cloudsd("up", "box", "--provider", "memory", "--yes")
    assert ran.code == 6, ran.err
    assert ran.err.strip().splitlines()[-1] == "error: memory machine m1 failed to start (failed: )."
    assert "memory machine m1 is billing $0.500/h; end it with `cloudsd down box`" in ran.err
    assert world.machines == {}
    assert Ledger().get("box").status is Status.TERMINATED


def test_declining_rents_nothing(world: World) -> None:
    world.add_offer("a")
    ran = cloudsd("up", "box", "--provider", "memory", input="n\n")
    assert "Rent RTX 4090 ×1 on memory at $0.500/h?" in ran.err
    assert ran.code == 1 and "error: nothing was rented." in ran.err
    assert world.calls == []


def test_kept_on_failure_then_down_ends_it_and_repeating_is_safe(world: World) -> None:
    world.add_offer("a")
    world.fails_boot.add("a")
    ran = cloudsd("up", "box", "--provider", "memory", "--yes", "--keep-on-failure")
    assert ran.code == 1
    assert "machine 'box' was kept as asked and may still bill" in ran.err and "cloudsd down box" in ran.err
    assert list(world.machines) == ["m1"]
    rows = json.loads(cloudsd("status", "--json").out)
    assert [(r["name"], r["status"], r["live"]) for r in rows] == [("box", "booting", "failed")]

    ran = cloudsd("down", "box", "--yes")
    assert ran.code == 0, ran.err
    assert ran.err.strip().splitlines()[-1].startswith("box: destroyed · cost $")
    assert world.machines == {}
    ran = cloudsd("down", "box", "--yes")
    assert ran.code == 0 and "box: already gone" in ran.err
    sessions = json.loads(cloudsd("cost", "--json").out)["sessions"]
    assert [(s["name"], s["state"], s["ended_by"]) for s in sessions] == [("box", "ended", "down")]


def test_down_needs_a_name_and_asks_first(world: World) -> None:
    ran = cloudsd("down")
    assert ran.code == 2 and "name a machine, or use --all" in ran.err
    world.add_offer("a")
    world.fails_boot.add("a")
    cloudsd("up", "box", "--provider", "memory", "--yes", "--keep-on-failure")
    ran = cloudsd("down", "box", input="n\n")
    assert ran.code == 130 and "Destroy box? Its disk is lost" in ran.err
    assert list(world.machines) == ["m1"]
    ran = cloudsd("down", "--all", "--yes")
    assert ran.code == 0 and world.machines == {}


def test_ssh_into_an_ended_machine_says_where_to_look(world: World) -> None:
    world.add_offer("a")
    world.fails_boot.add("a")
    cloudsd("up", "box", "--provider", "memory", "--yes")
    ran = cloudsd("ssh", "box", "--", "true")
    assert ran.code == 1
    assert ran.err.strip() == "error: machine 'box' is not reachable (terminated).\n  `cloudsd status` shows its state." \
        or ran.err.startswith("error: machine 'box' is not reachable (terminated).")


def test_tunnel_to_a_machine_the_provider_no_longer_has(world: World) -> None:
    world.add_offer("a")
    world.fails_boot.add("a")
    cloudsd("up", "box", "--provider", "memory", "--yes", "--keep-on-failure")
    world.machines.clear()  # ended in the provider's console
    ran = cloudsd("tunnel", "box")
    assert ran.code == 1 and "error: machine 'box' no longer exists at memory." in ran.err
    record = Ledger().get("box")
    assert record.status is Status.TERMINATED and record.detail == "gone (found by tunnel)"
    ran = cloudsd("tunnel", "box")
    assert ran.code == 1 and "error: machine 'box' is terminated." in ran.err


def test_budget_needs_a_limit_and_a_running_machine(world: World) -> None:
    ran = cloudsd("budget", "box")
    assert ran.code == 2 and "give at least one of --max-time" in ran.err
    ran = cloudsd("budget", "box", "--max-time", "1h")
    assert ran.code == 9 and "no machine named 'box' in the ledger." in ran.err


def test_a_machine_its_watchdog_ended_is_listed_for_a_day(world: World) -> None:
    import time

    ledger = Ledger()
    for name, ago in (("recent", 60.0), ("old", 2 * 86400.0)):
        ledger.reserve(name, "memory", "img")
        ledger.update(name, status="terminated", terminated_at=time.time() - ago,
                      detail="ended by the watchdog: time budget 1m reached")
    ledger.close()
    rows = json.loads(cloudsd("status", "--json").out)
    assert [(r["name"], r["live"], r["note"]) for r in rows] == [
        ("recent", "gone", "ended by the watchdog: time budget 1m reached")]
