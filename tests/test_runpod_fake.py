"""The fake RunPod itself: it must answer like api.runpod.io, to cloudsd and to SDK-style documents alike."""

from __future__ import annotations

from typing import Any

import httpx

from tests.fakes.runpod_cloud import CAPACITY_MESSAGE
from tests.fakes.runpod_server import FakeRunPod


def test_fake_speaks_graphql_like_a_server(fake_runpod_api: FakeRunPod) -> None:
    fake = fake_runpod_api
    url = f"{fake.base_url}/graphql"
    auth = {"Authorization": f"Bearer {fake.api_key}"}
    assert httpx.post(url, json={"query": "{ myself { id } }"}).status_code == 401
    literal = httpx.post(f"{url}?api_key={fake.api_key}",
                         json={"query": '{ gpuTypes(input: {id: "NVIDIA L40S"}) { displayName lowestPrice(input: {gpuCount: 2}) { uninterruptablePrice } } }'})
    assert literal.json() == {"data": {"gpuTypes": [{"displayName": "L40S", "lowestPrice": {"uninterruptablePrice": 0.79}}]}}
    broken = httpx.post(url, headers=auth, json={"query": "mutation { podTerminate(input: {podId: 7}) }"})
    assert broken.status_code == 400 and "String cannot represent" in broken.json()["errors"][0]["message"]
    deploy = 'mutation { podFindAndDeployOnDemand(input: {gpuTypeId: "NVIDIA L4", cloudType: COMMUNITY}) { id } }'
    full = httpx.post(url, headers=auth, json={"query": deploy}).json()
    assert full["data"] == {"podFindAndDeployOnDemand": None}
    assert full["errors"][0]["message"] == CAPACITY_MESSAGE and full["errors"][0]["path"] == ["podFindAndDeployOnDemand"]


POD_SELECTION_SDK = """id containerDiskInGb costPerHr desiredStatus dockerArgs dockerId env gpuCount imageName
  lastStatusChange machineId memoryInGb name podType port ports uptimeSeconds vcpuCount volumeInGb volumeMountPath
  runtime { ports { ip isIpPublic privatePort publicPort type } }
  machine { gpuDisplayName gpuAvailable maintenanceStart maintenanceEnd maintenanceNote }"""


def test_fake_answers_sdk_style_documents_with_literal_values(fake_runpod_api: FakeRunPod) -> None:
    """The runpod SDK pastes values into the document and sends only `query`: the fake must serve that too."""
    fake = fake_runpod_api
    client = httpx.Client(base_url=fake.base_url, params={"api_key": fake.api_key})

    def run(query: str) -> dict[str, Any]:
        body = client.post("/graphql", json={"query": query}).json()
        assert "errors" not in body, body
        return body["data"]

    gpu = run('query GpuTypes { gpuTypes(input: {id: "NVIDIA RTX A6000"}) { maxGpuCount id displayName manufacturer '
              "memoryInGb cudaCores secureCloud communityCloud securePrice communityPrice oneMonthPrice threeMonthPrice "
              "oneWeekPrice communitySpotPrice secureSpotPrice lowestPrice(input: {gpuCount: 1}) { minimumBidPrice "
              "uninterruptablePrice } } }")["gpuTypes"]
    assert gpu[0]["lowestPrice"] == {"minimumBidPrice": 0.232, "uninterruptablePrice": 0.33}
    created = run('mutation { podFindAndDeployOnDemand(input: { name: "sdk", imageName: "img:1", cloudType: ALL, '
                  'startSsh: true, gpuTypeId: "NVIDIA RTX A6000", supportPublicIp: true, gpuCount: 1, volumeInGb: 10, '
                  'minVcpuCount: 1, minMemoryInGb: 1, dataCenterId: null, containerDiskInGb: 10, '
                  'ports: "22/tcp,8888/http", volumeMountPath: "/runpod-volume", env: [{ key: "K", value: "V" }] }) '
                  "{ id imageName env machineId machine { podHostId } } }")["podFindAndDeployOnDemand"]
    pod_id = created["id"]
    assert created["env"] == ["K=V"] and created["machine"]["podHostId"].startswith(f"{pod_id}-")
    pod = run(f'query pod {{ pod(input: {{podId: "{pod_id}"}}) {{ {POD_SELECTION_SDK} }} }}')["pod"]
    assert pod["ports"] == "22/tcp,8888/http" and pod["runtime"] is None and pod["podType"] == "RESERVED"
    assert run(f"query myPods {{ myself {{ pods {{ {POD_SELECTION_SDK} }} }} }}")["myself"]["pods"][0]["id"] == pod_id
    assert run(f'mutation {{ podStop(input: {{ podId: "{pod_id}" }}) {{ id desiredStatus }} }}')["podStop"][
        "desiredStatus"] == "EXITED"
    resumed = run(f'mutation {{ podResume(input: {{ podId: "{pod_id}", gpuCount: 1 }}) {{ id desiredStatus imageName '
                  "env machineId machine { podHostId } } }")
    assert resumed["podResume"]["desiredStatus"] == "RUNNING"
    user = run('mutation { updateUserSettings(input: { pubKey: "ssh-ed25519 AAAA one" }) { id pubKey } }')
    assert user["updateUserSettings"]["pubKey"] == "ssh-ed25519 AAAA one"
    me = run("query myself { myself { id pubKey networkVolumes { id name size dataCenterId } } }")["myself"]
    assert me["pubKey"] == "ssh-ed25519 AAAA one" and me["networkVolumes"] == []
    assert run(f'mutation {{ podTerminate(input: {{ podId: "{pod_id}" }}) }}') == {"podTerminate": None}
    assert run(f'query pod {{ pod(input: {{podId: "{pod_id}"}}) {{ id }} }}') == {"pod": None}
    client.close()


def test_rest_v2_shares_the_state(fake_runpod_api: FakeRunPod) -> None:
    client = httpx.Client(base_url=fake_runpod_api.base_url, headers={"Authorization": f"Bearer {fake_runpod_api.api_key}"})
    created = client.post("/v2/pods", json={"name": "cloudsd-v2", "image": "i", "gpu": {"id": "NVIDIA RTX A6000"},
                                            "mounts": {"persistent": {"size": 20, "path": "/workspace"}},
                                            "ports": ["22/tcp"], "env": {"A": "1"}})
    assert created.status_code == 201 and created.json()["status"] == "STARTING"
    pod_id = created.json()["id"]
    assert [p.id for p in fake_runpod_api.live_pods()] == [pod_id]
    assert client.delete(f"/v2/pods/{pod_id}").status_code == 200
    assert client.get(f"/v2/pods/{pod_id}").status_code == 404
    assert any(g["id"] == "NVIDIA H100 80GB HBM3" for g in client.get("/v2/catalog/gpus").json()["gpus"])
    client.close()
