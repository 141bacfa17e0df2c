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
import json
import os
import statistics
import sys
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from qemu import Guest, free_port  # noqa: E402
from test_responsive import echo_ms, health_ms, post, stream_beside  # noqa: E402

MODEL = os.path.join(ROOT, "build", "deps", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
PARAGRAPH = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a small lamp "
             "and a notebook in which he recorded the weather, the passing ships and the color of the sea. ")


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
            self.ms.append(health_ms(self.port))
            time.sleep(0.1)


def echoes(g, n):
    """The console's echo of a keystroke, n times, 0.2 s apart (ms)."""
    out = []
    for _ in range(n):
        out.append(echo_ms(g))
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
        idle = [health_ms(port) for _ in range(30)]
        idle_echo = echoes(g, 5)
        # during a long prompt (about n_prompt tokens: a paragraph is about 40)
        text = PARAGRAPH * max(1, args.n_prompt // 40)
        poller = Poller(port)
        worker = threading.Thread(target=lambda: post(port, {"prompt": text, "n_predict": 1, "cache_prompt": False,
                                                             "temperature": 0}), daemon=True)
        t0 = time.monotonic()
        worker.start()
        poller.start()
        time.sleep(3)
        busy_echo = echoes(g, 10)
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
        before, during, _, span = stream_beside(
            port, {"prompt": "Tell me about the sea.", "n_predict": 48, "ignore_eos": True, "temperature": 0,
                   "cache_prompt": False},
            {"prompt": PARAGRAPH * max(1, args.n_prompt // 80), "n_predict": 1, "cache_prompt": False, "temperature": 0},
            after=6)
        out["stream_gap_before_ms"] = statistics.median(before) * 1000 if before else None
        out["stream_gap_during_max_ms"] = max(during) * 1000 if during else None
        out["stream_gap_during_median_ms"] = statistics.median(during) * 1000 if during else None
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
