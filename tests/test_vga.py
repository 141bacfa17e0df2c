"""The vga module and the boot log on screen, read back from the host through QEMU's monitor."""
import os
import tempfile

import pytest

from qemu import Guest, Monitor

VGA_TEXT = 0xB8000
ROWS, COLS = 25, 80


@pytest.fixture(scope="module")
def screen():
    """(guest, read) where read() returns the screen as ROWS lists of (char, attribute)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "monitor.sock")
        with Guest(monitor=f"unix:{path},server=on,wait=off") as g:
            g.wait_prompt()
            mon = Monitor(path)

            def read():
                raw = mon.read_memory(VGA_TEXT, ROWS * COLS * 2, os.path.join(tmp, "screen.bin"))
                cells = [(chr(raw[i]), raw[i + 1]) for i in range(0, len(raw), 2)]
                return [cells[r * COLS:(r + 1) * COLS] for r in range(ROWS)]

            yield g, read
            mon.close()


def text(row):
    return "".join(c for c, _ in row).rstrip()


def test_boot_log_is_mirrored(screen):
    g, read = screen
    rows = read()
    lines = [text(r) for r in rows]
    assert lines[0].startswith("cllm 0.1.0 (MicroPython 1.25.0) on i386")
    assert any(line.startswith("clock: ") for line in lines)
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
