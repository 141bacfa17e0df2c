"""The vga module, the boot log and the server's status panel on screen, read back from the host
through QEMU's monitor."""
import http.client
import json
import os
import re
import tempfile
import time

import pytest

from qemu import Guest, Monitor, free_port
from tinymodel import make_tiny_model

VGA_TEXT = 0xB8000
ROWS, COLS = 25, 80


def screen_of(tmp, **guest):
    """(guest, read) where read() returns the screen as ROWS lists of (char, attribute)."""
    path = os.path.join(tmp, "monitor.sock")
    g = Guest(monitor=f"unix:{path},server=on,wait=off", **guest)
    mon = Monitor(path)

    def read():
        raw = mon.read_memory(VGA_TEXT, ROWS * COLS * 2, os.path.join(tmp, "screen.bin"))
        cells = [(chr(raw[i]), raw[i + 1]) for i in range(0, len(raw), 2)]
        return [cells[r * COLS:(r + 1) * COLS] for r in range(ROWS)]
    return g, mon, read


@pytest.fixture(scope="module")
def screen():
    with tempfile.TemporaryDirectory() as tmp:
        g, mon, read = screen_of(tmp)
        with g:
            g.wait_prompt()
            yield g, read
            mon.close()


def text(row):
    return "".join(c for c, _ in row).rstrip()


def unstamped(line):
    """A boot log line without its "[   0.123] " time stamp."""
    return re.sub(r"^\[ *\d+\.\d{3}\] ", "", line)


def test_boot_log_is_mirrored(screen):
    g, read = screen
    rows = read()
    lines = [text(r) for r in rows]
    assert re.match(r"\[ *0\.\d{3}\] cllm 0\.1\.0 \(MicroPython 1\.25\.0\) on i386", lines[0])
    assert any(unstamped(line).startswith("clock: ") for line in lines)
    assert any(line.startswith("MicroPython v1.25.0") for line in lines)
    assert ">>>" in lines
    assert all(a == 0x07 for c, a in rows[0])        # light grey on black


def test_print_at_colours_and_cursor(screen):
    g, read = screen
    out, err = g.raw_exec(
        "import vga\n"
        "vga.mirror(False)\n"
        "vga.clear()\n"
        "vga.print_at(3, 10, 'hello', vga.YELLOW, vga.BLUE)\n"
        "vga.print_at(24, 76, 'clipped', vga.WHITE, vga.RED)\n"
        "vga.cursor(5, 7)\n"
        "print(vga.cursor(), vga.cell(3, 10))")
    assert err == b"", err
    assert out.strip() == b"(5, 7) ('h', 14, 1)"
    rows = read()
    assert rows[3][10:15] == [(c, 0x1E) for c in "hello"]
    assert rows[24][76:80] == [(c, 0x4F) for c in "clip"]
    assert text(rows[0]) == "" and text(rows[1]) == ""    # the REPL's output no longer lands here


def test_write_wraps_and_scrolls(screen):
    g, read = screen
    out, err = g.raw_exec(
        "vga.clear()\n"
        "vga.colour(vga.LIGHT_GREEN, vga.BLACK)\n"
        "for i in range(30):\n"
        "    vga.write('line %d\\n' % i)\n"
        "vga.write('x' * 85)\n"
        "print(vga.cursor())")
    assert err == b"", err
    assert out.strip() == b"(24, 5)"
    lines = [text(r) for r in read()]
    # 30 lines and two rows of x's on a 25-row screen: the first 7 lines scrolled away
    assert lines[0] == "line 7" and lines[22] == "line 29"
    assert lines[23] == "x" * 80 and lines[24] == "x" * 5
    g.raw_exec("vga.scroll(2)")
    rows = read()
    assert text(rows[0]) == "line 9" and text(rows[22]) == "x" * 5 and text(rows[24]) == ""
    assert rows[0][0][1] == 0x0A                          # light green on black


def test_mirror_back_on_and_bad_input(screen):
    g, read = screen
    out, err = g.raw_exec("vga.print_at(25, 0, 'x')")
    assert b"IndexError: (25, 0) is off the 25x80 screen" in err
    out, err = g.raw_exec("vga.colour(16, 0)")
    assert b"ValueError: colours are 0..15" in err
    g.raw_exec("vga.colour(vga.LIGHT_GREY, vga.BLACK)\nvga.clear()\nvga.mirror(True)")
    g.line("print('mirrored ' * 2)")
    assert any(text(r) == "mirrored mirrored" for r in read())


def test_status_panel_while_serving(tmp_path):
    """With the server running, the top rows are a live panel and the log scrolls on below it."""
    model = make_tiny_model(str(tmp_path / "tiny.gguf"))
    port = free_port()
    g, mon, read = screen_of(str(tmp_path), modules=[model], append="n_ctx=256 parallel=2", mem="256M",
                             timeout=120, hostfwd=[f"tcp:127.0.0.1:{port}-:80"])
    with g:
        g.expect(b"serving on port 80", timeout=120)
        g.expect(rb"net: address 10\.0\.2\.15 \(dhcp\); http://10\.0\.2\.15:80/", timeout=30)
        g.wait_prompt()                                      # the REPL starts after that last boot step
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("POST", "/completion", json.dumps({"prompt": "Hello", "n_predict": 8, "temperature": 0,
                                                     "ignore_eos": True}))
        r = c.getresponse()
        assert r.status == 200, r.read()
        out = json.loads(r.read())
        time.sleep(2.5)                                      # the panel is redrawn every second
        rows = read()
        lines = [text(r) for r in rows]
        assert lines[0].startswith(" cllm 0.1.0 | tiny.gguf | http://10.0.2.15:80/"), lines[:4]
        assert all(a == 0x1F for c, a in rows[0])           # white on blue across the screen
        assert re.search(r" up 0:00:\d\d$", lines[0]) and len(text(rows[0])) == 79
        assert re.match(r" requests 1 \(0 rejected\)  slots 0/2 busy, 0 waiting  heap free \d+ KiB$", lines[1]), lines[1]
        prompt, gen = re.match(r" prompt (\d+) tok at [\d.]+ tok/s   generated (\d+) tok at [\d.]+ tok/s", lines[2]).groups()
        assert int(prompt) == out["tokens_evaluated"] and int(gen) == out["tokens_predicted"]
        assert lines[3] == "-" * 80
        # below the panel, the boot log with each step's time, up to the serving line
        log = "".join(c for row in rows[4:] for c, _ in row)        # long lines wrap at 80 columns
        assert re.search(r"\] cllm: tiny\.gguf \(.*\) ready after \d+ ms; serving on port 80 ", log), log
        stamps = [float(m.group(1)) for m in (re.match(r"\[ *(\d+\.\d{3})\]", line) for line in lines[4:]) if m]
        assert len(stamps) >= 5 and stamps == sorted(stamps)
        # the REPL's output scrolls below the panel, which stays
        for i in range(30):
            g.line(f"print('row {i}')")
        lines = [text(r) for r in read()]
        assert lines[0].startswith(" cllm 0.1.0 |") and "row 29" in lines[4:]
        # a stopped server gives the whole screen back to the console
        g.send(b"server.stop()\r")
        g.expect(b"stopped; server.start\\(\\) serves again", timeout=30)
        g.wait_prompt()
        assert g.eval("__import__('vga').reserve()") == "0"
        mon.close()
