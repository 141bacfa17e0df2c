"""Embeddings and reranking: /embedding(s), /v1/embeddings (also through the openai client), /rerank
and llm.Model.embed(), each against llama.cpp of the same build on the host (llama-embedding for
vectors, llama-server --reranking for scores), with completions going on beside them."""
import base64
import json
import os
import struct
import subprocess
import threading

import numpy as np
import pytest

from test_server import assert_error, boot, repl, request
from test_upstream import served
from tinymodel import ROOT, make_tiny_model

EMBEDDING = os.path.join(ROOT, "build", "llama", "peer-same", "bin", "llama-embedding")
TEXTS = ["Hello world", "The quick brown fox jumps over the lazy dog.", "naïve café 日本語"]


def host_embedding(model, text, pooling, normalize=2):
    """llama-embedding's vectors for one text: [[...]] (a row per token with pooling none)."""
    assert os.path.exists(EMBEDDING), "llama-embedding (peer-same) is not built: run the tests with `make test`"
    out = subprocess.run([EMBEDDING, "-m", model, "-p", text, "--pooling", pooling, "--embd-normalize", str(normalize),
                          "--embd-output-format", "array", "-t", "1", "--no-warmup"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return np.array(json.loads(out))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny.gguf"))


@pytest.fixture(scope="module")
def srv(model):
    g = boot(model, "n_ctx=512 parallel=2 pooling=mean")
    try:
        yield g
    finally:
        g.close()


def embeddings(srv, path, **body):
    status, out = request(srv, "POST", path, body)
    assert status == 200, out
    return out


def test_pooled_equal_to_llama_embedding(srv, model):
    for text in TEXTS:
        want = host_embedding(model, text, "mean")[0]
        native = embeddings(srv, "/embedding", content=text)
        assert len(native) == 1 and native[0]["index"] == 0 and len(native[0]["embedding"]) == 1
        assert np.abs(np.array(native[0]["embedding"][0]) - want).max() < 1e-5
        oai = embeddings(srv, "/v1/embeddings", input=text, model="any")
        assert oai["object"] == "list" and oai["model"] == "any" and oai["data"][0]["object"] == "embedding"
        assert np.abs(np.array(oai["data"][0]["embedding"]) - want).max() < 1e-5
        n = len(request(srv, "POST", "/tokenize", {"content": text, "add_special": True})[1]["tokens"])
        assert oai["usage"] == {"prompt_tokens": n, "total_tokens": n}


def test_batch_token_ids_and_normalisation(srv, model):
    out = embeddings(srv, "/v1/embeddings", input=TEXTS)
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    for d, text in zip(out["data"], TEXTS):
        assert np.abs(np.array(d["embedding"]) - host_embedding(model, text, "mean")[0]).max() < 1e-5
    tokens = request(srv, "POST", "/tokenize", {"content": TEXTS[1], "add_special": True})[1]["tokens"]
    by_ids = embeddings(srv, "/embeddings", input=tokens)
    assert np.abs(np.array(by_ids[0]["embedding"][0]) - np.array(out["data"][1]["embedding"])).max() < 1e-6
    raw = np.array(embeddings(srv, "/embeddings", input=TEXTS[0], embd_normalize=-1)[0]["embedding"][0])
    assert np.abs(raw - host_embedding(model, TEXTS[0], "mean", -1)[0]).max() < 1e-5
    for norm, scale in ((2, np.linalg.norm(raw)), (1, np.abs(raw).sum()), (0, np.abs(raw).max() / 32760),
                        (3, (np.abs(raw) ** 3).sum() ** (1 / 3))):
        got = np.array(embeddings(srv, "/embeddings", input=TEXTS[0], embd_normalize=norm)[0]["embedding"][0])
        assert np.abs(got - raw / scale).max() < 1e-4 * max(1, np.abs(raw / scale).max()), norm


def test_openai_client_float_and_base64(srv, model):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{srv.port}/v1", api_key="none")
    want = host_embedding(model, TEXTS[2], "mean")[0]
    # (the client asks for base64 unless told, and decodes it; told, it hands the text over)
    for fmt in ("float", None):
        kw = {"encoding_format": fmt} if fmt else {}
        got = client.embeddings.create(model="tiny", input=[TEXTS[2], TEXTS[0]], **kw)
        assert len(got.data) == 2 and np.abs(np.array(got.data[0].embedding) - want).max() < 1e-5
    raw = embeddings(srv, "/v1/embeddings", input=TEXTS[2], encoding_format="base64")["data"][0]
    assert raw["encoding_format"] == "base64"
    data = base64.b64decode(raw["embedding"])
    assert np.abs(np.array(struct.unpack("<%df" % (len(data) // 4), data)) - want).max() < 1e-5


def test_bad_embedding_requests(srv):
    for body, message in (({}, '"input" or "content"'), ({"input": []}, "must not be empty"),
                          ({"input": 5}, "must be a string"), ({"input": [[1, 2], {"x": 1}]}, "must be a string"),
                          ({"input": [1, 99999]}, "out of range"), ({"input": "x", "encoding_format": "hex"}, "float or base64"),
                          ({"input": "x", "embd_normalize": "2"}, "embd_normalize"),
                          ({"input": "word " * 600}, "too large to process")):
        status, out = request(srv, "POST", "/v1/embeddings", body)
        assert_error(status, out, 400, "invalid_request_error")
        assert message in out["error"]["message"], (body, out)
    status, out = request(srv, "POST", "/v1/embeddings", raw=b'{"input": "x"')
    assert_error(status, out, 400, "invalid_request_error")
    status, out = request(srv, "POST", "/rerank", {"query": "q", "documents": ["a"]})
    assert_error(status, out, 501, "not_supported_error")
    assert request(srv, "GET", "/health") == (200, {"status": "ok"})


def test_completions_go_on_beside_embeddings(srv):
    """A long embedding request and a streamed completion at once: both answered, neither disturbed."""
    alone = request(srv, "POST", "/completion", {"prompt": "Once upon a time", "n_predict": 24, "temperature": 0,
                                                 "cache_prompt": False})[1]["content"]
    results = {}

    def embed():
        results["embed"] = request(srv, "POST", "/v1/embeddings", {"input": ["story " * 200] * 6}, timeout=300)

    t = threading.Thread(target=embed)
    t.start()
    status, out = request(srv, "POST", "/completion", {"prompt": "Once upon a time", "n_predict": 24, "temperature": 0,
                                                       "cache_prompt": False}, timeout=300)
    assert status == 200 and out["content"] == alone
    assert request(srv, "GET", "/health", timeout=10)[0] == 200
    t.join(300)
    status, out = results["embed"]
    assert status == 200 and len(out["data"]) == 6
    first = np.array(out["data"][0]["embedding"])
    assert all(np.abs(np.array(d["embedding"]) - first).max() < 1e-5 for d in out["data"])
    assert "'embedded_tokens': " in repl(srv, "print(server.stats())").decode()


def test_model_embed_at_the_console(srv, model):
    """llm.Model.embed: ulab arrays, each pooling as llama-embedding pools (pooling none: a row per token)."""
    repl(srv, "import llm; t = engine.model.tokenize({!r})".format(TEXTS[1]))
    for pooling in ("cls", "last", "none"):
        repl(srv, "m = llm.Model('/tiny.gguf', n_ctx=64, n_seq=1, pooling={!r})".format(pooling))
        got = repl(srv, "e = m.embed(t, -1); print(e.shape); print(e.tolist())").decode().strip().splitlines()
        want = host_embedding(model, TEXTS[1], pooling, -1)
        shape = eval(got[-2])
        assert shape == ((want.shape[0], want.shape[1]) if pooling == "none" else (want.shape[1],)), (pooling, got[-2])
        assert np.abs(np.array(eval(got[-1])).reshape(want.shape) - want).max() < 1e-5, pooling
        repl(srv, "m.close(); del m")
    assert "ValueError" in repl(srv, "engine.model.embed([])").decode()
    assert "ValueError" in repl(srv, "engine.model.embed([[]])").decode()


@pytest.fixture(scope="module")
def rerank_pair(tmp_path_factory):
    model = make_tiny_model(str(tmp_path_factory.mktemp("models") / "rank.gguf"), vocab="gpt-2", rerank=True,
                            n_ctx_train=2048)
    with served(model, 1024, "n_ctx=1024 parallel=1", "--reranking") as both:
        yield both


def test_rerank_equal_to_llama_server(rerank_pair):
    guest, host = rerank_pair
    docs = ["hi", "The giant panda is a bear native to China.", "pandas eat bamboo", "stock markets fell"]
    for path, body in (("/rerank", {"query": "what is a panda?", "documents": docs}),
                       ("/v1/rerank", {"query": "what is a panda?", "documents": docs, "top_n": 2}),
                       ("/reranking", {"query": "bamboo", "texts": docs, "return_text": True}),
                       ("/v1/reranking", {"query": "bamboo", "texts": docs, "top_n": 1})):
        status, got = request(guest, "POST", path, body)
        assert status == 200, got
        want = request(host, "POST", path, body)[1]
        results = (lambda r: r) if "texts" in body else (lambda r: r["results"])
        label = "score" if "texts" in body else "relevance_score"
        assert [r["index"] for r in results(got)] == [r["index"] for r in results(want)], (got, want)
        for a, b in zip(results(got), results(want)):
            assert abs(a[label] - b[label]) < 1e-5 and a.get("text") == b.get("text")
        if "texts" not in body:
            assert got["usage"] == want["usage"] and got["object"] == "list"
    for body, message in (({"documents": docs}, '"query" must be provided'), ({"query": 1, "documents": docs}, "string"),
                          ({"query": "q", "documents": []}, "non-empty"), ({"query": "q", "documents": [1]}, "non-empty")):
        status, out = request(guest, "POST", "/rerank", body)
        assert_error(status, out, 400, "invalid_request_error")
        assert message in out["error"]["message"]
    status, out = request(guest, "POST", "/v1/embeddings", {"input": "x"})
    assert_error(status, out, 400, "invalid_request_error")


def test_default_pooling_none(model):
    """The model's own pooling (none: a generative model): the native route gives a row per token,
    as llama-embedding's (unnormalised); OpenAI's refuses, as llama-server does."""
    g = boot(model, "n_ctx=256 parallel=1")
    try:
        status, out = request(g, "POST", "/v1/embeddings", {"input": "Hello"})
        assert_error(status, out, 400, "invalid_request_error")
        assert "Pooling type 'none' is not OAI compatible" in out["error"]["message"]
        rows = np.array(embeddings(g, "/embedding", content=TEXTS[0])[0]["embedding"])
        want = host_embedding(model, TEXTS[0], "none", -1)
        assert rows.shape == want.shape and np.abs(rows - want).max() < 1e-5
        assert request(g, "POST", "/completion", {"prompt": "Hi", "n_predict": 4})[0] == 200
    finally:
        g.close()
