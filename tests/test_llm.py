"""llama.cpp inside the kernel: the llm module against tiny GGUFs (fast) and against llama.cpp
itself, built from the same sdist with the same ggml flags and run natively on the host."""
import ast
import functools
import os
import re
import subprocess

import numpy as np
import pytest

from qemu import KERNEL, Guest, Monitor
from tinymodel import ROOT, make_tiny_model, vocab_path

LLAMA_BIN = os.path.join(ROOT, "build", "llama", "sse2", "bin")
SMOLLM2 = os.path.join(ROOT, "build", "deps", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
TRICKY = [
    "Hello world", " leading space", "trailing space ", "multiple   spaces\t\ttabs\n\nnewlines",
    "unicode: naïve café Ärger 日本語 中文 한국어 Ελληνικά", "emoji: 🦙🚀👍🏽 family 👨‍👩‍👧",
    "code: def f(x):\n    return x**2  # square\n", "numbers 1234567890 3.14159 -42",
    "<s> looks special </s>", "", "   ", "a" * 300,
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    tiny = make_tiny_model(str(d / "tiny.gguf"))
    foo = make_tiny_model(str(d / "foo.gguf"), arch="no-such-arch", n_layer=1)
    data = open(tiny, "rb").read()
    (d / "truncated.gguf").write_bytes(data[: len(data) // 3])
    (d / "notes.gguf").write_bytes(b"this is not a GGUF file\n" * 100)
    return {"tiny": tiny, "foo": foo, "truncated": str(d / "truncated.gguf"), "notes": str(d / "notes.gguf")}


@pytest.fixture(scope="module")
def g(models):
    mods = [models["tiny"], models["foo"], models["truncated"], models["notes"], vocab_path("llama-spm"), vocab_path("gpt-2")]
    with Guest(modules=mods, mem="512M", timeout=120) as guest:
        guest.wait_prompt()
        out, err = guest.raw_exec("import llm\nm = llm.Model('/tiny.gguf', n_ctx=256, n_seq=2)")
        assert err == b"", err
        yield guest


def run(g, code, timeout=120):
    out, err = g.raw_exec(code, timeout)
    assert err == b"", err.decode(errors="replace")
    return out.decode()


def guest_error(g, code):
    out, err = g.raw_exec(code)
    return err.decode(errors="replace").strip().splitlines()[-1]


def host_tokens(model, text, parse_special=True):
    cmd = [os.path.join(LLAMA_BIN, "llama-tokenize"), "-m", model, "--stdin", "--ids", "--log-disable"]
    if not parse_special:
        cmd.append("--no-parse-special")
    r = subprocess.run(cmd, input=text.encode(), capture_output=True, timeout=120, check=True)
    return ast.literal_eval(r.stdout.decode().strip().splitlines()[-1])


def host_greedy(model, prompt, n):
    """llama-simple's stdout: the prompt's pieces, then each generated piece (greedy), then \\n."""
    r = subprocess.run([os.path.join(LLAMA_BIN, "llama-simple"), "-m", model, "-n", str(n), prompt],
                       capture_output=True, timeout=600, check=True)
    return r.stdout[:-1]


def test_meta(g):
    meta = ast.literal_eval(run(g, "print(repr(m.meta()))"))
    assert meta["architecture"] == "llama"
    assert meta["n_vocab"] == 32000 and meta["n_embd"] == 64 and meta["n_layer"] == 2
    assert meta["n_ctx"] == 256 and meta["n_ctx_train"] == 512 and meta["n_seq"] == 2
    assert meta["bos"] == 1 and meta["eos"] == 2 and meta["add_bos"] is True
    assert 2 in meta["eog"] and all(0 <= t < 32000 for t in meta["eog"])
    assert "<|im_start|>" in meta["chat_template"]
    assert meta["n_params"] > 4_000_000


def test_tokenize_matches_llama_cpp(g, models):
    for text in TRICKY:
        ours = ast.literal_eval(run(g, f"print(m.tokenize({text!r}, True, True))"))
        assert ours == host_tokens(models["tiny"], text), text
    plain = ast.literal_eval(run(g, "print(m.tokenize('<s> x', True, False))"))
    assert plain == host_tokens(models["tiny"], "<s> x", parse_special=False)


def test_detokenize_round_trip(g):
    for text in TRICKY[:8]:
        back = run(g, f"print(repr(m.detokenize(m.tokenize({text!r}, False))))").strip()
        assert ast.literal_eval(back).strip() == text.strip()
    assert run(g, "print(m.token_to_piece(m.tokenize('hello', False)[0]))").strip() == "b'\\xe2\\x96\\x81hello'" or \
        run(g, "print(m.token_to_piece(m.tokenize('hello', False)[0]))").strip() == "b' hello'"


@pytest.mark.parametrize("vocab", ["llama-spm", "gpt-2"])
def test_tokenizer_vectors_from_the_sdist(g, vocab):
    """llama.cpp's own test vectors (models/ggml-vocab-*.gguf.inp/.out) through a vocab_only model."""
    base = vocab_path(vocab)
    # as tests/test-tokenizer-0.cpp reads them: inputs split by a separator, outputs one per line
    inputs = open(base + ".inp", encoding="utf-8").read().split("\n__ggml_vocab_test__\n")[:-1]
    outputs = open(base + ".out", encoding="utf-8").read().split("\n")
    run(g, f"v = llm.Model('/ggml-vocab-{vocab}.gguf', vocab_only=True)")
    checked = 0
    for text, want in zip(inputs, outputs):
        want = [int(t) for t in want.split()]
        got = ast.literal_eval(run(g, f"print(v.tokenize({text!r}, False, False))"))
        assert got == want, repr(text)
        checked += 1
    assert checked >= 20
    assert "cannot decode" in guest_error(g, "v.decode([1])")


def test_load_progress_bar(g):
    out = run(g, "p = llm.Model('/tiny.gguf', n_ctx=64, progress=True)\np.close()\nprint('loaded')")
    assert "llm: loading [" in out and "[" + "#" * 40 + "] 100%\r\n" in out
    assert out.count("100%") == 1 and out.strip().endswith("loaded")


def test_chat_template(g):
    out = ast.literal_eval(run(g, "print(repr(m.apply_chat_template([{'role': 'system', 'content': 'Be brief.'}, "
                                  "{'role': 'user', 'content': 'Hi'}])))"))
    assert out == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("prompt", ["Hello world", "The quick brown fox", "Once upon a time",
                                    "def fibonacci(n):", "Paris is the capital of"])
def test_greedy_matches_host_llama_simple_tiny(g, models, prompt):
    n = 32
    ours = run(g, f"""
m.kv_remove()
toks = m.tokenize({prompt!r}, True, True)
s = llm.Sampler(m, temperature=0)
pieces = [m.token_to_piece(t) for t in toks]
for t in m.generate(toks, s, max_tokens={n}):
    if m.is_eog(t):
        break
    pieces.append(m.token_to_piece(t))
print(repr(b''.join(pieces)))
""")
    assert ast.literal_eval(ours.strip()) == host_greedy(models["tiny"], prompt, n)


def test_logits_are_a_ulab_array_and_greedy_is_argmax(g):
    out = run(g, """
from ulab import numpy as np
m.kv_remove()
m.decode(m.tokenize('The cat sat'))
lg = m.logits()
s = llm.Sampler(m, temperature=0)
print(type(lg).__name__, lg.dtype, len(lg), int(np.argmax(lg)), s.sample())
""").split()
    assert out[0] == "ndarray" and out[2] == "32000"
    assert out[3] == out[4]


def test_probs_are_the_softmax_of_the_logits(g):
    out = run(g, """
from ulab import numpy as np
m.kv_remove()
m.decode(m.tokenize('The cat sat'))
lg = m.logits()
e = np.exp(lg - np.max(lg))
sm = e / np.sum(e)
order = np.argsort(lg, axis=0)
p, top = m.probs(0, 5, 7)
whole = m.probs(0, 32000)[1]
print(p - sm[7], [t for t, q in top] == [int(order[-1 - i]) for i in range(5)],
      max(abs(q - sm[t]) for t, q in top), abs(sum(q for t, q in whole) - 1), len(whole), m.probs(0, 0))
""").split(None, 5)
    assert abs(float(out[0])) < 1e-9 and out[1] == "True" and float(out[2]) < 1e-9 and float(out[3]) < 1e-6
    assert out[4] == "32000" and out[5].strip() == "(None, [])"


def test_multi_sequence_decode_equals_separate(g):
    out = run(g, """
from ulab import numpy as np
a, b = m.tokenize('first sequence here'), m.tokenize('a second, different one')
m.kv_remove(); m.decode(a, 0); la = m.logits(0)
m.kv_remove(); m.decode(b, 1); lb = m.logits(1)
m.kv_remove(); m.decode_batch([(0, a), (1, b)])
print(np.max(abs(m.logits(0) - la)), np.max(abs(m.logits(1) - lb)), m.seq_pos(0), m.seq_pos(1))
m.kv_remove(1)
print(m.seq_pos(0), m.seq_pos(1))
""").split()
    assert float(out[0]) < 1e-3 and float(out[1]) < 1e-3
    assert out[2:] == ["5", "8", "5", "0"] or int(out[2]) > 0 and out[4:] == [out[2], "0"]


def test_decode_in_the_decoder_thread(g):
    """decode_start runs decode_batch's work in a thread of its own (here, on the one CPU in turn
    with Python): the same logits; the context is refused until decode_done() says it is over; a
    bad item is refused at the start, before anything runs."""
    out = run(g, """
from ulab import numpy as np
a, b = m.tokenize('first sequence here'), m.tokenize('a second, different one')
m.kv_remove(); m.decode_batch([(0, a), (1, b)]); la, lb = m.logits(0), m.logits(1)
m.kv_remove(); m.decode_start([(0, a), (1, b)])
try:
    m.logits(0)
    print('not refused')
except RuntimeError as e:
    print('refused:', e)
polls = 0
while not m.decode_done():
    polls += 1
print(np.max(abs(m.logits(0) - la)), np.max(abs(m.logits(1) - lb)), m.seq_pos(0) == len(a), m.seq_pos(1) == len(b), m.decode_done())
try:
    m.decode_start([(5, a)])
except ValueError as e:
    print('bad item:', e)
""")
    lines = out.splitlines()
    assert lines[0] == "refused: a decode is running: wait for decode_done()"
    la, lb, p0, p1, done = lines[1].split()
    assert float(la) < 1e-3 and float(lb) < 1e-3 and (p0, p1, done) == ("True", "True", "True")
    assert lines[2].startswith("bad item: seq_id 5 out of range"), lines


def test_sampler_options(g):
    out = run(g, """
toks = m.tokenize('Numbers:')
def gen(**kw):
    m.kv_remove()
    return list(m.generate(toks, llm.Sampler(m, **kw), max_tokens=12))
a, b, c = gen(temperature=1.0, seed=42), gen(temperature=1.0, seed=42), gen(temperature=1.0, seed=43)
print(a == b, a != c)
greedy = gen(temperature=0)
banned = gen(temperature=0, logit_bias={greedy[0]: False})
print(banned[0] != greedy[0])
pen = gen(temperature=0, repeat_penalty=1.5, presence_penalty=0.5, frequency_penalty=0.5, top_k=10, top_p=0.9, min_p=0.1)
print(len(pen) == 12)
m.kv_remove()
yes_no = [m.token_to_piece(t) for t in m.generate(toks, llm.Sampler(m, temperature=0, grammar='root ::= (\\"yes\\" | \\"no\\") \\".\\"'), max_tokens=8) if not m.is_eog(t)]
print(repr(b''.join(yes_no)))
""").splitlines()
    assert out[:3] == ["True True", "True", "True"]
    text = ast.literal_eval(out[3]).replace(b"\xe2\x96\x81", b" ").strip()
    assert text in (b"yes.", b"no.")


def test_flash_attn_is_a_real_switch(g):
    # llama-server's --flash-attn: auto picks flash attention on the CPU; off is the other
    # arithmetic (KQ, softmax, KQV as separate ops), the same logits to within rounding.
    out = run(g, """
r = {}
for fa in ('on', 'off', 'auto'):
    f = llm.Model('/tiny.gguf', n_ctx=64, n_seq=1, flash_attn=fa)
    f.decode(f.tokenize('Once upon a time there was'))
    r[fa] = list(f.logits(0))
    f.close()
print(r['auto'] == r['on'], r['off'] != r['on'], max(abs(a - b) for a, b in zip(r['on'], r['off'])))
""").split()
    assert out[:2] == ["True", "True"] and float(out[2]) < 0.02


@pytest.mark.parametrize("code, error", [
    ("llm.Model('/missing.gguf')", "OSError"),
    ("llm.Model('/notes.gguf')", "ValueError: cannot load /notes.gguf"),
    ("llm.Model('/truncated.gguf')", "ValueError: cannot load /truncated.gguf"),
    ("llm.Model('/foo.gguf')", "ValueError: cannot load /foo.gguf"),
    ("m.kv_remove(); m.decode(list(range(300)))", "exceed_context_size_error"),
    ("m.decode([32000])", "ValueError: token id 32000 out of range"),
    ("m.decode([-1])", "ValueError: token id -1 out of range"),
    ("m.decode([1], 5)", "ValueError: seq_id 5 out of range"),
    ("llm.Model('/tiny.gguf', n_ctx=1 << 30)", "MemoryError"),
    ("llm.Model('/tiny.gguf', flash_attn='yes')", "ValueError: flash_attn=yes: need 'on', 'off' or 'auto'"),
    ("llm.Sampler(m, grammar='root ::= (')", "ValueError: invalid grammar"),
    ("m.logits(1)", "ValueError: sequence 1 has no logits"),
    ("m.probs(0, -1)", "ValueError: n must be >= 0"),
    ("m.probs(0, 3, 32000)", "ValueError: token id 32000 out of range"),
])
def test_errors_raise_and_the_repl_survives(g, code, error):
    assert error in guest_error(g, code)
    assert run(g, "print(1 + 1)").strip() == "2"


def test_generator_streams_one_token_per_step(g):
    out = run(g, """
m.kv_remove()
it = m.generate(m.tokenize('Step by step'), llm.Sampler(m, temperature=0), max_tokens=3)
first = next(it)
print(m.seq_pos(0))
rest = list(it)
print(len(rest), m.seq_pos(0))
""").split()
    prompt_len = int(out[0])
    assert out[1] == "2" and int(out[2]) == prompt_len + 2   # 3 yielded, the last one not decoded yet


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    assert os.path.exists(SMOLLM2), "SmolLM2 is not fetched: run the tests with `make test`"
    monitor = str(tmp_path_factory.mktemp("monitor") / "monitor.sock")
    with Guest(modules=[SMOLLM2], mem="512M", timeout=600, monitor=f"unix:{monitor},server=on,wait=off") as guest:
        guest.wait_prompt()
        guest.monitor = Monitor(monitor)
        try:
            out, err = guest.raw_exec("import llm\nm = llm.Model('/SmolLM2-135M-Instruct.Q4_1.gguf', n_ctx=512)",
                                      timeout=120)
            assert err == b"", err
            yield guest
        finally:
            guest.monitor.close()


def pit_raised(g):
    """How many times QEMU's PIT has raised IRQ 0 since boot (masked at the PIC or not)."""
    return int(re.search(rb"isa-i8259:\s+0:\s+(\d+)", g.monitor.command("info irq"))[1])


def test_the_timer_tick_pauses_while_llama_decodes(smol):
    # Every expiry of the emulated PIT stops the running CPU for QEMU's lock, whatever the PIC's
    # mask: at 1 kHz that was 2-5 % of a decode. The tick is off for a decode and back after it.
    run(smol, "import time\nm.kv_remove()\ntoks = m.tokenize('The lighthouse keeper climbed the stairs ' * 8)[:32]")
    before = pit_raised(smol)
    ms = int(run(smol, "t0 = time.ticks_ms(); m.decode(toks); print(time.ticks_diff(time.ticks_ms(), t0))"))
    during = pit_raised(smol) - before
    assert ms > 1000 and during < 0.1 * ms, (ms, during)
    before = pit_raised(smol)
    t = float(run(smol, "t0 = time.ticks_us(); time.sleep_ms(500); print(time.ticks_diff(time.ticks_us(), t0) / 1000)"))
    assert 500 <= t < 600 and pit_raised(smol) - before >= 400     # 1 kHz again: sleeps end in time


@pytest.mark.parametrize("prompt", ["The capital of France is", "def add(a, b):",
                                    "Write a haiku about the sea.", "1, 2, 3, 4,", "Q: What is a cat?\nA:"])
def test_smollm2_greedy_matches_host(smol, prompt):
    n = 32
    ours = run(smol, f"""
m.kv_remove()
toks = m.tokenize({prompt!r}, True, True)
pieces = [m.token_to_piece(t) for t in toks]
for t in m.generate(toks, llm.Sampler(m, temperature=0), max_tokens={n}):
    if m.is_eog(t):
        break
    pieces.append(m.token_to_piece(t))
print(repr(b''.join(pieces)))
""", timeout=600)
    assert ast.literal_eval(ours.strip()) == host_greedy(SMOLLM2, prompt, n)


def test_smollm2_chat(smol):
    out = run(smol, """
m.kv_remove()
p = m.apply_chat_template([{'role': 'user', 'content': 'What is the capital of France? One word.'}])
toks = m.tokenize(p, False, True)
text = b''.join(m.token_to_piece(t, False) for t in m.generate(toks, llm.Sampler(m, temperature=0), max_tokens=8))
print(repr(text))
""", timeout=600)
    assert b"Paris" in ast.literal_eval(out.strip())


def test_ulab_matches_numpy(g):
    """The ulab operations the sampler helpers and logprobs use, against real numpy."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(257) * 5
    vals = ",".join(repr(float(v)) for v in x)
    out = run(g, f"""
from ulab import numpy as np
x = np.array([{vals}])
e = np.exp(x - np.max(x))
sm = e / np.sum(e)
print(list(sm))
print(list(np.argsort(x, axis=0)))
print(int(np.argmax(x)), float(np.max(x)), float(np.sum(x)), float(np.mean(x)), float(np.std(x)))
print(list(np.log(sm)))
""").splitlines()
    sm = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    np.testing.assert_allclose(ast.literal_eval(out[0]), sm, rtol=1e-12, atol=1e-15)     # softmax: float64 both sides
    assert ast.literal_eval(out[1]) == list(np.argsort(x, kind="stable"))                 # argsort: exact (no ties)
    am, mx, total, mean, std = out[2].split()
    assert int(am) == int(np.argmax(x))
    # MicroPython prints 16 significant digits, so values come back within ~1e-15 relative
    np.testing.assert_allclose([float(mx), float(total), float(mean), float(std)], [x.max(), x.sum(), x.mean(), x.std()], rtol=1e-12)
    np.testing.assert_allclose(ast.literal_eval(out[3]), np.log(sm), rtol=1e-10)          # log-probs


def test_cpu_kernels_chosen_by_measuring_and_overridable(models):
    with Guest(mem="512M") as guest:
        guest.wait_prompt()
        # the choice is made on first use and logged (before the value, on the same console)
        kernels = ast.literal_eval(guest.eval("__import__('llm').cpu_kernels()").splitlines()[-1])
        # measured, not read from CPUID: under TCG the SSE2 kernels win although -cpu max has AVX2
        assert kernels["name"] == "sse2" and kernels["reason"] == "measured", kernels
    with Guest(modules=[models["tiny"]], mem="512M", append="ggml=avx2", timeout=300) as guest:
        guest.wait_prompt()
        out = run(guest, """
import llm
from ulab import numpy as np
m = llm.Model('/tiny.gguf', n_ctx=64)
toks = list(m.generate(m.tokenize('Hello'), llm.Sampler(m, temperature=0), max_tokens=4))
m.kv_remove(); m.decode(m.tokenize('Hello'))
print(llm.cpu_kernels()['name'], llm.cpu_kernels()['reason'], len(toks), np.max(abs(m.logits())) < 1e6)
""", timeout=300)
        assert "ggml: CPU kernels avx2, as the command line asks" in out      # logged at the model's load
        assert out.splitlines()[-1].split() == ["avx2", "command", "line", "4", "True"]


def test_cpu_kernels_are_sse2_under_tcg_in_every_boot():
    """The choice times a Q4_1 matrix on real values, with ggml's fp16 table filled: on all-zero
    scales TCG's AVX2 comes within 1 % of SSE2, yet runs the model ~6x slower. Under TCG it is SSE2
    in every boot, on one CPU or two, by a wide margin, and the log gives the numbers."""
    for boot in range(20):
        with Guest(mem="256M", smp=1 + boot % 2) as guest:
            guest.wait_prompt()
            guest.send(b"import llm; print(llm.cpu_kernels())\r")
            guest.expect(rb"ggml: CPU kernels (\w+) \(a Q4_1 matrix of 64x2048, best of 3: sse2 (\d+) us, "
                         rb"avx2 (~?)(\d+) us;")
            name, sse2, over, avx2 = guest.child.match.groups()
            assert (name, over) == (b"sse2", b"~") and int(avx2) > 2 * int(sse2), guest.child.match.group(0)


@functools.cache
def small_functions():
    """name -> (address, size) of the kernel's functions of at most a page (nm once for the tests below)."""
    out = subprocess.run(["nm", "-S", "--defined-only", KERNEL], capture_output=True, text=True, check=True).stdout
    small = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW" and 0 < int(parts[1], 16) <= 4096:
            small[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
    return small


def straddling(functions):
    return [name for name, (start, size) in functions.items() if start >> 12 != (start + size - 1) >> 12]


def test_no_small_ggml_function_straddles_a_page():
    """QEMU's TCG chains translated blocks directly only within a 4 KiB guest page: a loop whose body
    crosses a page takes a hash lookup each time round (ggml's Q4_1 dot product placed across one
    ran prompts 12 % slower). The SSE2 backend and ggml-base are linked so that no function of theirs
    smaller than a page crosses one (port/keep-in-page.sh)."""
    small = small_functions()
    ggml = {name: at for name, at in small.items() if name.startswith("sse2_")}
    for name in ("quantize_row_q8_1_ref", "ggml_fp16_to_fp32_row"):     # ggml-base
        ggml[name] = small[name]
    assert len(ggml) > 300
    assert straddling(ggml) == []


def test_no_small_interpreter_or_network_function_straddles_a_page():
    """The same for the kernel's own objects - MicroPython, lwIP, the port - which serve every request
    (port.mk links them through port/keep-in-page.sh): linked as they fell, 38 of these crossed a page,
    mp_binary_op, ip4_input and tcp_output among them."""
    ours = {name: at for name, at in small_functions().items()
            if name.startswith(("mp_", "gc_", "qstr", "tcp_", "ip4_", "pbuf_", "e1000_", "net_"))}
    assert len(ours) > 600
    assert straddling(ours) == []


PACKED_SSE = re.compile(r"\s(padd|psub|pmul|pmadd|punpck|pack|pcmp|pshuf|psrl|psll|psra|mulps|addps|subps|divps"
                        r"|cvtdq2ps|cvtps2dq|cvttps2dq)[a-z]*\s")


def test_the_sse2_backend_is_not_auto_vectorised():
    """TCG runs packed SSE arithmetic through helper calls and scalar code faster: the SSE2 backend is
    built with -fno-tree-vectorize (port/build-llama.sh; generation 11 % faster). Loops GCC vectorises
    at -O3 - a row scaled, floats to bfloat16 and back - stay scalar in the linked kernel (with
    vectorisation they held 115, 27 and 4 packed instructions)."""
    small = small_functions()
    for name in ("sse2_ggml_compute_forward_scale", "sse2_ggml_cpu_fp32_to_bf16", "sse2_ggml_cpu_bf16_to_fp32"):
        start, size = small[name]
        code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={start:#x}",
                               f"--stop-address={start + size:#x}", KERNEL],
                              capture_output=True, text=True, check=True).stdout
        assert len(code.splitlines()) > 20, name
        assert PACKED_SSE.findall(code) == [], name
