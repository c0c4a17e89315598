"""A minimal WebSocket client (RFC 6455) for ComfyUI's `/ws?clientId=…`: text messages in, nothing but pong
and close out. Stdlib only; used from one reader thread."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Closed(Exception):
    """The server closed the WebSocket, or the connection broke."""


class WebSocket:
    def __init__(self, port: int, path: str, *, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16))
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise Closed("no handshake answer")
            head += chunk
        head, _, self._buffer = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()  # noqa: S324 - the protocol's
        if " 101 " not in lines[0] + " " or headers.get("sec-websocket-accept") != accept:
            self.sock.close()
            raise Closed(f"not a WebSocket: {lines[0]}")

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            try:
                chunk = self.sock.recv(65536)
            except OSError as exc:
                raise Closed(str(exc)) from None
            if not chunk:
                raise Closed("connection closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def recv(self) -> str:
        """The next text message (binary ones, ComfyUI's previews, are skipped); Closed at the end."""
        message = b""
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if second & 0x80 else b""
            payload = self._read(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 8:
                raise Closed("closed by the server")
            if opcode == 9:
                self._send(10, payload)
                continue
            if opcode in (1, 2, 0):
                message += payload
                if first & 0x80:
                    if opcode == 2 or (opcode == 0 and not message.startswith((b"{", b"["))):
                        message = b""
                        continue
                    return message.decode("utf-8", "replace")

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode, 0x80 | len(payload)])  # control frames: payload < 126
        try:
            self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        except OSError:
            pass

    def close(self) -> None:
        self._send(8, b"")
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
