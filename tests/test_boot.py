"""Boot: banner, memory, command line, boot modules, frozen main.py, GC heap sizing."""
import re

from qemu import Guest


def test_banner_states_version_ram_cmdline_and_modules(tmp_path):
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 40)
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"hello from the host\n")
    with Guest(modules=[model, notes], append="api_key=secret n_ctx=512", mem="384M") as g:
        banner = g.wait_prompt().decode()
    assert re.search(r"cllm 0\.1\.0 \(MicroPython 1\.25\.0\) on i386", banner)
    ram = int(re.search(r"RAM: (\d+) MiB found", banner).group(1))
    assert 370 <= ram <= 384
    assert re.search(r'cmdline: ".*api_key=secret n_ctx=512"', banner)
    assert f"module: /tiny.gguf {model.stat().st_size} bytes" in banner
    assert f"module: /notes.txt {notes.stat().st_size} bytes" in banner
    assert "clock: hpet" in banner
    assert re.search(r"main\.py: ready after \d+ ms", banner)   # the frozen main.py ran
    assert "MicroPython v1.25.0" in banner


def test_gc_heap_sized_from_ram_and_overridable():
    with Guest(mem="512M") as g:
        g.wait_prompt()
        auto = int(g.eval("__import__('gc').mem_free() + __import__('gc').mem_alloc()"))
    with Guest(mem="512M", append="heap=3M") as g:
        g.wait_prompt()
        fixed = int(g.eval("__import__('gc').mem_free() + __import__('gc').mem_alloc()"))
    assert 40 << 20 <= auto <= 70 << 20        # an eighth of ~500 MiB free
    assert 0.95 * (3 << 20) <= fixed <= 3 << 20   # the GC's own tables take a few percent


def test_kernel_module_reports_machine(guest):
    assert guest.eval("__import__('kernel').clock()") == "'hpet'"
    mem = guest.eval("__import__('kernel').mem()")
    assert "'ram':" in mem and "'free':" in mem
    calls = guest.eval("__import__('kernel').syscalls()")
    for name in ("brk", "set_thread_area", "mmap2"):
        assert f"'{name}':" in calls
