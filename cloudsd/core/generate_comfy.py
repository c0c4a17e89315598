"""The ComfyUI side of `generate`: the workflow graph posted to /prompt (the next one queued while one runs),
progress from ComfyUI's WebSocket, completion from /history, files from /view, interrupts through /queue and
/interrupt."""

from __future__ import annotations

import json
import posixpath
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cloudsd.core.generate_common import Events, Job, Stat, ui_error, write_new
from cloudsd.errors import CloudsdError
from cloudsd.generate import comfy
from cloudsd.generate.client import UIClient
from cloudsd.generate.png import text as png_text
from cloudsd.generate.request import GenerateRequest, Picture
from cloudsd.generate.ws import Closed, WebSocket
from cloudsd.ui import UIProfile

HISTORY_POLL_S = 0.05  # /history: one small GET through the tunnel, when the WebSocket says nothing


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
            raise ui_error("upload of the init image", f"HTTP {status}: {reply[:200]!r}")
        answer = json.loads(reply)
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else str(answer["name"])

    def _submit(self, job: Job) -> str:
        request = job.request
        init = self.uploaded.get(request.init_image) if request.init_image else None
        graph = comfy.workflow(request, self.resolved[id(request)], seed=job.seed, batch_size=job.batch_size,
                               init_image=init)
        status, reply = self.client.json("POST", "/prompt", {"prompt": graph, "client_id": self.client_id})
        if status != 200 or not isinstance(reply, dict) or "prompt_id" not in reply:
            raise ui_error("prompt", comfy.prompt_error(reply))
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
            raise ui_error("prompt", f"{result.error_type}: {result.error}")
        pictures = []
        for index, image in enumerate(result.images):
            query = urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                               "type": image.get("type", "output")})
            status, png = self.client.request("GET", f"/view?{query}")
            if status != 200:
                raise ui_error("download", f"HTTP {status} for {image['filename']}")
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

    def remote_names(self, stat: Stat, pictures: list[Picture], age_s: float) -> dict[str, tuple[int, int]]:
        return stat({"root": posixpath.join(self.ui.data_dir, self.ui.output_dir),
                                        "rels": [p.remote_rel for p in pictures if p.remote_rel]})
