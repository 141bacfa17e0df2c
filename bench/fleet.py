"""Throughput of a fleet: aggregate generated tok/s through HAProxy (fleet/haproxy.cfg, as `make fleet`
runs it) with 1, 2 and BENCH_FLEET_MAX boxes, one run. Each box is SmolLM2 on one CPU with its
default two slots; each box count gets two clients per box, each sending BENCH_FLEET_REQUESTS
greedy completions of BENCH_GEN tokens (ignore_eos, distinct prompts) one after another, so every
slot of every box stays busy. Aggregate tok/s = tokens generated / wall time from the first request
sent to the last answer; the ratio is against one box in the same run. Past the host's cores the
boxes share them: the last row shows what that buys. Raw numbers go to build/bench/fleet.json.

    make bench-fleet            (BENCH_GEN=32 BENCH_FLEET_REQUESTS=2 BENCH_FLEET_MAX=3)
"""
import http.client
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import KERNEL, MODEL, OUT, machine  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fleet"))
from fleet import Fleet  # noqa: E402
from qemu import free_port  # noqa: E402

N_GEN = int(os.environ.get("BENCH_GEN", 32))
REQUESTS = int(os.environ.get("BENCH_FLEET_REQUESTS", 2))
MAX_BOXES = int(os.environ.get("BENCH_FLEET_MAX", 3))
SLOTS = 2
TOPICS = ["the sea", "a mountain", "a city at night", "a forest", "the desert", "a river", "winter", "a garden",
          "a train", "the moon", "a market", "an island"]


def complete(port, prompt):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    body = {"prompt": f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n", "n_predict": N_GEN,
            "temperature": 0, "ignore_eos": True, "cache_prompt": False}
    c.request("POST", "/completion", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    c.close()
    if r.status != 200:
        raise RuntimeError(f"{r.status}: {data}")
    return data["tokens_predicted"], r.getheader("X-Cllm-Box")


def load(fleet, clients):
    """Every client sends REQUESTS completions in turn; (tokens, seconds, answers per box)."""
    tokens, boxes, errors = [], {}, []

    def client(k):
        try:
            for i in range(REQUESTS):
                n, box = complete(fleet.port, f"Write a short poem about {TOPICS[(k * REQUESTS + i) % len(TOPICS)]}.")
                tokens.append(n)
                boxes[box] = boxes.get(box, 0) + 1
        except Exception as e:      # noqa: BLE001 — reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
    return sum(tokens), took, boxes


def main():
    print(f"bench-fleet: {machine()}; SmolLM2, 1 CPU and {SLOTS} slots a box, {2} clients a box, "
          f"{REQUESTS} x {N_GEN} tokens each")
    rows = []
    for n in range(1, MAX_BOXES + 1):
        with Fleet(n, free_port(), free_port(), MODEL, f"n_ctx=2048 parallel={SLOTS}", smp=1, mem="512M",
                   box_ports=[free_port() for _ in range(n)], kernel=KERNEL,
                   workdir=os.path.join(OUT, f"fleet-{n}")) as fleet:
            fleet.start(timeout=600)
            for box in fleet.boxes:                 # the first decode of a boot costs more
                complete(box.port, "Say hi.")
            tokens, took, boxes = load(fleet, 2 * n)
        rows.append({"boxes": n, "clients": 2 * n, "tokens": tokens, "seconds": took, "tps": tokens / took,
                     "answers": boxes})
        print(f"  {n} box{'es' * (n > 1)}: {tokens} tokens in {took:.1f} s = {tokens / took:.2f} tok/s; answers {boxes}")
    one = rows[0]["tps"]
    cores = os.cpu_count()
    print(f"\n| boxes (1 CPU each; host: {cores} cores) | clients | generated tok/s, all boxes | × one box | per box |")
    print("|---|---|---|---|---|")
    for r in rows:
        note = " (more boxes than host cores)" if r["boxes"] > cores else ""
        print(f"| {r['boxes']}{note} | {r['clients']} | {r['tps']:.2f} | {r['tps'] / one:.2f}× | {r['tps'] / r['boxes']:.2f} |")
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "fleet.json"), "w") as f:
        json.dump({"machine": machine(), "n_gen": N_GEN, "requests": REQUESTS, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
