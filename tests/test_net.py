"""Networking in QEMU: PCI, the e1000 and its counters, DHCP, lwIP sockets and asyncio servers.

Every guest here has an e1000 on a QEMU user network with restrict=on: the only traffic is the
host's own connections to 127.0.0.1 ports forwarded into the guest."""
import contextlib
import hashlib
import os
import socket
import struct
import threading
import time

import pexpect
import pytest

from qemu import Guest, Monitor, free_port, host_sockets

MAC = "52:54:00:c1:1a:3e"
UDP_PORT = 5000

# An asyncio echo server on port 80 that records, per connection, the bytes it received, their
# sha256 and the error that ended it; and a UDP reader on UDP_PORT that counts 32-byte datagrams.
ECHO_SERVER = """
import asyncio, binascii, hashlib, socket
log = []
stage = {}          # per connection still open: where its echo is (a failed test prints it)
udp_count = 0
async def echo(r, w):
    h = hashlib.sha256()
    n = 0
    err = None
    me = id(w)
    try:
        while True:
            stage[me] = ('read', n, w.s)
            b = await r.read(8192)
            if not b:
                break
            h.update(b)
            n += len(b)
            stage[me] = ('write', n, w.s)
            w.write(b)
            stage[me] = ('drain', n, w.s)
            await w.drain()
    except OSError as e:
        err = e.errno
    del stage[me]
    log.append((n, binascii.hexlify(h.digest()).decode(), err))
    print('echo: done', len(log))
    w.close()
    await w.wait_closed()       # MicroPython's Stream closes its socket here
async def udp_reader():
    global udp_count
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(('0.0.0.0', UDP_PORT))
    u.setblocking(False)
    r = asyncio.StreamReader(u)
    while True:
        udp_count += len(await r.read(2048)) // 32     # the flood's datagrams are 32 bytes
spins = 0
async def spin():       # a task that is always ready to run
    global spins
    while True:
        spins += 1
        await asyncio.sleep_ms(0)
async def main():
    await asyncio.start_server(echo, '0.0.0.0', 80, backlog=32)   # room beyond the 16 simultaneous clients
    asyncio.create_task(udp_reader())
    if SPIN:
        asyncio.create_task(spin())
    print('echo: listening')
    while True:
        await asyncio.sleep(3600)
asyncio.run(main())
"""


# Guest code that returns once DHCP has given the guest its address (lan: the interface).
WAIT_FOR_LEASE = "import network, time\nlan = network.LAN()\nwhile not lan.isconnected():\n    time.sleep_ms(2)\n"


@pytest.fixture(scope="module")
def net():
    tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
    monitor = f"/tmp/cllm-net-monitor-{os.getpid()}.sock"
    with Guest(hostfwd=[f"tcp:127.0.0.1:{tcp}-:80", f"udp:127.0.0.1:{udp}-:{UDP_PORT}"], mac=MAC,
               monitor=f"unix:{monitor},server=on,wait=off") as g:
        g.wait_prompt()
        g.tcp_port, g.udp_port = tcp, udp
        g.monitor = Monitor(monitor)
        try:
            yield g
        finally:
            g.monitor.close()
            os.unlink(monitor)


@contextlib.contextmanager
def echo_server(g, connections, spin=False):
    """Run ECHO_SERVER in the guest until it has finished this many connections, then Ctrl-C it.
    Its log is left in g.log_after; the caller soft-reboots, which closes its sockets.
    spin: with a task that is always ready to run (its count of turns in g.spins_after)."""
    code = f"UDP_PORT = {UDP_PORT}\nSPIN = {spin}\n" + ECHO_SERVER
    g.send(b"\x05" + code.replace("\n", "\r").encode() + b"\x04")
    g.expect_exact(b"echo: listening\r\n", timeout=30)
    try:
        yield
        g.expect_exact(b"echo: done %d\r\n" % connections, timeout=30)
    except BaseException:
        try:
            print("the guest's CPU when it failed:", g.monitor.where())
        except Exception as e:      # noqa: BLE001 — a report, best effort
            print("the guest's CPU: unknown,", repr(e))
        # leave the next test a guest without this server's listening socket
        g.send(b"\x03")
        print("where Ctrl-C stopped it:", g.wait_prompt(timeout=30)[-1500:].decode(errors="replace"))
        print("the guest when it failed:", failure_report(g))
        g.send(b"\x04")
        g.wait_prompt(timeout=30)
        raise
    else:
        g.send(b"\x03")
        out = g.wait_prompt(timeout=30)
        assert b"KeyboardInterrupt" in out
    g.log_after = g.eval("log")
    g.udp_after = int(g.eval("udp_count"))
    g.spins_after = int(g.eval("spins"))


def failure_report(g):
    """The echo server's log and where each open connection's echo is, lwIP's connections, the
    NIC's counters, what asyncio waits for and which of those sockets are ready (the server was
    stopped with Ctrl-C: its sockets are still open), and the host's sockets to the forwarded port."""
    view = g.report(("print(log)", "print(stage)", "import network; print(network.LAN().tcp())",
                     "print(network.LAN().counters())",
                     "import asyncio; print([(v[2], v[0], v[1]) for v in asyncio.core._io_queue.map.values()])",
                     "print(asyncio.core._io_queue.poller.poll(0))"))
    host = host_sockets(g.tcp_port)
    return f"guest: {view!r}; host sockets: {host!r}"


def soft_reboot(g):
    g.send(b"\x04")
    try:
        g.expect_exact(b"MPY: soft reboot")
        g.wait_prompt()
    except pexpect.ExceptionPexpect:
        print("the console:", (g.child.before or b"")[-3000:].decode(errors="replace"))
        raise


def lan(g, call):
    """The value of network.LAN().<call> in the guest."""
    return eval(g.eval(f"__import__('network').LAN().{call}"))


def echo_once(port, data, timeout=30):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        return exchange(s, data, timeout)


def exchange(s, data, timeout):
    """Send data on s while reading back as many bytes; a reader's error is raised here."""
    got, failed = bytearray(), []
    reader = threading.Thread(target=_read_all, args=(s, got, len(data), failed))
    reader.start()
    s.sendall(data)
    reader.join(timeout)
    if failed:
        raise failed[0]
    return bytes(got)


def _read_all(s, got, n, failed):
    try:
        while len(got) < n:
            b = s.recv(65536)
            if not b:
                break
            got.extend(b)
    except OSError as e:
        failed.append(e)


def test_dhcp_lease_within_2s_of_boot(net):
    out, err = net.raw_exec(WAIT_FOR_LEASE + "print(time.ticks_ms(), lan.ipconfig('addr4')[0], "
                            "lan.config('address_source'), lan.status())")
    assert err == b"", err
    ms, addr, source, status = out.decode().split()
    assert int(ms) < 2000, f"lease after {ms} ms of boot"
    assert (addr, source, status) == ("10.0.2.15", "dhcp", "3")


def test_mac_is_the_devices(net):
    assert lan(net, "config('mac')") == bytes.fromhex(MAC.replace(":", ""))
    assert lan(net, "active()") is True


def test_pci_lists_the_e1000(net):
    out, err = net.raw_exec(
        "import pci\n"
        "for d in pci.devices():\n"
        "    print('%04x:%04x' % (d.vendor, d.device), d.class_, d.bars[0], d.irq)")
    assert err == b"", err
    rows = [line.split() for line in out.decode().splitlines()]
    nics = [r for r in rows if r[0] == "8086:100e"]
    assert len(nics) == 1, rows
    _, cls, bar0, irq = nics[0]
    assert cls == "2" and int(bar0) != 0 and irq != "None"      # network controller, MMIO, routed IRQ


def test_echo_4_mib_byte_exact(net):
    data = hashlib.sha256(b"seed").digest() * (4 * 1024 * 1024 // 32)
    with echo_server(net, 1):
        got = echo_once(net.tcp_port, data, timeout=120)
    assert len(got) == len(data)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    n, digest, err = eval(net.log_after)[-1]
    assert (n, digest, err) == (len(data), hashlib.sha256(data).hexdigest(), None)
    soft_reboot(net)


def test_50_sequential_and_16_simultaneous_connections(net):
    with echo_server(net, 66):
        start = time.monotonic()
        for i in range(50):
            msg = b"sequential %d " % i * 50
            assert echo_once(net.tcp_port, msg) == msg
        # a request sent with the handshake is served at once, not by lwIP's 250 ms timer
        assert time.monotonic() - start < 6
        # Open the 16 connections one after another, then move 64 KiB through each at once.
        # Fired in the same instant, the 16 connects were reset now and then on a loaded CI
        # machine (never here, in dozens of runs): the likely cause is the host side, where QEMU's
        # user network listens with a backlog of one and the host kernel's accept queue overflows.
        conns = [socket.create_connection(("127.0.0.1", net.tcp_port), timeout=60) for _ in range(16)]
        results = [None] * 16
        go = threading.Barrier(16)

        def client(i):
            msg = struct.pack("<I", i) * 16384          # 64 KiB each
            try:
                go.wait(30)
                results[i] = exchange(conns[i], msg, timeout=60) == msg
            except OSError as e:
                results[i] = repr(e)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        for c in conns:
            c.close()
        assert results == [True] * 16
    assert len(eval(net.log_after)) == 66
    soft_reboot(net)


def test_silent_and_vanishing_clients_do_not_wedge_the_server(net):
    with echo_server(net, 5):
        silent = socket.create_connection(("127.0.0.1", net.tcp_port), timeout=10)
        for _ in range(3):
            # send a megabyte, read nothing back, then reset the connection mid-stream
            s = socket.create_connection(("127.0.0.1", net.tcp_port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.settimeout(2)
            with contextlib.suppress(OSError):
                s.sendall(b"v" * (1 << 20))
            s.close()
        msg = b"still here " * 1000
        assert echo_once(net.tcp_port, msg, timeout=20) == msg
        silent.close()
    log = eval(net.log_after)
    assert (len(msg), hashlib.sha256(msg).hexdigest(), None) in log
    assert (0, hashlib.sha256(b"").hexdigest(), None) in log        # the silent client, once closed
    assert net.line("1 + 1").strip() == b"2"
    soft_reboot(net)


def test_a_task_always_ready_to_run_does_not_stop_the_network(net):
    # asyncio polls its sockets without waiting while a task is ready, and such a poll returns before
    # MicroPython's event hook reads the NIC: a task that never waits would stop every connection
    # but for the poll the timer asks for when none has run for 20 ms (net/net.c).
    data = hashlib.sha256(b"busy").digest() * (256 * 1024 // 32)
    with echo_server(net, 2, spin=True):
        msg = b"while busy " * 100
        assert echo_once(net.tcp_port, msg, timeout=20) == msg
        start = time.monotonic()
        assert echo_once(net.tcp_port, data, timeout=60) == data
        seconds = time.monotonic() - start
    assert net.spins_after > 0              # the busy task ran all along (it never waits)
    assert seconds < 20, f"256 KiB echoed in {seconds:.1f} s beside a busy task"
    soft_reboot(net)


def test_connections_that_come_before_the_peer_is_resolved_are_all_answered():
    # Just after boot the gateway's MAC is unknown: whatever the guest sends meanwhile waits for the
    # ARP reply. lwIP's default kept only the latest packet: of a burst of first connections all
    # SYN-ACKs but one were dropped, and those handshakes waited for lwIP's retransmission (3 s).
    port = free_port()
    with Guest(hostfwd=[f"tcp:127.0.0.1:{port}-:80"]) as g:
        g.wait_prompt()
        out, err = g.raw_exec(WAIT_FOR_LEASE + "import socket; l = socket.socket(); l.bind(('0.0.0.0', 80)); l.listen(4)")
        assert err == b"", err
        # a computation in C reads no frame: both SYNs are taken in by one poll after it
        g.send(b"sum(range(3_000_000))\r")
        time.sleep(0.5)
        conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        g.wait_prompt(timeout=60)
        out = g.line("t = time.ticks_ms(); a, _ = l.accept(); b, _ = l.accept(); "
                     "print('accepted in', time.ticks_diff(time.ticks_ms(), t))", timeout=20)
        for c in conns:
            c.close()
        assert int(out.split(b"accepted in")[1]) < 1000, out


def test_udp_flood_is_counted_not_fatal(net):
    before = lan(net, "counters()")
    with echo_server(net, 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(20000):
                s.sendto(struct.pack("<I", i) * 8, ("127.0.0.1", net.udp_port))
        time.sleep(2)
        msg = b"after the flood " * 100
        assert echo_once(net.tcp_port, msg, timeout=20) == msg
    after = lan(net, "counters()")
    received = after["rx_frames"] - before["rx_frames"]
    dropped = sum(after[k] - before[k] for k in ("rx_missed", "rx_no_buffers", "rx_dropped"))
    assert net.udp_after > 0 and received > net.udp_after
    assert dropped > 0, (before, after)
    assert net.line("1 + 1").strip() == b"2"
    soft_reboot(net)


def test_static_address_from_the_command_line():
    tcp = free_port()
    with Guest(hostfwd=[f"tcp:127.0.0.1:{tcp}-:80"], append="ip=10.0.2.15/24 gw=10.0.2.2") as g:
        g.wait_prompt()
        assert lan(g, "ipconfig('addr4')") == ("10.0.2.15", "255.255.255.0")
        assert lan(g, "config('address_source')") == "static"
        g.send(b"import socket; s = socket.socket(); s.bind(('0.0.0.0', 80)); s.listen(1); "
               b"c, a = s.accept(); c.send(c.recv(100)); c.close()\r")
        time.sleep(1.5)         # QEMU passes frames to the NIC a second after it is enabled
        with socket.create_connection(("127.0.0.1", tcp), timeout=10) as h:
            h.sendall(b"static")
            assert h.recv(100) == b"static"
        g.wait_prompt()
