"""The driver-worker channel: framing of headers and raw blobs, partial reads, mutual authentication,
end of stream, and refusing what is not a message of the protocol."""

import array
import os
import socket
import struct
import tempfile
import threading
import time

import numpy as np
import pytest

from madlib_dl import channel


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left, right = channel.Connection(a), channel.Connection(b)
    yield left, right
    left.close()
    right.close()


def _in_thread(fn):
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as error:  # surfaced by the test
            result["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_header_and_blobs_arrive_as_sent(pair):
    left, right = pair
    left.send({"type": "x", "n": [1, 2]}, [b"abc", b"", bytearray(b"\x00\xff")])
    header, blobs = right.receive(timeout=5)
    assert header == {"type": "x", "n": [1, 2]}
    assert [bytes(b) for b in blobs] == [b"abc", b"", b"\x00\xff"]


def test_a_large_blob_travels_as_shared_memory_and_can_be_passed_on(pair):
    """64 MB goes as a memory file: the receiver maps it (no copy through the socket) and can forward
    the very same memory to a third process, which sees what the second wrote."""
    left, right = pair
    data = np.random.default_rng(0).random(8 << 20)  # 64 MiB of float64
    left.send({"type": "big"}, [data, b"small"])
    header, (blob, small) = right.receive(timeout=10)
    assert isinstance(blob, channel.SharedBlob) and not isinstance(small, channel.SharedBlob)
    assert np.array_equal(np.frombuffer(blob, dtype=np.float64), data) and bytes(small) == b"small"
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    onward, third = channel.Connection(a), channel.Connection(b)
    try:
        onward.send({"type": "again"}, [blob])
        _, (same,) = third.receive(timeout=10)
        same[:8] = b"\x00" * 8
        assert bytes(blob[:8]) == b"\x00" * 8  # one memory, two mappings
        assert len(same) == len(blob) == data.nbytes
    finally:
        onward.close()
        third.close()


def test_a_receiver_that_reads_its_blobs_gets_them_mapped_at_once():
    """populate_received maps every page of an arriving memory file in one call: reading it then takes
    no page fault per page. Without it (the driver, which only passes states on) nothing is mapped."""
    import resource

    def faults_reading(populate: bool) -> int:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sender, receiver = channel.Connection(a), channel.Connection(b, populate_received=populate)
        try:
            sender.send({}, [channel.SharedBlob.copy_of(np.ones(1 << 21, dtype=np.float32))])  # 8 MiB
            _, (blob,) = receiver.receive(timeout=5)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            assert np.frombuffer(blob, dtype=np.float32).sum() == 1 << 21
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        finally:
            sender.close()
            receiver.close()

    populated, touched = faults_reading(populate=True), faults_reading(populate=False)
    assert populated * 4 < touched, (populated, touched)  # the kernel maps up to 16 pages per fault


def test_sending_waits_for_a_slow_reader_and_checks_meanwhile(pair):
    """60 MB of small blobs (inline) fill the socket: send waits for the reader, calling its check."""
    left, right = pair
    blobs = [bytes([i]) * (channel.SHARED_BYTES - 1) for i in range(60)]

    def slow_reader():
        time.sleep(0.3)
        return right.receive(timeout=30)

    thread, result = _in_thread(slow_reader)
    checks = []
    left.send({"type": "many"}, blobs, check=lambda: checks.append(1))
    thread.join()
    _, got = result["value"]
    assert [bytes(g) for g in got] == blobs
    assert checks, "the sender waited without calling its check"


def test_a_shared_blob_smaller_than_announced_is_refused(pair):
    left, right = pair
    small = channel.SharedBlob.create(4096)
    head = struct.pack("<4sII", channel.MAGIC, 2, 1) + struct.pack("<Q", (1 << 20) | channel.SHARED_FLAG) + b"{}"
    left._sock.sendmsg([head], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [small.fd]))])
    with pytest.raises(channel.ChannelError, match="smaller than its message says"):
        right.receive(timeout=2)


def test_a_shared_blob_without_its_descriptor_is_refused(pair):
    left, right = pair
    left._sock.sendall(struct.pack("<4sII", channel.MAGIC, 2, 1) + struct.pack("<Q", 5 | channel.SHARED_FLAG) + b"{}")
    with pytest.raises(channel.ChannelError, match="without its file descriptor"):
        right.receive(timeout=2)


def test_messages_in_a_row_are_kept_apart(pair):
    left, right = pair
    for i in range(3):
        left.send({"i": i}, [bytes([i]) * (i + 1)])
    got = [right.receive(timeout=5) for _ in range(3)]
    assert [(h["i"], bytes(b[0])) for h, b in got] == [(0, b"\x00"), (1, b"\x01\x01"), (2, b"\x02\x02\x02")]


def test_poll_returns_nothing_until_the_whole_message_is_there(pair):
    left, right = pair
    frame = b"".join(bytes(v) for v in channel._frame({"a": 1}, [b"xyz"])[0])
    left._sock.sendall(frame[:-2])
    assert right.poll() is None
    left._sock.sendall(frame[-2:])
    assert right.poll() == ({"a": 1}, [bytearray(b"xyz")])


def test_receive_times_out_and_calls_its_check(pair):
    _, right = pair
    checks = []
    assert right.receive(timeout=0.35, check=lambda: checks.append(1)) is None
    assert 2 <= len(checks) <= 5


def test_a_closed_peer_is_seen(pair):
    left, right = pair
    assert not right.closed_by_peer()
    left.send({"a": 1})
    assert not right.closed_by_peer()  # data waiting is not an end of stream, and is not consumed
    left.close()
    assert right.receive(timeout=1) == ({"a": 1}, [])
    assert right.closed_by_peer()
    with pytest.raises(channel.ChannelClosed):
        right.receive(timeout=1)


def test_sending_to_a_closed_peer_raises_channel_closed(pair):
    left, right = pair
    right.close()
    with pytest.raises(channel.ChannelClosed):
        left.send({"a": 1}, [b"x" * (8 << 20)])


@pytest.mark.parametrize("frame", [
    b"HTTP/1.1 200 OK\r\n\r\n",                                    # not our magic
    struct.pack("<4sII", channel.MAGIC, channel.MAX_HEADER_BYTES + 1, 0),
    struct.pack("<4sII", channel.MAGIC, 4, channel.MAX_BLOBS + 1),
    struct.pack("<4sII", channel.MAGIC, 3, 0) + b"{no",            # header is not JSON
])
def test_what_is_not_a_message_is_refused(pair, frame):
    left, right = pair
    left._sock.sendall(frame)
    with pytest.raises(channel.ChannelError):
        right.receive(timeout=2)


def test_both_ends_authenticate_with_the_shared_secret(pair):
    left, right = pair
    secret = os.urandom(16)
    thread, result = _in_thread(lambda: channel.authenticate_driver(right, secret, {"index": 3}, 5))
    about = channel.authenticate_worker(left, secret, 5)
    thread.join()
    assert about == {"index": 3} and "error" not in result


def test_a_worker_with_the_wrong_secret_is_refused(pair):
    left, right = pair
    thread, result = _in_thread(lambda: channel.authenticate_driver(right, b"wrong" * 4, {"index": 0}, 2))
    with pytest.raises(channel.ChannelError, match="worker failed to authenticate"):
        channel.authenticate_worker(left, b"right" * 4, 2)
    left.close()
    thread.join()
    assert isinstance(result.get("error"), (channel.ChannelClosed, channel.ChannelError))


def test_a_driver_with_the_wrong_secret_is_refused(pair):
    left, right = pair
    thread, result = _in_thread(lambda: channel.authenticate_worker(left, b"other" * 4, 2))
    with pytest.raises(channel.ChannelError):
        channel.authenticate_driver(right, b"right" * 4, {}, 2)
    right.close()
    thread.join()
    assert isinstance(result.get("error"), channel.ChannelError)  # the worker's answer did not match either


def test_a_listener_accepts_a_connection_on_its_path():
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "socket")
        listener = channel.Listener(path)
        try:
            assert listener.accept(0.05) is None
            client = channel.connect(path)
            server = listener.accept(2)
            client.send({"hello": True})
            assert server.receive(timeout=2) == ({"hello": True}, [])
            client.close()
            server.close()
        finally:
            listener.close()
