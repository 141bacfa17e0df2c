"""Boot time: QEMU start -> first `>>> ` on the serial console, against the same QEMU starting a
kernel that exits at once (the emulator's own floor). Prints medians and their ratio.

    make bench-boot             (or: CLLM_KERNEL=build/port/cllm.elf python bench/boot.py [runs])
"""
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from qemu import KERNEL, qemu_command  # noqa: E402

TARGET_S = 0.5
MEM = "512M"      # as `make run`


def build_exit_kernel():
    out = os.path.join(ROOT, "build", "bench", "exit_kernel.elf")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-no-pie", "-Wl,-Ttext-segment=0x100000",
                    "-Wl,--build-id=none", "-o", out, os.path.join(ROOT, "bench", "exit_kernel.S")], check=True)
    return out


def time_to_prompt(kernel):
    cmd = qemu_command(kernel=kernel, mem=MEM)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen = b""
    try:
        while b">>> " not in seen:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"QEMU ended before the prompt: {seen[-500:]!r}")
            seen += chunk
        return time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()


def time_to_exit(kernel):
    start = time.monotonic()
    subprocess.run(qemu_command(kernel=kernel, mem=MEM), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)
    return time.monotonic() - start


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    floor_kernel = build_exit_kernel()
    cllm, floor = [], []
    for _ in range(runs):       # interleaved, so both see the same machine load
        floor.append(time_to_exit(floor_kernel))
        cllm.append(time_to_prompt(KERNEL))
    c, f = statistics.median(cllm), statistics.median(floor)
    stripped = os.path.join(os.path.dirname(KERNEL), "cllm-stripped.elf")
    print(f"boot time, median of {runs} (qemu-system-i386 -cpu max -m {MEM}, TCG):")
    print(f"  cllm: QEMU start -> first >>>        {c * 1000:7.0f} ms   (runs: {', '.join(f'{x * 1000:.0f}' for x in cllm)})")
    print(f"  peer: QEMU start -> exit-at-once kernel exits {f * 1000:7.0f} ms   (runs: {', '.join(f'{x * 1000:.0f}' for x in floor)})")
    print(f"  ratio cllm/peer: {c / f:.2f}x; cllm above the floor: {(c - f) * 1000:.0f} ms")
    print(f"  target: REPL under {TARGET_S * 1000:.0f} ms after QEMU starts: {'met' if c < TARGET_S else 'MISSED'}")
    if os.path.exists(stripped):
        print(f"  kernel image (stripped): {os.path.getsize(stripped)} bytes")


if __name__ == "__main__":
    main()
