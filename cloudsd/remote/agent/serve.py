"""`serve`: the control channel of a sync. One JSON request per line in; one reply per request out, with
the request's id, plus `event` lines (download progress) that carry none."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading

from .common import (
    CHUNK,
    Fail,
    Index,
    bad_name,
    disk_of,
    emit,
    os_failure,
    partial_path,
    read_json,
    remove_quietly,
    sha256_of,
    write_json,
)

TYPE_CHECKING = False  # typing costs a stream's start a few ms; only the type checker needs it
if TYPE_CHECKING:
    from typing import Any


class Follower(threading.Thread):
    """Hashes a big partial file in order while cloudsd reports how much of it is written, so checking it
    costs no second pass at the end; notes its progress beside the file, so that a new run can resume."""

    def __init__(self, final: str, size: int, identity: Any) -> None:
        threading.Thread.__init__(self, daemon=True)
        self.partial = partial_path(final)
        self.size, self.identity = size, identity
        self.ready = self.pos = 0
        self.hash = hashlib.sha256()
        self.cond = threading.Condition()
        self.error: Fail | None = None

    def advance(self, upto: int) -> None:
        with self.cond:
            self.ready = max(self.ready, min(upto, self.size))
            self.cond.notify()

    def save_note(self) -> None:
        """Note beside the partial file how much of it is written (acked), for a run that resumes it. Only
        the serve loop calls this, on every `ready`: the note is current even if this process never learns
        that the connection dropped."""
        try:
            write_json(self.partial + ".json", {"identity": self.identity, "prefix": self.ready})
        except OSError:
            pass  # a full disk: the next run starts this file over

    def run(self) -> None:
        try:
            fd = os.open(self.partial, os.O_RDONLY)
            try:
                while self.pos < self.size:
                    with self.cond:
                        while self.ready <= self.pos:
                            self.cond.wait()
                        upto = self.ready
                    while self.pos < upto:
                        data = os.pread(fd, min(CHUNK, upto - self.pos), self.pos)
                        if not data:
                            raise Fail("size-mismatch", f"{self.partial} is shorter than what was sent")
                        self.hash.update(data)
                        self.pos += len(data)
            finally:
                os.close(fd)
        except OSError as exc:
            self.error = os_failure(exc)
        except Fail as exc:
            self.error = exc


class Serve:
    def __init__(self, state_dir: str) -> None:
        self.index = Index(state_dir)
        self.followers: dict[str, Follower] = {}

    def run(self) -> int:
        inp = open(0, "rb", closefd=False)
        for line in inp:
            try:
                req = json.loads(line)
                op = str(req["op"])
            except (ValueError, KeyError, TypeError):
                emit({"ok": False, "kind": "protocol", "message": "a request that is not JSON with an op"})
                continue
            if op == "quit":
                break
            handler = getattr(self, "op_" + op.replace("-", "_"), None)
            try:
                if handler is None:
                    raise Fail("protocol", f"unknown request {op!r}")
                result = handler(req) or {}
                result.setdefault("ok", True)
            except OSError as exc:
                result = os_failure(exc).reply()
            except Fail as fail:
                result = fail.reply()
            except ValueError as exc:  # a NUL byte in a path; the requests after it still get answers
                result = bad_name(exc).reply()
            if req.get("id") is not None:  # requests without an id (`ready`) get no reply
                result["id"] = req["id"]
                emit(result)
        for follower in self.followers.values():  # the sync ended before these were committed
            follower.save_note()
        self.index.save()
        return 0

    def op_ping(self, req: dict[str, Any]) -> None:
        """Nothing: its round trip tells cloudsd the link's latency (how many streams to open)."""

    # -- models going up ---------------------------------------------------------------------------------
    def op_index(self, req: dict[str, Any]) -> dict[str, Any]:
        """What is at each path (size, and sha256 when the size is the one asked about or `hash` is set), any
        partial file with its resume note, and the free bytes (and device) of each listed folder's disk."""
        out = []
        for item in req.get("files", []):
            final = item["path"]
            entry: dict[str, Any] = {"path": final}
            try:
                st = os.stat(final)
            except OSError:
                st = None
            if st is not None and stat.S_ISREG(st.st_mode):
                entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
                if item.get("size") == st.st_size or item.get("hash"):
                    entry["sha256"] = self.index.sha256(final, st)
            partial = partial_path(final)
            if os.path.isfile(partial):
                entry["partial"] = {"size": os.path.getsize(partial), "note": read_json(partial + ".json")}
            out.append(entry)
        self.index.save()
        return {"files": out, "free": {d: disk_of(d) for d in req.get("free", [])}}

    def op_prepare(self, req: dict[str, Any]) -> None:
        """Create each partial file, cut to the bytes kept for a resume (0: start over)."""
        for item in req["files"]:
            partial = partial_path(item["path"])
            os.makedirs(os.path.dirname(partial), exist_ok=True)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.ftruncate(fd, item.get("keep", 0))
            finally:
                os.close(fd)
            if not item.get("keep"):
                remove_quietly(partial + ".json")

    def op_follow(self, req: dict[str, Any]) -> None:
        follower = Follower(req["path"], req["size"], req.get("identity"))
        self.followers[req["path"]] = follower
        follower.advance(req.get("ready", 0))
        follower.start()

    def op_ready(self, req: dict[str, Any]) -> None:
        follower = self.followers.get(req["path"])
        if follower is not None:
            follower.advance(req["upto"])
            follower.save_note()

    def op_commit(self, req: dict[str, Any]) -> dict[str, Any]:
        """Check each partial file's size and sha256, then set its mtime and rename it into place. The digests
        are saved to the index at once unless `save` is false (a batch sent while the push goes on: the last
        one, or the end of the session, saves them)."""
        results = []
        for item in req["files"]:
            try:
                results.append(self._commit(item))
            except OSError as exc:
                results.append(os_failure(exc).reply(path=item["path"]))
            except Fail as fail:
                results.append(fail.reply(path=item["path"]))
            except ValueError as exc:
                results.append(bad_name(exc).reply(path=item["path"]))
        if req.get("save", True):
            self.index.save()
        return {"files": results}

    def _commit(self, item: dict[str, Any]) -> dict[str, Any]:
        final, size, expected = item["path"], item["size"], item["sha256"]
        partial = partial_path(final)
        follower = self.followers.pop(final, None)
        have = os.path.getsize(partial)
        if have != size:
            remove_quietly(partial, partial + ".json")
            raise Fail("size-mismatch", f"{final} has {have} bytes on the machine, not {size}")
        if follower is not None:
            follower.advance(size)
            follower.join()
            if follower.error is not None:
                raise follower.error
            digest = follower.hash.hexdigest()
        else:
            digest = item.get("written_sha256") or sha256_of(partial).hexdigest()
        if digest != expected:
            remove_quietly(partial, partial + ".json")
            raise Fail("hash-mismatch", f"{final}: sha256 on the machine is {digest}, expected {expected}",
                       got=digest)
        if item.get("mtime_ns"):
            os.utime(partial, ns=(item["mtime_ns"], item["mtime_ns"]))
        os.replace(partial, final)
        remove_quietly(partial + ".json")
        self.index.record(final, os.stat(final), digest)
        return {"path": final, "ok": True, "sha256": digest}

    def op_abort(self, req: dict[str, Any]) -> None:
        """Delete the partial files of a failed push (a full disk wants its space back)."""
        for final in req["paths"]:
            self.followers.pop(final, None)
            remove_quietly(partial_path(final), partial_path(final) + ".json")

    def op_hash(self, req: dict[str, Any]) -> dict[str, Any]:
        out = {p: self.index.sha256(p) for p in req["paths"]}
        self.index.save()
        return {"sha256": out}

    # -- outputs coming down -----------------------------------------------------------------------------
    def op_outputs(self, req: dict[str, Any]) -> dict[str, Any]:
        """Regular files under `root` (no hidden files, no symlinks), with the sha256 of each one that is new
        or changed since the last pull and has a local namesake of the same size (is it the same file?)."""
        root, known, local = req["root"], req.get("known", {}), req.get("local", {})
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                if name.startswith(".") or not stat.S_ISREG(st.st_mode):
                    continue
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                entry: dict[str, Any] = {"rel": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
                if known.get(rel) != [st.st_size, st.st_mtime_ns] and local.get(rel) == st.st_size:
                    entry["sha256"] = self.index.sha256(full)
                files.append(entry)
        self.index.save()
        return {"files": files}

    # -- the web: metadata, downloads, and the UI's refresh calls ----------------------------------------
    def op_resolve(self, req: dict[str, Any]) -> dict[str, Any]:
        from .web import resolve  # http.client, ssl, urllib: only what talks to the web loads them

        out = []
        for ref in req["refs"]:
            try:
                out.append(dict(resolve(ref["source"], ref.get("token")), ok=True))
            except Fail as fail:
                out.append(fail.reply())
        return {"refs": out}

    def op_fetch(self, req: dict[str, Any]) -> dict[str, Any]:
        """Download several files at once (`parallel` at a time); a `fetched` event as each one ends."""
        from .web import fetch

        items, results = list(req["items"]), {}
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    if not items:
                        return
                    item = items.pop(0)
                try:
                    result = dict(fetch(item, self.index), ok=True)
                except OSError as exc:
                    result = os_failure(exc).reply()
                except Fail as fail:
                    result = fail.reply()
                except ValueError as exc:
                    result = bad_name(exc).reply()
                results[item["path"]] = result
                emit(dict(result, event="fetched", path=item["path"]))

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, req.get("parallel", 3)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.index.save()
        return {"files": results}

    def op_refresh(self, req: dict[str, Any]) -> dict[str, Any]:
        """POST each path to the web UI on 127.0.0.1 (A1111's refresh-checkpoints and friends)."""
        import http.client

        statuses: dict[str, Any] = {}
        for path in req["paths"]:
            conn = http.client.HTTPConnection("127.0.0.1", req["port"], timeout=req.get("timeout", 300))
            try:
                conn.request("POST", path, body=b"", headers={"Content-Length": "0"})
                response = conn.getresponse()
                response.read()
                statuses[path] = response.status
            except (OSError, http.client.HTTPException) as exc:
                statuses[path] = str(exc) or type(exc).__name__
            finally:
                conn.close()
        return {"statuses": statuses}

