"""Speculative decoding from n-grams: what drafts buy where the answer repeats its prompt, cllm
(spec=ngram) against the Linux guest's llama-server of the same ggml build (peer-same, --spec-type
ngram-simple), both with their defaults (a draft once 12 tokens repeat, up to 48 long), in one run.

For each server, without drafts, with the default drafts and with drafts of at most BENCH_SPEC_M
tokens (--spec-ngram-simple-size-m; under TCG a drafted token costs about half a generated one, so
a long draft that fails early costs more than it saves): SmolLM2 answers two prompts greedily, BENCH_GEN tokens each
(ignore_eos): an extraction (repeat a paragraph word for word) and a code edit (rename a variable,
print the whole function). Generated tok/s is each server's own `timings.predicted_per_second`
(llama-server's definition, both sides); the drafts' counts come from the same `timings`. The greedy
text must be the same with and without drafts. One CPU; raw numbers go to build/bench/spec.json.

    make bench-spec             (BENCH_RUNS=1 BENCH_GEN=64 BENCH_SPEC_M=16 BENCH_PEERS=same)
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
SPEC_M = int(os.environ.get("BENCH_SPEC_M", 16))
CONFIGS = {"off": ("", ""), "on": (" spec=ngram", " --spec-type ngram-simple"),
           f"m={SPEC_M}": (f" spec=ngram spec_size_m={SPEC_M}", f" --spec-type ngram-simple --spec-ngram-simple-size-m {SPEC_M}")}
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
    for config, (cllm_spec, peer_spec) in CONFIGS.items():
        cllm = f"n_ctx={N_CTX} parallel=1" + cllm_spec
        out[("cllm", config)] = lambda a=cllm: Machine(KERNEL, MODEL, a, smp=1)
        for p in PEERS:
            peer = f"console=ttyS0 quiet -- -c {N_CTX} -np 1 -t 1 -tb 1" + peer_spec
            out[("peer-" + p, config)] = lambda a=peer, p=p: Machine(PEER_KERNEL, PEER_INITRAMFS.format(p), a, smp=1)
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
                    print(f"  {key[0]:10} drafts {key[1]:5} {name:10} run {run + 1}: "
                          f"{r['gen_tps']:.2f} tok/s, drafts {r['draft_accepted']}/{r['draft_n']} accepted", flush=True)
            finally:
                m.close()
    names = ["cllm"] + ["peer-" + p for p in PEERS]
    drafted = [c for c in CONFIGS if c != "off"]
    print("\n| prompt | server | tok/s without drafts | " + " | ".join(f"drafts {c}: tok/s, ratio, accepted" for c in drafted)
          + " | same text |")
    print("|---|---|---|" + "---|" * len(drafted) + "---|")
    table = {}
    for name in PROMPTS:
        for server in names:
            off = runs[((server, "off"), name)]
            a = statistics.median(r["gen_tps"] for r in off)
            cells, same = [], True
            for c in drafted:
                on = runs[((server, c), name)]
                b = statistics.median(r["gen_tps"] for r in on)
                table[(name, server, c)] = b
                same = same and all(r["text"] == off[0]["text"] for r in off + on)
                cells.append(f"{b:.2f}, {b / a:.2f}x, {on[0]['draft_accepted']}/{on[0]['draft_n']}")
            print(f"| {name} | {server} | {a:.2f} | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} |")
    for server in names[1:]:
        for c in drafted:
            ratios = [table[(n, "cllm", c)] / table[(n, server, c)] for n in PROMPTS]
            print(f"cllm/{server}, drafts {c}: " + ", ".join(f"{n} {r:.2f}x" for n, r in zip(PROMPTS, ratios)))
    with open(os.path.join(OUT, "spec.json"), "w") as f:
        json.dump({f"{k[0][0]}|{k[0][1]}|{k[1]}": v for k, v in runs.items()}, f, indent=1)


if __name__ == "__main__":
    main()
