"""Fetching models on the machine: Civitai and Hugging Face metadata, downloads that resume and are checked.

A token is sent only to requests whose origin (scheme, host, port) is the token's own: redirects are
followed by hand, so the presigned CDN link Civitai redirects to never sees it (the redirect trap).
Messages never carry a query string. A download is refused when the status, the content type or the first
bytes say it is an error page, when its size is not the one announced, or when its sha256 differs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .common import (
    CHUNK,
    Fail,
    Index,
    emit,
    free_bytes,
    origin,
    os_failure,
    partial_path,
    read_json,
    remove_quietly,
    sha256_of,
    write_all,
    write_json,
)

MAX_REDIRECTS = 10
USER_AGENT = "cloudsd-agent/1"
NOT_A_MODEL_TYPES = ("text/", "application/json", "application/xml", "application/xhtml", "application/problem")
ERROR_PAGE_STARTS = (b"<!doctype", b"<html", b"<?xml", b"<head", b'{"error', b'{"message', b'{"detail')
REDIRECTS = (301, 302, 303, 307, 308)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError for the 3xx, and open_url follows it by hand


_opener = urllib.request.build_opener(_NoRedirect)


def host_of(url: str) -> str:
    return (urllib.parse.urlsplit(url).hostname or "?").lower()


def redact(url: str) -> str:
    """The URL without user info, query or fragment: presigned links and ?token= stay out of every message."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}{'?…' if parts.query else ''}"


def open_url(url: str, token: dict[str, str] | None = None, method: str = "GET",
             headers: dict[str, str] | None = None, follow: bool = True, timeout: float = 60) -> tuple[str, Any]:
    """(final URL, response); an error status comes back as a response too."""
    for _ in range(MAX_REDIRECTS + 1):
        hdrs = {"User-Agent": USER_AGENT, **(headers or {})}
        if token and token.get("value") and origin(url) == token.get("origin"):
            hdrs["Authorization"] = "Bearer " + token["value"]
        try:
            return url, _opener.open(urllib.request.Request(url, headers=hdrs, method=method), timeout=timeout)
        except urllib.error.HTTPError as exc:
            location = exc.headers.get("Location") if exc.code in REDIRECTS else None
            if not (follow and location):
                return url, exc
            exc.close()
            url = urllib.parse.urljoin(url, location)
            method = "GET" if exc.code == 303 else method
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise Fail("network", f"cannot reach {redact(url)} ({getattr(exc, 'reason', None) or exc})") from None
    raise Fail("http", f"more than {MAX_REDIRECTS} redirects from {redact(url)}")


def http_fail(response: Any, url: str) -> Fail:
    code = response.getcode() or 0
    kind = {401: "unauthorized", 403: "forbidden", 404: "not-found"}.get(code, "http")
    return Fail(kind, f"{host_of(url)} answered HTTP {code} for {redact(url)}", status=code)


def file_name_from(response: Any, url: str) -> str:
    for part in (response.headers.get("Content-Disposition") or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "filename*" and "''" in value:
            return urllib.parse.unquote(value.split("''", 1)[1])
        if key.lower() == "filename" and value:
            return value.strip('"')
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def resolve(src: dict[str, Any], token: dict[str, str] | None) -> dict[str, Any]:
    """Name, size, sha256 and download URL of a Civitai model version, a Hugging Face file or a URL."""
    if src["type"] == "civitai":
        base, version = src["base"].rstrip("/"), src["version_id"]
        url = f"{base}/api/v1/model-versions/{version}"
        _, response = open_url(url, token)
        if response.getcode() != 200:
            raise http_fail(response, url)
        try:
            meta = json.loads(response.read(8 << 20))
            files = meta.get("files") or []
            chosen = ([f for f in files if f.get("primary")] + [f for f in files if f.get("type") == "Model"]
                      + files)[0]
        except (ValueError, IndexError, AttributeError, TypeError):
            raise Fail("bad-metadata", f"Civitai lists no file for model version {version}") from None
        size_kb = chosen.get("sizeKB")
        return {"name": chosen.get("name"), "size_hint": int(size_kb * 1024) if size_kb else None,
                "sha256": ((chosen.get("hashes") or {}).get("SHA256") or "").lower() or None,
                "url": chosen.get("downloadUrl") or f"{base}/api/download/models/{version}",
                "model_type": (meta.get("model") or {}).get("type")}
    if src["type"] == "hf":
        rev, path = urllib.parse.quote(src["rev"], ""), urllib.parse.quote(src["path"])
        url = f"{src['endpoint'].rstrip('/')}/{src['repo']}/resolve/{rev}/{path}"
        _, response = open_url(url, token, method="HEAD", follow=False)
        if response.getcode() not in (200, *REDIRECTS):
            raise http_fail(response, url)
        etag = (response.headers.get("X-Linked-Etag") or response.headers.get("ETag") or "").strip()
        etag = (etag[2:] if etag.startswith("W/") else etag).strip('"').lower().replace("sha256:", "")
        size = response.headers.get("X-Linked-Size") or response.headers.get("Content-Length")
        is_sha = len(etag) == 64 and all(c in "0123456789abcdef" for c in etag)
        return {"name": src["path"].rsplit("/", 1)[-1], "size": int(size) if size and size.isdigit() else None,
                "sha256": etag if is_sha else None, "url": url, "model_type": None}
    url = src["url"]
    final_url, response = open_url(url, token, headers={"Range": "bytes=0-0"})  # a HEAD may be refused
    if response.getcode() not in (200, 206):
        raise http_fail(response, final_url)
    total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
    name = file_name_from(response, url)
    response.close()
    return {"name": name, "size": int(total) if total.isdigit() else None, "sha256": None, "url": url,
            "model_type": None}


def fetch(item: dict[str, Any], index: Index) -> dict[str, Any]:
    """Download item["url"] to item["path"] through a partial file that a later run resumes."""
    final, url, size = item["path"], item["url"], item.get("size")
    partial = partial_path(final)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    note = {"identity": item["identity"]}
    start = os.path.getsize(partial) if os.path.isfile(partial) and read_json(partial + ".json") == note else 0
    if size is not None and start == size:  # all there from an earlier run: only the check is left
        return finish(item, index, partial, sha256_of(partial), start, start)
    final_url, response = open_url(url, item.get("token"), headers={"Range": f"bytes={start}-"} if start else None)
    code = response.getcode()
    if start and code == 200:
        start = 0  # the server ignored the range: the whole file comes again
    elif start and not (code == 206 and (response.headers.get("Content-Range") or "").startswith(f"bytes {start}-")):
        response.close()  # the server cannot continue this partial file: start over
        start = 0
        final_url, response = open_url(url, item.get("token"))
        code = response.getcode()
    if code not in (200, 206):
        raise http_fail(response, final_url)
    ctype = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype.startswith(NOT_A_MODEL_TYPES):
        raise Fail("not-a-model", f"{host_of(final_url)} sent a {ctype} page, not a model file ({redact(final_url)})")
    length = response.headers.get("Content-Length")
    total = start + int(length) if length and length.isdigit() else None
    if size is not None and total is not None and total != size:
        raise Fail("size-mismatch", f"{redact(final_url)} offers {total} bytes, expected {size}")
    need, free = (total or size or 0) - start, free_bytes(os.path.dirname(final))
    if need > free:
        raise Fail("disk-full", f"{os.path.basename(final)} needs {need} bytes, the disk has {free} free",
                   need=need, free=free)
    digest = sha256_of(partial, upto=start) if start else hashlib.sha256()
    write_json(partial + ".json", note)  # what a later run needs to resume this partial file
    done = _download(response, partial, start, digest, final, total or size, host_of(final_url))
    if total is not None and done != total:
        raise Fail("network", f"the download from {host_of(final_url)} ended after {done} of {total} bytes; "
                              "run again to resume")
    return finish(item, index, partial, digest, done, start)


def _download(response: Any, partial: str, start: int, digest: Any, final: str, total: int | None,
              host: str) -> int:
    """Stream the body into the partial file: one thread reads the network while this one hashes and
    writes, so neither waits for the other. Returns the partial file's size."""
    pool: queue.Queue[Any] = queue.Queue()
    for _ in range(8):
        pool.put(bytearray(CHUNK))
    filled: queue.Queue[Any] = queue.Queue()

    def reader() -> None:
        try:
            while True:
                buf = pool.get()
                if buf is None:
                    return
                n = response.readinto(buf)
                filled.put((buf, n))
                if not n:
                    return
        except (OSError, http.client.HTTPException, ValueError) as exc:
            filled.put(exc)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    done, last = start, 0.0
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, start)
        os.lseek(fd, start, os.SEEK_SET)
        while True:
            got = filled.get()
            if isinstance(got, Exception):
                raise Fail("network", f"the download from {host} broke off after {done} bytes "
                                      f"({got or type(got).__name__}); run again to resume")
            buf, n = got
            if not n:
                break
            view = memoryview(buf)[:n]
            if done == start and bytes(view[:64]).lstrip().lower().startswith(ERROR_PAGE_STARTS):
                if not start:
                    remove_quietly(partial, partial + ".json")
                raise Fail("not-a-model", f"{host} sent an error page, not a model file")
            digest.update(view)
            try:
                write_all(fd, view)
            except OSError as exc:
                remove_quietly(partial, partial + ".json")
                raise os_failure(exc) from None
            pool.put(buf)
            done += n
            if time.monotonic() - last > 0.25:
                last = time.monotonic()
                emit({"event": "progress", "path": final, "done": done, "total": total})
    finally:
        pool.put(None)  # stops the reader if it waits for a buffer
        os.close(fd)
        response.close()
    return done


def finish(item: dict[str, Any], index: Index, partial: str, digest: Any, done: int, start: int) -> dict[str, Any]:
    final, expected, name = item["path"], item.get("sha256"), os.path.basename(item["path"])
    got = digest.hexdigest()
    if expected and got != expected:
        remove_quietly(partial, partial + ".json")
        raise Fail("hash-mismatch", f"{name}: the download's sha256 is {got}, expected {expected}", got=got)
    short = item.get("short_hash")
    if short and not got.startswith(short):
        remove_quietly(partial, partial + ".json")
        raise Fail("hash-mismatch", f"{name}: the download's short hash is {got[:10]}, expected {short}", got=got)
    if item.get("size") is not None and done != item["size"]:
        remove_quietly(partial, partial + ".json")
        raise Fail("size-mismatch", f"{name} has {done} bytes, expected {item['size']}")
    os.replace(partial, final)
    remove_quietly(partial + ".json")
    index.record(final, os.stat(final), got)
    return {"path": final, "sha256": got, "size": done, "resumed_from": start}
