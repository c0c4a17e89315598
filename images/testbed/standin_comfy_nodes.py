"""The stand-in ComfyUI's custom nodes: how ComfyUI v0.3.77 finds and loads them, and the parts of its
PromptServer (server.py) and aiohttp app that cloudsd's custom node uses, so the stand-in runs that same
node file (images/ui/comfyui/cloudsd_custom_nodes/cloudsd_ui_activity) through the same hooks.

- Folders (folder_paths.py, main.py apply_custom_paths, utils/extra_config.py): <base>/custom_nodes, then
  each `custom_nodes:` entry of extra_model_paths.yaml beside main.py (a path relative to that file).
- Loading (nodes.py load_custom_node): each folder's __init__.py (or a .py file) is imported under its own
  module name, in listing order; a module without NODE_CLASS_MAPPINGS is reported as skipped.
- `server.PromptServer.instance`: `app` (with `middlewares`, a list that refuses changes once the app is
  frozen, as aiohttp's FrozenList), `prompt_queue` (`get_tasks_remaining()`), `add_on_prompt_handler`,
  `trigger_on_prompt`. The app is frozen after the custom nodes are loaded, as aiohttp does when it starts.
- `aiohttp.web.middleware`: the real one when aiohttp is installed; otherwise what aiohttp 3's does (it
  marks the function as a new-style middleware).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import traceback
import types
from pathlib import Path
from typing import Any


class FrozenList(list):  # type: ignore[type-arg]
    """aiohttp's (frozenlist.FrozenList): a list until frozen, then any change raises RuntimeError."""

    frozen = False

    def freeze(self) -> None:
        self.frozen = True

    def _check(self) -> None:
        if self.frozen:
            raise RuntimeError("Cannot modify frozen list.")

    def append(self, item: Any) -> None:
        self._check()
        super().append(item)

    def insert(self, index: Any, item: Any) -> None:
        self._check()
        super().insert(index, item)


class Request:
    """What an aiohttp middleware reads of a request here: method, path and headers (case-insensitive get)."""

    def __init__(self, method: str, path: str, headers: Any) -> None:
        self.method = method
        self.path = path
        self.headers = headers


class AiohttpApp:
    """aiohttp's web.Application as a middleware sees it: `middlewares`, run outermost first around the
    route's handler for every request; the stand-in answers the request itself, so the innermost handler
    does nothing."""

    def __init__(self) -> None:
        self.middlewares = FrozenList()

    def freeze(self) -> None:
        self.middlewares.freeze()

    def request(self, method: str, path: str, headers: Any) -> None:
        if not self.middlewares:
            return

        async def endpoint(request: Request) -> None:
            return None

        handler: Any = endpoint
        for middleware in reversed(self.middlewares):
            handler = _bind(middleware, handler)
        asyncio.run(handler(Request(method, path, headers)))


def _bind(middleware: Any, inner: Any) -> Any:
    async def call(request: Request) -> Any:
        return await middleware(request, inner)

    return call


class PromptQueue:
    """execution.PromptQueue's get_tasks_remaining over the stand-in's queue: pending plus running."""

    def __init__(self, jobs: Any) -> None:
        self.jobs = jobs

    def get_tasks_remaining(self) -> int:
        with self.jobs.cond:
            return len(self.jobs.queue) + (1 if self.jobs.running is not None else 0)


class PromptServer:
    instance: PromptServer

    def __init__(self, jobs: Any) -> None:
        PromptServer.instance = self
        self.app = AiohttpApp()
        self.prompt_queue = PromptQueue(jobs)
        self.on_prompt_handlers: list[Any] = []

    def add_on_prompt_handler(self, handler: Any) -> None:
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data: Any) -> Any:
        for handler in self.on_prompt_handlers:
            try:
                json_data = handler(json_data)
            except Exception as exc:  # as server.py: a handler's error is logged, the prompt goes on
                print(f"[ERROR] An error occurred during the on_prompt_handler processing: {exc}", file=sys.stderr)
        return json_data


def _install_modules() -> None:
    """`server` (this PromptServer) and, without the real aiohttp, `aiohttp.web.middleware`."""
    module = types.ModuleType("server")
    module.PromptServer = PromptServer  # type: ignore[attr-defined]
    sys.modules["server"] = module
    try:
        import aiohttp.web  # noqa: F401  # the real one, where installed
    except ImportError:
        web = types.ModuleType("aiohttp.web")

        def middleware(f: Any) -> Any:
            f.__middleware_version__ = 1
            return f

        web.middleware = middleware  # type: ignore[attr-defined]
        package = types.ModuleType("aiohttp")
        package.web = web  # type: ignore[attr-defined]
        sys.modules["aiohttp"] = package
        sys.modules["aiohttp.web"] = web


def extra_custom_node_paths(app_dir: Path) -> list[Path]:
    """The `custom_nodes:` entries of <app>/extra_model_paths.yaml: the subset of YAML that file uses (sections
    of `key: value` lines, values relative to the file unless absolute, no base_path)."""
    try:
        text = (app_dir / "extra_model_paths.yaml").read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        key, _, value = line.split("#", 1)[0].strip().partition(":")
        if line.startswith((" ", "\t")) and key == "custom_nodes" and value.strip():
            found.append((app_dir / value.strip()).resolve())
    return found


def load_custom_nodes(base_dir: Path, app_dir: Path | None, jobs: Any) -> PromptServer:
    """Make the PromptServer, load the custom nodes of every custom_nodes folder, then freeze the app."""
    _install_modules()
    server = PromptServer(jobs)
    folders = [base_dir / "custom_nodes", *(extra_custom_node_paths(app_dir) if app_dir else [])]
    for folder in folders:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            path = folder / name
            if name == "__pycache__" or name.endswith(".disabled") or (path.is_file() and path.suffix != ".py"):
                continue
            init = path if path.is_file() else path / "__init__.py"
            module_name = str(path).replace(".", "_x_")
            spec = importlib.util.spec_from_file_location(module_name, init)
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception:  # as nodes.py: the traceback is logged and the UI starts without that node
                traceback.print_exc()
                print(f"Cannot import {path} module for custom nodes", file=sys.stderr)
                continue
            if getattr(module, "NODE_CLASS_MAPPINGS", None) is None:
                print(f"Skip {path} module for custom nodes due to the lack of NODE_CLASS_MAPPINGS",
                      file=sys.stderr)
    server.app.freeze()
    return server
