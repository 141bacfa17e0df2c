"""make soak: the server under a mixed load for SOAK_MINUTES (default 20) with the tiny GGUF in QEMU, over
127.0.0.1. Streaming chat clients, clients that disconnect mid-stream, greedy completions whose text must
not change, malformed and oversized requests, and /health polled throughout. At the end every
well-formed request must have been answered correctly, the Python heap and lwIP's connections must be
back at their baseline and every slot idle. Prints the figures the README quotes; exits 1 on a failure.

    make soak [SOAK_MINUTES=20]
"""
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_server import boot, guest_value, request  # noqa: E402
from test_stress import CORPUS, answer, heap_free, post  # noqa: E402
from tinymodel import make_tiny_model  # noqa: E402

MINUTES = float(os.environ.get("SOAK_MINUTES", "20"))
GREEDY = {"prompt": "The soak test's fixed prompt", "n_predict": 12, "temperature": 0, "cache_prompt": False}


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts, self.failures, self.health_ms = {}, [], []

    def ok(self, kind):
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def fail(self, kind, what):
        with self.lock:
            self.failures.append("{}: {}".format(kind, what))


def stream_chat(g, i, disconnect):
    """A streamed chat completion: read to [DONE], or (disconnect) close after the first event."""
    body = json.dumps({"messages": [{"role": "user", "content": "Story %d" % i}], "max_tokens": 16,
                       "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", g.port), timeout=120) as s:
        s.sendall(post(body, path=b"/v1/chat/completions"))
        data = b""
        while b"data: " not in data:
            chunk = s.recv(4096)
            if not chunk:
                return "closed before the first event: %r" % data[:200]
            data += chunk
        if disconnect:
            return None
        while not data.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"):     # chunked: an HTTP/1.1 request
            chunk = s.recv(4096)
            if not chunk:
                return "stream ended without [DONE] and the last chunk: %r" % data[-200:]
            data += chunk
    return None if data.startswith(b"HTTP/1.1 200") else "status %r" % data[:40]


def client(g, kind, tally, stop, first_greedy):
    i = 0
    while not stop.is_set():
        i += 1
        try:
            if kind in ("stream", "disconnect"):
                err = stream_chat(g, i, kind == "disconnect")
            elif kind == "greedy":
                status, out = request(g, "POST", "/completion", GREEDY, timeout=120)
                err = None if status == 200 and out["content"] == first_greedy else "%s %s" % (status, out)
            elif kind == "malformed":
                name = sorted(CORPUS)[i % len(CORPUS)]
                status = answer(g, CORPUS[name])
                err = None if status.split()[1:2] and status.split()[1][:1] == b"4" else "%s: %r" % (name, status)
            elif kind == "oversized":
                status, _ = request(g, "POST", "/completion", raw=b'{"prompt": "' + b"x" * 8192 + b'"}')
                err = None if status == 413 else "status %s" % status
            else:       # health
                t = time.monotonic()
                status, out = request(g, "GET", "/health", timeout=30)
                with tally.lock:
                    tally.health_ms.append((time.monotonic() - t) * 1000)
                err = None if status == 200 else "status %s" % status
                time.sleep(0.2)
        except Exception as e:          # a timeout or a reset is a failure of the appliance
            err = repr(e)
        if err:
            tally.fail(kind, err)
        else:
            tally.ok(kind)
        if kind in ("malformed", "oversized"):
            time.sleep(0.05)            # abuse alongside the real load, not instead of it


def open_connections(g):
    """lwIP's TCP connections other than listening ones and those in TIME_WAIT."""
    return guest_value(g, "[c[0] for c in __import__('network').LAN().tcp() if c[0] not in ('LISTEN', 'TIME_WAIT')]")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model(os.path.join(tmp, "tiny.gguf"))
        g = boot(model, "n_ctx=512 parallel=2 queue=8 timeout=3 max_body=4096 cache_prompt=0")
        try:
            for _ in range(20):         # warm up: caches, interned strings
                request(g, "POST", "/completion", {"prompt": "Hi", "n_predict": 2})
            status, first = request(g, "POST", "/completion", GREEDY)
            assert status == 200, first
            heap_before = heap_free(g)
            tally, stop = Tally(), threading.Event()
            kinds = ["stream", "stream", "stream", "disconnect", "greedy", "malformed", "oversized", "health"]
            threads = [threading.Thread(target=client, args=(g, k, tally, stop, first["content"]), daemon=True)
                       for k in kinds]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            while time.monotonic() - t0 < MINUTES * 60:
                time.sleep(10)
                print("{:5.1f} min: {} answered, {} failures".format(
                    (time.monotonic() - t0) / 60, sum(tally.counts.values()), len(tally.failures)), flush=True)
            stop.set()
            for t in threads:
                t.join(timeout=180)
            time.sleep(5)               # the disconnected streams' generations end, TIME_WAITs settle
            slots = request(g, "GET", "/slots")[1]
            heap_after = heap_free(g)
            busy_conns = open_connections(g)
            restarts = guest_value(g, "engine.stats['restarts']")
        finally:
            g.close()
    health = sorted(tally.health_ms)
    print("soak: {:.0f} min, {} requests answered ({}), {} failures".format(
        MINUTES, sum(tally.counts.values()), ", ".join("%s %d" % kv for kv in sorted(tally.counts.items())),
        len(tally.failures)))
    print("/health: {} polls, p50 {:.0f} ms, p99 {:.0f} ms, max {:.0f} ms".format(
        len(health), statistics.median(health), health[int(len(health) * 0.99) - 1], health[-1]))
    print("heap free {} -> {} bytes; open connections at the end {}; slots processing {}; engine restarts {}"
          .format(heap_before, heap_after, busy_conns, [s["id"] for s in slots if s["is_processing"]], restarts))
    problems = tally.failures[:20]
    if abs(heap_after - heap_before) > 64 * 1024:
        problems.append("heap free moved by {} bytes".format(heap_after - heap_before))
    if busy_conns:
        problems.append("connections left open: {}".format(busy_conns))
    if any(s["is_processing"] for s in slots):
        problems.append("slots still processing: {}".format(slots))
    if restarts:
        problems.append("the engine restarted {} times".format(restarts))
    for p in problems:
        print("FAIL", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
