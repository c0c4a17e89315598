"""Tables fit an 80-column terminal: the least useful columns go before the ones a user acts on are cut."""

from __future__ import annotations

import io
import time
from pathlib import Path

from rich.console import Console

from cloudsd.cli import render, render_cost
from cloudsd.core.report import build
from cloudsd.core.status import StatusRow
from cloudsd.ledger import Ledger
from cloudsd.machine import Offer, OfferSpec


def printed(table: object, width: int = 80) -> str:
    out = io.StringIO()
    Console(file=out, width=width, markup=False, highlight=False, color_system=None).print(table)
    return out.getvalue()


def test_status_keeps_name_provider_price_and_url_whole() -> None:
    rows = [StatusRow(name="mybox-for-the-evening", provider="vastai", provider_id="123456", status="running",
                      live="running", gpu="NVIDIA GeForce RTX 4090", price_per_hour=0.412, uptime_s=5400,
                      cost_usd=0.618, url="http://127.0.0.1:7860", ssh="root@1.2.3.4:40022", rate_per_hour=0.412,
                      note="when idle it stops: its disk stays and still bills $0.020/h")]
    assert "…" in printed(render.status_table(rows))  # as it was: cut
    text = printed(render.status_table(rows, 80))
    for whole in ("mybox-for-the-evening", "vastai", "$0.412", "http://127.0.0.1:7860", "$0.6180"):
        assert whole in text, text
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80


def test_offers_keep_provider_gpu_and_price_whole() -> None:
    offers = [Offer("runpod", "NVIDIA GeForce RTX 4090:SECURE", "NVIDIA GeForce RTX 4090", 2, 24, 1.384, 40,
                    0.99, "EU-RO-1", "12.8", 912.5, True),
              Offer("vastai", "2345678", "RTX 3090", 1, 24, 0.231, 40, 0.9971, "Sweden, SE", "12.4", 2540.0)]
    assert "…" in printed(render.offers_table(offers, OfferSpec()))
    text = printed(render.offers_table(offers, OfferSpec(), 80))
    for whole in ("runpod", "vastai", "NVIDIA GeForce RTX 4090", "RTX 3090", "$1.384", "$0.231", "24 GB"):
        assert whole in text, text
    assert "…" not in text


def test_cost_keeps_name_provider_rate_and_cost_whole(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    ledger.reserve("a-long-machine-name-here", "runpod", "img")
    ledger.update("a-long-machine-name-here", provider_id="pod1", gpu="NVIDIA RTX 6000 Ada Generation",
                  price_per_hour=1.234, status="running", event="created")
    report = build(ledger, None, now=time.time() + 3600)
    assert "…" in printed(render_cost.sessions_table(report))
    text = printed(render_cost.sessions_table(report, 80))
    for whole in ("a-long-machine-name-here", "runpod", "$1.234", "$1.23"):
        assert whole in text, text
    assert "…" not in text


def test_a_narrow_terminal_merges_the_gpu_count_into_its_name() -> None:
    offers = [Offer("runpod", "x", "NVIDIA GeForce RTX 4090", 2, 24, 1.384, 40, 0.99, "EU-RO-1", "12.8", 912.5, True)]
    text = printed(render.offers_table(offers, OfferSpec(), 58), 58)
    assert "NVIDIA GeForce RTX 4090 ×2" in text and "$1.384" in text and "…" not in text, text


def test_downs_question_names_the_machine_its_disk_and_where_outputs_go(cloudsd_home: Path) -> None:
    from cloudsd.ledger import Ledger
    from tests.cli_helpers import run_in_process

    assert render.down_question(["mybox"], Path("/h/cloudsd-outputs")) == (
        "Destroy mybox? Its disk is lost; the outputs are saved in /h/cloudsd-outputs/mybox first.")
    assert render.down_question(["a", "b"], None) == (
        "Destroy 2 machines (a, b)? Their disks are lost, outputs included (--no-outputs).")
    ledger = Ledger()
    ledger.reserve("mybox", "runpod", "img")
    ledger.close()
    code, _, err = run_in_process("down", "mybox", input="n\n", env={"CLOUDSD_OUTPUTS_DIR": "/srv/pictures"})
    assert code != 0 and "Destroy mybox? Its disk is lost; the outputs are saved in /srv/pictures/mybox" in err
