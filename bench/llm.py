"""Inference speed inside the kernel with one CPU and with SMP CPUs (one llama.cpp thread per
CPU, multi-threaded TCG), against the emulator's ceiling: the same llama.cpp build (static i386,
same ggml flags) run as a Linux program under qemu-i386 user-mode emulation — same CPU model, no
OS — with 1 and SMP threads, in the same run. SmolLM2-135M-Instruct Q4_1, a ~200-token prompt,
128 greedy tokens. Also model load time and the RAM used beyond the (mapped) weights.

    make bench-llm [SMP=2]   (or: python bench/llm.py [--smp 2] [--n-prompt 200] [--n-gen 128])
"""
import argparse
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
PARAGRAPH = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a small lamp "
             "and a notebook in which he recorded the weather, the passing ships and the color of the sea. ")


def in_kernel(smp, n_prompt, n_gen):
    code = f"""
import llm, time, kernel
free0 = kernel.mem()['free']
t0 = time.ticks_us()
m = llm.Model('/{os.path.basename(MODEL)}', n_ctx=512, n_seq=1)   # n_threads: one per CPU
load_ms = time.ticks_diff(time.ticks_us(), t0) / 1000
kv_bytes = 30 * 512 * 2 * 192 * 2
toks = m.tokenize({PARAGRAPH * 8!r})[:{n_prompt}]
t0 = time.ticks_us()
m.decode(toks)
pp_s = time.ticks_diff(time.ticks_us(), t0) / 1e6
m.kv_remove()
m.decode(toks[:1])
s = llm.Sampler(m, temperature=0)
t0 = time.ticks_us()
n = 0
for t in m.generate([], s, max_tokens={n_gen}):
    n += 1
tg_s = time.ticks_diff(time.ticks_us(), t0) / 1e6
used = free0 - kernel.mem()['free']
print('RESULT', len(toks), pp_s, n, tg_s, load_ms, used, kv_bytes, m.meta()['n_threads'])
"""
    with Guest(modules=[MODEL], mem="512M", timeout=1200, smp=smp) as g:
        g.wait_prompt()
        out, err = g.raw_exec(code, timeout=1200)
    if err:
        raise RuntimeError(err.decode(errors="replace"))
    line = [l for l in out.decode().splitlines() if l.startswith("RESULT")][0].split()[1:]
    n_pp, pp_s, n_tg, tg_s, load_ms, used, kv, threads = (float(x) for x in line)
    assert threads == smp, (threads, smp)
    return {"pp": n_pp / pp_s, "tg": n_tg / tg_s, "load_ms": load_ms, "ram_beyond_weights_kv": used - kv}


def user_mode(threads, n_prompt, n_gen):
    r = subprocess.run(["qemu-i386", "-cpu", "max", BENCH, "-m", MODEL, "-p", str(n_prompt), "-n", str(n_gen),
                        "-t", str(threads), "-r", "1", "-o", "json"], capture_output=True, text=True, timeout=1800, check=True)
    rows = json.loads(r.stdout)
    pp = next(row["avg_ts"] for row in rows if row["n_prompt"] and not row["n_gen"])
    tg = next(row["avg_ts"] for row in rows if row["n_gen"] and not row["n_prompt"])
    return {"pp": pp, "tg": tg}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smp", type=int, default=os.cpu_count(), help="CPUs of the second column (default: the host's cores)")
    ap.add_argument("--n-prompt", type=int, default=200)
    ap.add_argument("--n-gen", type=int, default=128)
    a = ap.parse_args()
    smps = sorted({1, a.smp})
    cllm = {n: in_kernel(n, a.n_prompt, a.n_gen) for n in smps}
    peer = {n: user_mode(n, a.n_prompt, a.n_gen) for n in smps}
    print(f"SmolLM2-135M Q4_1, ggml SSE2 build, one thread per CPU, TCG -cpu max, multi-threaded TCG with "
          f"more than one CPU, host with {os.cpu_count()} cores ({time.strftime('%Y-%m-%d')}):")
    head = "".join(f" {f'cllm SMP={n}':>11}" for n in smps) + "".join(f" {f'qemu-i386 -t {n}':>15}" for n in smps)
    print(f"  {'':28}{head}  {'SMP speed-up':>12}  {'vs qemu-i386':>12}")
    for key, name in (("pp", f"prompt tok/s ({a.n_prompt} tokens)"), ("tg", f"generated tok/s ({a.n_gen})")):
        row = "".join(f" {cllm[n][key]:11.2f}" for n in smps) + "".join(f" {peer[n][key]:15.2f}" for n in smps)
        top = smps[-1]
        print(f"  {name:28}{row}  {cllm[top][key] / cllm[1][key]:11.2f}x  {cllm[top][key] / peer[top][key]:11.2f}x")
    print(f"  model load (llm.Model, zero-copy mmap of the boot module): {cllm[1]['load_ms']:.0f} ms")
    print(f"  C memory beyond weights and KV cache: {cllm[1]['ram_beyond_weights_kv'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
