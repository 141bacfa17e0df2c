"""Where a guest's time goes: sample its EIP through the QEMU monitor (`info registers`, ~300 times a
second) while one of bench/compare.py's workloads runs, and name the function each sample falls in
(cllm: the kernel's symbols; the peer: llama-server's, and "linux" for any kernel address: Debian keeps
the real System.map in a -dbg package). A sample taken while the CPU sits in `hlt` is "(halted)": time
spent waiting for QEMU's network or timers, not computing. Each sample stops the vCPU briefly: use the
shares, not the rates. With SMP CPUs, every CPU is sampled each time and shown on its own.

    python bench/profile.py cllm|peer-same|peer-stock health|completion|batch [SMP]     (after `make bench`)

batch: 4 slots and 4 streams at once (bench/batching.py's workload), sampled while they run.
"""
import bisect
import collections
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import batching  # noqa: E402
import compare  # noqa: E402
from qemu import Monitor, kernel_symbols  # noqa: E402


def symbols(server):
    """Sorted (address, name) of the code the guest runs."""
    if server == "cllm":
        return kernel_symbols(compare.KERNEL)
    out = kernel_symbols(os.path.join(compare.BUILD, "llama", server, "bin", "llama-server"))
    return sorted(out + [(0xc0000000, "linux")])     # the i386 kernel's half of the address space


def main():
    server, work = sys.argv[1], sys.argv[2]
    smp = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    syms = symbols(server)
    starts = [a for a, _ in syms]
    path = f"/tmp/cllm-profile-{os.getpid()}.sock"
    monitor = f"unix:{path},server=on,wait=off"
    if work == "batch":
        m = batching.servers(smp, peers=["same", "stock"], monitor=monitor)[server]()
    else:
        m = compare.SERVERS[server][0](smp, monitor=monitor)
    samples, done = [collections.Counter() for _ in range(smp)], threading.Event()
    try:
        print(f"{server}: /health 200 after {m.wait_ready():.1f} s", flush=True)
        mon = Monitor(path)

        def sample():
            while not done.is_set():
                # every CPU's registers, each block after its "CPU#n" line
                blocks = re.split(rb"CPU#\d+", mon.command("info registers -a"))[-smp:]
                for cpu, regs in enumerate(blocks):
                    i = bisect.bisect_right(starts, int(re.search(rb"EIP=([0-9a-f]+)", regs).group(1), 16)) - 1
                    samples[cpu]["(halted)" if b"HLT=1" in regs else syms[i][1] if i >= 0 else "?"] += 1
                time.sleep(0.002)

        if work == "batch":
            batching.concurrent(m, 1)       # the first decode after boot pays for page faults
        sampler = threading.Thread(target=sample)
        sampler.start()
        result = {"health": compare.health_rate, "completion": compare.completion,
                  "batch": lambda m: batching.concurrent(m, batching.SLOTS)}[work](m)
        done.set()
        sampler.join()
        print({k: v for k, v in result.items() if k != "text"})
        for cpu, of_cpu in enumerate(samples):
            n = sum(of_cpu.values())
            print(f"CPU {cpu}: {n} EIP samples")
            for name, count in of_cpu.most_common(30 if smp == 1 else 15):
                print(f"  {100 * count / n:5.1f}%  {name}")
    finally:
        m.close()
        if os.path.exists(path):
            os.unlink(path)


if __name__ == "__main__":
    main()
