"""A fake Vast.ai REST API on 127.0.0.1 whose instances are real containers (see machines.py).

Follows the reference (provider-apis.md, sections 4 and 6): `/api/v0` routes with trailing slashes, the
`/api/v1/instances/` list with `next_token` paging, `{"instances": {…}}` for one instance, error bodies
`{"success": false, "error": …, "msg": …}`, plain-text 429s without Retry-After, HTML 502s, and the create
that errors but still leaves a stopped instance billing storage. Billing is per second: a running instance
bills `dph_total`, a stopped one storage only, a destroyed one nothing.

    with FakeVast() as fake:
        provider = VastProvider(api_key=fake.api_key, base_url=fake.base_url)
        fake.faults.rate_limit_burst = 3   # the next three requests get a 429

Route handlers live in vast_routes.py, the offer catalog and search semantics in vast_catalog.py.
"""

from __future__ import annotations

import json
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .machine_api import MACHINE_API_URL, MachineApi
from .machines import TEST_IMAGE, FakeMachines
from .vast_catalog import default_catalog
from .vast_routes import OCI_FAILURE, ROUTES, ApiError, VastInstance, VastRoutes
from .vast_volumes import VastVolumes

__all__ = ["FakeVast", "VastFaults", "RecordedRequest", "VastInstance", "OCI_FAILURE", "ssh_init_script"]


@dataclass
class VastFaults:
    """Switches a test flips between calls to make the fake misbehave as the real API does."""

    rate_limit_burst: int = 0  # the next N requests get a plain-text 429, no Retry-After
    html_502: int = 0  # the next N requests get an HTML 502 page
    capacity_error: bool = False  # creates answer no_such_ask ("… is not available")
    create_errors_but_creates: bool = False  # creates answer an error carrying new_contract; instance left stopped
    create_timeout_once: float = 0.0  # the next create is made, but its answer is held this many seconds
    boot_delay_s: float = 0.0  # containers of new instances start after this delay
    never_ready: bool = False  # new instances stay `loading` forever (no container is started)
    oci_failure: bool = False  # new instances end `exited` with an "OCI runtime create failed" status_msg
    search_quota_exceeded: bool = False  # searches answer the daily-quota 429 (JSON) until switched off
    billing_unavailable: bool = False  # charges and invoices answer HTTP 500
    create_forbidden: bool = False  # creates answer 403: this offer is not rentable by this account
    resume_refused: bool = False  # `state: running` on a stopped instance: its host's GPU was rented meanwhile


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    auth: str  # "account", "container:<id>", "none" or "invalid"


def ssh_init_script(keys: list[str], onstart: str | None) -> str:
    """What Vast's ssh runtypes run instead of the image's entrypoint: keys, sshd, then `onstart` in bash."""
    lines = [
        "mkdir -p /root/.ssh /run/sshd && chmod 700 /root/.ssh",
        "touch /root/.ssh/authorized_keys",
        *(f"printf '%s\\n' {shlex.quote(k)} >> /root/.ssh/authorized_keys" for k in keys),
        'if [ -n "${PUBLIC_KEY:-}" ]; then printf \'%s\\n\' "$PUBLIC_KEY" >> /root/.ssh/authorized_keys; fi',
        "chmod 600 /root/.ssh/authorized_keys",
        # one host key type is enough for sshd, and ed25519 is instant (an RSA key costs about a second)
        "[ -s /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key",
        "/usr/sbin/sshd && echo 'vast-fake: sshd started'",
    ]
    if onstart:
        lines += [
            f"printf '%s\\n' {shlex.quote(onstart)} > /root/onstart.sh",
            "(bash /root/onstart.sh 2>&1 | tee -a /var/log/onstart.log) &",
        ]
    lines += ["trap 'exit 0' TERM INT", "while :; do sleep 3600 & wait $!; done"]
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeVast(VastVolumes, VastRoutes):
    """A fake Vast.ai on 127.0.0.1. `start()`/`stop()`, or use it as a context manager."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        image: str = TEST_IMAGE,
        machines: FakeMachines | None = None,
        catalog: list[dict[str, Any]] | None = None,
        provisioning_s: float = 0.3,
        starting_credit: float = 50.0,
    ) -> None:
        self.api_key = api_key or "vast-fake-" + secrets.token_hex(16)
        self.image = image  # every instance runs this image, whatever the create asked for
        self.owner = "vast" + secrets.token_hex(3)
        self.faults = VastFaults()
        self.requests: list[RecordedRequest] = []
        self.provisioning_s = provisioning_s  # `actual_status` stays null this long after a create
        self.starting_credit = starting_credit
        self.started_at = time.time()
        self.account_keys: list[str] = []
        self.catalog = catalog if catalog is not None else default_catalog()
        self._offers = {int(o["id"]): o for o in self.catalog}
        self._instances: dict[int, VastInstance] = {}
        # Stopped instances whose host's GPU someone else rented meanwhile: a start waits in "scheduling"
        # (vast-cli: a start stuck in scheduling for over 30 s means the host lacks resources).
        self.hosts_taken: set[int] = set()
        self._next_id = 11_000_000
        self._results: dict[str, tuple[str, int, str]] = {}
        self._lock = threading.RLock()
        self._machines_obj = machines
        # The API as the instances see it (a Unix socket + a relay in each machine), unless machines are injected.
        self.machine_api: MachineApi | None = MachineApi() if machines is None else None
        self._server: ThreadingHTTPServer | None = None
        self.base_url = ""

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> FakeVast:
        fake = self

        class Handler(_Handler):
            owner = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-vast", daemon=True).start()
        if self.machine_api is not None:
            self.machine_api.start(Handler)
        return self

    def stop(self) -> None:
        """Stop serving and remove every container this fake started."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._machines_obj is not None:
            self._machines_obj.remove_all()
            self._remove_all_volumes()
        if self.machine_api is not None:
            self.machine_api.stop()
            self.machine_api = None

    def __enter__(self) -> FakeVast:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def machines(self) -> FakeMachines:
        """The container backend, made on first use (so searches and listings need no Docker)."""
        if self._machines_obj is None:
            self._machines_obj = FakeMachines(self.owner, image=self.image,
                                              api_dir=self.machine_api.dir if self.machine_api else None)
        return self._machines_obj

    # -- what tests read -----------------------------------------------------------------------------
    def calls(self, method: str, path_prefix: str = "") -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    def live_instances(self) -> list[int]:
        """Ids not destroyed (running, loading or stopped): each may still bill."""
        with self._lock:
            return [i.id for i in self._instances.values() if i.destroyed_at is None]

    def running_instances(self) -> list[int]:
        with self._lock:
            return [i.id for i in self._instances.values() if i.destroyed_at is None and i.intended == "running"]

    def billed_usd(self, instance_id: int | str, since: float = 0.0, until: float | None = None) -> float:
        """Dollars one instance has cost so far (per second: dph_total running, storage stopped)."""
        with self._lock:
            return self._instances[int(instance_id)].billed(since, until)[0]

    def total_billed_usd(self) -> float:
        with self._lock:
            return sum(i.billed(0.0, None)[0] for i in self._instances.values())

    def billing_rate_per_hour(self, instance_id: int | str | None = None) -> float:
        """What bills now, in $/h: one instance's rate, or the whole account's when no id is given."""
        with self._lock:
            chosen = [self._instances[int(instance_id)]] if instance_id is not None else self._instances.values()
            return sum(i.segments[-1][3] for i in chosen if i.segments and i.segments[-1][2] is None)

    def instance(self, instance_id: int | str) -> dict[str, Any] | None:
        """The instance as `GET /instances/{id}/` shows it, or None once destroyed."""
        inst = self._instances.get(int(instance_id))
        return None if inst is None or inst.destroyed_at is not None else self._view(inst)

    def container_api_key(self, instance_id: int | str) -> str:
        return self._instances[int(instance_id)].container_key

    def seed_instances(self, count: int, *, label_prefix: str = "cloudsd-seed-", offer_index: int = 0) -> list[int]:
        """Instances with no container behind them (they stay `loading`): cheap bulk for listing tests."""
        offer = self.catalog[offer_index]
        ids = []
        with self._lock:
            for n in range(count):
                inst = self._new_instance(offer, {"label": f"{label_prefix}{n}", "image": self.image, "disk": 10})
                inst.backed = False
                ids.append(inst.id)
        return ids

    # -- the model -----------------------------------------------------------------------------------
    def _new_instance(self, offer: dict[str, Any], body: dict[str, Any]) -> VastInstance:
        now = time.time()
        inst = VastInstance(
            id=self._next_id,
            offer=offer,
            label=body.get("label"),
            image=str(body.get("image")),
            env={str(k): str(v) for k, v in (body.get("env") or {}).items()},
            onstart=body.get("onstart"),
            runtype=str(body.get("runtype") or "ssh_proxy"),
            disk_gb=float(body["disk"]) if body.get("disk") is not None else 8.0,  # the API's default
            bid=float(body["price"]) if body.get("price") is not None else None,
            container_key=secrets.token_hex(32),
            created_at=now,
            ssh_keys=list(self.account_keys),
        )
        self._next_id += 1
        self._instances[inst.id] = inst
        offer["rented"], offer["rentable"] = True, False
        inst.switch("running", now)
        return inst

    def _boot(self, inst: VastInstance) -> None:
        inst.host_port = _free_port()
        env = {k: v for k, v in inst.env.items() if not k.startswith("-")}  # "-p 22:22" is a port request
        env.update(
            CONTAINER_ID=str(inst.id),
            CONTAINER_API_KEY=inst.container_key,
            VAST_CONTAINERLABEL=f"C.{inst.id}",
            VAST_TCP_PORT_22=str(inst.host_port),
        )
        if self.machine_api is not None:
            env["VAST_URL"] = MACHINE_API_URL  # the relay to this fake inside the machine
        entrypoint = None  # runtype "args": the image's own entrypoint runs
        if "ssh" in inst.runtype or "jupyter" in inst.runtype:
            entrypoint = ["/bin/sh", "-c", ssh_init_script(inst.ssh_keys, inst.onstart)]
            inst.keys_installed = len(inst.ssh_keys)
        try:
            self.machines.boot(
                str(inst.id), env, boot_delay_s=self.faults.boot_delay_s, entrypoint=entrypoint,
                host_port=inst.host_port, volumes=self._volume_mounts(inst.volume),
            )
        except Exception as exc:  # no engine: the instance fails as on a broken host
            inst.backed, inst.failure = False, f"Error response from daemon: {exc}"

    def _actual(self, inst: VastInstance) -> tuple[str | None, str, int | None]:
        """(actual_status, status_msg, ssh host port) right now."""
        if inst.intended == "running" and time.time() - inst.created_at < self.provisioning_s:
            return None, "", None
        if inst.failure:
            return "exited", inst.failure, None
        if not inst.backed:
            if inst.intended == "stopped":
                return "stopped", "", None
            return "loading", f"Pulling image {inst.image}", None
        machine = str(inst.id)
        error = self.machines.boot_error(machine)
        if error:
            return "exited", f"Error response from daemon: {error}", None
        state = self.machines.state(machine)
        if inst.intended == "stopped":
            return ("running", "stopping", None) if state == "running" else ("stopped", "Instance stopped", None)
        if inst.id in self.hosts_taken and state != "running":
            return "scheduling", "Waiting for resources: the GPU on this host is in use", None
        if state == "pending":
            return "loading", f"Pulling image {inst.image}", None
        if state == "running":
            port = self.machines.ssh_port(machine)
            if port is None:
                return "loading", "Starting container", None
            self._install_keys(inst)
            return "running", f"success, running {inst.image.replace(':', '_')}/ssh", port
        return ("exited", "container exited", None) if state == "exited" else ("offline", "host offline", None)

    def _install_keys(self, inst: VastInstance) -> None:
        """Keys attached after boot reach authorized_keys, as Vast's host agent adds them."""
        while inst.keys_installed < len(inst.ssh_keys):
            key = inst.ssh_keys[inst.keys_installed]
            script = f"mkdir -p /root/.ssh && printf '%s\\n' {shlex.quote(key)} >> /root/.ssh/authorized_keys"
            try:
                self.machines.exec(str(inst.id), ["sh", "-c", script])
            except Exception:  # not running yet: a later look installs it
                return
            inst.keys_installed += 1

    def _view(self, inst: VastInstance) -> dict[str, Any]:
        actual, msg, port = self._actual(inst)
        offer = inst.offer
        return {
            "id": inst.id, "machine_id": offer["machine_id"], "host_id": offer["host_id"], "label": inst.label,
            "image_uuid": inst.image, "image_runtype": inst.runtype, "image_args": [],
            "extra_env": [[k, v] for k, v in inst.env.items()], "onstart": inst.onstart,
            "actual_status": actual, "intended_status": inst.intended,
            "cur_state": "running" if inst.intended == "running" else "stopped", "next_state": inst.intended,
            "status_msg": msg,
            "ssh_host": "127.0.0.1" if port else None, "ssh_port": port, "ssh_idx": "0",
            "public_ipaddr": "127.0.0.1",
            "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]} if port else {},
            "machine_dir_ssh_port": None, "dph_total": round(inst.dph_total, 6), "dph_base": offer["dph_base"],
            "storage_cost": offer["storage_cost"], "storage_total_cost": round(inst.storage_per_hour, 9),
            "start_date": inst.created_at, "end_date": None,
            "duration": time.time() - inst.created_at, "gpu_name": offer["gpu_name"],
            "num_gpus": offer["num_gpus"], "gpu_ram": offer["gpu_ram"], "disk_space": inst.disk_gb,
            "is_bid": inst.bid is not None, "min_bid": offer["min_bid"], "geolocation": offer["geolocation"],
            "cuda_max_good": offer["cuda_max_good"], "inet_down": offer["inet_down"],
            "inet_up": offer["inet_up"], "reliability2": offer["reliability2"], "template_hash_id": None,
            "jupyter_token": secrets.token_hex(8),
        }

    def _get(self, inst_id: str) -> VastInstance:
        inst = self._instances.get(int(inst_id))
        if inst is None or inst.destroyed_at is not None:
            raise ApiError(404, "no_such_instance", f"Instance {inst_id} not found.")
        return inst

    # -- HTTP ----------------------------------------------------------------------------------------
    def handle(self, req: _Handler, method: str) -> None:
        url = urlsplit(req.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        header = req.headers.get("Authorization") or ""
        auth = self._who(header[7:].strip() if header.startswith("Bearer ") else query.get("api_key", ""))
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(RecordedRequest(method, url.path, query, body, auth))
        if method == "GET" and url.path.startswith("/logs/"):  # the result_url host: no auth, no faults
            return self._serve_log(req, url.path[len("/logs/"):])
        with self._lock:
            if self.faults.rate_limit_burst > 0:
                self.faults.rate_limit_burst -= 1
                return req.send(429, b"API requests too frequent: endpoint threshold=4.0/s", "text/plain")
            if self.faults.html_502 > 0:
                self.faults.html_502 -= 1
                return req.send(502, _HTML_502, "text/html")
        try:
            status, payload = self._route(method, url.path, body, query, auth)
        except ApiError as exc:
            status, payload = exc.status, {"success": False, "error": exc.error, "msg": exc.msg, **exc.extra}
        except Exception as exc:  # a fake bug should read as a server error, not a dropped connection
            status, payload = 500, {"success": False, "error": "server_error", "msg": f"{type(exc).__name__}: {exc}"}
        req.send(status, json.dumps(payload).encode(), "application/json")

    def _who(self, token: str) -> str:
        if not token:
            return "none"
        if secrets.compare_digest(token.encode(), self.api_key.encode()):
            return "account"
        with self._lock:
            for inst in self._instances.values():
                if inst.destroyed_at is None and secrets.compare_digest(token.encode(), inst.container_key.encode()):
                    return f"container:{inst.id}"
        return "invalid"

    def _route(self, method: str, path: str, body: Any, query: dict[str, str], auth: str) -> tuple[int, Any]:
        for route_method, pattern, name in ROUTES:
            match = pattern.fullmatch(path)
            if route_method != method or match is None:
                continue
            if auth in ("none", "invalid"):
                raise ApiError(401, "auth_error", "Invalid user key: the API key is missing or not valid.")
            if auth.startswith("container:"):
                own = bool(match.groups()) and auth == f"container:{match.group(1)}"
                scoped = name == "instance_delete" or (name == "instance_put" and body == {"state": "stopped"})
                if not (own and scoped):
                    raise ApiError(403, "forbidden", "A container key may only stop or destroy its own instance.")
            handler: Callable[..., tuple[int, Any]] = getattr(self, f"_api_{name}")
            return handler(*match.groups(), query=query, body=body if isinstance(body, dict) else {})
        raise ApiError(404, "not_found", f"No API route {method} {path}")


_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
    b"</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


class _Handler(BaseHTTPRequestHandler):
    owner: FakeVast
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send(self, status: int, data: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (create timeout test)
            self.close_connection = True

    def do_GET(self) -> None:
        self.owner.handle(self, "GET")

    def do_POST(self) -> None:
        self.owner.handle(self, "POST")

    def do_PUT(self) -> None:
        self.owner.handle(self, "PUT")

    def do_DELETE(self) -> None:
        self.owner.handle(self, "DELETE")
