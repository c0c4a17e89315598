"""Cost and budgets end to end: the real `cloudsd` program against the fake clouds, whose machines are real
containers running the real watchdog, which ends them through the fake's API with the machine's own key.

The watchdog polls every second here (CLOUDSD_WATCHDOG_POLL=1); it wakes at a deadline whatever the poll.
Sessions run on the fakes' priciest single GPUs, so a few seconds' error would show in cents.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cli_helpers import cloudsd, cloudsd_json, free_port, http_get, start, wait_for_line
from tests.fixtures_local import own_machines

pytestmark = pytest.mark.docker
PRICEY = {"runpod": "H100 PCIe", "vastai": "H100 SXM"}
CENT = 0.005


@pytest.fixture(autouse=True)
def fast_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDSD_WATCHDOG_POLL", "1")


@dataclass
class Cloud:
    name: str
    fake: Any

    def up(self, name: str, *flags: str) -> dict[str, Any]:
        return dict(cloudsd_json("up", name, "--provider", self.name, "--gpu", PRICEY[self.name], "--detach",
                                 "--yes", *flags))

    def state(self, pid: str) -> str:
        """running, stopped or gone, as the fake itself has it."""
        if self.name == "runpod":
            status = self.fake.pods[pid].status
            return {"RUNNING": "running", "EXITED": "stopped"}.get(status, "gone")
        view = self.fake.instance(pid)
        return "gone" if view is None else str(view["intended_status"])

    def billed(self, pid: str) -> float:
        return float(self.fake.billed_usd(pid))

    def end_calls(self, pid: str) -> list[tuple[str, str]]:
        """(whose key, what) for every stop or terminate of this machine the fake received."""
        if self.name == "runpod":
            return [("machine" if scope == pid else scope, op) for scope, op, p in self.fake.cloud.actions if p == pid]
        calls = [r for r in self.fake.requests if r.path == f"/api/v0/instances/{pid}/"
                 and r.method in ("PUT", "DELETE") and (r.method == "DELETE" or "state" in (r.body or {}))]
        return [("machine" if r.auth == f"container:{pid}" else r.auth,
                 "terminate" if r.method == "DELETE" else "stop") for r in calls]

    def machine_key(self, pid: str) -> str:
        return str(self.fake.pods[pid].scoped_key if self.name == "runpod" else self.fake.container_api_key(pid))


@pytest.fixture(params=["runpod", "vastai"])
def cloud(request: pytest.FixtureRequest) -> Iterator[Cloud]:
    yield Cloud(request.param, request.getfixturevalue("fake_runpod" if request.param == "runpod" else "fake_vast"))


def wait_for(check: Callable[[], Any], deadline_s: float, what: str) -> Any:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {deadline_s} s")


def by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in rows}


def test_report_matches_the_fakes_billing_to_the_cent(cloud: Cloud) -> None:
    first = cloud.up("c1")
    time.sleep(30)
    result = cloudsd("down", "c1", "--yes")
    assert result.returncode == 0, result.stderr
    assert "c1: destroyed · cost $" in result.stderr
    second = cloud.up("c2")
    time.sleep(15)

    # c2 still bills while `cost` runs (seconds on a busy machine): its estimate lies between the fake's billing
    # just before and just after
    live_before = cloud.billed(second["provider_id"])
    report = cloudsd_json("cost")
    live_after = cloud.billed(second["provider_id"])
    sessions = by_name(report["sessions"])
    ended = sessions["c1"]
    assert ended["cost_usd"] == pytest.approx(cloud.billed(first["provider_id"]), abs=CENT)
    assert ended["cost_usd"] == pytest.approx(cloud.billed(first["provider_id"]), rel=0.05)
    live = sessions["c2"]["cost_usd"]
    assert live_before * 0.95 <= live <= live_after * 1.05, (live_before, live, live_after)
    for record in (first, second):
        line, billed = sessions[record["name"]], cloud.billed(record["provider_id"])
        assert line["billed_usd"] == pytest.approx(billed, abs=CENT), "the provider's own figure beside it"
    assert sessions["c1"]["state"] == "ended" and sessions["c1"]["ended_by"] == "down"
    assert sessions["c1"]["cost_usd"] > 0.01, "long and pricey enough that seconds show in cents"
    assert report["total_usd"] == pytest.approx(sessions["c1"]["cost_usd"] + sessions["c2"]["cost_usd"], abs=1e-5)
    assert report["accruing_per_hour"] == pytest.approx(second["price_per_hour"], abs=1e-6)
    assert report["month_projection_usd"] >= report["month_to_date_usd"] > 0
    assert report["basis"] == "estimate from the ledger, with the providers' own billing"
    if cloud.name == "runpod":  # REST v2 has no balance route: `cost` says so rather than guessing
        assert report["billing"]["runpod"]["balance_usd"] is None
        assert report["billing"]["runpod"]["missing"] == "RunPod's v2 API reports no account balance"
        assert "v2 API reports no account balance" in cloudsd("cost").stdout.replace("\n", " ")

    cloud.fake.faults.billing_unavailable = True
    report = cloudsd_json("cost")
    assert report["basis"].startswith(f"estimate (provider billing unavailable: {cloud.name}: ")
    assert "billing is temporarily unavailable" in report["basis"]
    assert all(line["billed_usd"] is None for line in report["sessions"])
    assert by_name(report["sessions"])["c1"]["cost_usd"] == pytest.approx(sessions["c1"]["cost_usd"], abs=1e-9)
    text = cloudsd("cost").stdout
    assert "estimate (provider billing unavailable" in text.replace("\n", " ")
    assert cloudsd("down", "c2", "--yes").returncode == 0


# Long enough that a loaded machine still reads the machine over SSH (and `status` asks its watchdog) before the
# deadline: the time budget counts from create, boot included.
KILLED_BUDGET_S = 60  # written back as "1m"


def test_max_time_ends_the_machine_after_the_cli_is_killed(cloud: Cloud) -> None:
    proc = start("up", "k1", "--provider", cloud.name, "--gpu", PRICEY[cloud.name], "--max-time", f"{KILLED_BUDGET_S}s", "--yes",
                 "--port", str(free_port()))
    try:
        wait_for_line(proc, "k1 is ready")
        pid = str(json.loads(cloudsd("status", "--json").stdout)[0]["provider_id"])
        seen = cloudsd("ssh", "k1", "--", "cat", "/etc/cloudsd/env", "/etc/cloudsd/watchdog.json")
        assert seen.returncode == 0, seen.stderr
        assert cloud.machine_key(pid) in seen.stdout, "the machine's own key is what the watchdog uses"
        assert cloud.fake.api_key not in seen.stdout, "the account key never reaches the machine"
    finally:
        proc.kill()  # kill -9: no Ctrl-C handler, no cleanup, the laptop is simply gone
        proc.communicate(timeout=30)
    killed_at = time.monotonic()
    wait_for(lambda: cloud.state(pid) == "gone", KILLED_BUDGET_S + 45, "the watchdog ending the machine")
    assert time.monotonic() - killed_at < KILLED_BUDGET_S + 45
    assert cloud.end_calls(pid) == [("machine", "terminate")]

    row = by_name(cloudsd_json("status"))["k1"]
    assert row["status"] == "terminated" and row["note"] == "ended by the watchdog: time budget 1m reached"
    line = by_name(cloudsd_json("cost")["sessions"])["k1"]
    assert line["running_s"] == pytest.approx(KILLED_BUDGET_S, abs=2), "billed until the deadline, not until status noticed"
    assert line["cost_usd"] == pytest.approx(cloud.billed(pid), abs=CENT)
    assert line["ended_by"] == "the watchdog: time budget 1m reached"


def test_status_says_when_the_watchdog_last_reported_and_warns_when_it_is_silent(fake_runpod: Any) -> None:
    result = cloudsd("up", "w1", "--provider", "runpod", "--gpu", PRICEY["runpod"], "--max-time", "30m",
                     "--detach", "--yes")
    assert result.returncode == 0, result.stderr
    row = by_name(cloudsd_json("status"))["w1"]
    assert row["watchdog_silent"] is False and "watchdog last reported" in row["note"]
    assert time.time() - row["watchdog_reported_at"] < 30
    assert row["ui_restarts"] is None
    # The web UI crashes (killed for memory, say): the boot layer starts it again, and status says so.
    kill = "read pid start < /run/cloudsd/ui.pid && python3 -c \"import os; os.killpg($pid, 9)\""  # its group
    code, out = fake_runpod.machines.exec(row["provider_id"], ["sh", "-c", kill])
    assert code == 0, out
    wait_for(lambda: fake_runpod.machines.exec(row["provider_id"], ["cat", "/run/cloudsd/ui-restarts"])[0] == 0, 30,
             "the UI's restart")
    row = by_name(cloudsd_json("status"))["w1"]
    assert row["ui_restarts"] == 1 and time.time() - row["ui_restarted_at"] < 60
    assert "the web UI crashed and was started again 1 time, last" in row["note"]
    assert "cloudsd ssh w1 -- tail -n 50 /var/log/cloudsd/ui.log" in cloudsd("status").stdout.replace("\n", " ")
    code, out = fake_runpod.machines.exec(row["provider_id"], ["sh", "-c", "kill -9 $(cat /run/cloudsd/watchdog.lock)"])
    assert code == 0, out
    row = by_name(cloudsd_json("status"))["w1"]
    assert row["watchdog_silent"] is True
    assert "warning: the watchdog is silent" in row["note"] and "cloudsd down w1" in row["note"]
    assert cloudsd("down", "w1", "--yes", "--force").returncode == 0


def test_an_idle_machine_stops_itself_and_shows_its_storage_accrual(cloud: Cloud) -> None:
    result = cloudsd("up", "i1", "--provider", cloud.name, "--gpu", PRICEY[cloud.name], "--idle-stop", "15s",
                     "--detach", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    pid = str(json.loads(result.stdout)["provider_id"])
    wait_for(lambda: cloud.state(pid) == "stopped", 15 + 45, "the idle stop")
    assert cloud.end_calls(pid) == [("machine", "stop")]

    row = by_name(cloudsd_json("status"))["i1"]
    assert row["status"] == "stopped" and row["live"].startswith("stopped")
    assert row["note"].startswith("stopped by the watchdog: idle for 15s; still bills storage $")
    assert row["rate_per_hour"] == pytest.approx(row["storage_price_per_hour"]) and row["rate_per_hour"] > 0
    text = cloudsd("status").stdout
    assert "i1: stopped by the watchdog: idle for 15s; still bills storage" in text.replace("\n", " ")
    time.sleep(3)
    line = by_name(cloudsd_json("cost")["sessions"])["i1"]
    assert line["state"] == "stopped" and line["stopped_s"] > 0
    assert line["accruing_per_hour"] == pytest.approx(row["storage_price_per_hour"], abs=1e-6)
    assert line["cost_usd"] == pytest.approx(cloud.billed(pid), abs=CENT)
    refused = cloudsd("down", "i1", "--yes")  # a stopped machine has no SSH to save outputs over
    assert refused.returncode != 0 and "it is stopped; its disk still holds them" in refused.stderr
    assert "--no-outputs" in refused.stderr and cloud.state(pid) == "stopped"
    result = cloudsd("down", "i1", "--yes", "--no-outputs")
    assert result.returncode == 0 and "stopped at $" in result.stderr, result.stderr


def test_strays_and_stopped_strays_show_their_storage_rate(cloud: Cloud) -> None:
    if cloud.name == "runpod":
        pod = cloud.fake.cloud.create_pod(name="cloudsd-parked", image="x", gpu_type_id="NVIDIA RTX A6000",
                                          gpu_count=1, cloud_type="ALL", bid_per_gpu=None, env={}, volume_gb=50)
        cloud.fake.cloud.stop_pod(pod)
    else:
        (instance,) = cloud.fake.seed_instances(1, label_prefix="cloudsd-parked")
        inst = cloud.fake._instances[instance]
        inst.intended = "stopped"
        inst.switch("stopped", time.time())
    (row,) = [r for r in cloudsd_json("status") if r["stray"]]
    assert row["live"] == "stopped"
    assert row["rate_per_hour"] == pytest.approx(row["storage_price_per_hour"])
    assert 0 < row["rate_per_hour"] < row["price_per_hour"]
    assert row["note"].startswith("stopped: still bills storage $")
    text = cloudsd("status").stdout.replace("\n", " ")
    assert f"bills storage ${row['rate_per_hour']:.4f}/h" in text


def test_activity_through_the_tunnel_postpones_the_idle_stop(fake_runpod: Any) -> None:
    port = free_port()
    proc = start("up", "a1", "--provider", "runpod", "--idle-stop", "12s", "--yes", "--port", str(port))
    try:
        wait_for_line(proc, "a1 is ready")
        (pod,) = fake_runpod.live_pods()
        busy_until = time.monotonic() + 30
        while time.monotonic() < busy_until:  # well past 12 s of idleness, with the UI in use
            assert http_get(f"http://127.0.0.1:{port}/internal/ping")[0] == 200
            time.sleep(2)
        assert pod.status == "RUNNING", "the watchdog stopped a machine whose web UI was in use"
        # The tunnel stays open but carries nothing: an open tunnel alone is not activity.
        wait_for(lambda: pod.status == "EXITED", 12 + 45, "the idle stop with the tunnel still open")
        _, err = proc.communicate(timeout=60)  # the attached CLI notices by itself and says why
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "a1: stopped by the watchdog: idle for 12s" in err
    assert fake_runpod.cloud.actions == [(pod.id, "stop", pod.id)]
    assert cloudsd("down", "a1", "--yes", "--no-outputs").returncode == 0


def test_a_budget_below_what_is_spent_is_refused_and_a_new_one_is_enforced(fake_runpod: Any) -> None:
    cloud = Cloud("runpod", fake_runpod)
    pid = cloud.up("b1")["provider_id"]
    time.sleep(6)
    low = cloudsd("budget", "b1", "--max-spend", "0.0001")
    assert low.returncode == 10
    # what it has cost by now depends on how long the boot took (longer on a busy machine): only its form is fixed
    assert re.search(r"the machine has already cost \$0\.\d{4}; a spend budget of \$0\.00 is not above that",
                     low.stderr), low.stderr
    short = cloudsd("budget", "b1", "--max-time", "2s")
    assert short.returncode == 10 and "has already run" in short.stderr and "2s is not above that" in short.stderr
    assert cloud.state(pid) == "running"

    ok = cloudsd("budget", "b1", "--max-time", "40s")  # above what it has run, however slow the boot was
    assert ok.returncode == 0, ok.stderr
    assert "b1: ends after 40s" in ok.stderr and "(time budget 40s reached)" in ok.stderr
    wait_for(lambda: cloud.state(pid) == "gone", 40 + 45, "the watchdog enforcing the new budget")
    assert cloud.end_calls(pid) == [("machine", "terminate")]
    done = cloudsd("down", "b1", "--yes")  # before any `status`: down itself finds out what happened
    assert done.returncode == 0, done.stderr
    assert "b1: already gone · cost $" in done.stderr
    line = by_name(cloudsd_json("cost")["sessions"])["b1"]
    assert line["running_s"] == pytest.approx(40, abs=2) and line["cost_usd"] == pytest.approx(cloud.billed(pid),
                                                                                               abs=CENT)


def test_attached_cli_warns_then_ends_at_the_time_budget_on_the_local_engine(local_env: dict[str, str],
                                                                            docker_client: Any) -> None:
    proc = start("up", "l1", "--provider", "local", "--max-time", "20s", "--port", str(free_port()))
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err
    assert "warning:" in err and "of the budget is used (ends after 20s)" in err
    assert "l1: time budget 20s reached; ending it." in err or "l1: stopped by the watchdog: time budget 20s" in err
    running = own_machines(docker_client, "l1", running_only=True)
    assert running == [], "the machine does not run past its budget"
