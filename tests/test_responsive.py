"""The appliance answers while it computes: a long prompt's decode runs in the model's decoder thread
(on CPU 0 in turn with Python when no other CPU is free), so /health, the console and other streams go
on meanwhile; a prompt read beside a generating stream goes in chunks that keep the stream's steps
short. A tiny GGUF made wide enough that one decode of its prompt takes seconds under TCG; HTTP only
to 127.0.0.1. The figures on SmolLM2 are bench/responsive.py's."""
import http.client
import json
import statistics
import threading
import time

import pytest

from qemu import Guest, free_port
from tinymodel import make_tiny_model

# ~400 tokens: a paragraph of the tiny model's vocabulary is about 40
PROMPT = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a small lamp "
          "and a notebook in which he recorded the weather, the passing ships and the color of the sea. ") * 10
SHORTER = PROMPT[:len(PROMPT) // 3]     # read a token or so per step beside a stream: ~130 steps


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("models") / "wide.gguf"), n_embd=512, n_layer=4,
                           n_head=8, n_head_kv=4, n_ff=1536, n_ctx_train=2048)


def post(port, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    out = json.loads(r.read())
    c.close()
    return r.status, out


def health_ms(port):
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/health")
    r = c.getresponse()
    r.read()
    c.close()
    assert r.status == 200
    return (time.monotonic() - t0) * 1000


def echo_ms(g):
    """How long the console takes to echo a keystroke (the line is cleared with Ctrl-C after)."""
    t0 = time.monotonic()
    g.send(b"x")
    g.expect_exact(b"x", timeout=60)
    ms = (time.monotonic() - t0) * 1000
    g.send(b"\x03")
    g.wait_prompt(timeout=60)
    return ms


@pytest.mark.parametrize("cpus", [1, 2])
def test_health_and_console_answer_during_a_long_prompt(wide, cpus):
    port = free_port()
    with Guest(modules=[wide], append="n_ctx=1024 parallel=1", mem="512M", smp=cpus, timeout=300,
               hostfwd=[f"tcp:127.0.0.1:{port}-:80"]) as g:
        g.expect(b"serving on port 80", timeout=300)
        g.wait_prompt()
        result = {}
        worker = threading.Thread(target=lambda: result.update(
            zip(("status", "body"), post(port, {"prompt": PROMPT, "n_predict": 1, "cache_prompt": False}))))
        t0 = time.monotonic()
        worker.start()
        latencies, echoes = [], []
        while worker.is_alive():
            latencies.append((time.monotonic() - t0, health_ms(port)))
            echoes.append(echo_ms(g))
            time.sleep(0.1)
        worker.join()
        assert result["status"] == 200, result
        prompt_ms = result["body"]["timings"]["prompt_ms"]
        n = result["body"]["tokens_evaluated"]
        during = [ms for at, ms in latencies if at * 1000 < prompt_ms]
        # a decode of the prompt that the inline way would have made the whole server wait for
        assert n > 300 and prompt_ms > 3000, (n, prompt_ms)
        # answered all through it, each far quicker than the decode (it was one step of seconds)
        assert len(during) >= 5, (prompt_ms, latencies)
        assert max(during) < prompt_ms / 5, (prompt_ms, latencies)
        assert statistics.median(echoes) < 500 and max(echoes) < prompt_ms / 5, echoes


def stream_beside(port, stream, other, after=8):
    """A stream of the request stream; after its after-th token, the request other on a connection
    of its own. Returns the stream's gaps between tokens (s) before other came and while it ran,
    other's (status, body) and how long it took (s). The stream is left once other has ended."""
    arrivals, marks = [], {}

    def run_other():
        marks["start"] = time.monotonic()
        marks["result"] = post(port, other)
        marks["end"] = time.monotonic()

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/completion", json.dumps(dict(stream, stream=True)), {"Content-Type": "application/json"})
    r = c.getresponse()
    thread = None
    while True:
        line = r.fp.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            ev = json.loads(line[6:])
            arrivals.append(time.monotonic())
            if len(arrivals) == after:
                thread = threading.Thread(target=run_other)
                thread.start()
            if ev.get("stop") or "end" in marks:
                break
    c.close()
    if thread:
        thread.join(600)
    pairs = list(zip(arrivals, arrivals[1:]))
    before = [b - a for a, b in pairs if b <= marks["start"]]
    during = [b - a for a, b in pairs if a >= marks["start"] and b <= marks["end"]]
    return before, during, marks["result"], marks["end"] - marks["start"]


def test_a_stream_goes_on_while_another_prompt_is_read(wide):
    """parallel=2: a stream generating in one slot; a long prompt arrives for the other. Read whole
    (one decode of seconds), it would stop the stream for that long; in chunks, the stream's tokens
    keep coming about as often as before."""
    port = free_port()
    with Guest(modules=[wide], append="n_ctx=2048 parallel=2", mem="512M", smp=2, timeout=300,
               hostfwd=[f"tcp:127.0.0.1:{port}-:80"]) as g:
        g.expect(b"serving on port 80", timeout=300)
        g.wait_prompt()
        before, during, (status, body), _ = stream_beside(
            port, {"prompt": "Once upon a time", "n_predict": 400, "ignore_eos": True, "temperature": 0,
                   "cache_prompt": False},
            {"prompt": SHORTER, "n_predict": 1, "cache_prompt": False})
    assert status == 200 and body["tokens_evaluated"] > 100
    assert len(before) >= 5 and len(during) >= 10, (len(before), len(during))
    # the prompt's reading took many of the stream's steps, and none of them stalled the stream for
    # long (the bench's target is 2x the gap before; under a loaded CI host, 4x)
    assert max(during) < 4 * statistics.median(before), (statistics.median(before), sorted(during)[-5:])
