"""cllm against a Linux guest serving the same model with llama.cpp's own llama-server, in one run.

The peer (port/build-llama.sh ... peer, peer/): Debian bookworm's i386 kernel, busybox and a static
llama-server from the same sdist in an initramfs, built twice — llama.cpp's stock x86 options
("stock") and the ggml build cllm uses ("same") — so the table separates what the ggml build buys
from what deleting the OS buys. Every server boots with the same qemu-system-i386 command line
(tests/qemu.py: -cpu max, e1000 on a restrict=on user network, TCG) and the same model, context,
slots and threads, one after the other, BENCH_RUNS times each; the table shows medians and the
cllm/peer ratios. Each with one CPU and again with BENCH_SMP CPUs (multi-threaded TCG, one llama.cpp
thread per CPU on both sides; a table per CPU count, then what the CPUs bought each server). Also the
same ggml build's llama-bench under qemu-i386 user mode (as many threads), the emulator's ceiling for
tokens/s. Raw numbers go to build/bench/compare.json, a chart to build/bench/compare.png.

    make bench                  (BENCH_RUNS=3 BENCH_GEN=128 BENCH_HEALTH=500 BENCH_PARAGRAPHS=5 of prompt;
                                 BENCH_PEERS=same,stock; BENCH_SMP (make's SMP)=the host's cores, 1: one CPU only;
                                 BENCH_CEILING=0 leaves out the user-mode run)
    make bench BENCH_RUNS=1 BENCH_GEN=16 BENCH_PARAGRAPHS=1 BENCH_CEILING=0     a quick look (~5 min)
"""
import glob
import http.client
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from qemu import KERNEL, free_port, qemu_command  # noqa: E402

BUILD = os.path.join(ROOT, "build")
MODEL = os.path.join(BUILD, "deps", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
PEER_KERNEL = (glob.glob(os.path.join(BUILD, "deps", "peer-linux", "boot", "vmlinuz-*")) or ["?"])[0]
PEER_INITRAMFS = os.path.join(BUILD, "peer", "initramfs-{}.cpio")
LLAMA_BENCH = os.path.join(BUILD, "llama", "sse2", "bin", "llama-bench")
OUT = os.path.join(BUILD, "bench")

RUNS = int(os.environ.get("BENCH_RUNS", 3))
N_GEN = int(os.environ.get("BENCH_GEN", 128))
N_HEALTH = int(os.environ.get("BENCH_HEALTH", 500))
PEERS = os.environ.get("BENCH_PEERS", "same,stock").split(",")
CEILING = os.environ.get("BENCH_CEILING", "1") == "1"
SMPS = sorted({1, int(os.environ.get("BENCH_SMP") or os.cpu_count())})
MEM = "1024M"       # the peer's initramfs holds the model, unpacked from a copy of itself
N_CTX, SLOTS = 2048, 1
CLLM_APPEND = f"n_ctx={N_CTX} parallel={SLOTS}"         # cllm: one llama.cpp thread per CPU by default


def peer_append(threads):
    return f"console=ttyS0 quiet -- -c {N_CTX} -np {SLOTS} -t {threads} -tb {threads}"


PARAGRAPH = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a small lamp "
             "and a notebook in which he recorded the weather, the passing ships and the color of the sea. ")
# 5 paragraphs: 200 tokens. The prompt ends mid-sentence, so that greedy SmolLM2 goes on retelling the
# paragraph (both servers also get ignore_eos).
PROMPT = PARAGRAPH * int(os.environ.get("BENCH_PARAGRAPHS", 5)) + "One evening, "

# (key, label, unit, higher is better)
METRICS = [
    ("boot_s", "QEMU start -> /health 200", "s", False),
    ("prompt_tps", "prompt tok/s", "tok/s", True),
    ("gen_tps", f"generated tok/s ({N_GEN}, greedy)", "tok/s", True),
    ("ttft_s", "time to first token", "s", False),
    ("health_rps", f"/health req/s (new conn. each, {N_HEALTH})", "req/s", True),
    ("health_p50_ms", "/health p50 latency", "ms", False),
    ("health_p99_ms", "/health p99 latency", "ms", False),
    ("ram_mb", "RAM in use after load", "MiB", False),
    ("image_mb", "image size (kernel + model/initramfs)", "MiB", False),
]


class Machine:
    """One QEMU run; its serial console is collected in the background."""

    def __init__(self, kernel, initrd, append, **machine):
        self.port = free_port()
        cmd = qemu_command(modules=[initrd], append=append, mem=MEM, kernel=kernel,
                           hostfwd=[f"tcp:127.0.0.1:{self.port}-:80"], **machine)
        self.console = b""
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self):
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            self.console += chunk

    def wait_console(self, pattern, timeout):
        """The first group of the first match of a regular expression on the console so far."""
        end = time.monotonic() + timeout
        while not (found := re.search(pattern.encode(), self.console)):
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError(f"no {pattern!r} on the console; last output: {self.console[-800:]!r}")
            time.sleep(0.05)
        return found.group(1).decode()

    def request(self, method, path, body=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=json.dumps(body) if body else None,
                         headers={"Content-Type": "application/json", "Connection": "close"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def wait_ready(self, timeout=600):
        """Seconds from QEMU's start to the first /health 200. Each try gives up after 0.25 s: a
        connection made before the guest's network is up waits in QEMU's user network for its SYN to
        be retransmitted to the guest (seconds), which would be measured instead of the boot."""
        while True:
            try:
                status, _ = self.request("GET", "/health", timeout=0.25)
                if status == 200:
                    return time.monotonic() - self.started
            except (OSError, http.client.HTTPException):
                pass
            if self.proc.poll() is not None or time.monotonic() - self.started > timeout:
                raise RuntimeError(f"never healthy; console: {self.console[-800:]!r}")
            time.sleep(0.02)

    def close(self):
        self.proc.kill()
        self.proc.wait()


def health_rate(m):
    lat = []
    start = time.monotonic()
    for _ in range(N_HEALTH):
        t0 = time.monotonic()
        status, _ = m.request("GET", "/health")
        lat.append(time.monotonic() - t0)
        assert status == 200, status
    total = time.monotonic() - start
    lat.sort()
    return {"health_rps": N_HEALTH / total, "health_p50_ms": 1000 * lat[len(lat) // 2],
            "health_p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]}


def stream_events(port, body):
    """A streamed /completion of body: (arrival time, event) for each Server-Sent Event, to the last."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    try:
        conn.request("POST", "/completion", body=json.dumps(dict(body, stream=True)),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, (resp.status, resp.read())
        for line in resp:
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                yield time.monotonic(), event
                if event.get("stop"):
                    return
    finally:
        conn.close()


def completion(m):
    """One streamed greedy completion of the ~200-token prompt: time to the first token, and both
    servers' own `timings` for prompt and generation speed."""
    body = {"prompt": PROMPT, "n_predict": N_GEN, "temperature": 0, "ignore_eos": True, "cache_prompt": False}
    ttft, last, text = None, None, ""
    t0 = time.monotonic()
    for arrived, event in stream_events(m.port, body):
        if ttft is None and event.get("content"):
            ttft = arrived - t0
        text += event.get("content", "")
        last = event
    t = last["timings"]
    assert ttft is not None, f"no token generated: {last}"
    return {"ttft_s": ttft, "prompt_tps": t["prompt_per_second"], "gen_tps": t["predicted_per_second"],
            "prompt_n": t["prompt_n"], "gen_n": t["predicted_n"], "text": text}


def cllm_ram_mb(m):
    m.proc.stdin.write(b"import kernel; k = kernel.mem(); print('cllm: ram_used_kb=%d' % ((k['ram'] - k['free']) // 1024))\r")
    m.proc.stdin.flush()
    return int(m.wait_console(r"cllm: ram_used_kb=(\d+)", 30)) / 1024


def peer_ram_mb(m):
    return int(m.wait_console(r"peer: ram_used_kb=(\d+)", 60)) / 1024


def size_mb(*paths):
    return sum(os.path.getsize(p) for p in paths) / 2**20


SERVERS = {      # name: (boot(smp, **qemu_command's options), RAM in use, image size)
    "cllm": (lambda smp=1, **machine: Machine(KERNEL, MODEL, CLLM_APPEND, smp=smp, **machine), cllm_ram_mb,
             lambda: size_mb(os.path.join(os.path.dirname(KERNEL), "cllm-stripped.elf"), MODEL)),
}
for _peer in ("same", "stock"):
    SERVERS["peer-" + _peer] = (lambda smp=1, p=_peer, **machine: Machine(PEER_KERNEL, PEER_INITRAMFS.format(p),
                                                                          peer_append(smp), smp=smp, **machine),
                                peer_ram_mb, lambda p=_peer: size_mb(PEER_KERNEL, PEER_INITRAMFS.format(p)))


def run_name(server, smp):
    """The key of a server's runs: its name, with the CPU count when more than one."""
    return server if smp == 1 else f"{server} smp{smp}"


def one_run(name, smp):
    boot, ram, image = SERVERS[name]
    m = boot(smp)
    try:
        r = {"boot_s": m.wait_ready()}
        r["ram_mb"] = ram(m)
        r.update(health_rate(m))
        r.update(completion(m))
        r["image_mb"] = image()
        return r
    finally:
        m.close()


def user_mode_ceiling(n_prompt, threads):
    """llama-bench's prompt speed from an empty context, and its generation speed after n_prompt tokens
    of context (--n-depth), as the servers generate after the prompt: generating from an empty context
    attends over fewer tokens and runs faster."""
    def bench(*args):
        r = subprocess.run(["qemu-i386", "-cpu", "max", LLAMA_BENCH, "-m", MODEL, *args, "-t", str(threads),
                            "-r", "1", "-o", "json"], capture_output=True, text=True, timeout=3600, check=True)
        return json.loads(r.stdout)[0]["avg_ts"]
    return {"prompt_tps": bench("-p", str(n_prompt), "-n", "0"),
            "gen_tps": bench("-p", "0", "-n", str(N_GEN), "-d", str(n_prompt))}


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    qemu = subprocess.run(["qemu-system-i386", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return f"{os.cpu_count()}-core {cpu}, {platform.system()} {platform.release()}, {qemu}, TCG"


def table(medians, ceiling, smp):
    """cllm against each peer, all with smp CPUs."""
    me = run_name("cllm", smp)
    names = [n for n in medians if n != me]
    head = f"| {smp} CPU{'s' if smp > 1 else ''} | {me} | " + " | ".join(f"{n} | cllm/{n}" for n in names) + " |"
    lines = [head, "|---" * (2 + 2 * len(names)) + "|"]
    for key, label, unit, _ in METRICS:
        c = medians[me][key]
        cells = [f"{label} ({unit})", f"{c:.3g}"]
        for n in names:
            p = medians[n][key]
            cells += [f"{p:.3g}", f"{c / p:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    if ceiling:
        for key, label in (("prompt_tps", "prompt tok/s"), ("gen_tps", "generated tok/s")):
            c = medians[me][key]
            lines.append(f"| {label}, same build under qemu-i386 user mode, -t {smp} | {c:.3g} | "
                         f"{ceiling[key]:.3g} | {c / ceiling[key]:.2f}× |" + " |" * (2 * len(names) - 2))
    return "\n".join(lines)


def speed_ups(medians, smp):
    """What smp CPUs bought each server over one: prompt and generated tok/s."""
    lines = [f"| {smp} CPUs against 1 | prompt tok/s | generated tok/s |", "|---|---|---|"]
    for n in (n for n in medians if " " not in n):
        many = medians[run_name(n, smp)]
        lines.append(f"| {n} | {many['prompt_tps'] / medians[n]['prompt_tps']:.2f}× | "
                     f"{many['gen_tps'] / medians[n]['gen_tps']:.2f}× |")
    return "\n".join(lines)


def targets(medians, ceiling, smp):
    """The issues' targets (6: one CPU, 7: several), as (text, met)."""
    me = run_name("cllm", smp)
    c = medians[me]
    out = []

    def check(text, value, ok):
        out.append((f"{text}: {value:.2f}×", ok))

    if smp > 1:
        for key in ("prompt_tps", "gen_tps"):
            ratio = c[key] / medians["cllm"][key]
            check(f"{me} {key} ≥ 1.7× cllm", ratio, ratio >= 1.7)
        if run_name("peer-same", smp) in medians:
            p = medians[run_name("peer-same", smp)]
            for key in ("prompt_tps", "gen_tps"):
                check(f"{me} {key} ≥ 1.15× peer-same smp{smp}", c[key] / p[key], c[key] / p[key] >= 1.15)
        return out
    for n in (n for n in medians if n != me):
        p = medians[n]
        check(f"boot-to-ready ≤ 0.2× {n}", c["boot_s"] / p["boot_s"], c["boot_s"] / p["boot_s"] <= 0.2)
        want = 1.15 if n == "peer-same" else 3.0
        for key in ("prompt_tps", "gen_tps"):
            check(f"{key} ≥ {want}× {n}", c[key] / p[key], c[key] / p[key] >= want)
        check(f"/health req/s ≥ 2× {n}", c["health_rps"] / p["health_rps"], c["health_rps"] / p["health_rps"] >= 2)
        check(f"/health p99 ≤ 0.5× {n}", c["health_p99_ms"] / p["health_p99_ms"],
              c["health_p99_ms"] / p["health_p99_ms"] <= 0.5)
    if ceiling:
        for key in ("prompt_tps", "gen_tps"):
            check(f"{key} ≥ 0.95× qemu-i386 user mode", c[key] / ceiling[key], c[key] / ceiling[key] >= 0.95)
    return out


def chart(medians, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(medians)
    fig, axes = plt.subplots(3, 3, figsize=(12, 9))
    for ax, (key, label, unit, higher) in zip(axes.flat, METRICS):
        values = [medians[n][key] for n in names]
        bars = ax.bar(names, values, color=["tab:green" if n.startswith("cllm") else "tab:gray" for n in names])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_title(f"{label}\n({unit}, {'higher' if higher else 'lower'} is better)", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"cllm vs. Linux + llama-server, SmolLM2-135M Q4_1, qemu-system-i386 TCG, "
                 f"median of {RUNS} ({time.strftime('%Y-%m-%d')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    os.makedirs(OUT, exist_ok=True)
    servers = [(n, smp) for smp in SMPS for n in ["cllm"] + ["peer-" + p for p in PEERS if p]]
    runs = {run_name(n, smp): [] for n, smp in servers}
    for i in range(RUNS):
        for n, smp in servers:      # interleaved, so every server sees the same machine load
            r = one_run(n, smp)
            print(f"run {i + 1}/{RUNS} {run_name(n, smp)}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()
                                                                        if isinstance(v, float)), flush=True)
            runs[run_name(n, smp)].append(r)
    n_prompt = runs["cllm"][0]["prompt_n"]
    ceiling = {smp: user_mode_ceiling(n_prompt, smp) for smp in SMPS} if CEILING else {}
    medians = {n: {k: statistics.median(r[k] for r in rs) for k, *_ in METRICS} for n, rs in runs.items()}
    when, where = time.strftime("%Y-%m-%d"), machine()
    print(f"\nSmolLM2-135M-Instruct Q4_1, n_ctx {N_CTX}, {SLOTS} slot, one llama.cpp thread per CPU, {MEM} RAM, "
          f"median of {RUNS}; {when}; {where}")
    print("prompt tokens, generated tokens: " + ", ".join(f"{n} {rs[0]['prompt_n']}, {rs[0]['gen_n']}"
                                                          for n, rs in runs.items()))
    for smp in SMPS:
        of_smp = {n: m for n, m in medians.items() if n == run_name(n.split()[0], smp)}
        print()
        print(table(of_smp, ceiling.get(smp), smp))
        print()
        for text, ok in targets(of_smp | ({"cllm": medians["cllm"]} if smp > 1 else {}), ceiling.get(smp), smp):
            print(f"  {'met   ' if ok else 'MISSED'} {text}")
        if smp > 1:
            print()
            print(speed_ups(medians, smp))
    with open(os.path.join(OUT, "compare.json"), "w") as f:
        json.dump({"date": when, "machine": where, "runs": runs, "medians": medians,
                   "user_mode_ceiling": {f"threads {smp}": c for smp, c in ceiling.items()},
                   "settings": {"n_ctx": N_CTX, "slots": SLOTS, "smp": SMPS, "mem": MEM, "n_gen": N_GEN,
                                "n_health": N_HEALTH, "prompt": PROMPT, "cllm_append": CLLM_APPEND,
                                "peer_append": {smp: peer_append(smp) for smp in SMPS}}}, f, indent=1)
    chart(medians, os.path.join(OUT, "compare.png"))
    print(f"\nraw numbers: {os.path.relpath(os.path.join(OUT, 'compare.json'))}, "
          f"chart: {os.path.relpath(os.path.join(OUT, 'compare.png'))}")


if __name__ == "__main__":
    main()
