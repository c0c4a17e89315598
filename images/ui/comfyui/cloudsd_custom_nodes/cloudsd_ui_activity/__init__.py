"""cloudsd: tell the idle watchdog when someone uses ComfyUI.

The watchdog on the machine (cloudsd's idle stop) reads /run/cloudsd/ui-activity, the time of the UI's last
use in epoch seconds. A person using ComfyUI in a browser (through the SSH tunnel) makes no GPU load while
wiring a graph, and has no shell open, so without this file they could be stopped as idle.

This custom node ships in cloudsd's ComfyUI image (/opt/cloudsd/app/cloudsd_custom_nodes/, which the app's
extra_model_paths.yaml adds to ComfyUI's custom_nodes folders). It adds no node types. What it uses of
ComfyUI v0.3.77 (server.py, main.py, nodes.py):

- Loading: nodes.init_external_custom_nodes imports every folder of each custom_nodes path
  (folder_paths.get_folder_paths("custom_nodes")) through its __init__.py; a module without
  NODE_CLASS_MAPPINGS is skipped with a warning and listed as IMPORT FAILED, hence the empty mapping below.
  No WEB_DIRECTORY: nothing for the browser.
- When: main.py's start_comfyui makes `server.PromptServer(loop)` (which sets `PromptServer.instance`, its
  aiohttp `app` and its `prompt_queue`), then loads custom nodes, then add_routes(), and only later starts
  the aiohttp runner, which freezes the app. So at import the app's `middlewares` list still takes one.
- Requests: an aiohttp middleware (`web.middleware`) appended to `PromptServer.instance.app.middlewares`
  sees every HTTP request and WebSocket connect that passed ComfyUI's own origin check.
- Prompts: `PromptServer.instance.add_on_prompt_handler(handler)`; server.py's POST /prompt calls
  trigger_on_prompt, which passes the request's JSON through every handler (the handler returns it as is).
- Queue: `PromptServer.instance.prompt_queue.get_tasks_remaining()` (queued plus running prompts, what
  /prompt and the WebSocket status report as queue_remaining); while it is above zero the UI is in use,
  even when a long queue runs with nobody sending requests.

Not counted: cloudsd's own health probes (User-Agent `cloudsd-health`: images/ui/healthcheck and `cloudsd
up`'s probe). The file is written at most once a second, off the request path; loading the node counts as
activity, so a file left by an earlier boot never reads as idle. CLOUDSD_UI_ACTIVITY_FILE names another
file ('' turns recording off). The testbed's stand-in ComfyUI loads this same file through the same hooks
(images/testbed/standin_comfy_nodes.py), so CI runs it. The A1111/Forge counterpart is
images/ui/extension/scripts/cloudsd_ui_activity.py.
"""

import logging
import os
import threading
import time

from aiohttp import web
from server import PromptServer

PROBE_AGENT = "cloudsd-health"
QUEUE_POLL_S = 5.0

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}


class ActivityRecorder:
    def __init__(self, path, busy):
        self.path = path
        self.busy = busy  # () -> bool: prompts queued or running
        self.last = time.time()
        self._wake = threading.Event()
        if path:
            self._wake.set()
            threading.Thread(target=self._run, name="cloudsd-ui-activity", daemon=True).start()

    def touch(self):
        self.last = time.time()
        self._wake.set()

    def _run(self):
        folder = os.path.dirname(self.path) or "."
        tmp = os.path.join(folder, "." + os.path.basename(self.path) + ".tmp")
        written = None
        while True:
            self._wake.wait(QUEUE_POLL_S)
            self._wake.clear()
            try:
                if self.busy():
                    self.last = time.time()
            except Exception:  # the queue's shape is ComfyUI's: never let it stop the recording
                pass
            if self.last != written:
                try:
                    os.makedirs(folder, exist_ok=True)
                    with open(tmp, "w") as f:
                        f.write(f"{self.last:.3f}\n")
                    os.replace(tmp, self.path)
                    written = self.last
                except OSError:
                    pass
            time.sleep(1.0)


def counts(request):
    """Whether a request is someone using the UI (not a cloudsd health probe)."""
    return not request.headers.get("User-Agent", "").startswith(PROBE_AGENT)


def _queue_busy():
    queue = getattr(PromptServer.instance, "prompt_queue", None)
    return queue is not None and queue.get_tasks_remaining() > 0


recorder = ActivityRecorder(os.environ.get("CLOUDSD_UI_ACTIVITY_FILE", "/run/cloudsd/ui-activity"), _queue_busy)


@web.middleware
async def record_activity(request, handler):
    if counts(request):
        recorder.touch()
    return await handler(request)


def on_prompt(json_data):
    recorder.touch()
    return json_data


PromptServer.instance.add_on_prompt_handler(on_prompt)
try:
    PromptServer.instance.app.middlewares.append(record_activity)
except RuntimeError:  # the app is frozen: loaded after the server started (not by main.py)
    logging.warning("cloudsd: the server already runs; only prompts and the queue count as UI activity")
