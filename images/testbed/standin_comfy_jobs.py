"""The stand-in's ComfyUI prompt queue, as server.py, execution.py and nodes.py of ComfyUI v0.3.77 behave.

- GET /object_info lists the nodes cloudsd's workflows use, with their inputs as nodes.py declares them.
- POST /prompt validates like execution.validate_prompt: a node without class_type or of an unknown type,
  a prompt without an output node, then per output the required inputs, link types, INT/FLOAT ranges and
  list choices. A refusal is 400 `{"error": {...}, "node_errors": {id: {"errors", "dependent_outputs",
  "class_type"}}}`; success `{"prompt_id", "number", "node_errors": {}}`, and the prompt runs later.
- One worker runs the queue in order. /history/{id} appears when a prompt ends: outputs and
  `status.messages` (execution_start, execution_success | execution_error | execution_interrupted).
- GET /queue, POST /queue {"delete": [...]} / {"clear": true}, POST /interrupt, POST /upload/image.
- Each KSampler step takes CLOUDSD_STANDIN_STEP_S seconds (or the number in /run/cloudsd/standin-step-s)
  at 512x512, scaled by the latent's area; a batch too large for the stand-in's 24 GB "GPU" fails with
  torch.OutOfMemoryError, as an execution_error in the history.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import struct
import threading
import time
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from standin_common import Reply, image_size, json_reply, png_image, step_seconds

VRAM_PIXELS = 4096 * 4096
MAX_RESOLUTION = 16384
SAMPLERS = ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
            "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
            "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
            "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
            "ddim", "uni_pc", "uni_pc_bh2"]
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
              "linear_quadratic", "kl_optimal"]
LATENT_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
IMAGE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


def _int(default: int, lo: int, hi: int) -> list[Any]:
    return ["INT", {"default": default, "min": lo, "max": hi}]


def _float(default: float, lo: float, hi: float) -> list[Any]:
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": 0.01}]


def node_types(lists: dict[str, list[str]]) -> dict[str, tuple[dict[str, Any], list[str], bool]]:
    """{class_type: (required inputs, RETURN_TYPES, OUTPUT_NODE)} for the nodes the stand-in runs."""
    strength = _float(1.0, -100.0, 100.0)
    return {
        "CheckpointLoaderSimple": ({"ckpt_name": [lists["checkpoints"]]}, ["MODEL", "CLIP", "VAE"], False),
        "LoraLoader": ({"model": ["MODEL"], "clip": ["CLIP"], "lora_name": [lists["loras"]],
                        "strength_model": strength, "strength_clip": strength}, ["MODEL", "CLIP"], False),
        "VAELoader": ({"vae_name": [lists["vae"]]}, ["VAE"], False),
        "ControlNetLoader": ({"control_net_name": [lists["controlnet"]]}, ["CONTROL_NET"], False),
        "UpscaleModelLoader": ({"model_name": [lists["upscale_models"]]}, ["UPSCALE_MODEL"], False),
        "CLIPTextEncode": ({"text": ["STRING", {"multiline": True, "dynamicPrompts": True}], "clip": ["CLIP"]},
                           ["CONDITIONING"], False),
        "EmptyLatentImage": ({"width": ["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}],
                              "height": ["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}],
                              "batch_size": _int(1, 1, 4096)}, ["LATENT"], False),
        "KSampler": ({"model": ["MODEL"], "seed": ["INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff}],
                      "steps": _int(20, 1, 10000),
                      "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}],
                      "sampler_name": [SAMPLERS], "scheduler": [SCHEDULERS], "positive": ["CONDITIONING"],
                      "negative": ["CONDITIONING"], "latent_image": ["LATENT"], "denoise": _float(1.0, 0.0, 1.0)},
                     ["LATENT"], False),
        "LatentUpscaleBy": ({"samples": ["LATENT"], "upscale_method": [LATENT_METHODS],
                             "scale_by": _float(1.5, 0.01, 8.0)}, ["LATENT"], False),
        "VAEDecode": ({"samples": ["LATENT"], "vae": ["VAE"]}, ["IMAGE"], False),
        "VAEEncode": ({"pixels": ["IMAGE"], "vae": ["VAE"]}, ["LATENT"], False),
        "ImageUpscaleWithModel": ({"upscale_model": ["UPSCALE_MODEL"], "image": ["IMAGE"]}, ["IMAGE"], False),
        "ImageScale": ({"image": ["IMAGE"], "upscale_method": [IMAGE_METHODS],
                        "width": _int(512, 0, MAX_RESOLUTION), "height": _int(512, 0, MAX_RESOLUTION),
                        "crop": [["disabled", "center"]]}, ["IMAGE"], False),
        "LoadImage": ({"image": [lists["input"], {"image_upload": True}]}, ["IMAGE", "MASK"], False),
        "RepeatImageBatch": ({"image": ["IMAGE"], "amount": _int(1, 1, 4096)}, ["IMAGE"], False),
        "SaveImage": ({"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}, [], True),
    }


def object_info(lists: dict[str, list[str]]) -> dict[str, Any]:
    info = {}
    for name, (required, outputs, output_node) in node_types(lists).items():
        info[name] = {
            "input": {"required": required}, "input_order": {"required": list(required)}, "output": outputs,
            "output_is_list": [False] * len(outputs), "output_name": outputs, "name": name,
            "display_name": name, "description": "", "python_module": "nodes",
            "category": "loaders" if name.endswith("Loader") or name.endswith("LoaderSimple") else "sampling",
            "output_node": output_node, "deprecated": False, "experimental": False,
        }
    return info


def _error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def validate(graph: dict[str, Any], types: dict[str, tuple[dict[str, Any], list[str], bool]]) -> tuple[int, Any] | None:
    """None when the prompt is valid, else (400, the body ComfyUI answers)."""
    for node_id, node in graph.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return 400, {"error": _error("invalid_prompt", "Cannot execute because a node is missing the "
                                         "class_type property.", f"Node ID '#{node_id}'"), "node_errors": {}}
        if node["class_type"] not in types:
            return 400, {"error": _error("missing_node_type", f"Node '{node['class_type']}' not found. The custom "
                                         "node may not be installed.", f"Node ID '#{node_id}'", node_id=node_id,
                                         class_type=node["class_type"]), "node_errors": {}}
    outputs = [k for k, n in graph.items() if types[n["class_type"]][2]]
    if not outputs:
        return 400, {"error": _error("prompt_no_outputs", "Prompt has no outputs"), "node_errors": []}
    node_errors: dict[str, Any] = {}
    checked: dict[str, list[dict[str, Any]]] = {}

    def check(node_id: str) -> bool:
        if node_id in checked:
            return not checked[node_id]
        checked[node_id] = []
        node = graph[node_id]
        required, _, _ = types[node["class_type"]]
        inputs = node.get("inputs") or {}
        errors = checked[node_id]
        for name, spec in required.items():
            if name not in inputs:
                errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
                continue
            value = inputs[name]
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(value, list):
                if len(value) != 2 or not isinstance(value[1], int):
                    errors.append(_error("bad_linked_input", "Bad linked input, must be a length-2 list of "
                                         "[node_id, slot_index]", name, input_name=name, received_value=value))
                    continue
                source = str(value[0])
                if source not in graph:
                    errors.append(_error("exception_during_inner_validation", "Exception when validating inner "
                                         "node", f"'{source}'", input_name=name))
                    continue
                returned = types[graph[source]["class_type"]][1]
                got = returned[value[1]] if value[1] < len(returned) else None
                if got != kind:
                    errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                         f"{name}, received_type({got}) mismatch input_type({kind})",
                                         input_name=name, received_type=got, linked_node=value))
                    continue
                if not check(source):
                    errors.append(_error("exception_during_inner_validation", "Exception when validating inner "
                                         "node", f"'{source}'", input_name=name))
                continue
            if isinstance(kind, list):
                if value not in kind:
                    errors.append(_error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {kind}",
                                         input_name=name, received_value=value))
                continue
            try:
                value = {"INT": int, "FLOAT": float, "STRING": str}.get(kind, lambda v: v)(value)
                if kind == "INT" and isinstance(inputs[name], float) and not inputs[name].is_integer():
                    raise ValueError
            except (TypeError, ValueError):
                errors.append(_error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                                     f"{name}, {inputs[name]}", input_name=name, received_value=inputs[name]))
                continue
            if "min" in options and value < options["min"]:
                errors.append(_error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}",
                                     name, input_name=name, received_value=value))
            if "max" in options and value > options["max"]:
                errors.append(_error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                                     name, input_name=name, received_value=value))
        if errors:
            node_errors[node_id] = {"errors": errors, "dependent_outputs": [], "class_type": node["class_type"]}
        return not errors

    failed = [o for o in outputs if not check(o)]
    for entry in node_errors.values():
        entry["dependent_outputs"] = failed
    if node_errors or failed:
        return 400, {"error": _error("prompt_outputs_failed_validation", "Prompt outputs failed validation"),
                     "node_errors": node_errors}
    return None


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(text: str) -> bytes:
    """One unmasked text frame, as a server sends it."""
    data = text.encode()
    if len(data) < 126:
        header = struct.pack(">BB", 0x81, len(data))
    elif len(data) < 65536:
        header = struct.pack(">BBH", 0x81, 126, len(data))
    else:
        header = struct.pack(">BBQ", 0x81, 127, len(data))
    return header + data


class ComfyJobs:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.sockets: dict[str, queue.Queue[str | None]] = {}  # sid -> messages for its WebSocket
        self.cond = threading.Condition()
        self.queue: list[list[Any]] = []  # [number, prompt_id, graph, extra_data, outputs]
        self.running: list[Any] | None = None
        self.interrupted = False
        self.input_dir = app.base_dir / "input"
        self.input_dir.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=self._worker, name="comfy-queue", daemon=True).start()

    def lists(self) -> dict[str, list[str]]:
        found = {f: self.app.list_folder(f) for f in ("checkpoints", "loras", "vae", "controlnet", "upscale_models")}
        found["input"] = sorted(p.name for p in self.input_dir.iterdir() if p.is_file())
        return found

    def object_info(self) -> dict[str, Any]:
        return object_info(self.lists())

    # -- routes ---------------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Reply | None:
        if method == "POST" and path == "/prompt":
            return self.prompt(body)
        if method == "POST" and path == "/upload/image":
            return self.upload(body)
        if path == "/queue":
            return self.queue_get() if method == "GET" else self.queue_post(body)
        if method == "POST" and path == "/interrupt":
            with self.cond:
                if self.running is not None:
                    self.interrupted = True
            return 200, b"", "text/plain"
        return None

    def prompt(self, body: bytes) -> Reply:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return json_reply({"error": _error("invalid_prompt", "Invalid JSON"), "node_errors": {}}, 400)
        server = self.app.prompt_server
        if server is not None:  # as server.py's post_prompt: the JSON passes through the on_prompt handlers
            data = server.trigger_on_prompt(data)
        graph = data.get("prompt") if isinstance(data, dict) else None
        if not isinstance(graph, dict):
            return json_reply({"error": _error("no_prompt", "No prompt provided"), "node_errors": {}}, 400)
        refused = validate(graph, node_types(self.lists()))
        if refused is not None:
            return json_reply(refused[1], refused[0])
        prompt_id = str(data.get("prompt_id") or uuid.uuid4())
        outputs = [k for k, n in graph.items() if n["class_type"] == "SaveImage"]
        extra = {"client_id": data.get("client_id")} if data.get("client_id") else {}
        extra.update(data.get("extra_data") or {})
        with self.cond:
            number = self.app.number
            self.app.number += 1
            self.queue.append([number, prompt_id, graph, extra, outputs])
            self.cond.notify_all()
        self._status()
        return json_reply({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    def queue_get(self) -> Reply:
        with self.cond:
            running = [self.running] if self.running else []
            return json_reply({"queue_running": running, "queue_pending": list(self.queue)})

    def queue_post(self, body: bytes) -> Reply:
        data = json.loads(body or b"{}")
        with self.cond:
            if data.get("clear"):
                self.queue.clear()
            if "delete" in data:
                gone = set(data["delete"])
                self.queue = [item for item in self.queue if item[1] not in gone]
        return 200, b"", "text/plain"

    def upload(self, body: bytes) -> Reply:
        """POST /upload/image (multipart form: image, overwrite, subfolder, type). The boundary is the body's
        first line, so no header is needed."""
        boundary = body.split(b"\r\n", 1)[0][2:]
        if not boundary:
            return 400, b"", "text/plain"
        head = b'Content-Type: multipart/form-data; boundary="' + boundary + b'"\r\n\r\n'
        message = BytesParser(policy=HTTP).parsebytes(head + body)
        fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        image = fields.get("image")
        if image is None:
            return 400, b"", "text/plain"
        name = os.path.basename(image.get_filename() or "image.png")
        subfolder = (fields["subfolder"].get_content().strip() if "subfolder" in fields else "")
        folder = (self.input_dir / subfolder).resolve()
        if os.path.commonpath([folder, self.input_dir.resolve()]) != str(self.input_dir.resolve()):
            return 400, b"", "text/plain"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(image.get_payload(decode=True) or b"")
        return json_reply({"name": name, "subfolder": subfolder, "type": "input"})

    # -- /ws ------------------------------------------------------------------------------------------------
    def websocket(self, handler: Any, query: dict[str, list[str]]) -> None:
        """GET /ws?clientId=…: as server.py's websocket_handler, `status` first, then what the worker sends
        to this client id (`progress`, `executing`, `executed`, `execution_*`) and broadcasts (`status`)."""
        key = handler.headers.get("Sec-WebSocket-Key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        handler.close_connection = True
        handler.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        sid = (query.get("clientId") or [""])[0] or uuid.uuid4().hex
        messages: queue.Queue[str | None] = queue.Queue()
        with self.cond:
            self.sockets[sid] = messages
            remaining = len(self.queue) + (1 if self.running else 0)
        messages.put(json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}},
                                                            "sid": sid}}))
        try:
            while True:
                try:
                    text = messages.get(timeout=1.0)
                except queue.Empty:
                    handler.wfile.write(b"\x89\x00")  # a ping: finds a client that went away
                    continue
                if text is None:
                    break
                handler.wfile.write(ws_frame(text))
        except OSError:
            pass
        finally:
            with self.cond:
                if self.sockets.get(sid) is messages:
                    del self.sockets[sid]

    def send(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        """To one client (`sid`), or to every client when None, as PromptServer.send_sync."""
        text = json.dumps({"type": event, "data": data})
        with self.cond:
            targets = [self.sockets[sid]] if sid in self.sockets else (list(self.sockets.values()) if sid is None else [])
        for target in targets:
            target.put(text)

    def _status(self) -> None:
        with self.cond:
            remaining = len(self.queue) + (1 if self.running else 0)
        self.send("status", {"status": {"exec_info": {"queue_remaining": remaining}}})

    # -- running --------------------------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                item = self.queue.pop(0)
                self.running = item
                self.interrupted = False
            try:
                entry = self._execute(item)
            except Exception as exc:  # a stand-in bug becomes an execution error, as in the real server
                entry = self._entry(item, {}, [["execution_error", {"prompt_id": item[1], "node_id": "",
                                                                    "node_type": "", "executed": [],
                                                                    "exception_message": str(exc),
                                                                    "exception_type": type(exc).__name__,
                                                                    "traceback": []}]], "error")
            with self.app.lock:
                self.app.history[item[1]] = entry
            sid = item[3].get("client_id")
            for kind, data in entry["status"]["messages"][1:]:
                self.send(kind, data, sid)
            if entry["status"]["status_str"] == "success":
                self.send("executing", {"node": None, "prompt_id": item[1]}, sid)
            with self.cond:
                self.running = None
            self._status()

    def _entry(self, item: list[Any], outputs: dict[str, Any], messages: list[Any], status: str) -> dict[str, Any]:
        start = [["execution_start", {"prompt_id": item[1], "timestamp": int(time.time() * 1000)}]]
        return {"prompt": item, "outputs": outputs,
                "status": {"status_str": status, "completed": status == "success", "messages": start + messages},
                "meta": {k: {"node_id": k, "display_node": k, "parent_node": None, "real_node_id": k}
                         for k in outputs}}

    def _execute(self, item: list[Any]) -> dict[str, Any]:
        _, prompt_id, graph, extra, outputs = item
        width, height, batch = self._size(graph)
        samplers = [k for k, n in graph.items() if n["class_type"] == "KSampler"]
        if width * height * batch > VRAM_PIXELS:
            return self._entry(item, {}, [["execution_error", {
                "prompt_id": prompt_id, "node_id": samplers[-1] if samplers else "", "node_type": "KSampler",
                "executed": [], "exception_message": f"Allocation on device. CUDA out of memory. Tried to allocate "
                f"{width * height * batch * 4 / 2**30:.2f} GiB", "exception_type": "torch.OutOfMemoryError",
                "traceback": [], "current_inputs": {}, "current_outputs": {}}]], "error")
        sid = extra.get("client_id")
        self.send("execution_start", {"prompt_id": prompt_id, "timestamp": int(time.time() * 1000)}, sid)
        self.send("execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": int(time.time() * 1000)},
                  sid)
        executed: list[str] = []
        for node_id in samplers:
            steps = int(graph[node_id]["inputs"]["steps"])
            step_s = step_seconds(width * height * batch)
            self.send("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}, sid)
            for step in range(steps):
                if step:
                    self.send("progress", {"value": step, "max": steps, "prompt_id": prompt_id, "node": node_id}, sid)
                with self.cond:
                    if self.interrupted:
                        return self._entry(item, {}, [["execution_interrupted", {
                            "prompt_id": prompt_id, "node_id": node_id, "node_type": "KSampler",
                            "executed": executed, "timestamp": int(time.time() * 1000)}]], "error")
                time.sleep(step_s)
            self.send("progress", {"value": steps, "max": steps, "prompt_id": prompt_id, "node": node_id}, sid)
            executed.append(node_id)
        texts = [str(n["inputs"]["text"]) for n in graph.values() if n["class_type"] == "CLIPTextEncode"]
        seed = next((n["inputs"]["seed"] for n in graph.values() if n["class_type"] == "KSampler"), 0)
        ckpt = next((n["inputs"]["ckpt_name"] for n in graph.values()
                     if n["class_type"] == "CheckpointLoaderSimple"), "")
        meta = {"prompt": json.dumps(graph)}
        if isinstance(extra.get("extra_pnginfo"), dict):
            meta.update({k: json.dumps(v) for k, v in extra["extra_pnginfo"].items()})
        saved: dict[str, Any] = {}
        for node_id in outputs:
            images = []
            for index in range(batch):
                png = png_image(*image_size({"width": width, "height": height}),
                                f"{chr(0).join(texts)}\x00{seed}\x00{index}\x00{ckpt}", meta)
                images.append(self.app._save(png, graph[node_id]))
            saved[node_id] = {"images": images}
            self.send("executed", {"node": node_id, "display_node": node_id, "output": saved[node_id],
                                   "prompt_id": prompt_id}, sid)
        return self._entry(item, saved, [["execution_success", {"prompt_id": prompt_id,
                                                                 "timestamp": int(time.time() * 1000)}]], "success")

    def _size(self, graph: dict[str, Any]) -> tuple[int, int, int]:
        width = height = 512
        batch = 1
        for node in graph.values():
            inputs = node.get("inputs") or {}
            if node["class_type"] == "EmptyLatentImage":
                width, height, batch = int(inputs["width"]), int(inputs["height"]), int(inputs["batch_size"])
            elif node["class_type"] == "RepeatImageBatch":
                batch = int(inputs["amount"])
        for node in graph.values():
            inputs = node.get("inputs") or {}
            if node["class_type"] == "LatentUpscaleBy":
                width, height = int(width * float(inputs["scale_by"])), int(height * float(inputs["scale_by"]))
            elif node["class_type"] == "ImageScale":
                width, height = int(inputs["width"]), int(inputs["height"])
        return width, height, batch

