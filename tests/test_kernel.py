"""The kernel layer seen from Python: boot-module files, memory, clocks, panics."""
import errno
import hashlib
import os
import re
import time

import pytest

from qemu import PANIC_STATUS, Guest


@pytest.fixture(scope="module")
def blob(tmp_path_factory):
    path = tmp_path_factory.mktemp("mod") / "blob.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 123))     # not a multiple of the page size
    return path


@pytest.fixture(scope="module")
def guest_with_blob(blob):
    with Guest(modules=[blob]) as g:
        g.wait_prompt()
        yield g


def test_boot_module_is_a_readable_file(guest_with_blob, blob):
    g = guest_with_blob
    data = blob.read_bytes()
    assert g.eval("__import__('os').listdir('/')") == "['blob.bin']"
    assert int(g.eval("__import__('os').stat('/blob.bin')[6]")) == len(data)
    digest = g.eval("__import__('binascii').hexlify(__import__('hashlib').sha256(open('/blob.bin', 'rb').read()).digest())")
    assert digest == repr(hashlib.sha256(data).hexdigest().encode())
    out, err = g.raw_exec("f = open('/blob.bin', 'rb')\nf.seek(1000000)\nprint(f.read(8).hex())\n"
                          "f.seek(-5, 2)\nprint(f.read().hex())\nprint(f.read())\nf.close()")
    assert err == b""
    assert out.split() == [data[1000000:1000008].hex().encode(), data[-5:].hex().encode(), b"b''"]
    path = g.eval("__import__('kernel').modules()[0]")
    assert path.startswith(f"('/blob.bin', {len(data)}, ")


def test_bad_file_operations_raise(guest_with_blob):
    out, err = guest_with_blob.raw_exec(
        "for args in (('/missing',), ('/blob.bin', 'w'), ('/new.txt', 'w'), ('/sub/x',)):\n"
        "    try:\n        open(*args)\n    except OSError as e:\n        print(e.errno)\n")
    assert err == b""
    assert [int(n) for n in out.split()] == [errno.ENOENT, errno.EROFS, errno.EROFS, errno.ENOENT]


def test_64_mib_malloc_from_c(guest_with_blob):
    g = guest_with_blob
    before = int(g.eval("__import__('kernel').mem()['free']"))
    addr = int(g.eval("__import__('kernel').malloc_check(64 << 20)", timeout=120))
    after = int(g.eval("__import__('kernel').mem()['free']"))
    assert addr >= 1 << 20
    assert after == before                       # munmap gave all of it back
    out, err = g.raw_exec("try:\n    __import__('kernel').malloc_check(2000 << 20)\nexcept MemoryError as e:\n    print('MemoryError', e)")
    assert out.startswith(b"MemoryError malloc(")


HEAP_FREE = """
import gc, kernel, random
random.seed(7)
keep = []
for i in range(30000):
    b = bytearray(random.randrange(1, 600))     # objects of 1 to 38 blocks
    if random.random() < 0.5:
        keep.append(b)
for phase in ("fragmented", "collected"):
    if phase == "collected":
        keep = keep[::3]
        gc.collect()
    print(phase, gc.mem_free(), kernel.heap_free())
"""


def test_heap_free_is_gc_mem_free(guest):
    # kernel.heap_free() is gc.mem_free() counted faster (the dashboard's figure every second):
    # the same number on a fragmented heap and after a collection.
    out, err = guest.raw_exec(HEAP_FREE, timeout=120)
    assert err == b""
    lines = out.decode().split()
    assert len(lines) == 6, out
    for phase, by_gc, fast in zip(lines[0::3], lines[1::3], lines[2::3]):
        assert int(fast) == int(by_gc), (phase, by_gc, fast)


def test_clocks(guest):
    host = time.time()
    guest_time = float(guest.eval("__import__('time').time()"))
    assert abs(guest_time - host) < 5            # the RTC gives the wall clock
    out, err = guest.raw_exec("import time\nt0 = time.ticks_us()\ntime.sleep_ms(200)\nprint(time.ticks_diff(time.ticks_us(), t0))")
    assert err == b""
    assert 195_000 <= int(out) <= 400_000
    year = int(guest.eval("__import__('time').localtime()[0]"))
    assert year == time.gmtime().tm_year


def test_strs_made_at_run_time_are_the_interned_ones(guest):
    # MicroPython looks every new str up among the qstrs and hands back the interned one; the kernel
    # routes those lookups through a hash index over the qstrs in ROM (port/qstrindex.c; what it saves
    # is measured by bench/tcg.py). A slice that spells a ROM qstr is that qstr, one that does not is a
    # new str, and both are equal, hashable and concatenable as usual.
    assert guest.eval("('xappendx'[1:7] is 'append', 'x__init__'[1:] is '__init__', 'xGETx'[1:4] == 'GET', "
                      "{'GET': 1}['xGETx'[1:4]], 'ab'[0:1] + 'cd'[1:] == 'ad', 'zqzq'[1:3] == 'qz')") \
        == "(True, True, True, 1, True, True)"


@pytest.mark.parametrize("kind, name, vector", [
    ("ud", "invalid opcode", 6),
    ("de", "divide error", 0),
    ("gp", "general protection fault", 13),
])
def test_cpu_fault_gives_panic_dump(kind, name, vector):
    with Guest() as g:
        g.wait_prompt()
        g.send(f"import kernel; kernel.fault('{kind}')\r".encode())
        g.expect_exact(b"*** cllm panic: ")
        dump = g.expect_exact(b"*** end of panic").decode()
        status = g.wait_exit()
    assert dump.startswith(f"{name} (vector {vector}, error code 0x")
    for reg in ("eip", "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eflags", "cr0", "cr2"):
        assert re.search(rf"{reg}=[0-9a-f]{{8}}", dump), reg
    if kind == "gp":
        assert "error code 0x00001234" in dump   # the bad selector the test loaded
    frames = re.findall(r"^  [0-9a-f]{8}  (\S+)\+0x[0-9a-f]+", dump, re.M)
    assert frames[0] == "kernel_fault"           # symbolised, starting at the faulting function
    assert "mp_execute_bytecode" in frames and "repl_byte" in frames     # typed at the REPL (port/repl.c)
    assert status == PANIC_STATUS


def test_panic_reboot_boots_again():
    """With panic=reboot (an image's default) the dump is followed by a reset and a fresh boot."""
    with Guest(append="panic=reboot", reboot=True) as g:
        g.wait_prompt()
        g.send(b"import kernel; kernel.fault('ud')\r")
        g.expect_exact(b"*** end of panic")
        g.expect_exact(b"cllm: rebooting (panic=reboot)")
        g.expect(rb"cllm \S+ \(MicroPython", timeout=60)     # the banner of the next boot
        g.wait_prompt()
        assert g.eval("1 + 1") == "2"


def test_exit_status_reaches_qemu():
    with Guest() as g:
        g.wait_prompt()
        g.send(b"import kernel; kernel.exit(5)\r")
        assert g.wait_exit() == (5 << 1) | 1


def test_unknown_syscall_logged_once_and_answered_enosys(guest):
    # statvfs() becomes statfs64, which the shim does not implement
    out, err = guest.raw_exec(
        "import os\nfor _ in range(2):\n    try:\n        os.statvfs('/')\n    except OSError as e:\n        print('errno', e.errno)")
    assert out.count(b"cllm: unknown syscall 268") == 1
    assert out.count(f"errno {errno.ENOSYS}".encode()) == 2
