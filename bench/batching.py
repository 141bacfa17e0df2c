"""Continuous batching: what concurrent streams buy, cllm against the Linux guest's llama-server of
the same ggml build (peer-same), both with 4 slots, in one run.

For each server and boot: one greedy stream of BENCH_GEN tokens alone, then 4 at once, then 8 at once
(4 of them wait for a slot), each client with a prompt of its own (~20 tokens, no prompt cache).
Generated tok/s is counted while every stream generates: the tokens that arrive between the last
stream's first token and the first stream's end, over that time (so prompts, read at a different
speed, do not count). With 8 clients it is every generated token over the whole run's time. Time to
first token is per client, from its request. Each server boots BENCH_RUNS times: the table shows
medians, and the single-stream figure of every boot shows the spread between boots. Raw numbers go to
build/bench/batching.json.

    make bench-batching         (BENCH_RUNS=2 BENCH_GEN=48 BENCH_SMP (make's SMP)=2 BENCH_PEERS=same;
                                 BENCH_BASELINE=path/to/an/older/cllm.elf adds it as a third server)
"""
import json
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (KERNEL, MODEL, OUT, PEER_INITRAMFS, PEER_KERNEL, PROMPT, Machine, machine,  # noqa: E402
                     stream_events)

RUNS = int(os.environ.get("BENCH_RUNS", 2))
N_GEN = int(os.environ.get("BENCH_GEN", 48))
SMP = int(os.environ.get("BENCH_SMP") or 2)
PEERS = [p for p in os.environ.get("BENCH_PEERS", "same").split(",") if p]
BASELINE = os.environ.get("BENCH_BASELINE")
N_CTX, SLOTS = 2048, 4


def servers(smp=SMP, peers=PEERS, **machine):
    """name: boot() of each server with SLOTS slots at smp CPUs (machine: more of qemu_command's options)."""
    cllm = f"n_ctx={N_CTX} parallel={SLOTS}"
    peer = f"console=ttyS0 quiet -- -c {N_CTX} -np {SLOTS} -t {smp} -tb {smp}"
    out = {"cllm": lambda: Machine(KERNEL, MODEL, cllm, smp=smp, **machine)}
    if BASELINE:
        out["cllm-baseline"] = lambda: Machine(BASELINE, MODEL, cllm, smp=smp, **machine)
    for p in peers:
        out["peer-" + p] = lambda p=p: Machine(PEER_KERNEL, PEER_INITRAMFS.format(p), peer, smp=smp, **machine)
    return out


def stream(m, i, out):
    """One streamed greedy completion of client i's prompt: (request time, each token's time)."""
    body = {"prompt": f"Reader {i} wrote: " + PROMPT[:60], "n_predict": N_GEN, "temperature": 0,
            "ignore_eos": True, "cache_prompt": False}
    t0 = time.monotonic()
    out[i] = (t0, [arrived for arrived, event in stream_events(m.port, body) if event.get("content")])


def concurrent(m, n):
    """n clients at once: generated tok/s (see above) and each client's time to first token."""
    out = {}
    threads = [threading.Thread(target=stream, args=(m, i, out)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == n and all(len(times) >= 2 for _, times in out.values()), out
    if n <= SLOTS:
        start, end = max(times[0] for _, times in out.values()), min(times[-1] for _, times in out.values())
        tokens = sum(start < t <= end for _, times in out.values() for t in times)
    else:
        start, end = t0, max(times[-1] for _, times in out.values())
        tokens = sum(len(times) for _, times in out.values())
    return {"tps": tokens / (end - start), "ttft": sorted(times[0] - sent for sent, times in out.values())}


def one_boot(boot):
    m = boot()
    try:
        m.wait_ready()
        concurrent(m, 1)        # warm-up: the first decode after boot pays for page faults
        return {n: concurrent(m, n) for n in (1, 4, 8)}
    finally:
        m.close()


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    os.makedirs(OUT, exist_ok=True)
    runs = {name: [] for name in servers()}
    for r in range(RUNS):
        for name, boot in servers().items():
            runs[name].append(one_boot(boot))
            print(f"{name} boot {r + 1}: " + ", ".join(f"{n} stream(s) {x['tps']:.2f} tok/s"
                                                       for n, x in runs[name][-1].items()), flush=True)
    with open(os.path.join(OUT, "batching.json"), "w") as f:
        json.dump({"machine": machine(), "smp": SMP, "n_gen": N_GEN, "runs": runs}, f, indent=1)

    def med(name, n, key="tps"):
        return statistics.median(run[n][key] for run in runs[name])

    def ttft(name, n):
        all_ttft = [t for run in runs[name] for t in run[n]["ttft"]]
        return f"{pct(all_ttft, 0.5):.2f} / {pct(all_ttft, 0.99):.2f} s"

    names = list(runs)
    print(f"\n{machine()}; {SMP} CPUs, {SLOTS} slots, {N_GEN} generated tokens per stream, "
          f"median of {RUNS} boots")
    print("| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    print("| 1 stream, generated tok/s | " + " | ".join(f"{med(n, 1):.2f}" for n in names) + " |")
    print("| 4 streams, aggregate tok/s | " + " | ".join(f"{med(n, 4):.2f}" for n in names) + " |")
    print("| 4 streams / 1 stream | " + " | ".join(f"{med(n, 4) / med(n, 1):.2f}x" for n in names) + " |")
    print("| 8 clients, aggregate tok/s | " + " | ".join(f"{med(n, 8):.2f}" for n in names) + " |")
    print("| TTFT p50 / p99, 4 clients | " + " | ".join(ttft(n, 4) for n in names) + " |")
    print("| TTFT p50 / p99, 8 clients | " + " | ".join(ttft(n, 8) for n in names) + " |")
    print("| 1 stream, each boot | " + " | ".join(", ".join(f"{run[1]['tps']:.2f}" for run in runs[n])
                                                   for n in names) + " |")
    for other in names[1:]:
        print(f"cllm / {other}: 4-stream aggregate {med('cllm', 4) / med(other, 4):.2f}x, "
              f"1 stream {med('cllm', 1) / med(other, 1):.2f}x")


if __name__ == "__main__":
    main()
