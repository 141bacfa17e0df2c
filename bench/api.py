"""The HTTP server against llama.cpp's own llama-server, both on one CPU of the same emulator, in
the same run: cllm booted in qemu-system-i386 (TCG, the e1000 on QEMU's user network) and the
static i386 llama-server built from the same sdist with the same ggml flags (make peer's
`peer-same` build), run under qemu-i386 user-mode emulation on the host's loopback — same CPU model,
no OS to boot. SmolLM2-135M-Instruct Q4_1, 1 thread, greedy.

    make bench-http       (or: python bench/api.py; BENCH_RUNS=3 BENCH_HEALTH=300 BENCH_GEN=32)

Measured, median of BENCH_RUNS: start -> first /health 200; /health requests/s with p50/p99 latency,
a new connection each; time to first token of a streamed /completion (a ~60-token prompt) and the
tokens/s of its generation as the client sees them. Prints a table with the cllm/llama-server ratio
and writes build/bench/http.json.
"""
import http.client
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from qemu import Guest, free_port  # noqa: E402
from test_responsive import health_ms  # noqa: E402

MODEL = os.path.join(ROOT, "build", "deps", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
SERVER = os.environ.get("LLAMA_SERVER", os.path.join(ROOT, "build", "llama", "peer-same", "bin", "llama-server"))
OUT = os.path.join(ROOT, "build", "bench", "http.json")
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
N_HEALTH = int(os.environ.get("BENCH_HEALTH", "300"))
N_GEN = int(os.environ.get("BENCH_GEN", "32"))
N_CTX = 2048
PROMPT = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a small lamp and a "
          "notebook in which he recorded the weather, the passing ships and the color of the sea. ") * 2


def wait_health(port, t0, timeout=600):
    """Seconds from t0 to the first /health 200. Each try gives up after 0.25 s: a connection made
    before the guest's network is up waits in QEMU's user network for its SYN to be retransmitted to
    the guest (5 s here), which would be measured instead of the boot."""
    while time.monotonic() - t0 < timeout:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=0.25)
            c.request("GET", "/health")
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("no /health 200 within %d s" % timeout)


def health_rate(port):
    """/health requests/s and the p50/p99 latency in ms, a new connection each."""
    lat = []
    t0 = time.monotonic()
    for _ in range(N_HEALTH):
        lat.append(health_ms(port))
    took = time.monotonic() - t0
    lat.sort()
    return N_HEALTH / took, lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def streamed(port):
    """(time to first token in s, generation tokens/s between the first and the last token, text)."""
    body = {"prompt": PROMPT, "n_predict": N_GEN, "temperature": 0, "ignore_eos": True, "cache_prompt": False,
            "stream": True}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    t0 = time.monotonic()
    c.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    times, text, buf = [], [], b""
    while True:
        chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            data = json.loads(event[6:])
            if data.get("content"):
                times.append(time.monotonic())
                text.append(data["content"])
    c.close()
    assert len(times) >= 2, times
    return times[0] - t0, (len(times) - 1) / (times[-1] - times[0]), "".join(text)


def measure(start, stop):
    port = free_port()
    t0 = time.monotonic()
    handle = start(port)
    try:
        ready = wait_health(port, t0)
        rate, p50, p99 = health_rate(port)
        ttft, tps, text = streamed(port)
    finally:
        stop(handle)
    return {"ready_s": ready, "health_rps": rate, "health_p50_ms": p50, "health_p99_ms": p99, "ttft_s": ttft,
            "gen_tps": tps, "text": text}


def start_cllm(port):
    g = Guest(modules=[MODEL], append=f"n_ctx={N_CTX} parallel=1 ggml=sse2 dashboard=0", mem="512M", timeout=900,
              hostfwd=[f"tcp:127.0.0.1:{port}-:80"])
    return g


def start_llama_server(port):
    return subprocess.Popen(["qemu-i386", "-cpu", "max", SERVER, "-m", MODEL, "--host", "127.0.0.1", "--port",
                             str(port), "-t", "1", "-tb", "1", "-c", str(N_CTX), "-np", "1", "--log-disable"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_llama_server(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()


def main():
    if not os.path.exists(SERVER):
        sys.exit(f"bench/api.py: {SERVER} is missing: `make bench-http` builds it (make peer), or set LLAMA_SERVER")
    runs = {"cllm": [], "llama-server": []}
    for i in range(RUNS):
        runs["cllm"].append(measure(start_cllm, lambda g: g.close()))
        runs["llama-server"].append(measure(start_llama_server, stop_llama_server))
        print(f"run {i + 1}/{RUNS}: " + "; ".join(f"{k} ready {v[-1]['ready_s']:.1f} s, {v[-1]['gen_tps']:.2f} tok/s"
                                                  for k, v in runs.items()), flush=True)
    same = runs["cllm"][-1]["text"] == runs["llama-server"][-1]["text"]
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0] if m != "text"} for k, v in runs.items()}
    rows = (("ready_s", "start -> first /health 200 (s)", False), ("health_rps", "/health requests/s", True),
            ("health_p50_ms", "/health p50 latency (ms)", False), ("health_p99_ms", "/health p99 latency (ms)", False),
            ("ttft_s", f"time to first token (s, {len(PROMPT) // 5}-ish token prompt)", False),
            ("gen_tps", f"generated tokens/s ({N_GEN}, streamed)", True))
    print(f"\nSmolLM2-135M Q4_1, 1 thread, SSE2 ggml build, medians of {RUNS} ({time.strftime('%Y-%m-%d')}):")
    print(f"  {'':46} {'cllm':>9} {'llama-server':>13} {'cllm/peer':>10}")
    for key, name, higher in rows:
        a, b = med["cllm"][key], med["llama-server"][key]
        print(f"  {name:46} {a:9.2f} {b:13.2f} {a / b:9.2f}x  ({'higher' if higher else 'lower'} is better)")
    print(f"  greedy text identical: {same}")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "runs": runs, "medians": med, "same_text": same}, f, indent=1)
    print(f"  raw numbers: {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
