"""The serial module: COM2 as a second UART, driven from the host over a unix socket."""
import os
import socket
import tempfile
import threading
import time

import pytest

from qemu import Guest


@pytest.fixture(scope="module")
def com2():
    """A guest whose COM2 is a unix socket server; yields (guest, connected host socket)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "com2.sock")
        with Guest(serial2=f"unix:{path},server=on,wait=off") as g:
            g.wait_prompt()
            host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            host.connect(path)
            host.settimeout(10)
            out, err = g.raw_exec("import serial\nu = serial.UART(2, baudrate=115200)\nprint(u)")
            assert err == b"", err
            assert out.strip() == b"UART(2, baudrate=115200, timeout=0)"
            yield g, host
            host.close()


def recv_exactly(s, n):
    got = b""
    while len(got) < n:
        b = s.recv(n - len(got))
        assert b, "COM2 closed"
        got += b
    return got


def test_guest_to_host(com2):
    g, host = com2
    got = []
    reader = threading.Thread(target=lambda: got.append(recv_exactly(host, 4096)))
    reader.start()
    assert g.eval("u.write(bytes(range(256)) * 16)") == "4096"
    reader.join(10)
    assert got == [bytes(range(256)) * 16]


def test_host_to_guest_read_any_readline(com2):
    g, host = com2
    host.sendall(b"first line\nsecond")
    time.sleep(0.3)
    assert g.eval("u.any()") == "17"
    assert g.eval("u.readline()") == repr(b"first line\n")
    assert g.eval("u.read(100)") == repr(b"second")
    assert g.eval("u.read(1)") == "None"              # timeout=0: nothing waiting
    host.sendall(bytes(range(256)) * 8)
    out, err = g.raw_exec("u.init(timeout=2000)\nb = u.read(2048)\nwhile len(b) < 2048:\n    b += u.read(2048 - len(b))\n"
                          "print(len(b), b == bytes(range(256)) * 8)")
    assert err == b"", err
    assert out.split() == [b"2048", b"True"]


def test_asyncio_stream_echo(com2):
    g, host = com2
    code = """
import asyncio
async def echo_lines(n):
    r = asyncio.StreamReader(u)
    w = asyncio.StreamWriter(u, {})
    for _ in range(n):
        line = await r.readline()
        w.write(line.upper())
        await w.drain()
u.init(timeout=0)
asyncio.run(echo_lines(3))
print('serial echo done')
"""
    g.send(b"\x05" + code.replace("\n", "\r").encode() + b"\x04")
    time.sleep(0.5)
    for word in (b"alpha", b"beta", b"gamma"):
        host.sendall(word + b"\n")
        assert recv_exactly(host, len(word) + 1) == word.upper() + b"\n"
    g.expect_exact(b"serial echo done\r\n")
    g.wait_prompt()


def test_bad_id_and_baudrate(com2):
    g, _ = com2
    out, err = g.raw_exec("serial.UART(3)")
    assert b"ValueError: UART(3) doesn't exist" in err
    out, err = g.raw_exec("u.init(baudrate=7)")
    assert b"ValueError: baudrate must divide 115200" in err
