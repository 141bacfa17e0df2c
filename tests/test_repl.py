"""The serial REPL: Python itself, Ctrl-C, soft reboot, raw REPL, raw-paste and paste mode."""
import struct
import time

from qemu import PROMPT, RAW_PROMPT, Guest


def test_arithmetic_bigints_floats(guest):
    assert guest.line("6 * 7").strip() == b"42"
    assert guest.line("2 ** 200").strip() == str(2 ** 200).encode()
    assert guest.line("(3 ** 100) // (7 ** 20) % 1000003").strip() == str((3 ** 100) // (7 ** 20) % 1000003).encode()
    assert guest.line("1 / 3").strip() == repr(1 / 3).encode()          # double precision
    assert guest.line("2.5e300 * 1e10").strip() == b"inf"
    # MicroPython prints 16 significant digits; the value itself is the IEEE double
    assert guest.line("import math; math.sqrt(2) == 1.4142135623730951").strip() == b"True"


def test_traceback(guest):
    guest.raw_exec("def f(x):\n    return 1 / x")
    out = guest.line("f(0)")
    assert b"Traceback (most recent call last):" in out
    assert b'File "<stdin>", line 2, in f' in out
    assert b'File "<stdin>", line 1, in <module>' in out
    assert b"ZeroDivisionError: divide by zero" in out


def test_tab_completion_and_history(guest):
    guest.line("abc_value = 12345")
    guest.send(b"abc_v\t")
    guest.expect_exact(b"abc_value")
    guest.send(b"\r")
    assert b"12345" in guest.wait_prompt()
    guest.send(b"\x1b[A")                       # up arrow: the previous line comes back
    guest.expect_exact(b"abc_value")
    guest.send(b" + 1\r")
    assert b"12346" in guest.wait_prompt()


def test_ctrl_c_interrupts_a_busy_loop(guest):
    guest.send(b"while True: pass\r\r")
    time.sleep(1.0)
    guest.send(b"\x03")
    out = guest.wait_prompt(timeout=10)
    assert b"KeyboardInterrupt" in out
    assert guest.line("1 + 1").strip() == b"2"


def test_ctrl_c_interrupts_sleep(guest):
    guest.send(b"import time; time.sleep(60)\r")
    time.sleep(1.0)
    guest.send(b"\x03")
    assert b"KeyboardInterrupt" in guest.wait_prompt(timeout=10)


def test_paste_mode(guest):
    guest.send(b"\x05")
    guest.expect_exact(b"paste mode; Ctrl-C to cancel, Ctrl-D to finish")
    guest.send(b"def g():\r    return 'pasted'\r\rprint(g())\r\x04")
    assert b"pasted" in guest.wait_prompt()


def test_raw_repl_round_trip(guest):
    out, err = guest.raw_exec("for i in range(3):\n    print(i * i)")
    assert out == b"0\r\n1\r\n4\r\n" and err == b""
    out, err = guest.raw_exec("raise ValueError('bad input')")
    assert out == b"" and b"ValueError: bad input" in err


def test_raw_paste_mode(guest):
    """The raw-paste protocol mpremote uses: flow-controlled upload, then output and errors."""
    code = "\n".join(f"v{i} = {i}" for i in range(400)) + "\nprint(sum([" + ",".join(f"v{i}" for i in range(400)) + "]))\n"
    guest.send(b"\r\x01")
    guest.expect_exact(RAW_PROMPT)
    guest.send(b"\x05A\x01")
    guest.expect_exact(b"R\x01")
    window = struct.unpack("<H", guest.read(2))[0]
    assert window > 0
    data, remain = code.encode(), window
    while data:
        while remain == 0:
            assert guest.read(1) == b"\x01"
            remain += window
        chunk, data = data[:remain], data[remain:]
        guest.send(chunk)
        remain -= len(chunk)
    guest.send(b"\x04")
    guest.expect_exact(b"\x04")                  # end of data acknowledged
    out = guest.expect_exact(b"\x04", timeout=30)
    err = guest.expect_exact(b"\x04")
    assert out.strip() == str(sum(range(400))).encode() and err == b""
    guest.expect_exact(b">")
    guest.send(b"\x02")
    guest.wait_prompt()


def test_soft_reboot_resets_python_state():
    with Guest() as g:
        g.wait_prompt()
        g.line("survivor = 1")
        g.send(b"\x04")
        out = g.wait_prompt()
        assert b"MPY: soft reboot" in out
        assert b"main.py: ready" in out          # the frozen main.py runs again
        assert b"NameError" in g.line("survivor")
        assert g.line("2 + 2").strip() == b"4"


def test_sys_exit_soft_reboots():
    with Guest() as g:
        g.wait_prompt()
        g.send(b"import sys; sys.exit()\r")
        assert b"MPY: soft reboot" in g.wait_prompt()
        assert g.alive()
