"""Two things the kernel does for QEMU's TCG, measured inside the guest as ratios against a peer
measured in the same run:

  TLB   a byte from each of 16384 pages (64 MiB) against 16384 bytes of 4 pages. TCG starts each
        CPU's software TLB at 256 entries and grows it only when the guest flushes; the kernel grows
        it at boot (cpu_grow_tlb), so the spread read should cost about what the packed one does
        (1.7x with the 256-entry TLB).
  str   slicing a str against slicing bytes. Every new str is looked up among the qstrs; the kernel
        does it through a hash index over the qstrs in ROM (port/qstrindex.c), so a str slice costs a
        little more than a bytes slice (UTF-8), not three times as much.

    make bench-tcg              (or: CLLM_KERNEL=build/port/cllm.elf python bench/tcg.py)
"""
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from qemu import Guest  # noqa: E402

TLB_PROBE = """
import time, uctypes
from ulab import numpy as np
mem = np.frombuffer(uctypes.bytearray_at(0x2000000, 64 << 20), dtype=np.uint8)
spread, packed = mem[::4096], mem[:16384]
def took(a):
    t0 = time.ticks_us()
    for _ in range(10):
        np.sum(a)
    return time.ticks_diff(time.ticks_us(), t0)
print(min(took(spread) / took(packed) for _ in range(3)))
"""

STR_PROBE = """
import time
text, data = "Host: 127.0.0.1:8080, Accept: */*", b"Host: 127.0.0.1:8080, Accept: */*"
def took(s):
    t0 = time.ticks_us()
    for _ in range(2000):
        s[0:4]; s[6:15]; s[22:28]; s[3:20]
    return time.ticks_diff(time.ticks_us(), t0)
runs = [(took(text), took(data)) for _ in range(5)]
print(sorted(t for t, _ in runs)[2] / sorted(d for _, d in runs)[2])
"""


def main():
    with Guest(mem="512M", timeout=120) as g:
        g.wait_prompt()
        for name, probe, what in (("TLB", TLB_PROBE, "a byte of each of 16384 pages / 16384 bytes of 4 pages"),
                                  ("str", STR_PROBE, "str slices / bytes slices (median of 5)")):
            out, err = g.raw_exec(probe, timeout=300)
            if err:
                raise RuntimeError(err.decode(errors="replace"))
            print(f"{name:4} {float(out):5.2f}x  {what}")


if __name__ == "__main__":
    main()
