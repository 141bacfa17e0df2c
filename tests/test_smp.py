"""Every CPU at work: the other CPUs started, glibc's threads on them (clone, futex, exit),
llama.cpp's thread pool across two CPUs, and a fault on a CPU other than 0. The machines here
have two CPUs under multi-threaded TCG; the other test files boot one."""
import ast
import http.client
import json
import os
import re
import threading
import time

import pytest

from qemu import PANIC_STATUS, Guest, free_port
from tinymodel import ROOT, make_tiny_model

SMOLLM2 = os.path.join(ROOT, "build", "deps", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def smp2():
    with Guest(smp=2, timeout=60) as g:
        g.banner = g.wait_prompt().decode()
        yield g


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny.gguf"))


def run(g, code, timeout=120):
    """What code printed, less the kernel's log lines ("[   1.234] ..."): the first model a guest
    loads logs which ggml kernels it runs."""
    out, err = g.raw_exec(code, timeout)
    assert err == b"", err.decode(errors="replace")
    return "".join(line for line in out.decode().splitlines(True) if not re.match(r"\[\s*\d+\.\d{3}\] ", line))


def test_banner_lists_each_cpu_and_python_counts_them(smp2):
    assert re.search(r"cpus: 2 \(ACPI MADT\): cpu0=apic0 cpu1=apic1\r\n", smp2.banner)
    assert smp2.eval("__import__('kernel').cpus()") == "2"


def test_one_cpu_keeps_threads_refused():
    with Guest(timeout=60) as g:
        banner = g.wait_prompt().decode()
        assert "cpus: 1 (ACPI MADT): cpu0=apic0" in banner
        assert g.eval("__import__('kernel').cpus()") == "1"
        out = run(g, "import kernel\ntry:\n    kernel.thread_test(1)\nexcept OSError as e:\n    print('OSError', e.errno)")
        assert out.strip() == "OSError 11"       # EAGAIN: no other CPU, so no thread to start


@pytest.mark.parametrize("cpus", [1, 2])
def test_a_thread_more_than_the_other_cpus_shares_cpu0_with_python(cpus):
    """Once every other CPU has a thread, one more runs on CPU 0 in turn with the main thread (a
    decode beside the server): the relay passes its turn through futex waits and wakes that now
    switch threads on CPU 0, each turn's SSE arithmetic must come out as computed alone (the
    registers are the thread's own), and each thread's TLS stays its own."""
    with Guest(smp=cpus, timeout=120) as g:
        g.wait_prompt()
        result = ast.literal_eval(g.eval(f"__import__('kernel').thread_test(30, 10, {cpus})", timeout=300))
        assert result == {"threads": 30 * cpus, "tids": cpus + 1, "nprocs_onln": cpus}
        # CPU 0 takes one thread besides the main one
        out = run(g, f"import kernel\ntry:\n    kernel.thread_test(1, 2, {cpus + 1})\nexcept OSError as e:\n    print('OSError', e.errno)")
        assert out.strip() == "OSError 11"
        assert g.eval("1 + 1") == "2"


def test_1000_thread_cycles_with_futex_traffic_leak_nothing(smp2):
    run(smp2, "import kernel\nkernel.thread_test(20)")     # glibc's stack cache and thread arena settle
    before = ast.literal_eval(smp2.eval("(__import__('kernel').mem()['free'], __import__('kernel').syscalls())"))
    result = ast.literal_eval(smp2.eval("__import__('kernel').thread_test(1000)", timeout=600))
    after = ast.literal_eval(smp2.eval("(__import__('kernel').mem()['free'], __import__('kernel').syscalls())"))
    assert result == {"threads": 1000, "tids": 2, "nprocs_onln": 2}
    assert after[0] == before[0]                                   # no memory kept by the kernel
    calls = {name: after[1].get(name, 0) - before[1].get(name, 0) for name in after[1]}
    assert calls.get("clone3", 0) + calls.get("clone", 0) == 1000
    assert calls["exit"] == 1000
    assert calls["futex"] > 1000 * 10                              # the relay waits and wakes
    assert smp2.eval("__import__('kernel').cpus()") == "2"


def test_fault_on_another_cpu_gives_panic_dump():
    with Guest(smp=2, timeout=60) as g:
        g.wait_prompt()
        g.send(b"import kernel; kernel.fault('ud', True)\r")
        g.expect_exact(b"*** cllm panic: ")
        dump = g.expect_exact(b"*** end of panic").decode()
        status = g.wait_exit()
    assert dump.startswith("invalid opcode (vector 6, error code 0x")
    assert re.search(r"^cpu 1 \(APIC id 1\), thread \d+\r?$", dump, re.M)
    for reg in ("eip", "eax", "esp", "eflags", "cr0"):
        assert re.search(rf"{reg}=[0-9a-f]{{8}}", dump), reg
    frames = re.findall(r"^  [0-9a-f]{8}  (\S+)\+0x[0-9a-f]+", dump, re.M)
    assert frames[0] == "fault_thread" and "start_thread" in frames
    assert status == PANIC_STATUS


def test_threads_default_to_cpus_and_follow_the_command_line(tiny):
    code = "import llm\nprint(llm.Model('/tiny.gguf', n_ctx=64, n_seq=1).meta()['n_threads'])"
    with Guest(modules=[tiny], smp=2, timeout=60) as g:
        g.wait_prompt()
        assert run(g, code).strip() == "2"
        out, err = g.raw_exec("import llm\nllm.Model('/tiny.gguf', n_ctx=64, n_threads=3)")
        assert b"ValueError: n_threads=3 but 2 CPUs" in err
    with Guest(modules=[tiny], smp=2, append="threads=1", timeout=60) as g:
        g.wait_prompt()
        assert run(g, code).strip() == "1"


def test_greedy_with_two_threads_is_token_identical_to_one():
    assert os.path.exists(SMOLLM2), "SmolLM2 is not fetched: run the tests with `make test`"
    with Guest(modules=[SMOLLM2], mem="512M", smp=2, timeout=600) as g:
        g.wait_prompt()
        out = run(g, """
import llm, kernel
runs = []
for n in (1, 2):
    m = llm.Model('/SmolLM2-135M-Instruct.Q4_1.gguf', n_ctx=256, n_seq=1, n_threads=n)
    toks = m.tokenize('The capital of France is', True, True)
    runs.append(list(m.generate(toks, llm.Sampler(m, temperature=0), max_tokens=16)))
    del m
print(repr(runs))
print(kernel.syscalls().get('clone3', 0))
""", timeout=900)
    lines = out.strip().splitlines()
    one, two = ast.literal_eval(lines[0])
    assert len(one) == 16 and one == two
    assert int(lines[1]) == 1                   # the 2-thread model's pool: one worker, started once for all decodes


def test_attention_past_256_keys_agrees_between_one_and_two_cpus(tmp_path):
    """A token generated after 260 others: llama.cpp's view of the KV cache is 512 keys (a multiple
    of 256, the rest masked), where ggml's flash attention splits the keys between the threads
    (port/patch-llama.py shares out the keys in use; tests/ggml_edits.c checks each thread's share).
    In the kernel, on a model that is mostly attention (24 layers of 32 heads of 4), two threads
    compute what one does: the same logits within float rounding, the same greedy tokens."""
    model = make_tiny_model(str(tmp_path / "attention.gguf"), n_embd=128, n_layer=24, n_head=32,
                            n_head_kv=32, n_ff=128)
    with Guest(modules=[model], smp=2, mem="512M", timeout=120) as g:
        g.wait_prompt()
        out = run(g, """
import llm
from ulab import numpy as np
runs = []
for n in (1, 2):
    m = llm.Model('/attention.gguf', n_ctx=512, n_seq=1, n_threads=n)
    toks = (m.tokenize('The lighthouse keeper climbed the spiral stairs at dusk. ') * 40)[:260]
    m.decode(toks)
    logits = m.logits()
    runs.append((logits, list(m.generate([toks[-1]], llm.Sampler(m, temperature=0), max_tokens=8))))
    m.close()
(one, t1), (two, t2) = runs
print(np.max(abs(one - two)) / np.max(abs(one)), t1 == t2, len(t1))
""", timeout=600)
    rel, same, n = out.split()
    assert float(rel) < 1e-4 and same == "True" and n == "8", out


def health(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/health")
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, json.loads(body)


def test_server_answers_health_during_multithreaded_generation(tiny):
    port = free_port()
    with Guest(modules=[tiny], append="n_ctx=512", mem="256M", smp=2, timeout=120,
               hostfwd=[f"tcp:127.0.0.1:{port}-:80"]) as g:
        g.expect(b"serving on port 80", timeout=120)
        g.wait_prompt()
        g.line("import kernel")       # the server's own REPL: no raw mode
        clones_before = int(g.line("kernel.syscalls().get('clone3', 0)"))
        result = {}

        def generate():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            c.request("POST", "/completion", body=json.dumps({"prompt": "Once upon a time", "n_predict": 300,
                                                              "temperature": 0}),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            result["status"], result["body"] = r.status, json.loads(r.read())
            c.close()

        t = threading.Thread(target=generate)
        t.start()
        answers = []
        while t.is_alive():
            t0 = time.monotonic()
            answers.append((health(port), time.monotonic() - t0))
            time.sleep(0.25)    # a few dozen connections: the guest's TCP keeps closed ones a while
        t.join()
        clones = int(g.line("kernel.syscalls().get('clone3', 0)")) - clones_before
    predicted = result["body"]["tokens_predicted"]
    assert result["status"] == 200 and predicted > 100
    assert len(answers) > 1 and all(a == (200, {"status": "ok"}) for a, _ in answers)
    # the model's pool: one worker, started at load; the decoder thread: one, at the first decode
    assert clones_before == 1 and clones == 1
