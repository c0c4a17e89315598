"""The fake RunPod itself: its schema is RunPod's own, derived from the published OpenAPI document, and what it
answers fits that schema (the fixtures also fail any test in which the fake answered off-schema)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.fakes import runpod_rest_v2
from tests.fakes.runpod_server import FakeRunPod

ROOT = Path(__file__).resolve().parents[1]


def test_the_schema_file_says_where_it_came_from_and_covers_each_call() -> None:
    document = json.loads(runpod_rest_v2.SCHEMA_FILE.read_text())
    source = document["info"]["x-derived-from"]
    assert source["repository"] == "github:runpod/docs" and source["path"] == "api-reference-v2/openapi.json"
    assert len(source["commit"]) == 40 and (ROOT / source["by"]).is_file()
    pod = document["components"]["schemas"]["Pod"]["allOf"][1]
    assert {"status", "actions", "ssh", "cost", "mounts", "runtime"} <= set(pod["required"])
    assert document["components"]["schemas"]["PodStatus"]["enum"] == [
        "PROVISIONING", "STARTING", "RUNNING", "EXITED", "ERROR", "TERMINATED"]
    assert set(document["paths"]) == {"/v2/catalog/gpus", "/v2/pods", "/v2/pods/{id}", "/v2/pods/{id}/action",
                                      "/v2/billing/pods", "/v2/network-volumes", "/v2/network-volumes/{id}",
                                      "/v2/billing/network-volumes"}


def test_every_answer_of_a_session_fits_the_documented_schema(fake_runpod_api: FakeRunPod) -> None:
    fake = fake_runpod_api
    client = httpx.Client(base_url=fake.base_url, headers={"Authorization": f"Bearer {fake.api_key}"})
    catalog = client.get("/v2/catalog/gpus", params={"include": "AVAILABILITY", "product": "POD", "cloud": "COMMUNITY"})
    assert catalog.status_code == 200 and catalog.headers["RateLimit-Policy"] == '"minute";q=600;w=60'
    stocked = [g for g in catalog.json()["gpus"] if g["availability"] != "NONE"]
    assert stocked and all(g["cudaVersions"] for g in stocked)
    created = client.post("/v2/pods", json={"name": "cloudsd-v2", "image": "i", "gpu": {"id": "NVIDIA RTX A6000"},
                                            "mounts": {"persistent": {"size": 20, "path": "/workspace"}},
                                            "ports": ["22/tcp"], "env": {"A": "1"}})
    assert created.status_code == 201 and created.json()["status"] in ("PROVISIONING", "STARTING")
    pod_id = created.json()["id"]
    assert created.json()["ssh"]["direct"] is None and created.json()["ssh"]["proxy"]["port"] == fake.proxy_port
    assert client.post(f"/v2/pods/{pod_id}/action", json={"action": "start"}).status_code == 409
    time.sleep(0.5)  # half a second of GPU time: ~$0.00005 on an A6000, above the records' 6 decimals
    assert client.post(f"/v2/pods/{pod_id}/action", json={"action": "stop"}).json()["actions"] == ["start", "terminate"]
    billing = client.get("/v2/billing/pods", params={"bucketSize": "hour", "podId": pod_id}).json()
    assert billing["metadata"]["uniquePodCount"] == 1 and billing["records"][0]["podId"] == pod_id
    record = billing["records"][0]
    assert record["gpuAmount"] > 0 and record["totalAmount"] >= record["gpuAmount"]
    assert client.delete(f"/v2/pods/{pod_id}").status_code == 204
    assert client.get(f"/v2/pods/{pod_id}").status_code == 404
    assert client.get("/v2/pods").json() == {"pods": []}
    assert fake.violations == []
    client.close()


def test_an_off_schema_answer_is_caught(fake_runpod_api: FakeRunPod) -> None:
    operation = runpod_rest_v2.find_operation("GET", "/v2/pods/abc")[1]
    assert operation is not None
    assert runpod_rest_v2.check_response(operation, 200, {"id": "abc"})  # a pod missing its required fields
    assert runpod_rest_v2.check_response(operation, 404, {"title": "Not Found", "status": 404, "detail": "x"}) == []
