"""Saving and restoring slots (llama-server's POST /slots/{id}?action=save|restore|erase) in QEMU with
the tiny GGUF: the KV cache of a slot goes to a file of the RAM file system /slots (llama.cpp's
sequence-state layout), which the console sees, and comes back into another slot, where the next
request finds its prompt cached."""
import ast
import struct

import pytest

from test_server import assert_error, boot, repl, request
from tinymodel import make_tiny_model

PROMPT = "Once upon a time there was a"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny.gguf"))


@pytest.fixture(scope="module")
def srv(model):
    g = boot(model, "n_ctx=512 parallel=2")
    try:
        yield g
    finally:
        g.close()


def complete(srv, slot, **fields):
    body = dict({"prompt": PROMPT, "n_predict": 4, "temperature": 0, "id_slot": slot}, **fields)
    status, out = request(srv, "POST", "/completion", body)
    assert status == 200, out
    return out


def act(srv, slot, action, **body):
    return request(srv, "POST", f"/slots/{slot}?action={action}", body)


def console(srv, expr):
    return ast.literal_eval(repl(srv, expr).decode().strip().splitlines()[-1])


def test_save_erase_restore(srv):
    first = complete(srv, 0)
    status, saved = act(srv, 0, "save", filename="story.bin")
    n = first["tokens_evaluated"] + first["tokens_predicted"] - 1          # the prompt and all but the last token
    assert status == 200 and saved["id_slot"] == 0 and saved["filename"] == "story.bin" and saved["n_saved"] == n
    assert saved["n_written"] > 12 + 4 * n and saved["timings"]["save_ms"] >= 0
    # the file, from the console: llama.cpp's sequence-state header and the tokens
    assert "story.bin" in console(srv, "import os; print(os.listdir('/slots'))")
    assert console(srv, "print(os.stat('/slots/story.bin')[6])") == saved["n_written"]
    head = console(srv, "print(open('/slots/story.bin', 'rb').read(12))")
    assert struct.unpack("<III", head) == (0x67677371, 3, n)
    stats = console(srv, "print(server.stats()['slot_files'])")
    assert stats["files"] == 1 and stats["bytes"] == saved["n_written"] and stats["limit"] == 16 * 1024 * 1024
    # erased: the same prompt in that slot is read again from its start
    status, erased = act(srv, 0, "erase")
    assert (status, erased) == (200, {"id_slot": 0, "n_erased": n})
    assert complete(srv, 0, n_predict=1)["timings"]["cache_n"] == 0
    # restored into the other slot: the prompt is found there
    status, restored = act(srv, 1, "restore", filename="story.bin")
    assert status == 200 and restored["n_restored"] == n and restored["n_read"] == saved["n_written"]
    again = complete(srv, 1)
    assert again["timings"]["cache_n"] == first["tokens_evaluated"] - 1 and again["id_slot"] == 1
    status, slots = request(srv, "GET", "/slots?fail_on_no_slot=1")
    assert status == 200 and len(slots) == 2 and slots[1]["prompt"].endswith(PROMPT)


def test_bad_slot_actions(srv):
    complete(srv, 0, n_predict=2)
    for slot, action, body, words in ((0, "keep", {"filename": "a.bin"}, "Invalid action"),
                                      (0, "save", {"filename": "../a.bin"}, "Invalid filename"),
                                      (0, "save", {}, "Invalid filename"),
                                      (0, "restore", {"filename": "missing.bin"}, "no such file"),
                                      (1, "restore", {"filename": "junk.bin"}, "magic")):
        if words == "magic":
            repl(srv, "f = open('/slots/junk.bin', 'wb'); f.write(b'not a state file at all'); f.close()")
        status, out = act(srv, slot, action, **body)
        assert_error(status, out, 400, "invalid_request_error")
        assert words in out["error"]["message"], out
    # a header that promises more tokens than the file holds, and one past the slot's context
    for n, words in ((1000, "exceeds the file size"), (300, "does not fit")):
        data = struct.pack("<III", 0x67677371, 3, n) + bytes(4 * 300)
        repl(srv, f"f = open('/slots/short.bin', 'wb'); f.write({data!r}); f.close()")
        status, out = act(srv, 1, "restore", filename="short.bin")
        assert status == 400 and words in out["error"]["message"], out
    assert request(srv, "POST", "/slots/7?action=erase", {})[0] == 404          # past the slots
    assert complete(srv, 1, n_predict=2)["tokens_predicted"] == 2               # the slot still serves


def test_the_budget(model):
    g = boot(model, "n_ctx=512 parallel=1 slot_save=1000")
    try:
        complete(g, 0, n_predict=2)
        status, out = act(g, 0, "save", filename="big.bin")
        assert_error(status, out, 400, "invalid_request_error")
        assert "slot_save=1000" in out["error"]["message"]
        assert console(g, "import os; print(os.listdir('/slots'))") == []
    finally:
        g.close()
    g = boot(model, "n_ctx=512 parallel=1 slot_save=0")
    try:
        status, out = act(g, 0, "erase")
        assert status == 501 and out["error"]["type"] == "not_supported_error"
    finally:
        g.close()
