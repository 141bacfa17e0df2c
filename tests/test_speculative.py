"""Speculative decoding from n-grams (spec=ngram: llama.cpp's common/speculative, llama-server's
--spec-type ngram-simple): greedy output token for token the same with and without it and as the
same build's llama-server gives it with the same settings, the same drafts as llama-server makes,
and the draft counters in timings and /metrics. The tiny model is steered into a loop of four
tokens (a logit bias on them, a presence penalty over the last three), which the drafts then predict."""
import json

import pytest

from test_server import boot, repl, request
from test_upstream import Host
from tinymodel import make_tiny_model

PROMPT = "Copy this list: apple, banana, cherry, date. Again: apple, banana,"
LOOP = {"logit_bias": [[" apple", 30], [" banana", 30], [" cherry", 30], [",", 30]], "presence_penalty": 60,
        "repeat_last_n": 3, "temperature": 0}
SPEC = "spec=ngram spec_size_n=3 spec_size_m=8"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("models") / "spec.gguf"), vocab="gpt-2", n_ctx_train=2048)


@pytest.fixture(scope="module")
def spec(model):
    g = boot(model, "n_ctx=1024 parallel=2 cache_prompt=0 " + SPEC)
    try:
        yield g
    finally:
        g.close()


@pytest.fixture(scope="module")
def plain(model):
    g = boot(model, "n_ctx=1024 parallel=2 cache_prompt=0")
    try:
        yield g
    finally:
        g.close()


def complete(g, **fields):
    status, out = request(g, "POST", "/completion", dict({"prompt": PROMPT, "n_predict": 60, "return_tokens": True},
                                                          **fields), timeout=120)
    assert status == 200, out
    return out


def metrics(g):
    text = request(g, "GET", "/metrics")[1]
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("llamacpp:spec")}


def test_greedy_same_with_and_without_drafts(spec, plain):
    before = metrics(spec)
    for fields in (LOOP, dict(LOOP, n_predict=17), {"temperature": 0}):
        ours, theirs = complete(spec, **fields), complete(plain, **fields)
        assert ours["tokens"] == theirs["tokens"] and ours["content"] == theirs["content"], fields
        assert ours["tokens_predicted"] == theirs["tokens_predicted"] == fields.get("n_predict", 60)
    looped = complete(spec, **LOOP)
    assert looped["timings"]["draft_n"] > 10 and looped["timings"]["draft_n_accepted"] > 10, looped["timings"]
    assert "draft_n" not in complete(plain, **LOOP)["timings"]       # only where drafts were made, as upstream
    after = metrics(spec)
    assert after["llamacpp:spec_decode_num_drafts_total"] > before["llamacpp:spec_decode_num_drafts_total"]
    assert after["llamacpp:spec_decode_num_accepted_tokens_total"] <= after["llamacpp:spec_decode_num_draft_tokens_total"]
    props = request(spec, "GET", "/props")[1]
    assert props["default_generation_settings"]["params"]["speculative.types"] == "ngram-simple"
    assert request(plain, "GET", "/props")[1]["default_generation_settings"]["params"]["speculative.types"] == "none"
    assert request(spec, "GET", "/slots")[1][0]["speculative"] is True


def test_drafts_through_stops_streams_and_two_slots(spec, plain):
    """A stop string inside an accepted draft, a stream, two requests drafting at once: the same text."""
    want = complete(plain, **LOOP)["content"]
    word = want[:len(want) // 2]       # a text that loops: first complete half-way, inside the drafts
    stop = complete(spec, stop=[word], **LOOP)
    assert stop["stop_type"] == "word" and stop["stopping_word"] == word and stop["content"] == ""
    assert stop["timings"]["draft_n"] > 0 and stop["tokens_predicted"] < 60
    status, text = request(spec, "POST", "/completion", dict(LOOP, prompt=PROMPT, n_predict=60, stream=True))
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert status == 200 and "".join(e["content"] for e in events) == want
    assert events[-1]["timings"]["draft_n"] > 0
    status, out = request(spec, "POST", "/completion", dict(LOOP, prompt=[PROMPT, PROMPT + " cherry,"], n_predict=40))
    assert status == 200 and out[0]["content"] == want[:len(out[0]["content"])] and len(out) == 2
    assert out[1]["content"] == complete(plain, **dict(LOOP, prompt=PROMPT + " cherry,", n_predict=40))["content"]


def test_same_drafts_as_llama_server(model, spec):
    """llama-server --spec-type ngram-simple with the same sizes: the same tokens and the same drafts."""
    host = Host(model, 1024, "--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3",
                "--spec-ngram-simple-size-m", "8")
    try:
        for fields in (LOOP, dict(LOOP, n_predict=23)):
            ours = complete(spec, cache_prompt=False, **fields)
            theirs = request(host, "POST", "/completion", dict({"prompt": PROMPT, "n_predict": 60, "return_tokens": True,
                                                                "cache_prompt": False}, **fields), timeout=120)[1]
            assert ours["tokens"] == theirs["tokens"]
            for key in ("draft_n", "draft_n_accepted"):
                assert ours["timings"][key] == theirs["timings"][key], (key, ours["timings"], theirs["timings"])
    finally:
        host.close()


def test_bad_spec_settings_are_refused(model):
    g = boot(model, "n_ctx=256 parallel=1 spec=bigram")
    try:
        assert repl(g, "print(repr(settings.spec), engine.spec)").decode().split() == ["''", "None"]
        assert request(g, "GET", "/props")[1]["default_generation_settings"]["params"]["speculative.types"] == "none"
        assert "ValueError" in g.line("import llm; llm.Speculative(1, 'draft-simple')").decode()
        assert "ValueError" in g.line("llm.Speculative(0)").decode()
    finally:
        g.close()
