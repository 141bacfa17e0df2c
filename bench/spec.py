"""Speculative decoding from n-grams: what drafts buy where the answer repeats its prompt, cllm
(spec=ngram) against the Linux guest's llama-server of the same ggml build (peer-same, --spec-type
ngram-simple), both with their defaults (a draft once 12 tokens repeat, up to 48 long), in one run.

For each server, without and with drafts: SmolLM2 answers two prompts greedily, BENCH_GEN tokens each
(ignore_eos): an extraction (repeat a paragraph word for word) and a code edit (rename a variable,
print the whole function). Generated tok/s is each server's own `timings.predicted_per_second`
(llama-server's definition, both sides); the drafts' counts come from the same `timings`. The greedy
text must be the same with and without drafts. One CPU; raw numbers go to build/bench/spec.json.

    make bench-spec             (BENCH_RUNS=1 BENCH_GEN=64 BENCH_PEERS=same)
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import KERNEL, MODEL, OUT, PEER_INITRAMFS, PEER_KERNEL, Machine, machine  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", 1))
N_GEN = int(os.environ.get("BENCH_GEN", 64))
PEERS = [p for p in os.environ.get("BENCH_PEERS", "same").split(",") if p]
N_CTX = 2048

TEXT = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a small lamp and a "
        "notebook in which he recorded the weather, the passing ships and the color of the sea.")
CODE = ("def summarize(orders):\n    count = 0\n    for order in orders:\n        if order.paid:\n"
        "            count += order.amount\n    print('paid:', count)\n    return count\n")
PROMPTS = {
    "extraction": f"Repeat the following paragraph word for word.\n\n{TEXT}",
    "code edit": f"Rename the variable count to total in this function and print the whole function.\n\n{CODE}",
}


def chat_prompt(text):
    """SmolLM2's own chat layout, as text both servers tokenize the same way."""
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def servers():
    out = {}
    for spec in (False, True):
        cllm = f"n_ctx={N_CTX} parallel=1" + (" spec=ngram" if spec else "")
        out[("cllm", spec)] = lambda a=cllm: Machine(KERNEL, MODEL, a, smp=1)
        for p in PEERS:
            peer = f"console=ttyS0 quiet -- -c {N_CTX} -np 1 -t 1 -tb 1" + (" --spec-type ngram-simple" if spec else "")
            out[("peer-" + p, spec)] = lambda a=peer, p=p: Machine(PEER_KERNEL, PEER_INITRAMFS.format(p), a, smp=1)
    return out


def answer(m, prompt):
    body = {"prompt": chat_prompt(prompt), "n_predict": N_GEN, "temperature": 0, "ignore_eos": True,
            "cache_prompt": False}
    status, data = m.request("POST", "/completion", body, timeout=3600)
    assert status == 200, (status, data[:300])
    out = json.loads(data)
    t = out["timings"]
    return {"gen_tps": t["predicted_per_second"], "gen_n": t["predicted_n"], "draft_n": t.get("draft_n", 0),
            "draft_accepted": t.get("draft_n_accepted", 0), "text": out["content"]}


def main():
    os.makedirs(OUT, exist_ok=True)
    print(f"speculative decoding (n-grams): SmolLM2, {N_GEN} greedy tokens, 1 CPU, {RUNS} run(s); {machine()}", flush=True)
    runs = {}
    for key, boot in servers().items():
        for run in range(RUNS):
            m = boot()
            try:
                m.wait_ready()
                for name, prompt in PROMPTS.items():
                    r = answer(m, prompt)
                    runs.setdefault((key, name), []).append(r)
                    print(f"  {key[0]:10} drafts {'on ' if key[1] else 'off'} {name:10} run {run + 1}: "
                          f"{r['gen_tps']:.2f} tok/s, drafts {r['draft_accepted']}/{r['draft_n']} accepted", flush=True)
            finally:
                m.close()
    names = ["cllm"] + ["peer-" + p for p in PEERS]
    print(f"\n| prompt | server | tok/s without drafts | with | with/without | drafted tokens accepted | same text |")
    print("|---|---|---|---|---|---|---|")
    table = {}
    for name in PROMPTS:
        for server in names:
            off, on = runs[((server, False), name)], runs[((server, True), name)]
            a, b = statistics.median(r["gen_tps"] for r in off), statistics.median(r["gen_tps"] for r in on)
            same = all(r["text"] == off[0]["text"] for r in off + on)
            table[(name, server)] = (a, b)
            print(f"| {name} | {server} | {a:.2f} | {b:.2f} | {b / a:.2f}x | "
                  f"{on[0]['draft_accepted']}/{on[0]['draft_n']} | {'yes' if same else 'NO'} |")
    for server in names[1:]:
        ratios = [table[(n, "cllm")][1] / table[(n, server)][1] for n in PROMPTS]
        print(f"cllm/{server} with drafts: " + ", ".join(f"{n} {r:.2f}x" for n, r in zip(PROMPTS, ratios)))
    with open(os.path.join(OUT, "spec.json"), "w") as f:
        json.dump({f"{k[0][0]}|{'on' if k[0][1] else 'off'}|{k[1]}": v for k, v in runs.items()}, f, indent=1)


if __name__ == "__main__":
    main()
