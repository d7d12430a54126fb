"""The private channel between a run's driver and its background workers: framed messages of raw bytes
over a Unix socket, never SQL text and never pickle.

A message is a small JSON header plus any number of binary blobs (model weights, optimizer state), so
a model's state never has to fit in one PostgreSQL value. Frame: ``MAGIC``, header length, blob count
(``<4sII``), one ``<Q`` length per blob, the header, the small blobs' bytes. A blob of at least
``SHARED_BYTES`` travels as a memory file instead (:class:`SharedBlob`, a memfd): only its file
descriptor crosses the socket (SCM_RIGHTS, with the frame's first bytes; its length has ``SHARED_FLAG``
set), so a state of any size moves without being copied, and a receiver can pass it on as it is.

The socket lives in a directory only the server's OS user can enter (mode 0700), made for one start-up
of workers and removed once they are connected. Both ends also prove they know a per-start secret
(HMAC-SHA256 challenges both ways) before anything else is exchanged.

Sockets are non-blocking: every wait is a ``select`` of at most ``POLL_SECONDS`` followed by the
caller's ``check`` (inside a backend: an SPI call, so a cancel or terminate is noticed mid-transfer).
"""

from __future__ import annotations

import array
import hashlib
import hmac
import json
import mmap
import os
import select
import socket
import struct
import time
import weakref
from typing import Callable

MAGIC = b"MDL1"
PREFIX = struct.Struct("<4sII")
LENGTH = struct.Struct("<Q")
MAX_HEADER_BYTES = 1 << 24
MAX_BLOBS = 64
POLL_SECONDS = 0.1
CHUNK_BYTES = 1 << 22
SOCKET_BUFFER_BYTES = 1 << 22
NONCE_BYTES = 32
SHARED_BYTES = 1 << 20
SHARED_FLAG = 1 << 63
MAX_FDS = MAX_BLOBS
_FD_BYTES = array.array("i").itemsize


class ChannelClosed(Exception):
    """The other end closed the connection (its process ended, or it gave up on us)."""


class ChannelError(Exception):
    """The other end sent something that is not a message of this protocol, or failed authentication."""


Message = tuple[dict, list]  # header, blobs (bytearray or SharedBlob each)


class SharedBlob(mmap.mmap):
    """Bytes in a memory file (memfd), mapped shared and writable: sent as its file descriptor, so that
    the receiver maps the same memory. The descriptor is closed when the object goes away."""

    fd: int

    @classmethod
    def create(cls, size: int) -> "SharedBlob":
        fd = os.memfd_create("madlib_dl", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            return cls._adopt(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def copy_of(cls, data) -> "SharedBlob":
        view = memoryview(data).cast("B")
        blob = cls.create(view.nbytes)
        blob[:] = view
        return blob

    @classmethod
    def _adopt(cls, fd: int, size: int, populate: bool = False) -> "SharedBlob":
        # populate: one call maps every page, where touching them one by one costs a page fault each,
        # more than copying the page on these machines (bench/FINDINGS.md); for a receiver that reads
        # them all (a worker), not for one that only passes them on (the driver).
        flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        blob = cls(fd, size, flags=flags)
        blob.fd = fd
        weakref.finalize(blob, os.close, fd)
        return blob


def allocate(size: int):
    """A writable buffer for ``size`` bytes that is about to be sent: shared memory when large."""
    return SharedBlob.create(size) if size >= SHARED_BYTES else bytearray(size)


def _frame(header: dict, blobs) -> tuple[list[memoryview], list[int], list]:
    """(views to send in order, descriptors to pass with the first bytes, objects to keep alive)."""
    text = json.dumps(header, separators=(",", ":")).encode()
    lengths, inline, fds, keep = [], [], [], []
    for blob in blobs:
        view = memoryview(blob).cast("B")
        if view.nbytes >= SHARED_BYTES:
            shared = blob if isinstance(blob, SharedBlob) else SharedBlob.copy_of(view)
            keep.append(shared)
            fds.append(shared.fd)
            lengths.append(view.nbytes | SHARED_FLAG)
        else:
            inline.append(view)
            lengths.append(view.nbytes)
    head = PREFIX.pack(MAGIC, len(text), len(lengths)) + b"".join(LENGTH.pack(n) for n in lengths) + text
    return [memoryview(head)] + inline, fds, keep


class _Reader:
    """Reassembles one message from whatever the socket delivers."""

    def __init__(self, populate: bool = False):
        self._populate = populate
        self._stage = "prefix"
        self._buffer = bytearray(PREFIX.size)
        self._filled = 0
        self._lengths: list[int] = []
        self._header: dict | None = None
        self._blobs: list = []
        self._fds: list[int] = []  # descriptors received and not yet mapped

    def feed(self, sock: socket.socket) -> Message | None:
        """Read what is available; the whole message once complete. Raises ChannelClosed on EOF."""
        try:
            return self._feed(sock)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def _feed(self, sock: socket.socket) -> Message | None:
        while True:
            if self._filled < len(self._buffer):
                try:
                    count, ancillary, _, _ = sock.recvmsg_into(
                        [memoryview(self._buffer)[self._filled:self._filled + CHUNK_BYTES]],
                        socket.CMSG_SPACE(MAX_FDS * _FD_BYTES))
                except (BlockingIOError, InterruptedError):
                    return None
                except ConnectionResetError:
                    raise ChannelClosed("connection reset") from None
                self._take_fds(ancillary)
                if count == 0:
                    raise ChannelClosed("end of stream")
                self._filled += count
                if self._filled < len(self._buffer):
                    continue
            done = self._advance()
            if done is not None:
                return done

    def _take_fds(self, ancillary) -> None:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[:len(data) - len(data) % _FD_BYTES])
                self._fds.extend(fds)

    def _expect(self, stage: str, size: int) -> None:
        self._stage, self._buffer, self._filled = stage, bytearray(size), 0

    def _advance(self) -> Message | None:
        if self._stage == "prefix":
            magic, header_bytes, blobs = PREFIX.unpack(self._buffer)
            if magic != MAGIC or header_bytes > MAX_HEADER_BYTES or blobs > MAX_BLOBS:
                raise ChannelError("not a madlib_dl channel message")
            self._header_bytes, self._count = header_bytes, blobs
            self._expect("lengths", LENGTH.size * blobs)
        elif self._stage == "lengths":
            self._lengths = [LENGTH.unpack_from(self._buffer, i * LENGTH.size)[0] for i in range(self._count)]
            self._expect("header", self._header_bytes)
        elif self._stage == "header":
            try:
                self._header = json.loads(bytes(self._buffer))
            except ValueError:
                raise ChannelError("a message header is not JSON") from None
            self._next_blob()
        else:
            self._blobs.append(self._buffer)
            self._next_blob()
        if self._stage == "done":
            return self._header, self._blobs
        return None

    def _next_blob(self) -> None:
        while len(self._blobs) < len(self._lengths) and self._lengths[len(self._blobs)] & SHARED_FLAG:
            self._blobs.append(self._shared(self._lengths[len(self._blobs)] & ~SHARED_FLAG))
        index = len(self._blobs)
        if index < len(self._lengths):
            self._expect(f"blob {index}", self._lengths[index])
        else:
            if self._fds:
                raise ChannelError("a message brought more file descriptors than blobs")
            self._stage, self._buffer, self._filled = "done", bytearray(), 0

    def _shared(self, size: int) -> SharedBlob:
        if not self._fds:
            raise ChannelError("a shared blob came without its file descriptor")
        fd = self._fds.pop(0)
        try:
            if size == 0 or os.fstat(fd).st_size < size:  # mapping past the file's end would crash on access
                raise ChannelError("a shared blob is smaller than its message says")
            return SharedBlob._adopt(fd, size, self._populate)
        except BaseException:
            os.close(fd)
            raise


class Connection:
    """``populate_received``: map the memory files that arrive with every page at once (a receiver that
    reads the blobs it gets)."""

    def __init__(self, sock: socket.socket, populate_received: bool = False):
        sock.setblocking(False)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
            except OSError:
                pass
        self._sock = sock
        self._populate = populate_received
        self._reader = _Reader(populate_received)

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, header: dict, blobs=(), check: Callable[[], None] | None = None) -> None:
        """Send one message, waiting for the peer to take it (``check`` while waiting, and at least every
        ``POLL_SECONDS`` of a long transfer)."""
        checked = time.monotonic()
        views, fds, _keep = _frame(header, blobs)
        for view in views:
            offset = 0
            while offset < view.nbytes:
                try:
                    if fds:  # the descriptors go with the frame's first bytes
                        offset += self._sock.sendmsg([view[offset:offset + CHUNK_BYTES]],
                                                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                        fds = []
                    else:
                        offset += self._sock.send(view[offset:offset + CHUNK_BYTES])
                except (BlockingIOError, InterruptedError):
                    select.select([], [self._sock], [], POLL_SECONDS)
                except (BrokenPipeError, ConnectionResetError):
                    raise ChannelClosed("the other end closed the connection") from None
                if check is not None and time.monotonic() - checked >= POLL_SECONDS:
                    check()
                    checked = time.monotonic()

    def poll(self) -> Message | None:
        """The next message if it has fully arrived, without waiting."""
        message = self._reader.feed(self._sock)
        if message is not None:
            self._reader = _Reader(self._populate)
        return message

    def receive(self, timeout: float | None = None, check: Callable[[], None] | None = None) -> Message | None:
        """The next message; None when ``timeout`` seconds pass first (None: wait as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self.poll()
            if message is not None:
                return message
            wait = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
            if wait <= 0:
                return None
            select.select([self._sock], [], [], wait)
            if check is not None:
                check()

    def closed_by_peer(self) -> bool:
        """Whether the other end has gone (checked without waiting or consuming a message's bytes)."""
        try:
            data = self._sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return data == b""

    def close(self) -> None:
        self._reader.discard()
        self._sock.close()


class Listener:
    """A listening Unix socket at ``path`` (its directory must be private to the server's OS user)."""

    def __init__(self, path: str):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(path)
            self._sock.listen(64)
        except BaseException:
            self._sock.close()
            raise
        self._sock.setblocking(False)

    def accept(self, timeout: float) -> Connection | None:
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            return None
        try:
            sock, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        return Connection(sock)

    def close(self) -> None:
        self._sock.close()


def connect(path: str, populate_received: bool = False) -> Connection:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return Connection(sock, populate_received)


# ---------------------------------------------------------------------------------------------------
# Mutual authentication: each side answers the other's random challenge with HMAC(secret, role + nonce)

def _answer(secret: bytes, role: str, nonce_hex) -> str:
    try:
        nonce = bytes.fromhex(nonce_hex)
    except (TypeError, ValueError):
        raise ChannelError("a malformed authentication challenge") from None
    return hmac.new(secret, role.encode() + nonce, hashlib.sha256).hexdigest()


def _nonce() -> str:
    return os.urandom(NONCE_BYTES).hex()


def _expect_answer(secret: bytes, role: str, nonce: str, header: dict | None) -> None:
    answer = (header or {}).get("answer")
    if not isinstance(answer, str) or not hmac.compare_digest(answer, _answer(secret, role, nonce)):
        raise ChannelError(f"the {role} failed to authenticate")


def authenticate_worker(conn: Connection, secret: bytes, timeout: float, check=None) -> dict:
    """Driver side: challenge a newly connected worker; returns what it said about itself."""
    nonce = _nonce()
    conn.send({"challenge": nonce}, check=check)
    header = _received(conn, timeout, check)
    _expect_answer(secret, "worker", nonce, header)
    conn.send({"answer": _answer(secret, "driver", header.get("challenge", ""))}, check=check)
    return header.get("worker") or {}


def authenticate_driver(conn: Connection, secret: bytes, about: dict, timeout: float, check=None) -> None:
    """Worker side: answer the driver's challenge (saying ``about`` itself), then check the driver's answer."""
    header = _received(conn, timeout, check)
    nonce = _nonce()
    conn.send({"answer": _answer(secret, "worker", header.get("challenge", "")), "challenge": nonce,
               "worker": about}, check=check)
    _expect_answer(secret, "driver", nonce, _received(conn, timeout, check))


def _received(conn: Connection, timeout: float, check) -> dict:
    message = conn.receive(timeout, check)
    if message is None:
        raise ChannelError("no answer during authentication")
    header, _ = message
    if not isinstance(header, dict):
        raise ChannelError("a malformed authentication message")
    return header
