"""The chat page at / (frozen/cllm/chat_page.py), in QEMU with the tiny GGUF and an API key, driven by
Debian's headless Chromium over the DevTools protocol: the page loads without the key, shows the
server's 401 until the key is typed in, then streams replies that equal the greedy
/v1/chat/completions answers for the same conversation; Stop ends a reply; a screenshot is decoded
and its bubbles checked for their colours and text pixels (a copy stays in build/page.png)."""
import base64
import json
import os
import re
import struct
import subprocess
import time
import urllib.request
import zlib

import pytest
import websocket

from test_server import boot, request
from tinymodel import make_tiny_model

CHROMIUM = "/usr/bin/chromium"
KEY = "secret"
WIDTH, HEIGHT = 900, 640
SCREENSHOT = os.path.join(os.path.dirname(__file__), "..", "build", "page.png")
# Colours of chat_page.py's style sheet.
HEADER, USER, ASSISTANT, ERROR = (0x1f, 0x2a, 0x44), (0x2f, 0x6f, 0xd6), (0xff, 0xff, 0xff), (0xfd, 0xe7, 0xe7)


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol's websocket."""

    def __init__(self, profile, extra=()):
        assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: deps/sysdeps.sh installs Debian's chromium"
        # Without the background-networking flags Chromium's own connections get refused here.
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--hide-scrollbars", *extra, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = os.path.join(profile, "DevToolsActivePort")
        for _ in range(300):
            if os.path.exists(active) and open(active).read().count("\n") >= 1:
                break
            assert self.proc.poll() is None, f"chromium exited with {self.proc.returncode}"
            time.sleep(0.1)
        port = int(open(active).read().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:           # events in between are not needed
                assert "error" not in msg, (method, msg["error"])
                return msg["result"]

    def js(self, expr):
        """The value of a JavaScript expression in the page (promises awaited)."""
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def wait(self, expr, timeout=120):
        end = time.monotonic() + timeout
        while not self.js(expr):
            assert time.monotonic() < end, f"timed out waiting for {expr}"
            time.sleep(0.1)

    def type_into(self, element_id, text):
        self.js(f"document.getElementById({element_id!r}).focus()")
        self.call("Input.insertText", text=text)

    def click(self, element_id):
        """A real mouse click in the middle of the element."""
        x, y = self.js(f"(r => [r.x + r.width / 2, r.y + r.height / 2])"
                       f"(document.getElementById({element_id!r}).getBoundingClientRect())")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            self.proc.wait(30)


def png_pixels(data):
    """(width, height, rows of (r, g, b) tuples) of an 8-bit RGB or RGBA non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev, rows = bytearray(stride), []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):             # undo the row's filter (PNG spec, section 9)
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x:x + 3]) for x in range(0, stride, bpp)])
        prev = line
    return width, height, rows


def near(p, q, tolerance=6):
    return all(abs(a - b) <= tolerance for a, b in zip(p, q))


def region(rows, rect, inset=4):
    """The pixels inside a DOM rectangle {x, y, width, height}, a few pixels in from its edge."""
    x0, y0 = int(rect["x"]) + inset, int(rect["y"]) + inset
    x1, y1 = int(rect["x"] + rect["width"]) - inset, int(rect["y"] + rect["height"]) - inset
    return [p for row in rows[y0:y1] for p in row[x0:x1]]


def chat(srv, messages, max_tokens=16):
    status, body = request(srv, "POST", "/v1/chat/completions",
                           {"messages": messages, "temperature": 0, "max_tokens": max_tokens},
                           {"Authorization": "Bearer " + KEY})
    assert status == 200, body
    return body["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    model = make_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny.gguf"))
    g = boot(model, f"n_ctx=1024 parallel=1 api_key={KEY}")
    try:
        yield g
    finally:
        g.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(str(tmp_path_factory.mktemp("chromium")))
    try:
        yield b
    finally:
        b.close()


def test_page_is_html_and_self_contained(srv):
    status, html = request(srv, "GET", "/")                 # no API key needed for the page itself
    assert status == 200 and html.startswith("<!doctype html>") and "</html>" in html
    c = urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/", timeout=60)
    assert c.headers["Content-Type"] == "text/html; charset=utf-8"
    c.close()
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|\b(src|href)\s*=|@import|url\(", html, re.I), \
        "the page must not load anything from elsewhere"
    assert len(html) < 8192
    assert request(srv, "GET", "/v1/models")[0] == 401      # the API itself still wants the key
    srv.line("engine.state = 'loading'")
    try:                                                    # and the page is there while the model loads
        assert request(srv, "GET", "/")[0] == 200 and request(srv, "GET", "/health")[0] == 503
    finally:
        srv.line("engine.state = 'ready'")


def test_chat_streams_the_greedy_conversation(srv, browser):
    b = browser
    b.call("Page.navigate", url=f"http://127.0.0.1:{srv.port}/?temperature=0&max_tokens=16")
    b.wait("document.readyState === 'complete' && document.getElementById('model').textContent !== ''")
    assert b.js("document.getElementById('model').textContent") == "Invalid API Key"

    b.type_into("input", "Hello")               # without the key: the server's 401 message, shown
    b.click("send")
    b.wait("document.querySelector('.error') && document.body.dataset.state === 'idle'")
    assert b.js("document.querySelector('.error').textContent") == "Invalid API Key"
    assert b.js("document.querySelectorAll('.assistant').length") == 0

    b.type_into("key", KEY)
    b.js("document.getElementById('input').focus()")        # leaving the field saves it, reloads the model name
    b.wait("document.getElementById('model').textContent === 'tiny.gguf'")
    assert b.js("localStorage.getItem('cllm-api-key')") == KEY

    conversation = []
    for text in ("Hello", "Tell me more"):
        b.type_into("input", text)
        b.call("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter", windowsVirtualKeyCode=13)
        b.wait(f"document.querySelectorAll('.assistant').length === {len(conversation) // 2 + 1} "
               "&& document.body.dataset.state === 'idle'")
        conversation.append({"role": "user", "content": text})
        reply = b.js("[...document.querySelectorAll('.assistant')].pop().textContent")
        assert reply == chat(srv, conversation)
        conversation.append({"role": "assistant", "content": reply})
    assert re.fullmatch(r"\d+\.\d tokens/s", b.js("document.getElementById('speed').textContent"))
    assert b.js("document.getElementById('input').value") == ""

    shot = b.call("Page.captureScreenshot", format="png")["data"]
    data = base64.b64decode(shot)
    os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
    with open(SCREENSHOT, "wb") as f:
        f.write(data)
    width, height, rows = png_pixels(data)
    assert (width, height) == (WIDTH, HEIGHT)
    rects = json.loads(b.js("(last => JSON.stringify({header: last('header'), user: last('.user'), "
                            "assistant: last('.assistant'), error: last('.error')}))"
                            "(s => [...document.querySelectorAll(s)].pop().getBoundingClientRect())"))
    for name, colour in (("header", HEADER), ("user", USER), ("assistant", ASSISTANT), ("error", ERROR)):
        assert 0 <= rects[name]["y"] and rects[name]["y"] + rects[name]["height"] <= HEIGHT, (name, rects)
        pixels = region(rows, rects[name])
        background = sum(near(p, colour) for p in pixels)
        ink = sum(not near(p, colour, 40) for p in pixels)      # glyphs of the bubble's text
        assert background > len(pixels) // 2, (name, background, len(pixels))
        assert ink > 20, (name, ink)


def test_stop_ends_a_reply(srv, browser):
    b = browser
    b.js("document.getElementById('max').value = 400")
    before = b.js("document.querySelectorAll('.assistant').length")
    b.js("document.getElementById('speed').textContent = ''")     # the final chunk's timings would refill it
    b.type_into("input", "Go on")
    b.click("send")
    b.wait(f"document.querySelectorAll('.assistant').length > {before} "
           "&& [...document.querySelectorAll('.assistant')].pop().textContent.length > 0")
    b.click("stop")
    b.wait("document.body.dataset.state === 'idle'", timeout=30)
    assert b.js("document.getElementById('stop').disabled") and not b.js("document.getElementById('send').disabled")
    assert not b.js("document.querySelector('.busy')")
    assert b.js("document.getElementById('speed').textContent") == "", "the reply ended before Stop"
    partial = b.js("[...document.querySelectorAll('.assistant')].pop().textContent")
    assert b.js("messages.slice(-2)") == [{"role": "user", "content": "Go on"}, {"role": "assistant", "content": partial}]
    for _ in range(100):                        # the server ends the generation when the client goes
        slots = request(srv, "GET", "/slots", headers={"Authorization": "Bearer " + KEY})[1]
        if not any(s["is_processing"] for s in slots):
            break
        time.sleep(0.1)
    assert not any(s["is_processing"] for s in slots)
    assert slots[0]["next_token"][0]["n_decoded"] < 400, slots
