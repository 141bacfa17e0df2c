"""Whether the appliance answers while it computes: SmolLM2 served as `make run` serves it (SMP CPUs,
parallel=2, n_ctx 2048), in one boot:

1. prompt throughput of the decode in the model's decoder thread (the server's way: Python goes on
   meanwhile, on CPU 0 in turn with it) against the same decode inline in Python's thread (the way
   before: nothing else runs), on the same prompt, alternated;
2. /health latency (a new connection every 100 ms) and the console's echo of a keystroke while a
   long prompt is read, against the same with the server idle;
3. the gap between the tokens of a stream that runs while another request's long prompt is read,
   against its gap before that prompt came (chunked prefill keeps it within PREFILL_STRETCH).

    make bench-responsive [SMP=2]   (or: python bench/responsive.py [--smp 2] [--n-prompt 160])
Prints a table of ratios; writes build/bench/responsive.json.
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from qemu import Guest, free_port  # noqa: E402

MODEL = os.path.join(ROOT, "build", "deps", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
PARAGRAPH = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a small lamp "
             "and a notebook in which he recorded the weather, the passing ships and the color of the sea. ")


def post(port, body, timeout=1200):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    c.close()
    return data


def health_ms(port):
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/health")
    r = c.getresponse()
    r.read()
    c.close()
    return (time.monotonic() - t0) * 1000, r.status


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Poller(threading.Thread):
    """/health every 100 ms until stop."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.ms, self.done = port, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            ms, status = health_ms(self.port)
            if status == 200:
                self.ms.append(ms)
            time.sleep(0.1)


def echo_ms(g, n=10):
    """The console's echo of a keystroke, n times (the line cleared with Ctrl-C after each)."""
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        g.send(b"x")
        g.expect_exact(b"x", timeout=60)
        out.append((time.monotonic() - t0) * 1000)
        g.send(b"\x03")
        g.wait_prompt(timeout=60)
        time.sleep(0.2)
    return out


def decode_ratio(g, n_prompt, rounds):
    """ms of the prompt's decode inline and in the decoder thread, alternated, on slot 1's sequence."""
    code = f"""
import time
m = engine.model
toks = m.tokenize({PARAGRAPH * 40!r})[:{n_prompt}]
res = []
for r in range({rounds}):
    for way in ('inline', 'thread'):
        m.kv_remove(1)
        t0 = time.ticks_us()
        if way == 'inline':
            m.decode_batch([(1, toks)])
        else:
            m.decode_start([(1, toks)])
            while not m.decode_done():
                time.sleep_ms(2)
        res.append((way, time.ticks_diff(time.ticks_us(), t0) / 1000))
m.kv_remove(1)
print('RESULT', res)
"""
    out, err = g.raw_exec(code, timeout=3600)
    if err:
        raise RuntimeError(err.decode(errors="replace"))
    res = eval([l for l in out.decode().splitlines() if l.startswith("RESULT")][0][len("RESULT "):])
    inline = [ms for way, ms in res if way == "inline"]
    thread = [ms for way, ms in res if way == "thread"]
    return statistics.median(inline), statistics.median(thread)


def stream_gaps(port, text):
    """A stream of 48 tokens; after its 6th token, a request with a long prompt on the other slot.
    Returns the gaps (ms) between its tokens before the long prompt came and while it was read."""
    arrivals, marks = [], {}

    def long_request():
        marks["start"] = time.monotonic()
        post(port, {"prompt": text, "n_predict": 1, "cache_prompt": False, "temperature": 0})
        marks["end"] = time.monotonic()

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=1200)
    c.request("POST", "/completion", json.dumps({"prompt": "Tell me about the sea.", "n_predict": 48, "stream": True,
                                                 "ignore_eos": True, "temperature": 0, "cache_prompt": False}),
              {"Content-Type": "application/json"})
    r = c.getresponse()
    other = None
    while True:
        line = r.fp.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            ev = json.loads(line[6:])
            arrivals.append(time.monotonic())
            if len(arrivals) == 6:
                other = threading.Thread(target=long_request, daemon=True)
                other.start()
            if ev.get("stop"):
                break
    c.close()
    if other:
        other.join(1200)
    t0 = marks.get("start")
    t1 = marks.get("end", arrivals[-1])
    gaps = [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:])]
    before = [g for (a, b), g in zip(zip(arrivals, arrivals[1:]), gaps) if b <= t0]
    during = [g for (a, b), g in zip(zip(arrivals, arrivals[1:]), gaps) if a >= t0 and b <= t1]
    return before, during, (t1 - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smp", type=int, default=os.cpu_count())
    ap.add_argument("--n-prompt", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    port = free_port()
    out = {"smp": args.smp, "n_prompt": args.n_prompt}
    with Guest(modules=[MODEL], mem="512M", timeout=600, smp=args.smp,
               hostfwd=[f"tcp:127.0.0.1:{port}-:80"]) as g:
        g.expect(b"serving on port 80", timeout=300)
        g.wait_prompt(timeout=60)
        time.sleep(2)
        inline, thread = decode_ratio(g, args.n_prompt, args.rounds)
        out["decode_inline_ms"], out["decode_thread_ms"] = inline, thread
        # idle server: /health and echo
        idle = [health_ms(port)[0] for _ in range(30)]
        idle_echo = echo_ms(g, 5)
        # during a long prompt (about n_prompt tokens: a paragraph is about 40)
        text = PARAGRAPH * max(1, args.n_prompt // 40)
        poller = Poller(port)
        worker = threading.Thread(target=lambda: post(port, {"prompt": text, "n_predict": 1, "cache_prompt": False,
                                                             "temperature": 0}), daemon=True)
        t0 = time.monotonic()
        worker.start()
        poller.start()
        time.sleep(3)
        busy_echo = echo_ms(g, 10)
        worker.join(3600)
        poller.done.set()
        poller.join(60)
        out["long_prompt_s"] = time.monotonic() - t0
        out["health_idle"] = {"p50": pct(idle, 50), "p99": pct(idle, 99)}
        out["health_busy"] = {"p50": pct(poller.ms, 50), "p99": pct(poller.ms, 99), "max": max(poller.ms),
                              "n": len(poller.ms)}
        out["echo_idle_max"] = max(idle_echo)
        out["echo_busy"] = {"p50": pct(busy_echo, 50), "max": max(busy_echo)}
        # a stream while another request's prompt is read
        before, during, span = stream_gaps(port, PARAGRAPH * max(1, args.n_prompt // 80))
        out["stream_gap_before_ms"] = statistics.median(before) if before else None
        out["stream_gap_during_max_ms"] = max(during) if during else None
        out["stream_gap_during_median_ms"] = statistics.median(during) if during else None
        out["long_prompt_beside_stream_s"] = span
    os.makedirs(os.path.join(ROOT, "build", "bench"), exist_ok=True)
    with open(os.path.join(ROOT, "build", "bench", "responsive.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))
    print()
    print(f"| SmolLM2, {args.smp} CPUs | value | against |")
    print("|---|---|---|")
    print(f"| prompt decode in the decoder thread / inline ({args.n_prompt} tokens) | "
          f"{out['decode_thread_ms'] / 1000:.1f} s / {out['decode_inline_ms'] / 1000:.1f} s | "
          f"{out['decode_inline_ms'] / out['decode_thread_ms']:.2f}x the throughput |")
    hb = out["health_busy"]
    print(f"| /health during a long prompt: p50 / p99 / max (ms) | {hb['p50']:.0f} / {hb['p99']:.0f} / {hb['max']:.0f} | "
          f"idle p99 {out['health_idle']['p99']:.0f} |")
    print(f"| console echo during it: p50 / max (ms) | {out['echo_busy']['p50']:.0f} / {out['echo_busy']['max']:.0f} | "
          f"idle max {out['echo_idle_max']:.0f} |")
    if out["stream_gap_during_max_ms"]:
        print(f"| a stream's token gap while another prompt is read: max (ms) | {out['stream_gap_during_max_ms']:.0f} | "
              f"{out['stream_gap_during_max_ms'] / out['stream_gap_before_ms']:.2f}x its gap before ({out['stream_gap_before_ms']:.0f}) |")


if __name__ == "__main__":
    main()
