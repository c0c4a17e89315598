"""cloudsd: tell the idle watchdog when someone uses the web UI.

The watchdog on the machine (cloudsd's idle stop) reads /run/cloudsd/ui-activity, the time of the UI's last
request in epoch seconds. A person using the UI in a browser (through the SSH tunnel) makes no GPU load while
choosing a prompt, and has no shell open, so without this file they could be stopped as idle.

This built-in extension of the cloudsd A1111 and Forge images (/opt/cloudsd/app/extensions-builtin/cloudsd/)
wraps the app's request handling when the app has started (`script_callbacks.on_app_started`, which A1111 and
Forge call with the Gradio Blocks and the FastAPI app): every HTTP or WebSocket request counts, except
cloudsd's own health probes (User-Agent `cloudsd-health`: images/ui/healthcheck and `cloudsd up`'s probe).
The file is written at most once a second, off the request path; loading the extension counts as activity,
so a file left by an earlier boot never reads as idle.

CLOUDSD_UI_ACTIVITY_FILE names another file ('' turns recording off). The testbed's stand-in UI loads this
same file through the same hook (images/testbed/standin_a1111.py), so CI runs it.
"""

import os
import threading
import time

from modules import script_callbacks

PROBE_AGENT = b"cloudsd-health"


class ActivityRecorder:
    def __init__(self, path):
        self.path = path
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
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                os.makedirs(folder, exist_ok=True)
                with open(tmp, "w") as f:
                    f.write(f"{self.last:.3f}\n")
                os.replace(tmp, self.path)
            except OSError:
                pass
            time.sleep(1.0)


def counts(scope):
    """Whether an ASGI request is someone using the UI (not a cloudsd health probe, not a lifespan event)."""
    if scope.get("type") not in ("http", "websocket"):
        return False
    for name, value in scope.get("headers") or ():
        if name.lower() == b"user-agent" and value.startswith(PROBE_AGENT):
            return False
    return True


recorder = ActivityRecorder(os.environ.get("CLOUDSD_UI_ACTIVITY_FILE", "/run/cloudsd/ui-activity"))


def on_app_started(demo, app):
    # The app is already serving: wrap the middleware stack it runs (Starlette builds it on the first
    # request when it is still None), rather than add a middleware, which Starlette refuses once started.
    inner = app.middleware_stack or app.build_middleware_stack()

    async def record_activity(scope, receive, send):
        if counts(scope):
            recorder.touch()
        await inner(scope, receive, send)

    app.middleware_stack = record_activity


script_callbacks.on_app_started(on_app_started)
