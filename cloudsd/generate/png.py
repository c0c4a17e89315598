"""PNG text chunks (tEXt/iTXt): reading the parameters a UI embedded, adding them where it did not."""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG")
    out, pos = [], len(SIGNATURE)
    while pos + 8 <= len(data):
        length, tag = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((tag, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
        if tag == b"IEND":
            break
    return out


def text(data: bytes) -> dict[str, str]:
    """Every tEXt, zTXt and iTXt entry of a PNG."""
    found: dict[str, str] = {}
    for tag, body in chunks(data):
        if tag == b"tEXt":
            key, _, value = body.partition(b"\x00")
            found[key.decode("latin-1")] = value.decode("latin-1")
        elif tag == b"zTXt":
            key, _, rest = body.partition(b"\x00")
            found[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif tag == b"iTXt":
            key, _, rest = body.partition(b"\x00")
            compressed, _method, rest = rest[0], rest[1], rest[2:]
            _lang, _, rest = rest.partition(b"\x00")
            _translated, _, value = rest.partition(b"\x00")
            found[key.decode("latin-1")] = (zlib.decompress(value) if compressed else value).decode("utf-8")
    return found


def with_text(data: bytes, key: str, value: str) -> bytes:
    """The PNG with an iTXt `key` (UTF-8, as A1111 writes non-Latin-1 parameters) right after IHDR."""
    body = key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value.encode("utf-8")
    chunk = struct.pack(">I", len(body)) + b"iTXt" + body + struct.pack(">I", zlib.crc32(b"iTXt" + body))
    ihdr_end = len(SIGNATURE) + 12 + struct.unpack(">I", data[len(SIGNATURE):len(SIGNATURE) + 4])[0]
    return data[:ihdr_end] + chunk + data[ihdr_end:]
