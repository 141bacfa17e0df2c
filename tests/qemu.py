"""Boot the cllm kernel in QEMU and talk to it over its serial console."""
import bisect
import os
import re
import shlex
import socket
import struct
import subprocess
import time
from queue import Empty

import pexpect
from pexpect.popen_spawn import PopenSpawn

KERNEL = os.environ.get("CLLM_KERNEL", os.path.join(os.path.dirname(__file__), "..", "build", "port", "cllm.elf"))
PROMPT = b">>> "
RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
PANIC_STATUS = (0x10 << 1) | 1     # kernel_exit(PANIC_EXIT_STATUS) through isa-debug-exit


def free_port(kind=socket.SOCK_STREAM):
    """A host port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_command(modules=(), append="", mem="256M", kernel=KERNEL, serial="chardev:con",
                 hostfwd=None, mac=None, serial2=None, monitor=None, image=None, smp=1, reboot=False, cpu="max"):
    """hostfwd: None for a machine without a NIC, else a list of QEMU hostfwd rules (every one on
    127.0.0.1) for an e1000 on a user network that reaches nothing else. mac: the e1000's address.
    serial2: a QEMU chardev spec for COM2 (e.g. "unix:PATH,server=on,wait=off").
    monitor: a chardev spec for the QEMU monitor (e.g. "unix:PATH,server=on,wait=off").
    image: ("cdrom" or "disk", path of a `make image` ISO) boots through its GRUB instead of
    QEMU's own Multiboot loader; kernel, modules and append then come from the image.
    smp: CPUs; more than one runs each on its own host thread (multi-threaded TCG).
    reboot: a reset restarts the machine (as a PC's would) instead of ending QEMU.
    cpu: QEMU's -cpu model (and feature switches, e.g. "max,-rdrand")."""
    accel = ["-accel", "tcg"] if smp == 1 else ["-accel", "tcg,thread=multi", "-smp", str(smp)]
    cmd = ["qemu-system-i386", "-machine", "pc", *accel, "-cpu", cpu, "-m", mem, *([] if reboot else ["-no-reboot"]),
           "-display", "none", "-monitor", monitor or "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    if image is None:
        cmd += ["-kernel", kernel, "-append", append]
    else:
        media, path = image
        assert media in ("cdrom", "disk") and not modules and not append, image
        # a disk drive cannot be read-only on IDE: snapshot=on keeps guest writes out of the file
        protect = "readonly=on" if media == "cdrom" else "snapshot=on"
        cmd += ["-drive", f"file={os.fspath(path)},format=raw,media={media},{protect}"]
    if serial == "chardev:con":
        cmd += ["-chardev", "stdio,id=con,signal=off"]
    cmd += ["-serial", serial]
    if serial2:
        cmd += ["-serial", serial2]
    if hostfwd is None:
        cmd += ["-nic", "none"]
    else:
        assert all(":127.0.0.1:" in rule for rule in hostfwd), hostfwd
        netdev = "user,id=net0,restrict=on" + "".join(",hostfwd=" + rule for rule in hostfwd)
        cmd += ["-netdev", netdev, "-device", "e1000,netdev=net0" + (f",mac={mac}" if mac else "")]
        if os.environ.get("CLLM_PCAP_DIR"):     # debugging: every frame of the guest's network
            dump = os.path.join(os.environ["CLLM_PCAP_DIR"], f"net-{os.getpid()}-{time.monotonic_ns()}.pcap")
            cmd += ["-object", f"filter-dump,id=dump0,netdev=net0,file={dump}"]
    if modules:
        cmd += ["-initrd", ",".join(os.fspath(m) for m in modules)]
    return cmd


class _Spawn(PopenSpawn):
    """PopenSpawn that sleeps until output comes. pexpect's own polls its queue every 0.1 ms: 15 %
    of a host core, taken from the guest's CPUs on a two-core machine (in-kernel generation with two
    CPUs took 356 ms a token while the harness polled, 311 ms without)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.delayafterread = None

    def read_nonblocking(self, size, timeout):
        if not self._buf and not self._read_reached_eof:
            wait = self.timeout if timeout == -1 else timeout
            try:
                incoming = self._read_queue.get(True, None if wait is None else max(wait, 0))
            except Empty:
                return self.string_type()
            if incoming is None:
                self._read_reached_eof = True
            else:
                self._buf += self._decoder.decode(incoming, final=False)
        return super().read_nonblocking(size, timeout)


class Guest:
    """One QEMU run. Output is bytes; the console sends \\r\\n line ends.

    The console is a pipe, not a pty: a pty would add its own \\r to every line end."""

    def __init__(self, modules=(), append="", mem="256M", timeout=60, **machine):
        cmd = qemu_command(modules, append, mem, **machine)
        self.started = time.monotonic()
        self.child = _Spawn(cmd, timeout=timeout)
        self.log = []

    def expect(self, pattern, timeout=-1):
        self.child.expect(pattern, timeout=timeout)
        self.log.append(self.child.before + (self.child.after if isinstance(self.child.after, bytes) else b""))
        return self.child.before

    def expect_exact(self, text, timeout=-1):
        self.child.expect_exact(text, timeout=timeout)
        return self.child.before

    def send(self, data):
        self.child.send(data)

    def wait_prompt(self, timeout=60):
        return self.expect_exact(PROMPT, timeout=timeout)

    def line(self, text, timeout=30):
        """Type one line at the friendly REPL; return what it printed (echo removed)."""
        self.send(text.encode() + b"\r")
        out = self.wait_prompt(timeout)
        echo = text.encode() + b"\r\n"
        return out[len(echo):] if out.startswith(echo) else out

    def raw_exec(self, code, timeout=60):
        """Run code through the raw REPL (as mpremote does): returns (stdout, stderr) bytes."""
        self.send(b"\r\x01")
        self.expect_exact(RAW_PROMPT)
        self.send(code.encode() + b"\x04")
        self.expect_exact(b"OK", timeout=timeout)
        out = self.expect_exact(b"\x04", timeout=timeout)
        err = self.expect_exact(b"\x04", timeout=timeout)
        self.expect_exact(b">")
        self.send(b"\x02")               # back to the friendly REPL
        self.wait_prompt()
        return out, err

    def report(self, lines):
        """What each of these REPL lines prints, for a failure report: best effort, an error's repr
        in place of a line that fails."""
        view = []
        for line in lines:
            try:
                view.append(self.line(line, timeout=20).decode(errors="replace"))
            except Exception as e:      # noqa: BLE001 — a report, best effort
                view.append(repr(e))
        return view

    def eval(self, expr, timeout=60):
        """repr() of a Python expression, evaluated in the guest, as a host string."""
        out, err = self.raw_exec(f"print(repr({expr}))", timeout)
        assert not err, err.decode(errors="replace")
        return out.decode().strip()

    def read(self, n):
        return self.child.read(n)

    def alive(self):
        return self.child.proc.poll() is None

    def wait_exit(self, timeout=30):
        self.child.expect(pexpect.EOF, timeout=timeout)
        return self.child.proc.wait(timeout)

    def close(self):
        if self.alive():
            self.child.proc.kill()
        self.child.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Monitor:
    """The QEMU monitor on a unix socket (qemu_command(monitor="unix:PATH,server=on,wait=off"))."""

    PROMPT = b"(qemu) "

    def __init__(self, path, timeout=10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for _ in range(100):
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self._until_prompt()

    def _until_prompt(self):
        out = b""
        while not out.endswith(self.PROMPT):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("QEMU monitor closed")
            out += chunk
        return out

    def command(self, line):
        self.sock.sendall(line.encode() + b"\n")
        return self._until_prompt()

    def read_memory(self, address, size, scratch):
        """size bytes of guest physical memory, through pmemsave into the file scratch."""
        self.command(f'pmemsave {address:#x} {size} "{scratch}"')   # quoted: a bare /path parses as division
        with open(scratch, "rb") as f:
            return f.read()

    def where(self, kernel=KERNEL, samples=20, scratch=None):
        """Where the guest's CPU is: the functions of a few EIP samples, then the code addresses
        found on the stack at the last one (return addresses and leftovers: a rough backtrace)."""
        syms = kernel_symbols(kernel)
        starts = [a for a, _ in syms]

        def name(addr):
            i = bisect.bisect_right(starts, addr) - 1
            return f"{syms[i][1]}+{addr - syms[i][0]:#x}" if i >= 0 else hex(addr)

        seen, regs = {}, b""
        for _ in range(samples):
            regs = self.command("info registers")
            eip = int(re.search(rb"EIP=([0-9a-f]+)", regs).group(1), 16)
            key = "(halted)" if b"HLT=1" in regs else name(eip).split("+")[0]
            seen[key] = seen.get(key, 0) + 1
            time.sleep(0.01)
        esp = int(re.search(rb"ESP=([0-9a-f]+)", regs).group(1), 16)
        scratch = scratch or f"/tmp/cllm-stack-{os.getpid()}"
        try:
            stack = self.read_memory(esp, 8192, scratch)     # identity-mapped: virtual = physical
        finally:
            if os.path.exists(scratch):
                os.unlink(scratch)
        text = (starts[0], starts[-1]) if starts else (0, 0)
        frames = [name(w) for (w,) in struct.iter_unpack("<I", stack) if text[0] <= w < text[1]]
        return f"EIP samples {seen}; stack from {esp:#x}: {frames[:40]}"

    def close(self):
        self.sock.close()


def kernel_symbols(kernel=KERNEL):
    """Sorted (address, name) of the functions of the kernel (or any other ELF file)."""
    out = subprocess.run(["nm", "-n", "-C", kernel], capture_output=True, text=True, check=True).stdout
    return sorted((int(a, 16), n) for a, k, n in (l.split(" ", 2) for l in out.splitlines() if l[:1] != " ")
                  if k in "tTwW")


def host_sockets(port):
    """The host's TCP sockets to or from a port, as `ss -tanoi` shows them (for failure reports)."""
    try:
        return subprocess.run(["ss", "-tanoi", f"( sport = :{port} or dport = :{port} )"],
                              capture_output=True, text=True, timeout=10).stdout
    except Exception as e:          # noqa: BLE001 — a report, best effort
        return repr(e)


def command_line(modules=(), append=""):
    return shlex.join(qemu_command(modules, append))
