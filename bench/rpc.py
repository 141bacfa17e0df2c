"""A model split over boxes with llama.cpp's RPC backend: the host's llama-server of the kernel's own
ggml build (peer-same, -t 1) with SmolLM2's layers on two cllm boxes (rpc=50052, one CPU each) against
one cllm box serving SmolLM2 itself (one CPU), in one run, and the same llama-server alone on the host
(its CPU, not emulated: the text's reference). Each answers the same prompts greedily, BENCH_GEN
tokens (ignore_eos); generated tok/s is each server's own timings.predicted_per_second. What the
split costs is the price of a model larger than one box (an i386 box addresses 4 GiB): every token
crosses the network to each box and back. Raw numbers go to build/bench/rpc.json.

    make bench-rpc              (BENCH_GEN=32 BENCH_RUNS=2)
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import KERNEL, MODEL, OUT, Machine, machine  # noqa: E402
from test_upstream import Host  # noqa: E402  (peer-same's llama-server on the host, -t 1 -np 1)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fleet"))
from fleet import rpc_workers  # noqa: E402

N_GEN = int(os.environ.get("BENCH_GEN", 32))
RUNS = int(os.environ.get("BENCH_RUNS", 2))
PROMPTS = ["Write a short poem about the sea.", "Explain what a lighthouse does, in two sentences."]


def body(prompt):
    return {"prompt": f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n", "n_predict": N_GEN,
            "temperature": 0, "ignore_eos": True, "cache_prompt": False}


def answers(server):
    out = []
    for _ in range(RUNS):
        for p in PROMPTS:
            status, raw = Machine.request(server, "POST", "/completion", body(p), timeout=3600)
            if status != 200:
                raise RuntimeError(f"{status}: {raw[:300]}")
            data = json.loads(raw)
            out.append((data["content"], data["timings"]["predicted_per_second"]))
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    print(f"bench-rpc: {machine()}; SmolLM2, {len(PROMPTS)} prompts x {RUNS}, {N_GEN} greedy tokens each")
    one = Machine(KERNEL, MODEL, "n_ctx=2048 parallel=1", smp=1)
    try:
        one.wait_ready()
        alone = answers(one)
    finally:
        one.close()
    host = Host(MODEL, 2048, log=os.path.join(OUT, "rpc-llama-server-alone.log"))
    try:
        native = answers(host)
    finally:
        host.close()
    with rpc_workers(2, mem="512M") as boxes:
        split = Host(MODEL, 2048, "--rpc", ",".join(f"127.0.0.1:{b.port}" for b in boxes), "-ngl", "99",
                     log=os.path.join(OUT, "rpc-llama-server.log"))
        try:
            over_two = answers(split)
        finally:
            split.close()
    a = statistics.median(t for _, t in alone)
    s = statistics.median(t for _, t in over_two)
    h = statistics.median(t for _, t in native)

    def same(run):      # the text of each answer against the host's llama-server alone
        return f"{sum(x[0] == y[0] for x, y in zip(native, run))}/{len(native)}"
    print("\n| SmolLM2, greedy | generated tok/s (median) | × one box | same text as the host alone |")
    print("|---|---|---|---|")
    print(f"| one cllm box (1 CPU) | {a:.2f} | 1.00× | {same(alone)} |")
    print(f"| host llama-server, layers on two cllm boxes (rpc=, 1 CPU each) | {s:.2f} | {s / a:.2f}× | {same(over_two)} |")
    print(f"| host llama-server alone (the host's CPU, not emulated) | {h:.1f} | | |")
    with open(os.path.join(OUT, "rpc.json"), "w") as f:
        json.dump({"machine": machine(), "n_gen": N_GEN, "one_box": alone, "split": over_two, "host_alone": native},
                  f, indent=1)


if __name__ == "__main__":
    main()
