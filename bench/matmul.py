"""The four-column Q4_1 and Q8_0 kernels (port/patch-llama.py, Q4_1_COLUMNS) against one column at a
time, under QEMU's system-mode TCG, where a memory access is a software TLB lookup: bench/matmul.c (a
1536 x 576 Q4_1 matrix and a 6144 x 576 Q8_0 one times 1, 2, 3, 4 and 8 columns through ggml's graph
API, one thread, best of BENCH_REPS)
built against the kernel's SSE2 ggml build and run as /init's child in the peer's Linux guest. Prints
ms per column for each count and its ratio to one column alone (> 1: cheaper per column).

    make bench-matmul           (BENCH_REPS=10)
"""
import os
import re
import stat
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import BUILD, PEER_KERNEL, ROOT, qemu_command  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "peer"))
import initramfs  # noqa: E402

GGML = os.path.join(BUILD, "llama", "sse2", "ggml", "src")
INCLUDE = os.path.join(BUILD, "deps", "llama-cpp-python", "vendor", "llama.cpp", "ggml", "include")
BUSYBOX = os.path.join(BUILD, "deps", "peer-busybox", "bin", "busybox")
REPS = int(os.environ.get("BENCH_REPS", 10))
INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t devtmpfs devtmpfs /dev
/matmul {REPS}
/bin/busybox poweroff -f
"""


def main():
    with tempfile.TemporaryDirectory() as tmp:
        exe, init, cpio = (os.path.join(tmp, name) for name in ("matmul", "init", "matmul.cpio"))
        subprocess.run(["gcc", "-m32", "-O2", "-msse2", "-mfpmath=sse", "-I", INCLUDE, "-c",
                        os.path.join(ROOT, "bench", "matmul.c"), "-o", exe + ".o"], check=True)
        # each small function inside one page, as in the kernel (without, the four-column kernel
        # crossed a page boundary in one build and took 1.1x the time)
        libs = []
        for lib in ("ggml", "ggml-cpu", "ggml-base"):
            libs.append(os.path.join(tmp, f"lib{lib}.a"))
            subprocess.run([os.path.join(ROOT, "port", "keep-in-page.sh"), os.path.join(GGML, f"lib{lib}.a"), libs[-1]],
                           check=True)
        subprocess.run(["g++", "-m32", "-static", exe + ".o", *libs, "-lpthread", "-lm", "-o", exe], check=True)
        with open(init, "w") as f:
            f.write(INIT)
        initramfs.write(cpio, [("bin", stat.S_IFDIR | 0o755, b"", (0, 0)),
                               ("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX, (0, 0)),
                               ("dev", stat.S_IFDIR | 0o755, b"", (0, 0)),
                               ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
                               ("init", stat.S_IFREG | 0o755, init, (0, 0)),
                               ("matmul", stat.S_IFREG | 0o755, exe, (0, 0)),
                               ("TRAILER!!!", 0, b"", (0, 0))])
        cmd = qemu_command(modules=[cpio], append="console=ttyS0 quiet", mem="512M", kernel=PEER_KERNEL)
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800).stdout
    figures = re.findall(r"matmul: (\S+ \d+ x \d+), (\d+) column\(s\) ([\d.]+) ms", out)
    if not figures:
        sys.exit("bench-matmul: no figures from the guest:\n" + out[-2000:])
    print("| matrix | columns | ms per column | against one column alone |")
    print("|---|---|---|---|")
    alone = {}
    for matrix, n, ms in figures:
        alone.setdefault(matrix, float(ms))
        print(f"| {matrix} | {n} | {float(ms):.2f} | {alone[matrix] / float(ms):.2f}x |")

if __name__ == "__main__":
    main()
