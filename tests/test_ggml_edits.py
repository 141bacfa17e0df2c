"""cllm's edits to ggml (port/patch-llama.py) checked on the host: tests/ggml_edits.c, built for i386
against the kernel's SSE2 build of ggml (the same archives the kernel links, before their symbols are
prefixed), computes each edited operation through ggml's graph API with 1, 2 and 3 threads and
compares it with plain arithmetic. The kernel-side tests check the same code through whole models."""
import os
import subprocess

from tinymodel import ROOT

GGML = os.path.join(ROOT, "build", "llama", "sse2", "ggml", "src")
INCLUDE = os.path.join(ROOT, "build", "deps", "llama-cpp-python", "vendor", "llama.cpp", "ggml", "include")
# the checks tests/ggml_edits.c makes, in its order
CHECKS = ["q4_1 dot product", "q8_0 dot product", "576-row Q4_1 matrix", "1000-row Q4_1 matrix", "49-row Q4_1 matrix",
          "100-row q4_1 matrix of 576 times 2", "100-row q4_1 matrix of 576 times 3",
          "200-row q4_1 matrix of 1536 times 4", "70-row q4_1 matrix of 2080 times 5",
          "130-row q4_1 matrix of 576 times 8", "300-row q8_0 matrix of 576 times 4",
          "70-row q8_0 matrix of 2080 times 6", "130-row q8_0 matrix of 576 times 8",
          "SwiGLU of 1 row(s) of 1536", "SwiGLU of 1 row(s) of 1537", "SwiGLU of 3 row(s) of 1536",
          "flash attention, one query, 200 of 256", "flash attention, one query, 300 of 512",
          "flash attention, one query, 1000 of 1024"]


def test_edited_ggml_operations_match_plain_arithmetic(tmp_path):
    obj, exe = tmp_path / "ggml_edits.o", tmp_path / "ggml_edits"
    # the kernel's ggml flags for floating point: SSE2 scalar, so that the reference rounds alike
    subprocess.run(["gcc", "-m32", "-O2", "-msse2", "-mfpmath=sse", "-Wall", "-Werror", "-I", INCLUDE, "-c",
                    os.path.join(ROOT, "tests", "ggml_edits.c"), "-o", obj], check=True)
    subprocess.run(["g++", "-m32", "-static", obj, *(os.path.join(GGML, f"lib{lib}.a") for lib in
                    ("ggml", "ggml-cpu", "ggml-base")), "-lpthread", "-lm", "-o", exe], check=True)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    lines = r.stdout.splitlines()
    assert [line.split(" ", 1)[1].startswith(check) for line, check in zip(lines, CHECKS)] == [True] * len(CHECKS), \
        r.stdout + r.stderr
    assert len(lines) == len(CHECKS) and r.returncode == 0, r.stdout + r.stderr
    assert all(line.startswith("ok ") for line in lines), r.stdout
