"""cllm against llama-server itself: the same sdist's llama-server built with the kernel's own ggml
options (peer-same, `make test` builds it), run on the host's 127.0.0.1 with the same tiny GGUF. A
seeded draw through every sampler gives the same tokens from both, /infill lays out the same
prompt, and a context shift drops the same tokens: the same common sampler, chain and defaults."""
import contextlib
import os
import subprocess
import time

import pytest

from qemu import free_port
from test_server import boot, request
from tinymodel import ROOT, make_tiny_model

SERVER = os.path.join(ROOT, "build", "llama", "peer-same", "bin", "llama-server")
PROMPT = "Once upon a time"
FIM = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]


class Host:
    """llama-server on 127.0.0.1 as the guest serves: one slot of n_ctx, one thread, batches of 512."""

    def __init__(self, model, n_ctx, *flags, log=None):
        """log: a file for its output (else it is dropped)."""
        assert os.path.exists(SERVER), "llama-server (peer-same) is not built: run the tests with `make test`"
        self.port = free_port()
        out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([SERVER, "-m", model, "--host", "127.0.0.1", "--port", str(self.port), "-c", str(n_ctx),
                                      "-np", "1", "-t", "1", "-b", "512", "--no-warmup", *flags],
                                     stdout=out, stderr=subprocess.STDOUT)
        if log:
            out.close()
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if request(self, "GET", "/health", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.close()
        raise TimeoutError("llama-server did not come up")

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)


@contextlib.contextmanager
def served(model, n_ctx, append, *flags):
    """(guest, host): the kernel booted with append and llama-server with flags, both serving model."""
    host = Host(model, n_ctx, *flags)
    try:
        guest = boot(model, append)
    except BaseException:
        host.close()
        raise
    try:
        yield guest, host
    finally:
        guest.close()
        host.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    # (n_ctx_train 2048: llama-server fits its context to the model's, and -c 1024 must hold)
    model = make_tiny_model(str(tmp_path_factory.mktemp("models") / "fim.gguf"), vocab="gpt-2", extra_tokens=FIM,
                            n_ctx_train=2048)
    with served(model, 1024, "n_ctx=1024 parallel=1 cache_prompt=0") as both:
        yield both


def both(pair, path, body):
    out = []
    for server in pair:
        status, answer = request(server, "POST", path, dict(body, cache_prompt=False), timeout=120)
        assert status == 200, (server, answer)
        out.append(answer)
    return out


@pytest.mark.parametrize("fields", [
    {},
    {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0},
    {"temperature": 1.2, "typical_p": 0.7},
    {"temperature": 1.0, "top_n_sigma": 1.5},
    {"temperature": 1.3, "xtc_probability": 0.5, "xtc_threshold": 0.05},
    {"temperature": 1.0, "dynatemp_range": 0.5, "dynatemp_exponent": 1.5},
    {"temperature": 1.0, "mirostat": 2, "mirostat_tau": 4.0, "mirostat_eta": 0.2},
    {"temperature": 1.0, "mirostat": 1},
    {"temperature": 1.0, "dry_multiplier": 1.5, "dry_allowed_length": 1, "repeat_penalty": 1.3, "presence_penalty": 0.4},
    {"temperature": 1.4, "samplers": ["min_p", "temperature", "top_k"], "min_keep": 3},
    {"temperature": 0},
], ids=lambda f: ",".join(f) or "defaults")
def test_seeded_draws_equal_llama_servers(pair, fields):
    body = dict({"prompt": PROMPT, "n_predict": 16, "seed": 1234, "return_tokens": True}, **fields)
    ours, theirs = both(pair, "/completion", body)
    assert ours["tokens"] == theirs["tokens"]
    assert ours["content"] == theirs["content"], (ours["content"], theirs["content"])
    for name, value in fields.items():        # (llama-server shows its floats as float32 values)
        a, b = ours["generation_settings"][name], theirs["generation_settings"][name]
        assert a == b or isinstance(a, float) and abs(a - b) < 1e-6, (name, a, b)


def test_infill_prompt_equals_llama_servers(pair):
    body = {"input_prefix": "def add(a, b):\n    return ", "input_suffix": "\n\nprint(add(1, 2))\n", "prompt": "a",
            "input_extra": [{"filename": "util.py", "text": "x = 1\n"}], "n_predict": 8, "temperature": 0,
            "return_tokens": True}
    ours, theirs = both(pair, "/infill", body)
    assert ours["tokens_evaluated"] == theirs["tokens_evaluated"] and ours["tokens"] == theirs["tokens"]


def test_context_shift_equals_llama_servers(tmp_path):
    """A slot that fills (n_ctx 128: 256 cells, as llama.cpp pads a context), shifted as llama-server's
    --context-shift does (n_keep, n_discard):
    greedy past the slot's end, token for token the same; without it the answer stops at the end."""
    model = make_tiny_model(str(tmp_path / "tiny.gguf"), vocab="gpt-2", n_ctx_train=2048)
    with served(model, 128, "n_ctx=128 parallel=1 cache_prompt=0 context_shift=1", "--context-shift") as (guest, host):
        for extra in ({}, {"n_keep": 4, "n_discard": 10}, {"n_keep": -1}):
            body = dict({"prompt": PROMPT, "n_predict": 300, "temperature": 0, "return_tokens": True}, **extra)
            ours, theirs = both((guest, host), "/completion", body)
            assert ours["tokens_predicted"] == theirs["tokens_predicted"] == 300 and ours["truncated"] is True
            assert ours["tokens"] == theirs["tokens"], extra
    guest = boot(model, "n_ctx=128 parallel=1 cache_prompt=0")
    try:
        out = request(guest, "POST", "/completion", {"prompt": PROMPT, "n_predict": 300, "temperature": 0})[1]
        n_ctx = request(guest, "GET", "/props")[1]["default_generation_settings"]["n_ctx"]     # (128, padded by llama.cpp)
        assert out["stop_type"] == "limit" and out["truncated"] is False
        assert out["tokens_predicted"] == n_ctx - out["tokens_evaluated"] < 300
    finally:
        guest.close()
