"""Real machines for the fake clouds: containers of the test image on the local Docker engine.

A fake RunPod or Vast.ai server keeps its own API state and asks this backend to boot, stop, start and
remove the container behind each machine. Every container:
- runs on the test network (outbound NAT off), so nothing inside can reach beyond this host;
- publishes sshd only on 127.0.0.1, on a port the engine picks, which the fake reports as the machine's
  public SSH port (ip 127.0.0.1);
- carries the labels `cloudsd.fake=<owner>` and `cloudsd.fake.machine=<machine id>`, so a test can find
  and remove everything it made.

Boots happen on a background thread after an optional delay (a "slow boot"), or never (a machine that
never becomes ready), so API calls return at once as a real provider's do.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors

from tests.support.locks import engine_lock

TEST_NETWORK = "cloudsd-test"
TEST_IMAGE = os.environ.get("CLOUDSD_TESTBED_IMAGE") or "cloudsd-testbed:latest"


def ensure_test_network(client: docker.DockerClient, name: str = TEST_NETWORK) -> str:
    """Create the isolated bridge network the tests' containers use (idempotent, and safe when several
    processes ask at once: one creates it under a lock, the others find it)."""
    with engine_lock(f"network-{name}"):
        try:
            client.networks.get(name)
        except docker.errors.NotFound:
            client.networks.create(
                name,
                driver="bridge",
                options={"com.docker.network.bridge.enable_ip_masquerade": "false"},
                labels={"cloudsd.test": "1"},
            )
    return name


@dataclass
class _Box:
    machine_id: str
    env: dict[str, str]
    boot_delay_s: float
    never_ready: bool
    entrypoint: list[str] | None = None
    host_port: int | None = None
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)  # named volumes: {name: {bind, mode}}
    container_id: str | None = None
    removed: bool = False
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeMachines:
    """Boots real containers for a fake cloud's machines."""

    def __init__(
        self,
        owner: str,
        *,
        image: str = TEST_IMAGE,
        network: str = TEST_NETWORK,
        client: docker.DockerClient | None = None,
        mounts: list[dict[str, Any]] | None = None,
        api_dir: str | None = None,
    ) -> None:
        self.owner = owner
        self.image = image
        self.client = client or docker.from_env()
        self.network = ensure_test_network(self.client, network)
        self.mounts = list(mounts or [])  # extra bind mounts, e.g. a unix socket for the on-machine watchdog
        # The fake's API socket dir (machine_api.py): mounted into every machine, with a relay started in it.
        self.api_dir = api_dir
        if api_dir:
            from tests.fakes.machine_api import MOUNT_DIR

            self.mounts.append({"source": api_dir, "target": MOUNT_DIR, "mode": "rw"})
        self._boxes: dict[str, _Box] = {}
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------------
    def boot(
        self,
        machine_id: str,
        env: dict[str, str],
        *,
        boot_delay_s: float = 0.0,
        never_ready: bool = False,
        image: str | None = None,
        entrypoint: list[str] | None = None,
        host_port: int | None = None,
        volumes: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """Start the machine's container in the background; returns at once.

        `entrypoint` replaces the image's own, as Vast.ai's ssh launch modes do. `host_port` fixes the
        127.0.0.1 port for sshd (a fake that must tell the machine its own port, as VAST_TCP_PORT_22 does);
        by default the engine picks one.
        """
        box = _Box(machine_id, dict(env), boot_delay_s, never_ready, entrypoint, host_port, dict(volumes or {}))
        with self._lock:
            self._boxes[machine_id] = box
        threading.Thread(target=self._run, args=(box, image or self.image), daemon=True).start()

    def _run(self, box: _Box, image: str) -> None:
        if box.never_ready:
            return
        if box.boot_delay_s:
            time.sleep(box.boot_delay_s)
        with box.lock:
            if box.removed:
                return
            try:
                container = self.client.containers.run(
                    image,
                    detach=True,
                    name=f"cloudsd-fake-{self.owner}-{box.machine_id}",
                    environment=box.env,
                    labels={"cloudsd.fake": self.owner, "cloudsd.fake.machine": box.machine_id},
                    ports={"22/tcp": ("127.0.0.1", box.host_port)},
                    network=self.network,
                    volumes={**self._volumes(), **box.volumes},
                    entrypoint=box.entrypoint,
                )
                box.container_id = container.id
                self._start_relay(container)
            except docker.errors.DockerException as exc:
                box.error = str(exc)

    def _start_relay(self, container: Any) -> None:
        """Start the relay to the fake's API inside a running machine (see machine_api.py)."""
        if self.api_dir:
            from tests.fakes.machine_api import relay_command

            container.exec_run(relay_command(), detach=True)

    def _volumes(self) -> dict[str, dict[str, str]]:
        return {m["source"]: {"bind": m["target"], "mode": m.get("mode", "rw")} for m in self.mounts}

    def stop(self, machine_id: str) -> None:
        container = self._container(machine_id)
        if container is not None:
            container.stop(timeout=2)

    def start(self, machine_id: str) -> None:
        container = self._container(machine_id)
        if container is not None:
            container.start()
            self._start_relay(container)

    def remove(self, machine_id: str) -> None:
        with self._lock:
            box = self._boxes.pop(machine_id, None)
        if box is None:
            return
        with box.lock:
            box.removed = True
            if box.container_id:
                try:
                    self.client.containers.get(box.container_id).remove(force=True)
                except docker.errors.NotFound:
                    pass

    def remove_all(self) -> None:
        for machine_id in list(self._boxes):
            self.remove(machine_id)
        for container in self.client.containers.list(all=True, filters={"label": f"cloudsd.fake={self.owner}"}):
            container.remove(force=True)

    # -- observation ---------------------------------------------------------------------------------
    def state(self, machine_id: str) -> str:
        """'pending' (not started yet), 'running', 'exited', or 'gone'."""
        box = self._boxes.get(machine_id)
        if box is None:
            return "gone"
        if box.container_id is None:
            return "pending"
        container = self._container(machine_id)
        if container is None:
            return "gone"
        return "running" if container.status == "running" else "exited"

    def ssh_port(self, machine_id: str) -> int | None:
        """The host port on 127.0.0.1 that reaches the machine's sshd, once it runs."""
        container = self._container(machine_id)
        if container is None or container.status != "running":
            return None
        bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get("22/tcp") or []
        for binding in bindings:
            if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
                return int(binding["HostPort"])
        return None

    def exec(self, machine_id: str, cmd: list[str]) -> tuple[int, str]:
        """Run a command inside the machine (as the provider's host agent would); (exit code, output)."""
        container = self._container(machine_id)
        if container is None:
            raise RuntimeError(f"machine {machine_id} has no running container")
        result = container.exec_run(cmd)
        return result.exit_code, result.output.decode(errors="replace")

    def boot_error(self, machine_id: str) -> str | None:
        """The engine's error if the container could not be started, else None."""
        box = self._boxes.get(machine_id)
        return box.error if box else None

    def container_id(self, machine_id: str) -> str | None:
        box = self._boxes.get(machine_id)
        return box.container_id if box else None

    def _container(self, machine_id: str) -> Any:
        box = self._boxes.get(machine_id)
        if box is None or box.container_id is None:
            return None
        try:
            container = self.client.containers.get(box.container_id)
        except docker.errors.NotFound:
            return None
        return container
