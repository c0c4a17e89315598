"""The local Docker engine as a provider: your own GPU box, no account, no bill.

Machines are containers labelled `cloudsd.machine=<name>`. sshd is published only on 127.0.0.1 (on a port
the engine picks); the web UI is never published at all and is reached through the SSH tunnel. The GPUs
are passed through with a device request when the engine has the NVIDIA runtime.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from typing import Any

import docker
import docker.errors
from docker.types import DeviceRequest

from cloudsd.errors import EngineUnavailable, ImageMissing, ProviderError, ResumeRefused
from cloudsd.machine import CreateRequest, MachineInfo, MachineStatus, Offer, OfferSpec, SSHEndpoint
from cloudsd.providers import Provider, Stoppable
from cloudsd.volumes import MOUNT_PATH, VolumeInfo, VolumeRequest

MACHINE_LABEL = "cloudsd.machine"
VOLUME_LABEL = "cloudsd.volume"  # a named Docker volume cloudsd made; its value is the `cloudsd-NAME` label
HERE = "this computer"
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
    supports_volumes = True  # named Docker volumes
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
                      price_per_hour=0.0, disk_gb=spec.disk_gb, reliability=None, region=HERE)]

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
        if request.volume_id:  # first mount of an empty volume copies the image's /workspace into it
            kwargs["volumes"] = {request.volume_id: {"bind": MOUNT_PATH, "mode": "rw"}}
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

    def start(self, provider_id: str) -> None:
        """`docker start`: the same container and filesystem; sshd gets a new 127.0.0.1 port."""
        container = self._container(provider_id)
        if container is None:
            raise ProviderError(f"container {provider_id[:12]} is no longer on the local engine.",
                                hint="Start a new machine with `cloudsd up`.")
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise ResumeRefused(f"the engine would not start it again ({_short(str(exc))})") from None
        except docker.errors.DockerException as exc:
            raise _engine_error(exc) from None

    def list_machines(self) -> list[MachineInfo]:
        try:
            containers = self.client.containers.list(
                all=True, filters={"label": [MACHINE_LABEL, f"{HOME_LABEL}={home_tag()}"]}, ignore_removed=True)
        except docker.errors.DockerException as exc:
            raise _engine_error(exc) from None
        return [self._info(c) for c in containers]

    def logs_tail(self, provider_id: str, lines: int = 20) -> str:
        container = self._container(provider_id)
        if container is None:
            return ""
        return str(container.logs(tail=lines).decode(errors="replace"))

    # -- volumes -------------------------------------------------------------------------------------
    def create_volume(self, request: VolumeRequest) -> VolumeInfo:
        try:
            volume = self.client.volumes.create(
                name=f"{request.label}-{home_tag()}", labels={VOLUME_LABEL: request.label, HOME_LABEL: home_tag()})
        except docker.errors.DockerException as exc:
            raise _engine_error(exc) from None
        return replace(self._volume_info(volume, {}), size_gb=float(request.size_gb))

    def _volume_info(self, volume: Any, users: dict[str, list[str]]) -> VolumeInfo:
        labels = volume.attrs.get("Labels") or {}
        # The engine does not cap a named volume; the size asked for is the user's own budget of space.
        return VolumeInfo(provider=self.name, provider_id=volume.name, label=labels.get(VOLUME_LABEL),
                          size_gb=0.0, placement=HERE, price_per_gb_month=0.0,
                          used_by=tuple(users.get(volume.name, ())), region=HERE)

    def list_volumes(self) -> list[VolumeInfo]:
        try:
            volumes = self.client.volumes.list(filters={"label": [VOLUME_LABEL, f"{HOME_LABEL}={home_tag()}"]})
            users: dict[str, list[str]] = {}
            # ignore_removed: a container removed between the engine's list and its inspect is simply gone
            # (another home's machine ending meanwhile), not an error.
            machines = self.client.containers.list(all=True, filters={"label": [MACHINE_LABEL]}, ignore_removed=True)
            for container in machines:
                for mount in container.attrs.get("Mounts") or []:
                    if mount.get("Type") == "volume":
                        users.setdefault(mount.get("Name"), []).append(container.id)
        except docker.errors.DockerException as exc:
            raise _engine_error(exc) from None
        return [self._volume_info(v, users) for v in volumes]

    def delete_volume(self, provider_id: str) -> None:
        try:
            self.client.volumes.get(provider_id).remove()
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise ProviderError(f"the Docker engine refused to delete volume {provider_id}: a container "
                                    "uses it.", hint="End the machine that uses it first.") from None
            raise _engine_error(exc) from None
        except docker.errors.DockerException as exc:
            raise _engine_error(exc) from None
