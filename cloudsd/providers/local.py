"""The local Docker engine as a provider: your own GPU box, no account, no bill.

Machines are containers labelled `cloudsd.machine=<name>`. sshd is published only on 127.0.0.1 (on a port
the engine picks); the web UI is never published at all and is reached through the SSH tunnel. The GPUs
are passed through with a device request when the engine has the NVIDIA runtime.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import docker
import docker.errors
from docker.types import DeviceRequest

from cloudsd.errors import EngineUnavailable, ImageMissing, ProviderError
from cloudsd.machine import CreateRequest, MachineInfo, MachineStatus, Offer, OfferSpec, SSHEndpoint
from cloudsd.providers import Provider, Stoppable

MACHINE_LABEL = "cloudsd.machine"
HOME_LABEL = "cloudsd.home"  # which CLOUDSD_HOME made the container: two homes on one engine never meet


def home_tag() -> str:
    """A short, stable tag for this CLOUDSD_HOME, so each home sees and names only its own containers."""
    import hashlib

    from cloudsd import paths

    return hashlib.sha256(str(paths.home().resolve()).encode()).hexdigest()[:8]
NO_ENGINE_HINT = (
    "Start the Docker engine (`sudo systemctl start docker`, or `sudo dockerd &`; install it with "
    "`sudo apt-get install docker.io`), or set DOCKER_HOST."
)


def _engine_error(exc: Exception) -> ProviderError:
    text = str(exc)
    if "Connection refused" in text or "No such file" in text or "Error while fetching server API" in text:
        return EngineUnavailable(f"no Docker engine is reachable ({_short(text)}).", hint=NO_ENGINE_HINT)
    return ProviderError(f"the Docker engine refused: {_short(text)}")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) < 200 else text[:197] + "..."


class LocalProvider(Stoppable, Provider):
    name = "local"
    supports_stop = True
    supports_self_stop = False
    supports_deadline = False
    bills_money = False
    prepares_images = True
    ssh_timeout_s = 60.0
    boot_timeout_s = 120.0

    def __init__(self, network: str | None = None, gpus: str = "auto", client: Any = None, **_ignored: Any) -> None:
        self.network = network
        self.gpus = gpus
        try:
            self.client = client or docker.from_env(timeout=60)
            self.client.ping()
        except docker.errors.DockerException as exc:
            raise _engine_error(exc) from None

    def close(self) -> None:
        self.client.close()

    def check(self) -> str:
        try:
            version = self.client.version().get("Version", "?")
        except docker.errors.DockerException as exc:
            raise _engine_error(exc) from None
        gpu, count, _ = self._gpu()
        return f"Docker engine {version}; {'GPU: ' + gpu if count else 'no GPU runtime, machines run on the CPU'}"

    # -- offers --------------------------------------------------------------------------------------
    def _gpu(self) -> tuple[str, int, float]:
        """(name, count, VRAM GB) of the engine's GPUs, or ("CPU", 0, 0) without them."""
        if self.gpus == "none":
            return "CPU", 0, 0.0
        try:
            runtimes = self.client.info().get("Runtimes", {})
        except docker.errors.DockerException as exc:
            raise _engine_error(exc) from None
        if "nvidia" not in runtimes and self.gpus != "all":
            return "CPU", 0, 0.0
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                out = subprocess.run(
                    [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=10, check=True,
                ).stdout.strip().splitlines()
                if out:
                    name, mem = (part.strip() for part in out[0].split(",", 1))
                    return name, len(out), round(float(mem) / 1024, 1)
            except (OSError, subprocess.SubprocessError, ValueError):
                pass
        return "local GPU", 1, 0.0

    def offers(self, spec: OfferSpec) -> list[Offer]:
        gpu, count, vram = self._gpu()
        return [Offer(provider=self.name, offer_id="local", gpu_name=gpu, gpu_count=count, vram_gb=vram,
                      price_per_hour=0.0, disk_gb=spec.disk_gb, reliability=None, region="this computer")]

    # -- lifecycle -----------------------------------------------------------------------------------
    def create(self, offer: Offer, request: CreateRequest) -> str:
        try:
            self.client.images.get(request.image)
        except docker.errors.ImageNotFound:
            raise ImageMissing(  # `cloudsd up` pulls or builds it first (cloudsd.images.ensure_local)
                f"the image {request.image!r} is not on the local Docker engine.",
                hint="Build it with `docker build`, or `cloudsd image build --ui a1111` "
                     "(`--ui testbed` for the small test image).",
            ) from None
        except docker.errors.DockerException as exc:
            raise _engine_error(exc) from None
        env = {**request.env, "PUBLIC_KEY": request.public_key}
        kwargs: dict[str, Any] = {}
        if offer.gpu_count > 0:
            kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        if self.network:
            kwargs["network"] = self.network
        container_name = f"{request.label}-{home_tag()}"
        try:
            container = self.client.containers.run(
                request.image,
                detach=True,
                name=container_name,
                hostname=request.label,
                environment=env,
                labels={MACHINE_LABEL: request.name, "cloudsd.label": request.label, HOME_LABEL: home_tag()},
                ports={"22/tcp": ("127.0.0.1", None)},
                **kwargs,
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise ProviderError(
                    f"a container named {container_name!r} already exists on the engine.",
                    hint=f"Remove it with `docker rm -f {container_name}` or pick another machine name.",
                ) from None
            raise _engine_error(exc) from None
        except docker.errors.DockerException as exc:
            raise _engine_error(exc) from None
        return str(container.id)

    def _container(self, provider_id: str) -> Any:
        try:
            return self.client.containers.get(provider_id)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise _engine_error(exc) from None

    def get(self, provider_id: str) -> MachineInfo | None:
        container = self._container(provider_id)
        if container is None:
            return None
        return self._info(container)

    def _info(self, container: Any) -> MachineInfo:
        state = container.attrs.get("State", {})
        status = {
            "created": MachineStatus.BOOTING,
            "restarting": MachineStatus.BOOTING,
            "running": MachineStatus.RUNNING,
            "paused": MachineStatus.STOPPED,
            "exited": MachineStatus.STOPPED,
            "removing": MachineStatus.TERMINATED,
            "dead": MachineStatus.FAILED,
        }.get(container.status, MachineStatus.UNKNOWN)
        detail = container.status
        if container.status == "exited":
            detail = f"exited with code {state.get('ExitCode')}"
            if state.get("Error"):
                detail += f": {state['Error']}"
        ssh = None
        bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get("22/tcp") or []
        for binding in bindings:
            if binding.get("HostPort"):
                ssh = SSHEndpoint("127.0.0.1", int(binding["HostPort"]))
                break
        if status is MachineStatus.RUNNING and ssh is None:
            status = MachineStatus.BOOTING
        labels = container.labels or {}
        return MachineInfo(
            provider=self.name, provider_id=container.id, label=labels.get("cloudsd.label"), status=status, ssh=ssh,
            price_per_hour=0.0, gpu_name=None, image=(container.attrs.get("Config") or {}).get("Image"),
            detail=detail,
        )

    def destroy(self, provider_id: str) -> None:
        container = self._container(provider_id)
        if container is None:
            return
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if "is already in progress" in str(exc):
                return
            raise _engine_error(exc) from None

    def stop(self, provider_id: str) -> None:
        container = self._container(provider_id)
        if container is not None:
            container.stop(timeout=10)

    def list_machines(self) -> list[MachineInfo]:
        try:
            containers = self.client.containers.list(
                all=True, filters={"label": [MACHINE_LABEL, f"{HOME_LABEL}={home_tag()}"]})
        except docker.errors.DockerException as exc:
            raise _engine_error(exc) from None
        return [self._info(c) for c in containers]

    def logs_tail(self, provider_id: str, lines: int = 20) -> str:
        container = self._container(provider_id)
        if container is None:
            return ""
        return str(container.logs(tail=lines).decode(errors="replace"))
