"""`generate`: pictures from the terminal through the machine's own web UI API, over cloudsd's SSH tunnel.

Rules:
- Every name (checkpoint, LoRA, sampler, scheduler, upscaler) is checked against the machine before
  anything runs; an unknown one is refused with the closest names the machine has.
- Jobs of `batch_size` pictures run one after another; each picture is written into DEST as soon as its
  job finishes, with the UI's own generation parameters in the PNG. The UI saves it on the machine too;
  at the end one SSH exec finds those files and they are noted in DEST's pulled-index, so `sync outputs`
  and `down` never fetch them again.
- Ctrl-C interrupts the job on the machine (A1111 `/sdapi/v1/interrupt`; ComfyUI `/interrupt` plus the
  pending prompts deleted from its queue), keeps every picture that finished, and raises `Interrupted`.
- A time or spend budget that would end the machine before the run is done refuses the run up front,
  estimated from earlier runs on the same machine (seconds per sampling step).
"""

from __future__ import annotations

import json
import posixpath
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from cloudsd.core.budget import deadlines
from cloudsd.core.cost import session_cost
from cloudsd.core.deploy import Session, open_tunnel, reconnect_record, wait_for_ui
from cloudsd.core.guard import current, plan_of
from cloudsd.core.machines import Providers, refresh_record
from cloudsd.errors import BudgetError, CloudsdError, SSHError
from cloudsd.generate import a1111, comfy
from cloudsd.generate.client import UIClient
from cloudsd.generate.png import text as png_text
from cloudsd.generate.png import with_text
from cloudsd.generate.request import MAX_SEED, GenerateRequest, Picture
from cloudsd.generate.ws import Closed, WebSocket
from cloudsd.ledger import Ledger, MachineRecord
from cloudsd.ssh import Connection
from cloudsd.ui import UIProfile, profile

POLL_S = 0.25  # A1111 progress
HISTORY_POLL_S = 0.05  # ComfyUI /history: one small GET through the tunnel
OOM = re.compile(r"out of memory|OutOfMemory", re.IGNORECASE)


class GenerateError(CloudsdError):
    """The UI refused or failed a job."""

    exit_code = 12


class Interrupted(CloudsdError):
    """Ctrl-C during a run: the job on the machine was interrupted; `pictures` finished before it."""

    exit_code = 130

    def __init__(self, pictures: list[Picture]) -> None:
        super().__init__(f"interrupted; kept {len(pictures)} finished picture(s).")
        self.pictures = pictures


class Events(Protocol):
    def progress(self, done: float, total: int, eta_s: float | None, detail: str) -> None: ...

    def picture(self, picture: Picture) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass
class RunResult:
    pictures: list[Picture] = field(default_factory=list)
    seconds: float = 0.0
    recorded: int = 0  # noted in DEST's pulled-index


@dataclass(frozen=True)
class Job:
    request: GenerateRequest
    number: int  # 1-based across the run
    seed: int
    batch_size: int


def plan_jobs(requests: list[GenerateRequest], rng: random.Random | None = None) -> list[Job]:
    """Each request split into jobs of `batch_size`; a request without a seed gets a random one. Seeds run
    on from job to job (A1111 gives picture i of a batch seed+i, so a job starts where the last one ended)."""
    rng = rng or random.Random()
    jobs: list[Job] = []
    for request in requests:
        seed = request.seed if request.seed is not None else rng.randrange(MAX_SEED)
        for size in request.batches():
            jobs.append(Job(request, len(jobs) + 1, seed % (MAX_SEED + 1), size))
            seed += size
    return jobs


# -- budget ------------------------------------------------------------------------------------------------
def step_seconds(ledger: Ledger, name: str) -> float | None:
    """Seconds per sampling step in earlier runs on this machine (None: no run yet)."""
    _, events = current(ledger, name)
    found = [(d.get("seconds", 0.0), d.get("steps", 0)) for _, _, kind, d in events if kind == "generated"]
    seconds, steps = sum(s for s, _ in found), sum(n for _, n in found)
    return seconds / steps if steps else None


def total_steps(jobs: list[Job]) -> int:
    steps = 0
    for job in jobs:
        r = job.request
        per = r.steps if not r.init_image else max(1, int(r.steps * r.denoise_value))
        if r.hires_scale and not r.init_image:
            per += int((r.hires_steps or r.steps) * (r.hires_scale ** 2))
        steps += per * job.batch_size
    return steps


def check_budget(ledger: Ledger, record: MachineRecord, jobs: list[Job], now: float | None = None) -> str | None:
    """Refuse a run that would outlast the machine's time or spend budget; a note on what is known, or None."""
    now = time.time() if now is None else now
    _, events = current(ledger, record.name)
    plan = plan_of(events)
    if plan is None or (plan.budget.max_time_s is None and plan.budget.max_spend_usd is None):
        return None
    cost = session_cost(record, events, now)
    started = plan.time_from or cost.started_at or now
    found = deadlines(plan.budget, started_at=started, now=now, spent_usd=cost.cost_usd,
                      price_per_hour=record.price_per_hour)
    if not found:
        return None
    left = found[0].at - now
    per_step = step_seconds(ledger, record.name)
    need = per_step * total_steps(jobs) if per_step is not None else None
    hint = (f"Make fewer pictures (--count), or give the machine more: `cloudsd budget {record.name} "
            f"--max-time …` or `--max-spend …`.")
    if left <= 0:
        raise BudgetError(f"the machine's {found[0].reason.replace(' reached', '')} is used up; nothing was "
                          "generated.", hint=hint)
    if need is not None and need > left:
        raise BudgetError(f"this run needs about {need:.0f} s (from earlier runs here) but the machine ends in "
                          f"{left:.0f} s ({found[0].reason}); nothing was generated.", hint=hint)
    if left < 3600:
        return f"the machine's budget ends in {left / 60:.0f} min ({found[0].reason.replace(' reached', '')})"
    return None


# -- running -----------------------------------------------------------------------------------------------
def _check_running(record: MachineRecord) -> None:
    if record.status == "stopped":
        raise CloudsdError(f"machine {record.name!r} is stopped.", hint=f"Start it with `cloudsd start {record.name}`.")
    if record.status != "running":
        raise CloudsdError(f"machine {record.name!r} is {record.status}.", hint="`cloudsd status` shows its state.")


def open_session(ledger: Ledger, providers: Providers, name: str, *, deadline_s: float = 20.0) -> Session:
    """SSH and a private tunnel (any free local port) to the UI of a running machine; the machine's own
    tunnel port in the ledger stays as it is."""
    record = ledger.get(name)
    _check_running(record)
    ui = profile(record.ui or "a1111")
    try:
        # SSH first, the provider only when that fails: a `generate` pays for no provider call (nor for
        # importing its client) when the machine answers.
        connection = reconnect_record(record, deadline_s=deadline_s)
    except SSHError:
        _check_running(refresh_record(ledger, providers, record))  # stopped or gone meanwhile (its watchdog)?
        raise
    try:
        forward = open_tunnel(record, connection, 0)
        wait_for_ui(forward.local_port, ui, deadline_s=deadline_s)
    except BaseException:
        connection.close()
        raise
    return Session(record, connection, forward, ui)


class Backend(Protocol):
    def prepare(self, requests: list[GenerateRequest], events: Events) -> None: ...

    def run(self, job: Job, on_progress: Callable[[float, float | None, str], None],
            next_job: Job | None = None) -> list[Picture]:
        """Run `job` and return its pictures; `next_job` may be queued on the machine meanwhile."""
        ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...

    def remote_names(self, connection: Connection, pictures: list[Picture], age_s: float) -> dict[str, tuple[int, int]]:
        ...


def run(requests: list[GenerateRequest], jobs: list[Job], ui: UIProfile, port: int, dest: Path,
        connection: Connection | None, events: Events, *, ledger: Ledger | None = None,
        name: str | None = None) -> RunResult:
    """Run `jobs` against the UI tunneled to 127.0.0.1:`port`, writing pictures into `dest`. With the
    machine's SSH `connection`, the pictures' files on the machine are noted in DEST's pulled-index."""
    backend: Backend = ComfyBackend(port, dest, ui) if ui.name == "comfyui" else A1111Backend(port, dest, ui)
    try:
        return _run(backend, requests, jobs, dest, connection, events, ledger, name)
    finally:
        backend.close()


def _run(backend: Backend, requests: list[GenerateRequest], jobs: list[Job], dest: Path,
         connection: Connection | None, events: Events, ledger: Ledger | None, name: str | None) -> RunResult:
    result = RunResult()
    started = time.monotonic()
    total = sum(j.batch_size for j in jobs)
    backend.prepare(requests, events)  # every name checked before anything runs
    noted: set[int] = set()
    for job in jobs:
        if job.request.seed is None and id(job.request) not in noted:
            noted.add(id(job.request))
            events.note(f"seed {job.seed} (random) for {job.request.prompt[:60]!r}")
    try:
        for number, job in enumerate(jobs):
            done = len(result.pictures)

            def on_progress(fraction: float, eta: float | None, detail: str, done: int = done,
                            size: int = job.batch_size) -> None:
                events.progress(done + fraction * size, total, eta, detail)

            following = jobs[number + 1] if number + 1 < len(jobs) else None
            for picture in backend.run(job, on_progress, following):
                result.pictures.append(picture)
                events.picture(picture)
            events.progress(len(result.pictures), total, None, "")
    except KeyboardInterrupt:
        events.note("interrupting the job on the machine …")
        backend.interrupt()
        result.seconds = time.monotonic() - started
        _finish(backend, connection, result, dest, events)
        raise Interrupted(result.pictures) from None
    result.seconds = time.monotonic() - started
    _finish(backend, connection, result, dest, events)
    if ledger is not None and name is not None:
        ledger.event(name, "generated", {"pictures": len(result.pictures), "seconds": round(result.seconds, 3),
                                         "steps": total_steps(jobs)})
    return result


def _finish(backend: Backend, connection: Connection | None, result: RunResult, dest: Path,
            events: Events) -> None:
    if connection is None or not result.pictures:
        return
    from cloudsd.sync.outputs import record_pulled

    try:
        found = backend.remote_names(connection, result.pictures, result.seconds + 300.0)
    except CloudsdError as exc:
        events.note(f"could not find the pictures on the machine ({exc.message}); `sync outputs` may fetch "
                    "them again")
        return
    entries = {}
    for picture in result.pictures:
        if picture.remote_rel and picture.remote_rel in found:
            size, mtime_ns = found[picture.remote_rel]
            entries[picture.remote_rel] = (size, mtime_ns, picture.path.relative_to(dest).as_posix())
    record_pulled(dest, entries)
    result.recorded = len(entries)


def write_new(folder: Path, stem: str, data: bytes) -> Path:
    """Write `data` as folder/stem.png, or stem (1).png, … : never over an existing file."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(10000):
        path = folder / (f"{stem}.png" if n == 0 else f"{stem} ({n}).png")
        try:
            with open(path, "xb") as fh:
                fh.write(data)
            return path
        except FileExistsError:
            continue
    raise CloudsdError(f"no free file name for {stem} in {folder}.")


def _ui_error(what: str, text: str) -> GenerateError:
    if OOM.search(text):
        return GenerateError(f"the GPU ran out of memory ({what}: {text[:200]}).",
                             hint="Lower --size or --batch-size, drop --hires or lower it, or rent a GPU with "
                                  "more VRAM.")
    return GenerateError(f"the web UI failed the {what}: {text}",
                         hint="Check the names and values you gave; `cloudsd ssh NAME` shows the UI's log.")


STAT_SCRIPT = r"""
import json, os, re, sys, time
d = json.load(sys.stdin)
root, out = d["root"], {}
for rel in d.get("rels") or []:
    try:
        st = os.stat(os.path.join(root, rel))
        out[rel] = [st.st_size, st.st_mtime_ns]
    except OSError:
        pass
since = time.time() - d.get("age_s", 0)
pattern = re.compile(d.get("pattern") or "^$")
for folder in d.get("folders") or []:
    for dirpath, _, files in os.walk(os.path.join(root, folder)):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            if st.st_mtime >= since and pattern.match(name):
                out[os.path.relpath(path, root)] = [st.st_size, st.st_mtime_ns]
print(json.dumps(out))
"""


def stat_remote(connection: Connection, payload: dict[str, Any]) -> dict[str, tuple[int, int]]:
    code, out, err = connection.run("python3 -c " + _quote(STAT_SCRIPT), timeout_s=60,
                                    stdin=json.dumps(payload).encode())
    if code != 0:
        raise CloudsdError(f"exit {code}: {err.strip()[-200:]}")
    data = json.loads(out.strip().splitlines()[-1])
    return {rel: (int(v[0]), int(v[1])) for rel, v in data.items()}


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


# -- A1111 / Forge -----------------------------------------------------------------------------------------
class A1111Backend:
    def __init__(self, port: int, dest: Path, ui: UIProfile) -> None:
        self.port = port
        self.dest = dest
        self.ui = ui
        self.client = UIClient(port)  # lists and progress
        self.resolved: dict[int, a1111.Resolved] = {}
        self.catalog: a1111.Catalog | None = None
        self._posts: dict[int, _Post] = {}  # job number -> its POST, running or done
        self._clients: list[UIClient] = []  # keep-alive connections of finished POSTs, for the next ones
        self._init_images: dict[Path, bytes] = {}
        self._counter: dict[Path, int] = {}

    def _list(self, path: str) -> list[Any]:
        status, body = self.client.json("GET", path)
        return body if status == 200 and isinstance(body, list) else []

    def prepare(self, requests: list[GenerateRequest], events: Events) -> None:
        options = self.client.get_json("/sdapi/v1/options")
        self.catalog = a1111.Catalog(
            checkpoints=self._list("/sdapi/v1/sd-models"), loras=self._list("/sdapi/v1/loras"),
            samplers=self._list("/sdapi/v1/samplers"), schedulers=self._list("/sdapi/v1/schedulers"),
            upscalers=[str(u["name"]) for u in self._list("/sdapi/v1/upscalers")]
            + [str(u["name"]) for u in self._list("/sdapi/v1/latent-upscale-modes")],
            current_checkpoint=(options or {}).get("sd_model_checkpoint"))
        for request in requests:  # every name of every prompt is checked before the first picture
            self.resolved[id(request)] = a1111.resolve(request, self.catalog)
            if request.init_image and request.init_image not in self._init_images:
                self._init_images[request.init_image] = request.init_image.read_bytes()
        self._switch(requests[0], events)

    def _switch(self, request: GenerateRequest, events: Events) -> None:
        assert self.catalog is not None
        title = self.resolved[id(request)].checkpoint_title
        if title and title != self.catalog.current_checkpoint:
            events.note(f"loading checkpoint {title}")
            status, body = self.client.json("POST", "/sdapi/v1/options", {"sd_model_checkpoint": title})
            if status != 200:
                raise _ui_error("checkpoint switch", a1111.error_text(status, body))
            self.catalog = a1111.Catalog(**{**self.catalog.__dict__, "current_checkpoint": title})

    def _start(self, job: Job) -> _Post:
        """POST the job's txt2img/img2img from a thread of its own (the call blocks until the job is done)."""
        request = job.request
        init = self._init_images.get(request.init_image) if request.init_image else None
        body = a1111.payload(request, self.resolved[id(request)], seed=job.seed, batch_size=job.batch_size,
                             init_image=init)
        post = _Post(self._clients.pop() if self._clients else UIClient(self.port),
                     "/sdapi/v1/img2img" if init is not None else "/sdapi/v1/txt2img", body)
        self._posts[job.number] = post
        post.start()
        return post

    def run(self, job: Job, on_progress: Callable[[float, float | None, str], None],
            next_job: Job | None = None) -> list[Picture]:
        """The next job is sent while this one runs: the UI's queue lock holds it until this one is done, so
        the GPU does not wait for the laptop in between (not across a checkpoint switch)."""
        request = job.request
        post = self._posts.get(job.number)
        if post is None:
            self._switch(request, _Silent())
            post = self._start(job)
        if next_job is not None and next_job.number not in self._posts and \
                self.resolved[id(next_job.request)].checkpoint_title in (None, self.catalog and
                                                                         self.catalog.current_checkpoint):
            self._start(next_job)
        while post.is_alive():
            post.join(POLL_S)
            if not post.is_alive():
                break
            try:
                status, progress = self.client.json("GET", "/sdapi/v1/progress?skip_current_image=true")
            except CloudsdError:
                continue
            if status == 200 and isinstance(progress, dict):
                state = progress.get("state") or {}
                detail = (f"step {state.get('sampling_step', 0)}/{state.get('sampling_steps', 0)}"
                          if state.get("sampling_steps") else "")
                on_progress(min(1.0, float(progress.get("progress") or 0.0)),
                            float(progress.get("eta_relative") or 0.0) or None, detail)
        del self._posts[job.number]
        self._clients.append(post.client)
        answer = post.answer
        init = "init_images" in post.body
        if "error" in answer or answer["reply"][0] != 200:
            self.interrupt()  # a job sent ahead would fail alike, or leave an unrecorded picture
            if "error" in answer:
                raise answer["error"]
            raise _ui_error("job", a1111.error_text(*answer["reply"]))
        _, reply = answer["reply"]
        images, seeds, texts = a1111.parse_response(reply)
        pictures = []
        folder = self.dest / ("img2img-images" if init else "txt2img-images") / _today()
        for index, png in enumerate(images[:job.batch_size]):  # the rest (grids) are not pictures of their own
            seed = seeds[index] if index < len(seeds) else job.seed + index
            parameters = texts[index] if index < len(texts) else ""
            if parameters and "parameters" not in png_text(png):
                png = with_text(png, "parameters", parameters)
            number = self._next(folder)
            saved = write_new(folder, f"{number:05d}-{seed}", png)
            pictures.append(Picture(saved, seed, request.prompt, job.number, index, None, parameters))
        return pictures

    def _next(self, folder: Path) -> int:
        if folder not in self._counter:
            found = [int(m.group(1)) for p in folder.glob("*.png") if (m := re.match(r"(\d+)-", p.name))]
            self._counter[folder] = max(found, default=-1)
        self._counter[folder] += 1
        return self._counter[folder]

    def close(self) -> None:
        for client in [self.client, *self._clients]:
            client.close()

    def interrupt(self) -> None:
        """Interrupt until every job sent has answered: a job sent ahead starts (and clears the UI's
        interrupted flag) once the running one stops, so it is interrupted in its turn. Their pictures are
        incomplete and dropped."""
        client = UIClient(self.port, timeout_s=30)
        deadline = time.monotonic() + 120
        try:
            while any(p.is_alive() for p in self._posts.values()) and time.monotonic() < deadline:
                try:
                    client.json("POST", "/sdapi/v1/interrupt")
                except CloudsdError:
                    pass
                for post in self._posts.values():
                    post.join(0.2)
        finally:
            client.close()

    def remote_names(self, connection: Connection, pictures: list[Picture], age_s: float) -> dict[str, tuple[int, int]]:
        """A1111 names files `NNNNN-SEED….png` in outputs/{txt2img,img2img}-images/DATE/: match by seed,
        oldest first, among files written during this run."""
        found = stat_remote(connection, {"root": posixpath.join(self.ui.data_dir, self.ui.output_dir),
                                         "folders": ["txt2img-images", "img2img-images"], "age_s": age_s,
                                         "pattern": r"^\d+-\d+"})
        by_seed: dict[int, list[tuple[int, str]]] = {}
        for rel, (_, mtime_ns) in found.items():
            match = re.match(r"^\d+-(\d+)", posixpath.basename(rel))
            if match:
                by_seed.setdefault(int(match.group(1)), []).append((mtime_ns, rel))
        for picture in pictures:
            candidates = sorted(by_seed.get(picture.seed, []))
            if candidates:
                picture.remote_rel = candidates.pop(0)[1]
                by_seed[picture.seed] = candidates
        return found


class _Post(threading.Thread):
    def __init__(self, client: UIClient, path: str, body: dict[str, Any]) -> None:
        super().__init__(name="generate-job", daemon=True)
        self.client, self.path, self.body = client, path, body
        self.answer: dict[str, Any] = {}

    def run(self) -> None:
        try:
            self.answer["reply"] = self.client.json("POST", self.path, self.body)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.answer["error"] = exc


class _Silent:
    def progress(self, done: float, total: int, eta_s: float | None, detail: str) -> None:
        pass

    def picture(self, picture: Picture) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def _today() -> str:
    return datetime.now().strftime("%Y-%m-%d")


# -- ComfyUI -----------------------------------------------------------------------------------------------
class ComfyBackend:
    """Prompts are queued one job at a time; /history/{id} tells when one is done, /view brings its files
    (the exact bytes ComfyUI saved, with its own `prompt` and `workflow` text in the PNG)."""

    def __init__(self, port: int, dest: Path, ui: UIProfile) -> None:
        self.port = port
        self.dest = dest
        self.ui = ui
        self.client = UIClient(port)
        self.client_id = uuid.uuid4().hex
        self.resolved: dict[int, comfy.Resolved] = {}
        self.uploaded: dict[Path, str] = {}
        self.submitted: dict[int, str] = {}  # job number -> prompt_id
        self.samplers: dict[str, list[str]] = {}  # prompt_id -> its KSampler node ids, in order
        self.steps: dict[str, tuple[str, int, int]] = {}  # prompt_id -> (node, value, max) from the WebSocket
        self.changed = threading.Condition()
        self.ws: Any = None
        self.pending: list[str] = []  # queued or running, not yet seen in /history
        self.seconds_per_job: list[float] = []

    def _listen(self) -> None:
        """ComfyUI's WebSocket: `progress` (value/max of the running sampler) and `executing` with node None
        (a prompt is done) for this client id. Without it, progress falls back to the time jobs took."""
        try:
            self.ws = WebSocket(self.port, f"/ws?clientId={self.client_id}")
        except (OSError, Closed):
            return
        threading.Thread(target=self._read_ws, name="comfy-ws", daemon=True).start()

    def _read_ws(self) -> None:
        assert self.ws is not None
        while True:
            try:
                message = json.loads(self.ws.recv())
            except (Closed, ValueError):
                return
            data = message.get("data") or {}
            prompt_id = data.get("prompt_id")
            with self.changed:
                if message.get("type") == "progress" and prompt_id:
                    self.steps[prompt_id] = (str(data.get("node")), int(data.get("value") or 0),
                                             int(data.get("max") or 1))
                self.changed.notify_all()

    def prepare(self, requests: list[GenerateRequest], events: Events) -> None:
        self._listen()
        info = self.client.get_json("/object_info")
        catalog = comfy.Catalog.from_object_info(info if isinstance(info, dict) else {})
        for request in requests:
            self.resolved[id(request)] = comfy.resolve(request, catalog)
        for request in requests:
            if request.init_image and request.init_image not in self.uploaded:
                self.uploaded[request.init_image] = self._upload(request.init_image)

    def _upload(self, path: Path) -> str:
        boundary = uuid.uuid4().hex
        data = path.read_bytes()
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + (
                f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
                f"--{boundary}--\r\n").encode()
        status, reply = self.client.request("POST", "/upload/image", raw=body,
                                            content_type=f"multipart/form-data; boundary={boundary}")
        if status != 200:
            raise _ui_error("upload of the init image", f"HTTP {status}: {reply[:200]!r}")
        answer = json.loads(reply)
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else str(answer["name"])

    def _submit(self, job: Job) -> str:
        request = job.request
        init = self.uploaded.get(request.init_image) if request.init_image else None
        graph = comfy.workflow(request, self.resolved[id(request)], seed=job.seed, batch_size=job.batch_size,
                               init_image=init)
        status, reply = self.client.json("POST", "/prompt", {"prompt": graph, "client_id": self.client_id})
        if status != 200 or not isinstance(reply, dict) or "prompt_id" not in reply:
            raise _ui_error("prompt", comfy.prompt_error(reply))
        prompt_id = str(reply["prompt_id"])
        self.samplers[prompt_id] = [k for k, n in graph.items() if n["class_type"] == "KSampler"]
        self.submitted[job.number] = prompt_id
        self.pending.append(prompt_id)
        return prompt_id

    def run(self, job: Job, on_progress: Callable[[float, float | None, str], None],
            next_job: Job | None = None) -> list[Picture]:
        """The next job is queued while this one runs, so the GPU does not wait for the laptop in between."""
        request = job.request
        prompt_id = self.submitted.get(job.number) or self._submit(job)
        if next_job is not None and next_job.number not in self.submitted:
            self._submit(next_job)
        started = time.monotonic()
        typical = (sum(self.seconds_per_job) / len(self.seconds_per_job)) if self.seconds_per_job else None
        while True:
            entry = self.client.get_json(f"/history/{prompt_id}")
            result = comfy.outcome(entry.get(prompt_id) if isinstance(entry, dict) else None)
            if result.done:
                break
            elapsed = time.monotonic() - started
            with self.changed:
                step = self.steps.get(prompt_id)
            if step is not None:  # the UI's own progress: samplers done, and the running one's step
                node, value, total = step
                order = self.samplers.get(prompt_id) or [node]
                index = order.index(node) if node in order else 0
                fraction = min(1.0, (index + value / max(total, 1)) / len(order))
                eta = elapsed / fraction - elapsed if fraction > 0 else None
                on_progress(fraction, eta, f"step {value}/{total}" + (f" (pass {index + 1})" if index else ""))
            else:
                fraction = min(0.99, elapsed / typical) if typical else 0.0
                on_progress(fraction, max(0.0, typical - elapsed) if typical else None, "queued")
            with self.changed:  # woken by the WebSocket as soon as something happens, else poll
                self.changed.wait(HISTORY_POLL_S)
        self.pending.remove(prompt_id)
        self.seconds_per_job.append(time.monotonic() - started)
        if result.error is not None:
            self._drop_pending()  # the job queued ahead would fail alike
            raise _ui_error("prompt", f"{result.error_type}: {result.error}")
        pictures = []
        for index, image in enumerate(result.images):
            query = urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                               "type": image.get("type", "output")})
            status, png = self.client.request("GET", f"/view?{query}")
            if status != 200:
                raise _ui_error("download", f"HTTP {status} for {image['filename']}")
            rel = posixpath.join(image.get("subfolder") or "", image["filename"])
            folder = self.dest / posixpath.dirname(rel)
            saved = write_new(folder, posixpath.splitext(posixpath.basename(rel))[0], png)
            parameters = png_text(png).get("prompt", "")
            pictures.append(Picture(saved, job.seed, request.prompt, job.number, index, rel, parameters))
        return pictures

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()

    def _drop_pending(self) -> None:
        if self.pending:
            self.client.json("POST", "/queue", {"delete": self.pending})
            self.pending = []

    def interrupt(self) -> None:
        client = UIClient(self.port, timeout_s=30)
        try:
            if self.pending:  # first the queued ones, so none of them starts when the running one ends
                client.json("POST", "/queue", {"delete": self.pending})
            client.json("POST", "/interrupt", {})
        except CloudsdError:
            pass
        finally:
            client.close()

    def remote_names(self, connection: Connection, pictures: list[Picture], age_s: float) -> dict[str, tuple[int, int]]:
        return stat_remote(connection, {"root": posixpath.join(self.ui.data_dir, self.ui.output_dir),
                                        "rels": [p.remote_rel for p in pictures if p.remote_rel]})
