"""Rows this version cannot read whole are shown as needing attention by status, down --all and cost (item 11),
and provider or user text is printed literally (no markup eats `[default]`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudsd.ledger import Ledger
from tests.cli_helpers import run_in_process


def _damaged_ledger() -> None:
    ledger = Ledger()
    ledger.reserve("newer", "runpod", "img")
    ledger.update("newer", provider_id="pod1", status="hibernating", event="created", data={"provider_id": "pod1"})
    ledger.reserve("dmg", "runpod", "img")
    ledger.update("dmg", provider_id="pod2", status="running", event="created", data={"provider_id": "pod2"})
    ledger._db.execute("UPDATE machines SET price_per_hour = 'lots' WHERE name = 'dmg'")
    ledger._db.execute("UPDATE events SET data = '[not json' WHERE machine = 'dmg'")
    ledger.close()


def test_status_and_cost_show_what_they_cannot_read(cloudsd_home: Path) -> None:
    _damaged_ledger()
    code, out, err = run_in_process("status", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == {"newer", "dmg"}
    assert "'hibernating' is not one this cloudsd knows" in rows["newer"]["note"]
    assert "price_per_hour='lots'" in rows["dmg"]["note"]

    code, out, err = run_in_process("cost", "--json")
    assert code == 0, err
    assert set(json.loads(out)["attention"]) == {"newer", "dmg"}
    code, out, err = run_in_process("cost")
    assert code == 0 and "internal error" not in err
    assert "newer: needs attention" in out and "dmg: needs attention" in out


def test_down_all_includes_a_status_it_does_not_know(cloudsd_home: Path) -> None:
    _damaged_ledger()
    code, _, err = run_in_process("down", "--all", input="n\n")
    assert "Destroy" in err and "newer" in err and "dmg" in err, err


def test_provider_text_is_printed_literally(cloudsd_home: Path) -> None:
    code, out, err = run_in_process("doctor")
    assert "[default]" in out, out  # RunPod's config section, named in the hint for a missing key
    cloudsd_home.mkdir(parents=True, exist_ok=True)
    (cloudsd_home / "config.yaml").write_text("registry: 'r/[b]x[/]'\n")
    code, out, err = run_in_process("config", "show")
    assert code == 0, err
    assert "r/[b]x[/]" in out


@pytest.mark.docker
def test_a_provider_it_does_not_know_is_flagged_and_does_not_block_down_all(cloudsd_home: Path,
                                                                            docker_client: object) -> None:
    ledger = Ledger()
    ledger.reserve("odd", "aws", "img")  # written by a newer cloudsd, or by hand
    ledger.update("odd", provider_id="i-1", status="running", event="created")
    ledger.reserve("fine", "local", "img")  # never created: `down` ends it without asking any engine
    ledger.close()
    code, out, err = run_in_process("status")
    assert code == 0 and "odd: needs attention: unknown provider 'aws'" in out, out
    code, out, err = run_in_process("down", "--all", "--yes")
    assert code == 1 and "internal error" not in err, err
    assert "odd: not ended: unknown provider 'aws'" in err and "fine: destroyed" in err, err
    assert Ledger().get("fine").status == "terminated"
