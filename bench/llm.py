"""Inference speed inside the kernel against the emulator's ceiling: the same llama.cpp build
(static i386, same ggml flags) run as a Linux program under qemu-i386 user-mode emulation — same
CPU model, no OS — in the same run. SmolLM2-135M-Instruct Q4_1, 1 thread, a ~200-token prompt,
128 greedy tokens. Also model load time and the RAM used beyond the (mapped) weights.

    make bench-llm        (or: python bench/llm.py)
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from qemu import Guest  # noqa: E402

MODEL = os.path.join(ROOT, "build", "deps", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
BENCH = os.path.join(ROOT, "build", "llama", "sse2", "bin", "llama-bench")
N_PROMPT, N_GEN = 200, 128
PARAGRAPH = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a small lamp "
             "and a notebook in which he recorded the weather, the passing ships and the color of the sea. ")


def in_kernel():
    code = f"""
import llm, time, kernel
free0 = kernel.mem()['free']
t0 = time.ticks_us()
m = llm.Model('/{os.path.basename(MODEL)}', n_ctx=512, n_seq=1)
load_ms = time.ticks_diff(time.ticks_us(), t0) / 1000
kv_bytes = 30 * 512 * 2 * 192 * 2
toks = m.tokenize({PARAGRAPH * 8!r})[:{N_PROMPT}]
t0 = time.ticks_us()
m.decode(toks)
pp_s = time.ticks_diff(time.ticks_us(), t0) / 1e6
m.kv_remove()
m.decode(toks[:1])
s = llm.Sampler(m, temperature=0)
t0 = time.ticks_us()
n = 0
for t in m.generate([], s, max_tokens={N_GEN}):
    n += 1
tg_s = time.ticks_diff(time.ticks_us(), t0) / 1e6
used = free0 - kernel.mem()['free']
print('RESULT', len(toks), pp_s, n, tg_s, load_ms, used, kv_bytes)
"""
    with Guest(modules=[MODEL], mem="512M", timeout=1200) as g:
        g.wait_prompt()
        out, err = g.raw_exec(code, timeout=1200)
    if err:
        raise RuntimeError(err.decode(errors="replace"))
    line = [l for l in out.decode().splitlines() if l.startswith("RESULT")][0].split()[1:]
    n_pp, pp_s, n_tg, tg_s, load_ms, used, kv = (float(x) for x in line)
    return {"pp": n_pp / pp_s, "tg": n_tg / tg_s, "load_ms": load_ms, "ram_beyond_weights_kv": used - kv}


def user_mode():
    r = subprocess.run(["qemu-i386", "-cpu", "max", BENCH, "-m", MODEL, "-p", str(N_PROMPT), "-n", str(N_GEN),
                        "-t", "1", "-r", "1", "-o", "json"], capture_output=True, text=True, timeout=1800, check=True)
    rows = json.loads(r.stdout)
    pp = next(row["avg_ts"] for row in rows if row["n_prompt"] and not row["n_gen"])
    tg = next(row["avg_ts"] for row in rows if row["n_gen"] and not row["n_prompt"])
    return {"pp": pp, "tg": tg}


def main():
    cllm = in_kernel()
    peer = user_mode()
    print(f"SmolLM2-135M Q4_1, ggml SSE2 build, 1 thread, TCG -cpu max ({time.strftime('%Y-%m-%d')}):")
    print(f"  {'':28} {'cllm':>9} {'qemu-i386':>10} {'ratio':>6}")
    for key, name in (("pp", f"prompt tok/s ({N_PROMPT} tokens)"), ("tg", f"generated tok/s ({N_GEN})")):
        print(f"  {name:28} {cllm[key]:9.2f} {peer[key]:10.2f} {cllm[key] / peer[key]:6.2f}x")
    print(f"  model load (llm.Model, zero-copy mmap of the boot module): {cllm['load_ms']:.0f} ms")
    print(f"  C memory beyond weights and KV cache: {cllm['ram_beyond_weights_kv'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
