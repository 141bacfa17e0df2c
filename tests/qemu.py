"""Boot the cllm kernel in QEMU and talk to it over its serial console."""
import os
import shlex
import time

import pexpect
from pexpect.popen_spawn import PopenSpawn

KERNEL = os.environ.get("CLLM_KERNEL", os.path.join(os.path.dirname(__file__), "..", "build", "port", "cllm.elf"))
PROMPT = b">>> "
RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
PANIC_STATUS = (0x10 << 1) | 1     # kernel_exit(PANIC_EXIT_STATUS) through isa-debug-exit


def qemu_command(modules=(), append="", mem="256M", kernel=KERNEL, serial="chardev:con"):
    cmd = ["qemu-system-i386", "-machine", "pc", "-accel", "tcg", "-cpu", "max", "-m", mem, "-no-reboot",
           "-display", "none", "-monitor", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
           "-kernel", kernel, "-append", append]
    if serial == "chardev:con":
        cmd += ["-chardev", "stdio,id=con,signal=off"]
    cmd += ["-serial", serial]
    if modules:
        cmd += ["-initrd", ",".join(os.fspath(m) for m in modules)]
    return cmd


class Guest:
    """One QEMU run. Output is bytes; the console sends \\r\\n line ends.

    The console is a pipe, not a pty: a pty would add its own \\r to every line end."""

    def __init__(self, modules=(), append="", mem="256M", timeout=60):
        cmd = qemu_command(modules, append, mem)
        self.started = time.monotonic()
        self.child = PopenSpawn(cmd, timeout=timeout)
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


def command_line(modules=(), append=""):
    return shlex.join(qemu_command(modules, append))
