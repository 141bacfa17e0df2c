"""TCP through the guest's e1000 and lwIP: host->guest and guest->host throughput and connection
setup rate, each next to the same client against a host-local server on 127.0.0.1 (no QEMU in
the path: the ceiling). Prints both and their ratio.

    make bench-net              (or: CLLM_KERNEL=build/port/cllm.elf python bench/net.py [MiB] [connections])

The guest runs an asyncio server on port 80 (forwarded from a free host port, user network with
restrict=on) speaking the same three-command protocol as the host peer:
    "sink\\n"       read to EOF, answer the byte count
    "source N\\n"   send N bytes, close
    "close\\n"      close at once (one connection set up and torn down)
"""
import os
import socket
import sys
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from qemu import Guest, free_port  # noqa: E402

CHUNK = 64 * 1024

GUEST_SERVER = """
import asyncio
chunk = bytes(%d)
async def serve(r, w):
    cmd = (await r.readline()).split()
    if cmd[0] == b'sink':
        n = 0
        while True:
            b = await r.read(%d)
            if not b:
                break
            n += len(b)
        w.write(b'%%d\\n' %% n)
        await w.drain()
    elif cmd[0] == b'source':
        left = int(cmd[1])
        while left > 0:
            w.write(chunk if left >= len(chunk) else chunk[:left])
            await w.drain()
            left -= len(chunk)
    await w.wait_closed()
async def main():
    await asyncio.start_server(serve, '0.0.0.0', 80, backlog=16)
    print('bench: listening')
    while True:
        await asyncio.sleep(3600)
asyncio.run(main())
""" % (CHUNK, CHUNK)


def host_peer():
    """The same protocol served by this process on 127.0.0.1: returns its port."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    chunk = bytes(CHUNK)

    def serve(c):
        with c:
            f = c.makefile("rb")
            cmd = f.readline().split()
            if cmd[0] == b"sink":
                n = 0
                while b := f.read1(CHUNK):
                    n += len(b)
                c.sendall(b"%d\n" % n)
            elif cmd[0] == b"source":
                left = int(cmd[1])
                while left > 0:
                    c.sendall(chunk if left >= CHUNK else chunk[:left])
                    left -= CHUNK

    def accept_loop():
        while True:
            c, _ = srv.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return srv.getsockname()[1]


def upload(port, nbytes):
    data = bytes(CHUNK)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(b"sink\n")
        left = nbytes
        while left > 0:
            s.sendall(data if left >= CHUNK else data[:left])
            left -= CHUNK
        s.shutdown(socket.SHUT_WR)
        reply = s.makefile("rb").readline()
    elapsed = time.monotonic() - start
    assert int(reply) == nbytes, (reply, nbytes)
    return nbytes / elapsed


def download(port, nbytes):
    start = time.monotonic()
    got = 0
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(b"source %d\n" % nbytes)
        while b := s.recv(1 << 20):
            got += len(b)
    elapsed = time.monotonic() - start
    assert got == nbytes, (got, nbytes)
    return nbytes / elapsed


def connections(port, count):
    start = time.monotonic()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"close\n")
            assert s.recv(16) == b""
    return count / (time.monotonic() - start)


def main():
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    nbytes = mib << 20
    peer = host_peer()
    tcp = free_port()
    with Guest(hostfwd=[f"tcp:127.0.0.1:{tcp}-:80"], mem="256M") as g:
        g.wait_prompt()
        g.send(b"\x05" + GUEST_SERVER.replace("\n", "\r").encode() + b"\x04")
        g.expect_exact(b"bench: listening\r\n", timeout=30)
        time.sleep(1.5)         # the DHCP lease; QEMU holds frames for a second after the NIC starts
        rows = []
        for name, unit, fn, arg, scale in (
                ("TCP host -> guest", "MB/s", upload, nbytes, 1e-6),
                ("TCP guest -> host", "MB/s", download, nbytes, 1e-6),
                ("TCP connections", "conn/s", connections, count, 1)):
            guest = fn(tcp, arg) * scale
            host = fn(peer, arg) * scale
            rows.append((name, unit, guest, host))
    print(f"network, cllm in QEMU (TCG, e1000, user network) vs. a host-local server on 127.0.0.1 "
          f"({mib} MiB transfers, {count} connections):")
    for name, unit, guest, host in rows:
        print(f"  {name:18} cllm {guest:9.1f} {unit:6}  peer {host:9.1f} {unit:6}  ratio cllm/peer {guest / host:.3f}")


if __name__ == "__main__":
    main()
