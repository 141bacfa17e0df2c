"""Every sampler llama-server reads, through llama.cpp's common sampler (llm.Sampler) in QEMU with
the tiny GGUF: each field reaches the chain (a seeded draw repeats, and differs where the field
changes the distribution), llama-server's bounds (clamped or refused), the chain's order, and the
request's values in generation_settings; and /completion's other fields: several prompts, n_cmpl,
id_slot, t_max_predict_ms, response_fields; /infill."""
import pytest

from test_server import assert_error, boot, request
from tinymodel import make_tiny_model

FIM = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    g = boot(make_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny.gguf")), "n_ctx=512 parallel=2 cache_prompt=0")
    try:
        yield g
    finally:
        g.close()


def draw(srv, **fields):
    body = dict({"prompt": PROMPT, "n_predict": 12, "seed": 7, "temperature": 1.5, "return_tokens": True}, **fields)
    status, out = request(srv, "POST", "/completion", body)
    assert status == 200, out
    return out


SAMPLERS = [
    {},
    {"typical_p": 0.5},
    {"top_n_sigma": 0.5},
    {"xtc_probability": 1.0, "xtc_threshold": 0.01},
    {"dynatemp_range": 1.0, "dynatemp_exponent": 2.0},
    {"mirostat": 1, "mirostat_tau": 3.0, "mirostat_eta": 0.2},
    {"mirostat": 2, "mirostat_tau": 2.0},
    {"dry_multiplier": 2.0, "dry_base": 2.0, "dry_allowed_length": 1, "dry_penalty_last_n": 32,
     "dry_sequence_breakers": ["\n"]},
    {"min_keep": 5, "top_k": 1},
    {"samplers": ["temperature"], "top_k": 1},
    {"samplers": "kt", "top_k": 1},
]


@pytest.mark.parametrize("fields", SAMPLERS, ids=lambda f: ",".join(f) or "defaults")
def test_each_sampler_reaches_the_chain(srv, fields):
    a, b = draw(srv, **fields), draw(srv, **fields)
    assert a["tokens"] == b["tokens"] and len(a["tokens"]) == 12       # seeded: the same draw
    gs = a["generation_settings"]
    for name, value in fields.items():
        assert gs[name] == value, (name, gs[name])


def test_fields_change_the_draw(srv):
    base = draw(srv)["tokens"]
    assert draw(srv, seed=8)["tokens"] != base
    # top_k 1 ahead of the temperature is greedy; with the temperature alone first it is not
    greedy = draw(srv, temperature=0)["tokens"]
    assert draw(srv, top_k=1)["tokens"] == greedy
    assert draw(srv, top_k=1, samplers=["temperature", "top_k"])["tokens"] == greedy
    assert draw(srv, top_k=1, samplers=["temperature"])["tokens"] != greedy
    assert draw(srv, samplers="k", top_k=1)["tokens"] == greedy          # letters, as llama-server takes them
    assert draw(srv, mirostat=2, mirostat_tau=0.01)["tokens"] != base
    assert draw(srv, typical_p=0.01)["tokens"] != base


def test_bounds_as_llama_server(srv):
    gs = draw(srv, top_p=5.0, min_p=-1.0, temperature=-2.0, top_k=-3, mirostat=7, dry_base=0.5)["generation_settings"]
    assert (gs["top_p"], gs["min_p"], gs["temperature"], gs["top_k"], gs["mirostat"]) == (1.0, 0.0, 0.0, 0, 2)
    assert gs["dry_base"] == 1.75                                        # below 1: the default
    for bad in ({"repeat_last_n": -2}, {"min_keep": -1}, {"dry_allowed_length": -1}, {"dry_sequence_breakers": []},
                {"dry_sequence_breakers": "\n"}, {"samplers": ["top_k", "bogus"]}, {"samplers": 5},
                {"typical_p": "high"}, {"mirostat": 1.5}):
        status, out = request(srv, "POST", "/completion", dict({"prompt": PROMPT, "n_predict": 2}, **bad))
        assert_error(status, out, 400, "invalid_request_error")
    assert request(srv, "GET", "/health")[0] == 200


def test_defaults_in_props(srv):
    params = request(srv, "GET", "/props")[1]["default_generation_settings"]["params"]
    assert params["typical_p"] == 1.0 and params["mirostat"] == 0 and params["dry_multiplier"] == 0.0
    assert params["samplers"][:2] == ["penalties", "dry"] and params["dry_sequence_breakers"] == ["\n", ":", "\"", "*"]


def test_prompts_and_completions(srv):
    # (each prompt's own result, told apart by its length: decoded beside another, a greedy draw may
    # differ from the one alone in a near-tie, as logits differ in the last bits between batch sizes)
    n = [draw(srv, prompt=p, n_predict=1)["tokens_evaluated"] for p in ("Hello", PROMPT)]
    status, out = request(srv, "POST", "/completion", {"prompt": ["Hello", PROMPT], "n_predict": 4, "temperature": 0})
    assert status == 200 and [r["index"] for r in out] == [0, 1] and [r["tokens_evaluated"] for r in out] == n
    assert n[0] != n[1] and all(r["tokens_predicted"] == 4 for r in out)
    status, out = request(srv, "POST", "/completion", {"prompt": PROMPT, "n_predict": 4, "n_cmpl": 2, "seed": 3})
    assert status == 200 and [r["index"] for r in out] == [0, 1] and all(r["tokens_predicted"] == 4 for r in out)
    status, out = request(srv, "POST", "/completion", {"prompt": ["Hello", "Hi"], "n_predict": 2, "n_cmpl": 3})
    assert_error(status, out, 400, "invalid_request_error")           # n_cmpl past the 2 slots


def test_id_slot_and_response_fields(srv):
    for asked, slot in ((1, 1), (0, 0), (3, 1)):                      # wraps around, as llama-server
        assert draw(srv, id_slot=asked, n_predict=2)["id_slot"] == slot
    out = draw(srv, n_predict=3, response_fields=["content", "generation_settings/n_predict", "nope/x"])
    assert set(out) == {"content", "generation_settings/n_predict"} and out["generation_settings/n_predict"] == 3


def test_t_max_predict_ms_stops_at_a_newline(srv):
    newline = [[13, 100]]                                             # <0x0A> of the llama-spm vocabulary
    out = draw(srv, n_predict=20, logit_bias=newline, t_max_predict_ms=1)
    assert out["stop_type"] == "limit" and out["tokens_predicted"] == 2, out   # the first token is the prompt's
    assert draw(srv, n_predict=20, logit_bias=newline)["tokens_predicted"] == 20


def test_infill_without_fim_tokens(srv):
    status, out = request(srv, "POST", "/infill", {"input_prefix": "def f(", "input_suffix": "):"})
    assert status == 501 and out["error"]["type"] == "not_supported_error"
    assert out["error"]["message"] == ("Infill is not supported by this model: prefix token is missing. "
                                       "suffix token is missing. middle token is missing. ")


def test_infill(tmp_path):
    """A vocabulary with Qwen2.5-Coder's FIM tokens: the prompt llama-server lays out (repo, files,
    prefix, suffix, middle), answered as /completion answers those tokens. (The extra chunks get what
    a slot's context leaves past one batch: n_ctx 2048 here, all of them.)"""
    g = boot(make_tiny_model(str(tmp_path / "fim.gguf"), vocab="gpt-2", extra_tokens=FIM), "n_ctx=2048 parallel=1 cache_prompt=0")
    try:
        ids = {t: request(g, "POST", "/tokenize", {"content": t, "parse_special": True})[1]["tokens"][0] for t in FIM}

        def tok(text):
            return request(g, "POST", "/tokenize", {"content": text})[1]["tokens"]
        body = {"input_prefix": "def add(a, b):\n    return ", "input_suffix": "\n\nprint(add(1, 2))\n", "prompt": "a",
                "input_extra": [{"filename": "util.py", "text": "x = 1\n"}], "n_predict": 6, "temperature": 0}
        expected = ([ids["<|repo_name|>"]] + tok("myproject\n") + [ids["<|file_sep|>"]] + tok("util.py\n") + tok("x = 1\n")
                    + [ids["<|file_sep|>"]] + tok("filename\n") + [ids["<|fim_prefix|>"]] + tok(body["input_prefix"])
                    + tok("a") + [ids["<|fim_suffix|>"]] + tok(body["input_suffix"]) + [ids["<|fim_middle|>"]])
        status, out = request(g, "POST", "/infill", body)
        assert status == 200 and out["tokens_evaluated"] == len(expected), out
        same = request(g, "POST", "/completion", {"prompt": expected, "n_predict": 6, "temperature": 0})[1]
        assert out["content"] == same["content"] and out["tokens_predicted"] == 6
        for bad in ({"input_suffix": ""}, {"input_prefix": ""}, dict(body, prompt=5), dict(body, input_extra={}),
                    dict(body, input_extra=[{"filename": "a"}]), dict(body, input_extra=[{"text": "a", "filename": 1}])):
            status, out = request(g, "POST", "/infill", bad)
            assert_error(status, out, 400, "invalid_request_error")
    finally:
        g.close()
