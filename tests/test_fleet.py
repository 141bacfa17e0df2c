"""Two boxes behind HAProxy with the repository's fleet/haproxy.cfg (fleet/fleet.py, what `make fleet`
runs): every route answers through the balancer, streams are passed on as they come, excess requests
queue at the balancer, a box killed mid-load is taken out within 2 s while the other finishes its
work and takes every new request, and the box booted again rejoins by itself; a box reading a long
prompt is not taken for dead."""
import http.client
import json
import os
import shutil
import socket
import sys
import threading
import time

import pytest

from qemu import free_port
from tinymodel import make_tiny_model

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fleet"))
from fleet import Fleet, haproxy_config  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (deps/sysdeps.sh)")

APPEND = "n_ctx=8192 parallel=2 cache_prompt=0"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    model = make_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny.gguf"), n_ctx_train=8192)
    f = Fleet(2, free_port(), free_port(), model, APPEND, smp=1, mem="256M",
              workdir=str(tmp_path_factory.mktemp("fleet")), box_ports=[free_port(), free_port()])
    try:
        f.start(timeout=120)
        yield f
    finally:
        f.stop()


def call(port, method, path, body=None, timeout=60):
    """(status, box that answered, parsed JSON or text)"""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        text = r.read().decode()
        kind = r.getheader("Content-Type", "")
        return r.status, r.getheader("X-Cllm-Box"), json.loads(text) if kind.startswith("application/json") else text
    finally:
        c.close()


class Stream(threading.Thread):
    """A streamed /completion through a port: its box, each event's arrival time, how it ended."""

    def __init__(self, port, n_predict, prompt="Once upon a time"):
        super().__init__(daemon=True)
        self.port, self.body = port, {"prompt": prompt, "n_predict": n_predict, "stream": True,
                                      "temperature": 0, "ignore_eos": True}
        self.box, self.times, self.tokens, self.stopped, self.error = None, [], None, False, None
        self.first = threading.Event()

    def run(self):
        """Over a socket, HTTP/1.1 and its chunks read here: what a client library would report as an
        incomplete body (http.client's readline() ends such a stream quietly) is an error here."""
        try:
            body = json.dumps(self.body).encode()
            s = socket.create_connection(("127.0.0.1", self.port), timeout=120)
            s.sendall(b"POST /completion HTTP/1.1\r\nHost: fleet\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            f = s.makefile("rb")
            status = f.readline()
            headers = {}
            while (line := f.readline()) not in (b"\r\n", b""):
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            self.box = headers.get("x-cllm-box")
            assert status.startswith(b"HTTP/1.1 200") and headers.get("transfer-encoding") == "chunked", (status, headers)
            pending = b""
            while True:
                size_line = f.readline()
                if not size_line.endswith(b"\r\n"):
                    raise ConnectionError(f"incomplete chunked body after {len(self.times)} events")
                size = int(size_line, 16)
                if size == 0:
                    break
                chunk = f.read(size + 2)
                if len(chunk) != size + 2:
                    raise ConnectionError(f"incomplete chunk after {len(self.times)} events")
                pending += chunk[:-2]
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    event = json.loads(event[len(b"data: "):])
                    self.times.append(time.monotonic())
                    self.first.set()
                    if event.get("stop"):
                        self.tokens, self.stopped = event["tokens_predicted"], True
            s.close()
        except Exception as e:      # noqa: BLE001 — what the client saw is the result
            self.error = e
        finally:
            self.first.set()


def test_config_of_the_repository_is_what_runs(fleet):
    text = open(fleet.config).read()
    for line in ("balance leastconn", "option httpchk GET /health", "stats enable",
                 "http-request use-service prometheus-exporter if { path /metrics }"):
        assert line in text
    assert text.count("\n    server ") == 2 and f"127.0.0.1:{fleet.boxes[0].port} maxconn 2" in text
    with pytest.raises(ValueError):
        haproxy_config([("b", 1)], 1, 2, 2, text="frontend x\n    bind :1\n")


def test_every_route_through_the_balancer(fleet):
    box = fleet.boxes[0].port
    requests = [("GET", "/health", None), ("GET", "/v1/models", None), ("GET", "/models", None),
                ("GET", "/props", None), ("GET", "/slots", None), ("GET", "/metrics", None), ("GET", "/", None),
                ("POST", "/tokenize", {"content": "Hello world"}), ("POST", "/detokenize", {"tokens": [5, 6, 7]}),
                ("POST", "/apply-template", {"messages": [{"role": "user", "content": "hi"}]}),
                ("POST", "/completion", {"prompt": "Hi", "n_predict": 8, "temperature": 0}),
                ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 8, "temperature": 0}),
                ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                                                  "temperature": 0}),
                ("POST", "/infill", {"input_prefix": "def f(", "input_suffix": ")", "n_predict": 4}),
                ("POST", "/embedding", {"content": "Hello"}),
                ("POST", "/completion", {"prompt": 5}),             # an error passes through too
                ("GET", "/no-such-route", None)]
    boxes = set()
    for method, path, body in requests:
        s1, served_by, got = call(fleet.port, method, path, body)
        s2, direct_by, want = call(box, method, path, body)
        assert s1 == s2, (path, s1, got, s2, want)
        assert served_by in ("box1", "box2") and direct_by is None, (path, served_by, direct_by)
        boxes.add(served_by)
        if path in ("/tokenize", "/detokenize", "/apply-template"):
            assert got == want, path
        if path == "/completion" and s1 == 200:
            assert got["content"] == want["content"] and got["tokens_predicted"] == 8
    assert boxes == {"box1", "box2"}, "leastconn sends idle boxes requests in turn"


def test_streams_pass_through_as_they_come(fleet):
    s = Stream(fleet.port, 300)
    s.start()
    s.join(120)
    assert s.stopped and s.error is None and s.tokens == 300
    span = s.times[-1] - s.times[0]
    # HAProxy holds nothing back: events arrive spread over the generation in many separate bursts
    # (what the box sent at once), not as one block at the end nor in buffer-sized blocks (300 events
    # are ~60 KB: a 16 KB buffer would make 4)
    bursts = 1 + sum(b - a > 0.01 for a, b in zip(s.times, s.times[1:]))
    assert span > 0.5 and bursts >= 20, (span, bursts)


def test_excess_requests_queue_at_the_balancer(fleet):
    before = fleet.stats()
    streams = [Stream(fleet.port, 200) for _ in range(6)]
    for s in streams:
        s.start()
    seen_queue, seen_busy = 0, {}
    while any(s.is_alive() for s in streams):
        rows = fleet.stats()
        seen_queue = max(seen_queue, int(fleet.backend()["qcur"] or 0))
        for name, row in rows.items():
            seen_busy[name] = max(seen_busy.get(name, 0), int(row["scur"] or 0))
        time.sleep(0.05)
    assert all(s.stopped and s.tokens == 200 for s in streams), [(s.error, s.tokens) for s in streams]
    assert seen_queue >= 1, "six requests on four slots: two wait at HAProxy"
    assert max(seen_busy.values()) <= 2, seen_busy      # maxconn = the box's slots
    after = fleet.stats()
    assert sum(int(after[n]["stot"]) - int(before[n]["stot"]) for n in after) == 6


def test_box_killed_mid_load_and_back(fleet):
    # a long stream on each box: the survivor keeps a free slot for the requests that follow
    streams = [Stream(fleet.port, 1500) for _ in range(2)]
    for s in streams:
        s.start()
        s.first.wait(60)
    dead, alive = fleet.boxes
    on_dead = [s for s in streams if s.box == dead.name]
    on_alive = [s for s in streams if s.box == alive.name]
    assert len(on_dead) == 1 and len(on_alive) == 1, [s.box for s in streams]
    assert all(s.is_alive() for s in streams), "the streams must still be going when the box dies"

    killed = time.monotonic()
    dead.kill()
    down_after = fleet.wait_state({dead.name: "DOWN"}, timeout=5)
    assert down_after <= 2.0, f"marked down {down_after:.2f} s after the kill"
    # the dead box's streams end with an error at once; new requests all go to the survivor
    for s in on_dead:
        s.join(5)
        assert not s.is_alive() and not s.stopped and s.error is not None, (len(s.times), s.error)
        assert s.times[-1] < killed + 1.0
    answers = [call(fleet.port, "POST", "/completion", {"prompt": "Hi", "n_predict": 4}) for _ in range(6)]
    assert [(status, box) for status, box, _ in answers] == [(200, alive.name)] * 6
    for s in on_alive:                                    # nothing lost on the surviving box
        s.join(120)
        assert s.stopped and s.error is None and s.tokens == 1500, (s.tokens, s.error)

    dead.start().wait_ready(120)
    fleet.wait_state({dead.name: "UP"}, timeout=10)
    boxes = {call(fleet.port, "POST", "/completion", {"prompt": "Hi", "n_predict": 4})[1] for _ in range(4)}
    assert boxes == {"box1", "box2"}, "the restarted box takes requests again"
    events = [line for _, line in fleet.events]
    assert any(f"{dead.name} is DOWN" in line for line in events) and any(f"{dead.name} is UP" in line for line in events)


def test_a_box_reading_a_long_prompt_is_not_taken_for_dead(fleet):
    before = {n: int(r["chkfail"] or 0) for n, r in fleet.stats().items()}
    prompt = " ".join(["the cat sat on the mat"] * 500)      # ~3,000 tokens, read in one slot
    s = Stream(fleet.port, 4, prompt=prompt)
    t0 = time.monotonic()
    s.start()
    states = set()
    while s.is_alive():
        states.update(fleet.states().values())
        time.sleep(0.1)
    took = time.monotonic() - t0
    assert s.stopped and s.error is None, s.error
    assert took > 1.5, f"the prompt took {took:.2f} s: too short to show anything"
    assert states == {"UP"}, states
    after = {n: int(r["chkfail"] or 0) for n, r in fleet.stats().items()}
    assert after == before, (before, after)
