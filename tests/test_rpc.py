"""cllm as a llama.cpp RPC worker (rpc=PORT): two boxes serve ggml's RPC protocol through the kernel's
sockets (kernel/sockets.c over lwIP, net/sockets.c) with llama.cpp's own server code, and the same
build's llama-server on the host (peer-same, built with GGML_RPC) runs the tiny model with its layers on
them: greedy tokens identical to the host alone. Bad RPC input (not HELLO first, wrong sizes,
truncated commands, huge allocations and messages, tensors outside their buffer, malformed graphs)
closes the connection or is refused; the box never panics and serves the next client. And the socket
calls themselves, as C code in a thread makes them (kernel.socket_test)."""
import ast
import errno
import os
import socket
import struct
import sys
import threading
import time

import pytest

from qemu import Guest, free_port
from test_server import request
from test_upstream import Host
from tinymodel import make_tiny_model

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fleet"))
from fleet import rpc_workers  # noqa: E402

HELLO, DEVICE_COUNT, ALLOC_BUFFER, BUFFER_GET_BASE, SET_TENSOR, GRAPH_COMPUTE = 14, 15, 0, 3, 6, 10
F32 = 0


@pytest.fixture(scope="module")
def boxes():
    with rpc_workers(2, mem="256M") as out:
        yield out


class Rpc:
    """A raw RPC connection: commands as bytes, answers read back."""

    def __init__(self, port, hello=True):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60)
        if hello:
            version = self.call(HELLO, bytes(24))
            assert version[:3] == bytes([7, 0, 0]), version

    def send(self, cmd, payload, size=None):
        self.s.sendall(bytes([cmd]) + struct.pack("<Q", len(payload) if size is None else size) + payload)

    def read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.s.recv(n - len(data))
            if not chunk:
                raise EOFError(f"closed after {len(data)} of {n} bytes")
            data += chunk
        return data

    def call(self, cmd, payload):
        self.send(cmd, payload)
        n, = struct.unpack("<Q", self.read(8))
        return self.read(n)

    def closed(self):
        """Whether the server has closed the connection (FIN or RST), waiting for it up to the timeout."""
        try:
            return self.s.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()


def tensor(id, buffer, data, ne=(4, 1, 1, 1), nb=None, type=F32, op=0, src=()):
    """A struct rpc_tensor (296 bytes); src: the ids of its sources."""
    nb = nb or (4, 4 * ne[0], 4 * ne[0] * ne[1], 4 * ne[0] * ne[1] * ne[2])
    return struct.pack("<QIQ4I4II16ii10QQQQ64si", id, type, buffer, *ne, *nb, op, *[0] * 16, 0,
                       *(list(src) + [0] * (10 - len(src))), 0, 0, data, b"t", 1)


def buffer(c, size=4096):
    ptr, got = struct.unpack("<QQ", c.call(ALLOC_BUFFER, struct.pack("<IQ", 0, size)))
    assert ptr and got == size
    base, = struct.unpack("<Q", c.call(BUFFER_GET_BASE, struct.pack("<Q", ptr)))
    return ptr, base


def graph(nodes, tensors, n_nodes=None):
    return (struct.pack("<II", 0, len(nodes) if n_nodes is None else n_nodes) + b"".join(struct.pack("<Q", n) for n in nodes)
            + struct.pack("<I", len(tensors)) + b"".join(tensors))


def serves(port):
    """A client that does what llama-server does first: HELLO, then the device count."""
    c = Rpc(port)
    count = c.call(DEVICE_COUNT, b"")
    c.close()
    return struct.unpack("<I", count)[0] == 1


def bad_inputs():
    """(name, what to do on a connection, then whether the server closed it)"""
    def raw(payload):
        return lambda c: c.s.sendall(payload)

    def alloc_refused(size):
        def run(c):
            ptr, got = struct.unpack("<QQ", c.call(ALLOC_BUFFER, struct.pack("<IQ", 0, size)))
            assert (ptr, got) == (0, 0), (ptr, got)
            assert struct.unpack("<I", c.call(DEVICE_COUNT, b""))[0] == 1     # the connection goes on
        return run

    def set_tensor(make):
        def run(c):
            ptr, base = buffer(c)
            t, offset, data = make(ptr, base)
            c.send(SET_TENSOR, t + b"\0" + struct.pack("<Q", offset) + data)
        return run

    def compute(make):
        def run(c):
            ptr, base = buffer(c)
            c.send(GRAPH_COMPUTE, make(ptr, base))
        return run

    return [
        ("not HELLO first", False, raw(bytes([0]) + struct.pack("<Q", 12) + bytes(12)), True),
        ("HELLO of the wrong size", False, raw(bytes([HELLO]) + struct.pack("<Q", 23) + bytes(23)), True),
        ("an unknown command", True, raw(bytes([200])), True),
        ("ALLOC_BUFFER of the wrong size", True, raw(bytes([ALLOC_BUFFER]) + struct.pack("<Q", 8) + bytes(8)), True),
        ("a message of 2**62 bytes", True, lambda c: c.send(SET_TENSOR, b"", size=1 << 62), True),
        ("a message of 3 GB", True, lambda c: c.send(SET_TENSOR, b"", size=3 << 30), True),
        ("a buffer past size_t", True, alloc_refused(1 << 40), False),
        ("a buffer past the RAM", True, alloc_refused(3 << 30), False),
        ("a tensor outside its buffer", True, set_tensor(lambda p, b: (tensor(1, p, b + 8192), 0, bytes(16))), True),
        ("a write past its tensor", True, set_tensor(lambda p, b: (tensor(1, p, b), 0, bytes(64))), True),
        ("a write at an offset past its tensor", True, set_tensor(lambda p, b: (tensor(1, p, b), 1 << 33, bytes(4))), True),
        ("a tensor whose size overflows", True,
         set_tensor(lambda p, b: (tensor(1, p, b, ne=(0xffffffff, 0xffffffff, 2, 1), nb=(4, 4, 4, 4)), 0, bytes(4))), True),
        ("a tensor whose size wraps 32 bits", True,
         set_tensor(lambda p, b: (tensor(1, p, b, ne=(1, 0x10000, 0x10001, 1), nb=(4, 4, 0x40000, 4)), 0, bytes(4))), True),
        ("a tensor of an unknown op", True, compute(lambda p, b: graph([1], [tensor(1, p, b, op=9999)])), True),
        ("a graph with a null node", True, compute(lambda p, b: graph([0], [])), True),
        ("a graph longer than its message", True, compute(lambda p, b: graph([1], [], n_nodes=0x20000000)), True),
        ("a graph with a node twice", True, compute(lambda p, b: graph([1, 1], [tensor(1, p, b)])), True),
        ("a graph node computed without memory", True, compute(lambda p, b: graph([1], [tensor(1, 0, 0, op=1)])), True),
        ("a graph node computed from none", True,
         compute(lambda p, b: graph([1], [tensor(2, 0, 0), tensor(1, p, b, op=1, src=[2])])), True),
        ("a command cut short, then the client gone", True,
         raw(bytes([ALLOC_BUFFER]) + struct.pack("<Q", 12) + bytes(4)), None),
    ]


def test_bad_rpc_input_closes_the_connection(boxes):
    box = boxes[0]
    for name, hello, run, closes in bad_inputs():
        c = Rpc(box.port, hello=hello)
        run(c)
        if closes is None:          # the server waits for the rest: the client leaves
            c.close()
        else:
            c.s.settimeout(None if closes else 2)
            try:
                assert c.closed() == closes, name
            except TimeoutError:
                assert not closes, name
            c.close()
        assert box.alive(), name
        assert serves(box.port), f"after {name}: the next client is served"
    out = box.line("import llm; llm.rpc_info()")
    assert b"'restarts': 0" in out and b"'running': True" in out, out
    assert b"panic" not in out


def test_layers_on_two_boxes_same_tokens_as_the_host_alone(boxes, tmp_path):
    model = make_tiny_model(str(tmp_path / "tiny.gguf"), n_layer=4)
    body = {"prompt": "Once upon a time", "n_predict": 24, "temperature": 0, "cache_prompt": False}
    alone = Host(model, 512)
    try:
        want = request(alone, "POST", "/completion", body)
    finally:
        alone.close()
    log = tmp_path / "split.log"
    split = Host(model, 512, "--rpc", ",".join(f"127.0.0.1:{b.port}" for b in boxes), "-ngl", "99", "-lv", "4",
                 log=str(log))
    try:
        got = request(split, "POST", "/completion", body)
        again = request(split, "POST", "/completion", dict(body, prompt="The sea"))
    finally:
        split.close()
    assert want[0] == got[0] == 200, (want, got)
    assert got[1]["tokens_predicted"] == 24 and got[1]["content"] == want[1]["content"]
    assert again[0] == 200 and again[1]["tokens_predicted"] == 24
    text = log.read_text()
    # each box holds layers of the model: llama-server says what it put on each RPC device
    rpc_buffers = [line for line in text.splitlines() if "model buffer size" in line and "RPC" in line]
    assert len(rpc_buffers) == 2 and all(" 0.00 MiB" not in line for line in rpc_buffers), rpc_buffers
    for b in boxes:
        b.expect(rb"Accepted client connection", timeout=10)
        assert b.alive() and b.line("1+1").strip().endswith(b"2")


def test_socket_calls_from_a_thread():
    """kernel.socket_test: the socket system calls C code makes (non-blocking accept, poll, accept4,
    options, MSG_PEEK, MSG_WAITALL, send/write, shutdown, EOF, close), in a thread, against a client
    here; and the calls nothing here serves (IPv6, UDP) refused as Linux refuses them."""
    port = free_port()
    with Guest(mem="256M", timeout=60, hostfwd=[f"tcp:127.0.0.1:{port}-:7000"]) as g:
        g.wait_prompt()
        answer = []

        def client():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                        s.sendall(b"hello world\n")
                        data = b""
                        while chunk := s.recv(100):
                            data += chunk
                        if data:
                            answer.append(data)
                            return
                except OSError:
                    pass
                time.sleep(0.2)

        t = threading.Thread(target=client)
        t.start()
        out = g.line("r = __import__('kernel').socket_test(7000); print(sorted(r.items()))", timeout=90)
        t.join(60)
        steps = dict(ast.literal_eval(out.decode().strip().splitlines()[-1]))
        assert answer == [b"HELLO WORLD\nbye\n"], answer
        assert steps == {
            "ipv6": -errno.EAFNOSUPPORT, "udp": -errno.EPROTONOSUPPORT, "socket": 0, "reuseaddr": 0, "bind": 0,
            "bind_again": -errno.EADDRINUSE, "listen": 0, "getsockname": 7000, "accept_nonblocking": -errno.EAGAIN,
            "poll": 1, "accept": 0, "peer_is_ipv4": 1, "nodelay": 0, "fl_nonblock": 0, "peek": 5, "peek_again": 1,
            "recv_waitall": 12, "recv_right": 1, "send": 12, "write": 4, "shutdown": 0,
            "send_after_shutdown": -errno.EPIPE, "recv_eof": 0, "so_error": 0, "close": 0, "close_listener": 0,
            "closed_fd": -errno.EBADF}, steps
        assert g.alive() and g.line("1+1").strip().endswith(b"2")
