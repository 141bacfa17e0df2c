"""Boot-to-boot spread: cllm and the Linux guest's llama-server (peer-same: the same ggml build)
booted BENCH_BOOTS times each, interleaved, with BENCH_SMP CPUs, each boot generating one short
greedy completion. Prints each server's generated tok/s (min, median, max, max/min) and, for cllm,
the ggml CPU kernels each boot chose with the boot log's numbers: a choice that flips between boots
shows here as a spread far over the peer's.

    make bench-spread           (BENCH_BOOTS=20 BENCH_SMP=2 BENCH_GEN=32; or: python bench/spread.py)
"""
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import SERVERS, machine  # noqa: E402

BOOTS = int(os.environ.get("BENCH_BOOTS", 20))
SMP = int(os.environ.get("BENCH_SMP", 2))
N_GEN = int(os.environ.get("BENCH_GEN", 32))
PROMPT = "The capital of France is"         # 9 tokens with SmolLM2's BOS
PEER = "peer-same"
KERNELS = r"ggml: CPU kernels (\w+) \(([^)]*)\)"


def generate(m):
    body = {"prompt": PROMPT, "n_predict": N_GEN, "temperature": 0, "ignore_eos": True, "cache_prompt": False}
    status, raw = m.request("POST", "/completion", body, timeout=600)
    assert status == 200, (status, raw[:300])
    t = json.loads(raw)["timings"]
    assert t["predicted_n"] == N_GEN, t
    return t["predicted_per_second"]


def one_boot(name):
    boot, _, _ = SERVERS[name]
    m = boot(SMP)
    try:
        m.wait_ready()
        tps = generate(m)
        chosen = re.search(KERNELS.encode(), m.console)
        return tps, (chosen.group(1).decode() + " (" + chosen.group(2).decode() + ")") if chosen else None
    finally:
        m.close()


def main():
    tps = {"cllm": [], PEER: []}
    choices = []
    for i in range(BOOTS):
        for name in tps:            # interleaved: both see the same load on the host
            rate, chosen = one_boot(name)
            tps[name].append(rate)
            if name == "cllm":
                choices.append(chosen)
            print(f"boot {i + 1}/{BOOTS} {name}: {rate:.2f} tok/s" + (f", ggml: {chosen}" if chosen else ""),
                  flush=True)
    print(f"\n{BOOTS} boots each, {SMP} CPUs, {N_GEN} greedy tokens after a 9-token prompt; "
          f"{time.strftime('%Y-%m-%d')}; {machine()}")
    print("| server | min tok/s | median | max | max/min |\n|---|---|---|---|---|")
    for name, rates in tps.items():
        print(f"| {name} | {min(rates):.2f} | {statistics.median(rates):.2f} | {max(rates):.2f} | "
              f"{max(rates) / min(rates):.3f} |")
    names = sorted({c.split()[0] for c in choices if c})
    print(f"cllm's ggml CPU kernels: {', '.join(f'{n} in {sum(1 for c in choices if c and c.split()[0] == n)} boots' for n in names)}")


if __name__ == "__main__":
    main()
