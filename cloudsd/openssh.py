"""The system OpenSSH client (`ssh`) as a second way to a machine: one background master connection per
machine that outlives each command, and agent streams as `ssh` processes multiplexed over it.

Why: OpenSSH's client receives at about 1 CPU-s/GB where paramiko takes 2 and hands the GIL over once per
32 KiB packet (benchmarks/README.md), and a master kept up (ControlPersist) lets every command skip TCP, key
exchange and auth (6-8 round trips): `up` and `start` bring it up and it lives as long as the machine. Each
stream is an `ssh -S SOCKET` process whose stdin and stdout the master takes over (the client passes its
descriptors), so the bytes go from the master's socket to our pipe with no copy in between.

Trust is the same as paramiko's path: a known_hosts file holding only the pinned key (under an alias, so an
address reused by another machine cannot match), StrictHostKeyChecking=yes, the machine's own key and no
other (no agent, no user config: -F /dev/null), BatchMode, no agent or X11 forwarding. The control socket
lives in a private folder (0700) under CLOUDSD_HOME, named by a digest of the endpoint, user and pinned key.

CLOUDSD_SSH_CLIENT=paramiko turns this path off (paramiko carries everything, as when no `ssh` is found).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import socket
import stat
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cloudsd import paths
from cloudsd.errors import HostKeyMismatch, SSHError
from cloudsd.machine import SSHEndpoint

CLIENT_ENV = "CLOUDSD_SSH_CLIENT"
PERSIST_ENV = "CLOUDSD_SSH_PERSIST_S"
# A master lives as long as its machine: `up` and `start` bring it up, `down` and `stop` end it, and it ends by
# itself when the machine stops answering (ServerAlive: 3 x 15 s). CLOUDSD_SSH_PERSIST_S=N ends it N seconds
# after its last session instead.
PERSIST = "yes"
# OpenSSH gives each session channel a fixed 2 MiB window, whatever we ask: one stream carries 2 MiB per RTT.
WINDOW_BYTES = 2 * 1024 * 1024
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr"
# sockaddr_un holds 104 bytes on macOS (108 on Linux), and ssh first binds `PATH.` + 16 random characters.
SOCKET_PATH_MAX = 104 - 18
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = 1031  # Linux
# Lines of ssh's DEBUG1 log around one round trip each, logged as the request goes and as its answer comes:
# the key exchange's reply (plus the server's key agreement, ~1 ms), the service request (the keys are listed
# just before it goes; nothing to do for the server), the `none` probe, and the signed key offer (plus an
# authorized_keys lookup and a signature check) or, for a key whose public half ssh could read, the query: the
# master's round trip, which the stream count needs, is their median when they agree (`handshake_rtt`).
ROUND_TRIPS = (("expecting SSH2_MSG_KEX_ECDH_REPLY", "SSH2_MSG_KEX_ECDH_REPLY received"),
               ("Will attempt key", "SSH2_MSG_SERVICE_ACCEPT received"),
               ("SSH2_MSG_SERVICE_ACCEPT received", "Authentications that can continue"),  # the `none` probe
               ("Trying private key", "Authenticated to"),  # a signed offer (a key with no public half beside it)
               ("Offering public key", "Server accepts key"))  # a query first (an ed25519 key)
# what splice(2) answers when this pair of descriptors cannot take it (the caller reads and writes instead)
SENDFILE_BYTES = 4 << 20  # per call: a blocked call still returns what it moved, as soon as the pipe has room
NO_SPLICE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})


def host_key_mismatch(endpoint: SSHEndpoint) -> HostKeyMismatch:
    """The one error for a host key other than the pinned one, whichever SSH client saw it."""
    return HostKeyMismatch(
        f"the machine at {endpoint} presented a different SSH host key than the one pinned when it "
        "was first reached; refusing to connect (someone may be intercepting the connection, or the "
        "provider reused the address).",
        hint="If the machine was rebuilt on purpose, end it with `cloudsd down NAME` and start a new one.",
    )


def find_ssh() -> str | None:
    """The `ssh` binary to use, or None: not installed, or CLOUDSD_SSH_CLIENT=paramiko."""
    if os.environ.get(CLIENT_ENV, "").strip().lower() == "paramiko":
        return None
    return shutil.which("ssh")


@dataclass(frozen=True)
class Target:
    """A machine as the system client reaches it: where, with which key, trusting only the pinned host key."""

    endpoint: SSHEndpoint
    key_path: Path
    host_key: str  # "ssh-ed25519 AAAA…", pinned

    @property
    def digest(self) -> str:
        text = f"{self.endpoint.user}@{self.endpoint.host}:{self.endpoint.port} {self.host_key} {self.key_path}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _private_dir(path: Path) -> bool:
    """`path` is a folder of ours that nobody else may enter (made so if missing)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return False
        if info.st_mode & 0o077:
            os.chmod(path, 0o700)
        return True
    except OSError:
        return False


def control_dir() -> Path | None:
    """Where the control sockets live: CLOUDSD_HOME/ssh, or, when that path is too long for a socket, a
    private folder in the temp dir named after CLOUDSD_HOME; None when neither can be made private."""
    home = paths.home()
    candidates = [home / "ssh"]
    digest = hashlib.sha256(str(home.absolute()).encode()).hexdigest()[:12]
    candidates.append(Path(tempfile.gettempdir()) / f"cloudsd-{os.getuid()}-{digest}")
    for folder in candidates:
        if len(str(folder)) + 18 <= SOCKET_PATH_MAX and _private_dir(folder):
            return folder
    return None


def _alive(path: Path) -> bool:
    """Something listens on the socket at `path` (a master); a stale file left by a killed one is removed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return False
    if stat.S_ISSOCK(info.st_mode):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(2.0)
            probe.connect(str(path))
            return True
        except OSError:
            pass
        finally:
            probe.close()
    with contextlib.suppress(OSError):
        path.unlink()
    return False


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """All of `data` into file `fd` at `offset` (its position stays)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class ProcessStream:
    """An agent stream carried by an `ssh` process: its stdin and stdout, and its exit status (the remote
    command's, or 255 when ssh itself failed). Same interface as `ssh.ChannelStream`."""

    lingers = True  # the process runs on, through the master, after this program lets go of it

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        self.process = process
        self._in: int | None = process.stdin.fileno()
        self._out = process.stdout.fileno()
        for fd in (self._in, self._out):
            with contextlib.suppress(OSError, ImportError):
                import fcntl  # Linux and macOS; on macOS the call fails and the default pipe works

                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)  # one wake-up per MiB, not per 64 KiB
        self._lock = threading.Lock()
        self._reading = 0
        self._splice = hasattr(os, "splice")
        self._sendfile = hasattr(os, "sendfile")
        self._out_closed = False
        self._err = bytearray()
        self._err_done = threading.Event()
        threading.Thread(target=self._drain_stderr, name="cloudsd-ssh-stderr", daemon=True).start()

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        try:
            while chunk := os.read(self.process.stderr.fileno(), 65536):
                self._err += chunk[:max(0, 65536 - len(self._err))]
        except (OSError, ValueError):
            pass
        finally:
            self._err_done.set()

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        fd = self._in
        if fd is None:
            raise BrokenPipeError(errno.EPIPE, "the stream's input is closed")
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view):]

    def send_from_file(self, fd: int, offset: int, size: int) -> None:
        """Send `size` bytes of file `fd` from `offset` (its position stays). On Linux the kernel hands the
        file's cached pages to the pipe (sendfile): nothing is read into Python. EOFError if the file ends
        first."""
        out = self._in
        if out is None:
            raise BrokenPipeError(errno.EPIPE, "the stream's input is closed")
        while size:
            if self._sendfile:
                try:
                    sent = os.sendfile(out, fd, offset, min(size, SENDFILE_BYTES))
                except OSError as exc:
                    if exc.errno not in NO_SPLICE and exc.errno != errno.ENOTSOCK:
                        raise
                    self._sendfile = False  # macOS sends files to sockets only
                    continue
            else:
                data = os.pread(fd, min(size, PIPE_BYTES), offset)
                self.sendall(data)
                sent = len(data)
            if not sent:
                raise EOFError("the file ended before the bytes asked for")
            offset, size = offset + sent, size - sent

    def recv(self, size: int) -> bytes:
        with self._lock:
            if self._out_closed:
                return b""
            self._reading += 1
        try:
            # never more than the pipe holds: a larger read allocates (and maps) a buffer that size each time,
            # which tripled the cost of reading (0.8 against 0.26 CPU-s/GB)
            return os.read(self._out, min(size, PIPE_BYTES))
        finally:
            with self._lock:
                self._reading -= 1

    def recv_into_file(self, fd: int, offset: int, size: int) -> int:
        """Move `size` bytes of the stream (at most a pipe's worth) into file `fd` at `offset` (its position
        stays); fewer only where the stream ends, 0 at its end.

        On Linux the kernel moves them from the pipe into the file (splice): no copy through Python, no buffer
        to allocate, and this loop is all the Python there is per piece (~116 KiB each on loopback, as ssh
        writes them). Where a file refuses splice (another OS, a file system without it), read and write."""
        with self._lock:
            if self._out_closed:
                return 0
            self._reading += 1
        try:
            size, moved = min(size, PIPE_BYTES), 0
            while moved < size and self._splice:
                try:
                    n = os.splice(self._out, fd, size - moved, offset_dst=offset + moved)
                except OSError as exc:
                    if exc.errno not in NO_SPLICE:
                        raise
                    self._splice = False
                    break
                if not n:
                    return moved
                moved += n
            while moved < size:
                data = os.read(self._out, size - moved)
                if not data:
                    break
                pwrite_all(fd, data, offset + moved)
                moved += len(data)
            return moved
        finally:
            with self._lock:
                self._reading -= 1

    def shutdown_write(self) -> None:
        if self._in is not None and self.process.stdin is not None:
            self._in = None
            self.process.stdin.close()

    def exit_status(self, timeout_s: float) -> int:
        """The exit status, waiting up to `timeout_s` for it; -1 if the process still runs."""
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return -1

    def stderr_text(self) -> str:
        self._err_done.wait(2)
        return bytes(self._err).decode(errors="replace")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.shutdown_write()
        if self.process.poll() is None:
            self.process.terminate()  # the master closes the session channel when its client goes
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with self._lock:  # a reader still in os.read sees EOF now; it must not read a reused descriptor
            if not self._reading and not self._out_closed:
                self._out_closed = True
                assert self.process.stdout is not None
                self.process.stdout.close()


class Master:
    """The system client's master connection to one machine, shared by every command for a while.

    A `Link` for the agent (`open_stream`, `run`, `active`), as `ssh.Connection` is.
    """

    receive_window_bytes = WINDOW_BYTES
    send_window_bytes = WINDOW_BYTES

    def __init__(self, ssh: str, target: Target, folder: Path) -> None:
        self.ssh = ssh
        self.target = target
        self.endpoint = target.endpoint
        self.socket_path = folder / target.digest
        self.known_hosts = folder / f"{target.digest}.hosts"
        self.alias = f"cloudsd-{target.digest}"
        self.rtt_path = folder / f"{target.digest}.rtt"
        self.reused = False  # the master was already running when this command began
        self.log: list[tuple[float, str]] = []  # what ssh logged as this command started the master

    @classmethod
    def for_target(cls, target: Target) -> Master | None:
        """A master handle, or None when the system client cannot be used (none, switched off, no private
        folder for its socket)."""
        ssh = find_ssh() if os.name == "posix" else None  # control sockets are Unix sockets
        folder = control_dir() if ssh else None
        if ssh is None or folder is None:
            return None
        return cls(ssh, target, folder)

    def options(self, log_level: str = "ERROR") -> list[str]:
        t = self.target
        return ["-F", "/dev/null", "-i", str(t.key_path), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", f"HostKeyAlias={self.alias}", "-o", "CheckHostIP=no", "-o", "UpdateHostKeys=no",
                "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ClearAllForwardings=yes",
                "-o", "PermitLocalCommand=no", "-o", f"LogLevel={log_level}", "-o", f"Ciphers={CIPHERS}",
                "-o", f"ControlPath={self.socket_path}", "-p", str(t.endpoint.port), "-l", t.endpoint.user]

    @property
    def active(self) -> bool:
        return _alive(self.socket_path)

    @property
    def rtt_s(self) -> float | None:
        """The master's round trip, as timed while it connected (None if that could not be read): a sync
        needs no ping of its own to choose its stream count."""
        try:
            rtt = float(self.rtt_path.read_text())
        except (OSError, ValueError):
            return None
        return rtt if 0 <= rtt < 60 else None

    def ensure(self, *, timeout_s: float = 30.0) -> None:
        """A running master: the one left by an earlier command, or a new one (connect and auth now). Two
        commands (or `up` warming it while it pushes) that find none start one between them, not two.

        HostKeyMismatch when the machine shows another key; SSHError for anything else that failed.
        """
        if _alive(self.socket_path):
            self.reused = True
            return
        with _locked(self.socket_path.with_name(f"{self.target.digest}.lock"), timeout_s):
            if _alive(self.socket_path):  # another command started it while this one waited
                self.reused = True
                return
            self._start(timeout_s)

    def _start(self, timeout_s: float) -> None:
        self.reused = False
        self.known_hosts.write_text(f"{self.alias} {self.target.host_key}\n")
        with contextlib.suppress(OSError):
            self.rtt_path.unlink()
        persist = os.environ.get(PERSIST_ENV, "")
        # DEBUG1 (as -o, not -v: with -v the master would keep our stderr after it forks) to time round trips
        argv = [self.ssh, *self.options("DEBUG1"), "-o", "ControlMaster=yes",
                "-o", f"ControlPersist={int(persist) if persist.isdigit() else PERSIST}",
                "-o", f"ConnectTimeout={max(1, int(timeout_s / 2))}", "-o", "ServerAliveInterval=15",
                "-o", "ServerAliveCountMax=3", "-N", "-f", "-T", self.endpoint.host]
        try:
            # -f: the foreground process returns once the master is authenticated and listening
            returncode, self.log = _run_timed(argv, timeout_s)
        except subprocess.TimeoutExpired:
            raise SSHError(f"the system ssh did not reach {self.endpoint} within {timeout_s:.0f} s.") from None
        except OSError as exc:
            raise SSHError(f"cannot run {self.ssh} ({exc.strerror}).") from None
        err = "\n".join(line for _, line in self.log if not line.startswith("debug"))
        if "IDENTIFICATION HAS CHANGED" in err or "Host key verification failed" in err:
            raise host_key_mismatch(self.endpoint)
        if returncode != 0 or not _alive(self.socket_path):
            raise SSHError(f"the system ssh could not connect to {self.endpoint} "
                           f"({err.strip().splitlines()[-1] if err.strip() else f'exit {returncode}'}).")
        rtt = handshake_rtt(self.log)
        if rtt is not None:
            with contextlib.suppress(OSError):
                self.rtt_path.write_text(f"{rtt:.6f}")

    def _argv(self, command: str) -> list[str]:
        # ControlMaster=no: if the master went away meanwhile, this connects on its own (same trust options)
        return [self.ssh, *self.options(), "-o", "ControlMaster=no", "-T", self.endpoint.host, command]

    def open_stream(self, command: str, *, window: int = WINDOW_BYTES) -> ProcessStream:
        """`command` running on the machine over the master, its stdin/stdout ours (caller closes)."""
        del window  # the client's window is fixed at 2 MiB per channel
        try:
            process = subprocess.Popen(self._argv(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, bufsize=0)
        except OSError as exc:
            raise SSHError(f"cannot run {self.ssh} ({exc.strerror}).") from None
        return ProcessStream(process)

    def run(self, command: str, *, timeout_s: float = 60.0, stdin: bytes | None = None) -> tuple[int, str, str]:
        """Run `command`; return (exit status, stdout, stderr)."""
        try:
            result = subprocess.run(self._argv(command), input=stdin or b"", capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise SSHError(f"a command on {self.endpoint} did not finish within {timeout_s:.0f} s.") from None
        return result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")

    def exit(self) -> None:
        """End the master (`ssh -O exit`), quietly if there is none."""
        if not _alive(self.socket_path):
            return
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([self.ssh, *self.options(), "-O", "exit", self.endpoint.host],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        with contextlib.suppress(OSError):
            self.socket_path.unlink()
        for path in (self.rtt_path, self.socket_path.with_name(f"{self.target.digest}.lock")):
            with contextlib.suppress(OSError):
                path.unlink()

    def close(self) -> None:
        """What a command does when it is done with the link: nothing; the master persists for the next one."""


@contextlib.contextmanager
def _locked(path: Path, timeout_s: float) -> Iterator[None]:
    """An exclusive lock on `path` (made if missing), waited for up to `timeout_s`; without one (a folder
    that refuses it) the caller goes on unlocked, as before locks."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except (ImportError, OSError):
        yield
        return
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SSHError("another cloudsd command is still connecting to this machine.",
                                   hint="Try again in a moment.") from None
                time.sleep(0.05)
            except OSError:
                break
        yield
    finally:
        os.close(fd)


def _run_timed(argv: list[str], timeout_s: float) -> tuple[int, list[tuple[float, str]]]:
    """Run `argv`; its exit status and each line of its stderr with the time it was read. Lines read together
    (this thread was late and they had piled up) share one time: `handshake_rtt` takes no round trip from them."""
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert process.stderr is not None
        pending = b""
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(process.stderr.fileno(), 65536):
                at = time.perf_counter()
                *whole, pending = (pending + chunk).split(b"\n")
                lines.extend((at, raw.decode(errors="replace").rstrip("\r")) for raw in whole)
        if pending:
            lines.append((time.perf_counter(), pending.decode(errors="replace")))

    reader = threading.Thread(target=read, name="cloudsd-ssh-log", daemon=True)
    reader.start()
    # a blocking wait in a thread of its own: `wait(timeout)` polls, at up to 50 ms a look, which cost a start
    # of the master 30 ms on average
    exited = threading.Event()

    def wait() -> None:
        process.wait()
        exited.set()

    threading.Thread(target=wait, name="cloudsd-ssh-wait", daemon=True).start()
    try:
        if not exited.wait(timeout_s):
            process.kill()
            process.wait()
            raise subprocess.TimeoutExpired(argv, timeout_s)
    finally:
        reader.join(5)
        process.stderr.close()
    return process.returncode, list(lines)


def handshake_rtt(lines: list[tuple[float, str]]) -> float | None:
    """The round trip ssh's DEBUG1 log shows (`ROUND_TRIPS`, each line with the time it was read), or None when
    it cannot be trusted: fewer than two samples, or samples that disagree (a late reader can shorten one as much
    as lengthen it; the stream count would then follow a round trip the link does not have). A caller without
    one measures it another way."""
    samples = []
    for asked, answered in ROUND_TRIPS:
        sent = next((at for at, line in lines if asked in line), None)
        # read in a later chunk than the request (lines read together share a time, which says nothing)
        got = next((at for at, line in lines if answered in line and sent is not None and at > sent), None)
        if sent is not None and got is not None:
            samples.append(got - sent)
    if len(samples) < 2 or max(samples) - min(samples) > max(0.002, 0.5 * min(samples)):
        return None
    return statistics.median(samples)


def end_master(target: Target) -> None:
    """End the machine's master connection if one runs (`down`); never raises."""
    ssh = shutil.which("ssh") if os.name == "posix" else None
    folder = control_dir() if ssh is not None else None
    if ssh is not None and folder is not None:
        Master(ssh, target, folder).exit()
