"""The A1111 / Forge side of `generate`: lists and name checks, the checkpoint switch, jobs posted to
/sdapi/v1/txt2img or img2img (the next one sent while one runs), progress from /sdapi/v1/progress, interrupts,
and the pictures' files on the machine found by seed."""

from __future__ import annotations

import posixpath
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudsd.core.generate_common import Events, Job, Silent, Stat, today, ui_error, write_new
from cloudsd.errors import CloudsdError
from cloudsd.generate import a1111
from cloudsd.generate.client import UIClient
from cloudsd.generate.png import text as png_text
from cloudsd.generate.png import with_text
from cloudsd.generate.request import GenerateRequest, Picture
from cloudsd.ui import UIProfile

POLL_S = 0.25  # how often the UI's progress is read while a job runs
LISTS = ["/sdapi/v1/sd-models", "/sdapi/v1/loras", "/sdapi/v1/samplers", "/sdapi/v1/schedulers",
         "/sdapi/v1/upscalers", "/sdapi/v1/latent-upscale-modes"]


class A1111Backend:
    def __init__(self, port: int, dest: Path, ui: UIProfile, synced: dict[str, str] | None = None) -> None:
        self.port = port
        self.dest = dest
        self.ui = ui
        # {path on the machine: short hash} of the models cloudsd put there: A1111 lists a checkpoint's hash only
        # once it has loaded it (or found it in its cache.json), so a fresh one is still known by its hash here
        self.synced = synced or {}
        self.client = UIClient(port)  # lists and progress
        self.resolved: dict[int, a1111.Resolved] = {}
        self.catalog: a1111.Catalog | None = None
        self._posts: dict[int, _Post] = {}  # job number -> its POST, running or done
        self._clients: list[UIClient] = []  # keep-alive connections of finished POSTs, for the next ones
        self._init_images: dict[Path, bytes] = {}
        self._counter: dict[Path, int] = {}

    def _get_all(self, paths: list[str]) -> dict[str, tuple[int, Any]]:
        """GET every path at once, each on a connection of its own: one round trip through the tunnel instead
        of one per list (7 of them; over 50 ms each to a data center). The extra connections are closed: one
        kept for a POST after a long checkpoint switch would find itself closed by the UI."""
        answers: dict[str, tuple[int, Any] | BaseException] = {}
        clients = [self.client, *(UIClient(self.port) for _ in paths[1:])]

        def get(client: UIClient, path: str) -> None:
            try:
                answers[path] = client.json("GET", path)
            except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
                answers[path] = exc

        threads = [threading.Thread(target=get, args=(client, path), name="generate-list", daemon=True)
                   for client, path in zip(clients, paths, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for client in clients[1:]:
            client.close()
        for answer in answers.values():
            if isinstance(answer, BaseException):
                raise answer
        return {path: answer for path, answer in answers.items() if not isinstance(answer, BaseException)}

    def prepare(self, requests: list[GenerateRequest], events: Events) -> None:
        answers = self._get_all(["/sdapi/v1/options", *LISTS])
        status, options = answers["/sdapi/v1/options"]
        if status != 200:
            raise CloudsdError(f"the web UI answered HTTP {status} to GET /sdapi/v1/options: {str(options)[:200]}")

        def listed(path: str) -> list[Any]:
            status, body = answers[path]
            return body if status == 200 and isinstance(body, list) else []

        self.catalog = a1111.Catalog(
            checkpoints=a1111.with_synced_hashes(listed("/sdapi/v1/sd-models"), self.synced),
            loras=listed("/sdapi/v1/loras"),
            samplers=listed("/sdapi/v1/samplers"), schedulers=listed("/sdapi/v1/schedulers"),
            upscalers=[str(u["name"]) for u in listed("/sdapi/v1/upscalers")]
            + [str(u["name"]) for u in listed("/sdapi/v1/latent-upscale-modes")],
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
                raise ui_error("checkpoint switch", a1111.error_text(status, body))
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
        the GPU does not wait for the laptop in between (not across a checkpoint switch). It is sent only once
        the UI reports this one running: a lock is not a queue, and two requests waiting on it may run in
        either order, which would mix up the pictures' order and what Ctrl-C keeps."""
        request = job.request
        post = self._posts.get(job.number)
        if post is None:
            self._switch(request, Silent())
            post = self._start(job)
        ahead = next_job if next_job is not None and next_job.number not in self._posts and \
            self.resolved[id(next_job.request)].checkpoint_title in (None, self.catalog and
                                                                     self.catalog.current_checkpoint) else None
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
                if ahead is not None and state.get("job_count") and len(self._posts) == 1:
                    self._start(ahead)  # the one running is this job, the only one sent
                    ahead = None
                detail = (f"step {state.get('sampling_step', 0)}/{state.get('sampling_steps', 0)}"
                          if state.get("sampling_steps") else "")
                # A1111 computes the ETA from progress before capping it at 1: it goes negative in the last step
                eta = float(progress.get("eta_relative") or 0.0)
                on_progress(min(1.0, float(progress.get("progress") or 0.0)), eta if eta > 0 else None, detail)
        del self._posts[job.number]
        self._clients.append(post.client)
        answer = post.answer
        init = "init_images" in post.body
        if "error" in answer or answer["reply"][0] != 200:
            self.interrupt()  # a job sent ahead would fail alike, or leave an unrecorded picture
            if "error" in answer:
                raise answer["error"]
            raise ui_error("job", a1111.error_text(*answer["reply"]))
        _, reply = answer["reply"]
        images, seeds, texts = a1111.parse_response(reply)
        pictures = []
        folder = self.dest / ("img2img-images" if init else "txt2img-images") / today()
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

    def remote_names(self, stat: Stat, pictures: list[Picture], age_s: float) -> dict[str, tuple[int, int]]:
        """A1111 names files `NNNNN-SEED….png` in outputs/{txt2img,img2img}-images/DATE/: match by seed,
        oldest first, among files written during this run."""
        found = stat({"root": posixpath.join(self.ui.data_dir, self.ui.output_dir),
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
