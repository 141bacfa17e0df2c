"""mpremote, MicroPython's own host tool, drives the kernel's REPL over a serial port."""
import os
import re
import subprocess
import sys

import pytest

from qemu import qemu_command

MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")


@pytest.fixture(scope="module")
def serial_port(tmp_path_factory):
    blob = tmp_path_factory.mktemp("mp") / "weights.bin"
    blob.write_bytes(os.urandom(5000))
    proc = subprocess.Popen(qemu_command(modules=[blob], serial="pty"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    match = re.search(r"(/dev/pts/\d+)", line)
    assert match, line
    yield match.group(1), blob
    proc.kill()
    proc.wait()


def mpremote(port, *args):
    return subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True, timeout=120)


def test_mpremote_exec_and_eval(serial_port):
    serial_port, _ = serial_port
    r = mpremote(serial_port, "exec", "import sys; print(sys.platform, 6 * 7)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "cllm 42"
    r = mpremote(serial_port, "eval", "2 ** 70")
    assert r.stdout.strip() == str(2 ** 70)


def test_mpremote_copies_a_boot_module_out(serial_port, tmp_path):
    serial_port, blob = serial_port
    r = mpremote(serial_port, "fs", "ls", ":/")
    assert r.returncode == 0, r.stderr
    assert "weights.bin" in r.stdout
    copy = tmp_path / "copy.bin"
    r = mpremote(serial_port, "fs", "cp", ":/weights.bin", str(copy))
    assert r.returncode == 0, r.stderr
    assert copy.read_bytes() == blob.read_bytes()
