"""The model-source stand-in (tests/fakes/model_sources.py) as a container on the test network, reachable
from machines as http://civitai.test, http://huggingface.test and http://cdn.test (one server, by Host)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.fakes.machines import TEST_NETWORK

FAKES_DIR = Path(__file__).resolve().parent
HOSTS = {"civitai": "civitai.test", "hf": "huggingface.test", "cdn": "cdn.test"}
LABEL = "cloudsd.test.sources"


def start_sources_container(client: Any, image: str, config_dir: Path, files: list[dict[str, Any]], token: str,
                            extra_binds: dict[str, str] | None = None, network: str = TEST_NETWORK) -> Any:
    """Start it and wait until it serves. `files` are FakeFile fields, with `seed` + `size` for the bytes.
    Its names are DNS aliases on `network`: give each concurrent user a network of its own."""
    config = {"listen": [["0.0.0.0", 80, "cdn"]], "roles_by_host": {v: k for k, v in HOSTS.items()},
              "public": {k: f"http://{v}" for k, v in HOSTS.items()}, "token": token, "log": "/tmp/requests.log",
              "files": files}
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "sources.json").write_text(json.dumps(config))
    binds = {str(FAKES_DIR): {"bind": "/fakes", "mode": "ro"}, str(config_dir): {"bind": "/config", "mode": "ro"}}
    for host_path, target in (extra_binds or {}).items():
        binds[host_path] = {"bind": target, "mode": "ro"}
    api = client.api
    created = api.create_container(
        image, entrypoint=["python3", "-u", "/fakes/model_sources.py", "--config", "/config/sources.json"],
        labels={LABEL: "1"}, detach=True,
        host_config=api.create_host_config(binds=binds, network_mode=network),
        networking_config=api.create_networking_config(
            {network: api.create_endpoint_config(aliases=list(HOSTS.values()))}))
    api.start(created["Id"])
    container = client.containers.get(created["Id"])
    deadline = time.monotonic() + 30
    while b"serving" not in container.logs():
        container.reload()
        if container.status == "exited" or time.monotonic() > deadline:
            logs = container.logs().decode(errors="replace")
            container.remove(force=True)
            raise RuntimeError(f"the model-source stand-in did not start:\n{logs}")
        time.sleep(0.2)
    return container


def request_log(container: Any) -> list[dict[str, Any]]:
    out = container.exec_run(["cat", "/tmp/requests.log"]).output.decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]
