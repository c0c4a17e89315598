"""cloudsd.ssh.BufferedReads on a real paramiko Packetizer over a socket pair (no sshd needed)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from paramiko.packet import NeedRekeyException, Packetizer

from cloudsd.ssh import BufferedReads


@pytest.fixture
def pair() -> Iterator[tuple[Packetizer, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.settimeout(0.1)  # as paramiko's transport sets it
    packetizer = Packetizer(ours)
    assert BufferedReads.install(packetizer)
    yield packetizer, theirs
    ours.close()
    theirs.close()


def test_reads_are_exact_across_chunks_and_pauses(pair: tuple[Packetizer, socket.socket]) -> None:
    packetizer, theirs = pair
    data = os.urandom(3 * BufferedReads.CHUNK_BYTES + 12345)

    def send() -> None:
        for at in range(0, len(data), 100_000):
            theirs.sendall(data[at:at + 100_000])
            if at == 300_000:
                time.sleep(0.35)  # several of the socket's 0.1 s timeouts: keepalive checks, no data lost

    sender = threading.Thread(target=send)
    sender.start()
    got = [packetizer.read_all(16)]
    sizes = [16, 32768, 7, 300_000, 1]
    while sum(map(len, got)) < len(data):
        want = min(sizes[len(got) % len(sizes)], len(data) - sum(map(len, got)))
        piece = packetizer.read_all(want)
        assert len(piece) == want and isinstance(piece, bytes)
        got.append(piece)
    sender.join()
    assert b"".join(got) == data


def test_peer_closing_mid_packet_is_eof(pair: tuple[Packetizer, socket.socket]) -> None:
    packetizer, theirs = pair
    theirs.sendall(b"x" * 10)
    theirs.close()
    with pytest.raises(EOFError):
        packetizer.read_all(16)


def test_closed_packetizer_stops_waiting(pair: tuple[Packetizer, socket.socket]) -> None:
    packetizer, _ = pair
    threading.Timer(0.2, packetizer.close).start()
    with pytest.raises(EOFError):
        packetizer.read_all(16)


def test_rekey_is_raised_only_at_a_packet_boundary(pair: tuple[Packetizer, socket.socket]) -> None:
    packetizer, theirs = pair
    packetizer._Packetizer__need_rekey = True  # type: ignore[attr-defined]
    with pytest.raises(NeedRekeyException):
        packetizer.read_all(16, check_rekey=True)
    theirs.sendall(b"y" * 8)  # half a block arrived: the rest is awaited, not a rekey
    threading.Timer(0.3, lambda: theirs.sendall(b"z" * 8)).start()
    assert packetizer.read_all(16, check_rekey=True) == b"y" * 8 + b"z" * 8


def test_not_installed_over_a_banners_leftover() -> None:
    ours, theirs = socket.socketpair()
    try:
        packetizer = Packetizer(ours)
        packetizer._Packetizer__remainder = b"left over"  # type: ignore[attr-defined]
        assert not BufferedReads.install(packetizer)
        assert packetizer.read_all(4) == b"left"
    finally:
        ours.close()
        theirs.close()
