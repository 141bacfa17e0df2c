"""The console of a serving appliance: MicroPython's own REPL while the server serves (paste mode, tab
completion, history), Ctrl-C that interrupts what the console runs and never the server, mpremote over
a pty while a completion streams, server.stop()/start(), and Ctrl-D's soft reboot back to serving.
The tiny GGUF; HTTP only to 127.0.0.1, forwarded by QEMU to the guest's port 80."""
import http.client
import os
import re
import subprocess
import sys
import threading
import time

import pexpect
import pytest

from qemu import qemu_command, free_port
from test_server import PROMPT, boot, events, guest_value, repl, request
from tinymodel import make_tiny_model

MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")
N = 48          # tokens a stream generates: long enough to be in flight while the console works
GREEDY = {"prompt": PROMPT, "n_predict": N, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny.gguf"))


@pytest.fixture(scope="module")
def srv(model):
    # cache_prompt=0: every stream decodes its prompt from scratch, so greedy runs are identical
    g = boot(model, "n_ctx=512 parallel=2 cache_prompt=0")
    try:
        yield g
    finally:
        g.close()


class Streams(threading.Thread):
    """Greedy streams of GREEDY, one after the other, until stop(): each one's text and its time span."""

    def __init__(self, g):
        super().__init__(daemon=True)
        self.g = g
        self.done = threading.Event()
        self.runs = []          # (start, end, text, last event)
        self.error = None

    def run(self):
        try:
            while not self.done.is_set():
                t0 = time.monotonic()
                ev = events(self.g, "/completion", dict(GREEDY, stream=True))
                self.runs.append((t0, time.monotonic(), "".join(e["content"] for e in ev), ev[-1]))
        except Exception as e:      # noqa: BLE001 — reported by stop()
            self.error = e

    def stop(self):
        self.done.set()
        self.join(timeout=120)
        assert not self.is_alive() and self.error is None, self.error
        return self.runs

    def during(self, t0, t1):
        """Whether a stream was in flight at some time in [t0, t1]."""
        return any(a < t1 and b > t0 for a, b, _, _ in self.runs)


def greedy_text(g):
    status, body = request(g, "POST", "/completion", GREEDY)
    assert status == 200, body
    return body["content"]


def test_paste_mode_tab_completion_and_history(srv):
    srv.send(b"\x05")
    srv.expect_exact(b"paste mode; Ctrl-C to cancel, Ctrl-D to finish")
    srv.send(b"def twice(x):\r    y = x * 2\r\r    return y\r\x04")
    srv.wait_prompt()
    assert repl(srv, "twice(21)").strip() == b"42"
    # tab completion over the server's names, from __main__'s namespace
    srv.send(b"serv\t")
    srv.expect_exact(b"server")
    srv.send(b".stat\t")
    srv.expect_exact(b"s")
    srv.send(b"()['state']\r")
    assert srv.wait_prompt().strip().endswith(b"'ready'")
    # history: up-arrow brings the last line back
    assert repl(srv, "6 * 7").strip() == b"42"
    srv.send(b"\x1b[A\r")
    assert srv.wait_prompt().strip().endswith(b"42")
    # auto-indent: the body is indented for us; backspace takes a level back, Enter on an empty line runs
    srv.send(b"for i in range(2):\r")
    srv.expect_exact(b"...     ")
    srv.send(b"print('row', i)\r")
    srv.expect_exact(b"...     ")
    srv.send(b"\b\r")
    assert b"row 0\r\nrow 1\r\n" in srv.wait_prompt()
    assert request(srv, "GET", "/health")[0] == 200


@pytest.mark.parametrize("runaway", ["while True: pass\r\r", "import time; time.sleep(60)\r",
                                     "for i in range(10 ** 9):\rx = i\r\b\r"])
def test_ctrl_c_interrupts_what_the_console_runs_not_the_server(srv, runaway):
    want = greedy_text(srv)
    streams = Streams(srv)
    streams.start()
    while not streams.runs:                     # a stream has run start to end: the next is in flight
        time.sleep(0.05)
    srv.send(runaway.encode())
    time.sleep(1.5)
    t0 = time.monotonic()
    srv.send(b"\x03")
    out = srv.expect_exact(b"KeyboardInterrupt", timeout=10)
    took = time.monotonic() - t0
    srv.wait_prompt()
    runs = streams.stop()
    assert b"Traceback (most recent call last)" in out
    assert took < 1.0, f"Ctrl-C took {took:.2f} s to interrupt {runaway!r}"
    # every stream, the one the runaway statement held up too, is the greedy text, whole
    assert len(runs) >= 2 and all(text == want and last["stop"] for _, _, text, last in runs), runs
    assert request(srv, "GET", "/health")[0] == 200
    assert guest_value(srv, "server.stats()['state']") == "ready"


def test_ctrl_c_at_the_prompt_clears_the_line_and_keeps_serving(srv):
    srv.send(b"1 + ")
    srv.send(b"\x03")
    srv.wait_prompt()
    assert repl(srv, "2 + 3").strip() == b"5"
    assert request(srv, "GET", "/health")[0] == 200


def test_stop_then_start(srv):
    streams = Streams(srv)
    streams.start()
    while not streams.runs:
        time.sleep(0.05)
    srv.send(b"server.stop()\r")
    srv.expect(rb"stopping: \d+ requests in flight end with a 503", timeout=30)
    srv.expect_exact(b"stopped; server.start() serves again", timeout=30)
    srv.wait_prompt()
    streams.done.set()
    streams.join(timeout=30)
    assert not streams.is_alive()               # the stream cut by the stop ended; it did not hang
    with pytest.raises(OSError):
        request(srv, "GET", "/health", timeout=5)
    # the REPL goes on without the server; the model stays loaded
    assert repl(srv, "1 + 1").strip() == b"2"
    assert b"RuntimeError: not serving" in repl(srv, "server.stop()")
    assert guest_value(srv, "server.stats()['state']") == "stopped"
    srv.send(b"server.start()\r")
    srv.expect(rb"ready after \d+ ms; serving on port 80", timeout=60)
    srv.wait_prompt()
    assert b"loading" not in srv.log[-1]
    assert request(srv, "GET", "/health")[0] == 200
    assert greedy_text(srv)
    assert b"RuntimeError: already serving" in repl(srv, "server.start()")
    assert guest_value(srv, "server.stats()['state']") == "ready"


def test_ctrl_d_soft_reboots_back_to_serving(srv):
    repl(srv, "marker = 1")
    srv.send(b"\x04")
    srv.expect_exact(b"MPY: soft reboot", timeout=30)
    srv.expect(rb"ready after \d+ ms; serving on port 80", timeout=60)
    srv.wait_prompt()
    assert request(srv, "GET", "/health")[0] == 200
    assert b"NameError" in repl(srv, "marker")
    assert guest_value(srv, "server.stats()['state']") == "ready"


@pytest.fixture(scope="module")
def on_pty(model):
    """A serving guest whose console is a pty, as a host tool finds it."""
    port = free_port()
    cmd = qemu_command(modules=[model], append="n_ctx=512 parallel=2 cache_prompt=0", serial="pty",
                       hostfwd=[f"tcp:127.0.0.1:{port}-:80"])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        match = re.search(r"(/dev/pts/\d+)", proc.stdout.readline())
        assert match
        g = type("Serving", (), {"port": port, "pty": match.group(1)})
        end = time.monotonic() + 120
        while not health(port):
            assert time.monotonic() < end, "the guest did not serve"
            time.sleep(0.5)
        yield g
    finally:
        proc.kill()
        proc.wait()


def health(port):
    """Whether /health answers 200 (for a guest without a console to report from)."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/health")
        return c.getresponse().status == 200
    except OSError:
        return False
    finally:
        c.close()


def mpremote(g, *args):
    t0 = time.monotonic()
    r = subprocess.run([MPREMOTE, "connect", g.pty, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout, (t0, time.monotonic())


def test_mpremote_while_a_completion_streams(on_pty, tmp_path):
    want = greedy_text(on_pty)
    streams = Streams(on_pty)
    streams.start()
    while not streams.runs:
        time.sleep(0.05)
    spans = []
    out, span = mpremote(on_pty, "exec", "print(server.stats()['state'], len(engine.slots))")
    assert out.strip() == "ready 2"
    spans.append(span)
    out, span = mpremote(on_pty, "eval", "server.settings.n_ctx")
    assert out.strip() == "512"
    spans.append(span)
    script = tmp_path / "script.py"
    script.write_text("total = sum(range(10))\nprint('script', total, server.stats()['requests'] > 0)\n")
    out, span = mpremote(on_pty, "run", str(script))
    assert out.strip() == "script 45 True"
    spans.append(span)
    # each command starts with a fresh console namespace (mpremote's soft reset), the server's names in it
    out, span = mpremote(on_pty, "exec", "print('total' in globals(), 'server' in globals())")
    assert out.strip() == "False True"
    spans.append(span)
    # mpremote repl: the friendly REPL, through the tool's terminal
    t0 = time.monotonic()
    term = pexpect.spawn(MPREMOTE, ["connect", on_pty.pty, "repl"], timeout=60)
    term.expect_exact("Connected to MicroPython")
    term.send("6 * 7\r")
    term.expect_exact("42")
    term.sendcontrol("]")
    term.expect(pexpect.EOF)
    spans.append((t0, time.monotonic()))
    runs = streams.stop()
    assert all(text == want and last["stop"] for _, _, text, last in runs), runs
    assert all(streams.during(*s) for s in spans), (spans, [(a, b) for a, b, _, _ in runs])
    assert health(on_pty.port)
