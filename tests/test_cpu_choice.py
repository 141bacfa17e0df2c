"""The boot's choice of ggml CPU kernels (modules/llm/cpu_variant.c), on the host: the same C file
built for i386 against the kernel's two CPU backends (tests/cpu_choice.c gives it the kernel's clock,
command line and CPUID), run natively, where AVX2 must win, and under qemu-i386, the same emulator
as the kernel's QEMU, where SSE2 must. The kernel-side test (test_llm.py) boots and checks the
choice there."""
import os
import subprocess

import pytest

from tinymodel import ROOT

LLAMA = os.path.join(ROOT, "build", "llama")
INCLUDE = os.path.join(ROOT, "build", "deps", "llama-cpp-python", "vendor", "llama.cpp", "ggml", "include")


@pytest.fixture(scope="module")
def exe(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu_choice")
    objs = []
    for src in ("tests/cpu_choice.c", "modules/llm/cpu_variant.c"):
        obj = out / (os.path.basename(src) + ".o")
        subprocess.run(["gcc", "-m32", "-O2", "-msse2", "-mfpmath=sse", "-Wall", "-Werror", "-I", ROOT,
                        "-I", INCLUDE, "-c", os.path.join(ROOT, src), "-o", obj], check=True)
        objs.append(obj)
    exe = out / "cpu_choice"
    subprocess.run(["g++", "-m32", "-static", *objs, *(os.path.join(LLAMA, lib) for lib in
                    ("libggml-cpu-sse2.a", "libggml-cpu-avx2.a", "libggml-base-paged.a")),
                    "-lpthread", "-lm", "-o", exe], check=True)
    return exe


def choose(cmd, **cmdline):
    env = dict(os.environ, **{f"CMDLINE_{k}": v for k, v in cmdline.items()})
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    name, rest = r.stdout.splitlines()[-1].split(" ", 1)
    reason, sse2_us, avx2_us, finished = rest.rsplit(" ", 3)
    return name, reason, int(sse2_us), int(avx2_us), finished == "1"


def host_has_avx2():
    flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split()
    return {"avx2", "fma", "f16c"} <= set(flags)


@pytest.mark.skipif(not host_has_avx2(), reason="the host CPU has no AVX2+FMA+F16C")
def test_avx2_where_the_cpu_runs_it(exe):
    for _ in range(3):
        name, reason, sse2, avx2, finished = choose([exe])
        assert (name, reason, finished) == ("avx2", "measured", True) and avx2 * 3 < sse2 * 2, (sse2, avx2)


def test_sse2_under_qemus_emulation(exe):
    for _ in range(3):
        name, reason, sse2, avx2, finished = choose(["qemu-i386", "-cpu", "max", exe])
        assert (name, reason, finished) == ("sse2", "measured", False) and avx2 > 2 * sse2, (sse2, avx2)


def test_the_command_line_decides(exe):
    assert choose(["qemu-i386", "-cpu", "max", exe], ggml="avx2")[:2] == ("avx2", "command line")
    assert choose([exe], ggml="sse2")[:2] == ("sse2", "command line")
    # a CPU without AVX2 cannot be given it: measured instead, or plain sse2 without AVX2 at all
    assert choose(["qemu-i386", "-cpu", "Nehalem", exe], ggml="avx2")[:2] == ("sse2", "no AVX2+FMA+F16C")
