"""Chat for agents (llama-server's --jinja surface) in QEMU: tiny GGUFs carrying real models' chat
templates as llama.cpp ships them (Qwen3: tool calls in <tool_call> tags and <think> reasoning;
Llama 3.2: JSON tool calls), driven through the official openai client and plain HTTP.

A tiny model's weights are random, so where a test needs the model to begin a tool call or a
thinking block it says so with logit_bias (a bias of 50 makes a token the likeliest) and
frequency_penalty 50 (a token used once is not chosen again by its bias): everything after that
is llama.cpp's own grammar, trigger, reasoning budget and parser at work."""
import json
import os

import openai
import pytest

from qemu import Guest
from test_server import boot, events, preflight, repl, request
from tinymodel import TEMPLATES, make_tiny_model, template

QWEN3_TOKENS = ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>", "</think>",
                "<tool_response>", "</tool_response>"]
LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",
                 "<|python_tag|>"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                   "required": ["zone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat")
    return {
        "qwen3": make_tiny_model(str(d / "qwen3.gguf"), vocab="gpt-2", chat_template=template("Qwen-Qwen3-0.6B"),
                                 extra_tokens=QWEN3_TOKENS),
        "llama3": make_tiny_model(str(d / "llama3.gguf"), vocab="gpt-2",
                                  chat_template=template("meta-llama-Llama-3.2-3B-Instruct"), extra_tokens=LLAMA3_TOKENS),
        "dir": d,
    }


def serving(model, words):
    """A guest serving model, with the ids of words (its template's special tokens) and an openai client."""
    g = boot(model, "n_ctx=2048 parallel=2 cache_prompt=0")
    g.ids = {t: request(g, "POST", "/tokenize", {"content": t, "parse_special": True})[1]["tokens"][0] for t in words}
    g.client = openai.OpenAI(base_url=f"http://127.0.0.1:{g.port}/v1", api_key="unused", max_retries=0, timeout=120)
    return g


@pytest.fixture(scope="module")
def qwen(models):
    g = serving(models["qwen3"], QWEN3_TOKENS + ["\n"])
    try:
        yield g
    finally:
        g.close()


@pytest.fixture(scope="module")
def llama3(models):
    g = serving(models["llama3"], LLAMA3_TOKENS + ["{"])
    try:
        yield g
    finally:
        g.close()


def call_bias(g):
    """Qwen3: begin with <tool_call> then a newline (the lazy grammar's trigger), close the call with
    the </tool_call> token (not spelled in pieces, which may run on into another call), then end with
    <|im_end|> once the grammar allows it."""
    return {str(g.ids["<tool_call>"]): 50, str(g.ids["\n"]): 40, str(g.ids["</tool_call>"]): 35,
            str(g.ids["<|im_end|>"]): 30}


# Where the model must open a call itself (tool_choice auto: the lazy grammar waits for "<tool_call>\n"):
# the penalties count the prompt too, as llama-server's do, so the question runs on past the template's
# newlines and tags (out of the 64 tokens penalised), and the biases pay for the newlines that remain
# ("\n<|im_start|>assistant\n", and <|im_end|> once).
ASK_AUTO = [{"role": "user", "content": "What is the weather in Paris? " + "Please answer briefly and clearly. " * 10}]


def auto_bias(g):
    return dict(call_bias(g), **{str(g.ids["\n"]): 140, str(g.ids["<|im_end|>"]): 80})


def chat(g, body, path="/v1/chat/completions"):
    status, out = request(g, "POST", path, body, timeout=600)
    assert status == 200, out
    return out


def error_of(g, body, path="/v1/chat/completions"):
    status, out = request(g, "POST", path, body, timeout=120)
    assert status == 400 and out["error"]["type"] == "invalid_request_error", out
    return out["error"]["message"]


# ---------------------------------------------------------------- tools


def test_tool_call_round_trip_with_the_openai_client(qwen):
    """auto: the lazy grammar waits for "<tool_call>\\n", then holds the call to the schema; the reply
    is message.tool_calls with an id and JSON arguments, finish_reason tool_calls; the call and the
    tool's result go back in the history and the model answers."""
    c = qwen.client
    r = c.chat.completions.create(model="m", messages=ASK_AUTO, tools=[WEATHER], parallel_tool_calls=False,
                                  temperature=0, max_tokens=300, logit_bias=auto_bias(qwen), frequency_penalty=50)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and len(call.id) == 32 and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert args in ({"city": "Paris"}, {"city": "Oslo"})
    assert not choice.message.content
    history = ASK_AUTO + [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    prompt = chat(qwen, {"messages": history, "tools": [WEATHER]}, "/apply-template")["prompt"]
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    turn = prompt.split("<|im_start|>assistant\n")[1]         # the call, as the template writes one
    assert turn.startswith("<tool_call>\n") and '"name": "get_weather"' in turn and "Paris" in turn or "Oslo" in turn
    answer = c.chat.completions.create(model="m", messages=history, tools=[WEATHER], temperature=0, max_tokens=6)
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "length"


def test_tool_call_streamed_as_llama_server_streams_it(qwen):
    """The same call streamed: one delta with the call's index, id, type and name, then its
    arguments in pieces; the pieces make the non-streamed arguments."""
    body = {"messages": ASK_AUTO, "tools": [WEATHER], "parallel_tool_calls": False, "temperature": 0, "max_tokens": 300,
            "logit_bias": auto_bias(qwen), "frequency_penalty": 50}
    whole = chat(qwen, body)["choices"][0]["message"]["tool_calls"][0]
    ev = events(qwen, "/v1/chat/completions", dict(body, stream=True))
    assert ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": None} and ev[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in ev[1:-1] if e["choices"][0]["delta"]]
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert calls, deltas
    assert all(len(c) == 1 and c[0]["index"] == 0 for c in calls) and not any("content" in d for d in deltas), deltas
    head = calls[0][0]
    assert head["type"] == "function" and len(head["id"]) == 32 and head["function"]["name"] == "get_weather"
    assert all("id" not in c[0] and "name" not in c[0]["function"] for c in calls[1:])
    assert "".join(c[0]["function"].get("arguments", "") for c in calls) == whole["function"]["arguments"]
    assert ev[-2]["choices"][0]["finish_reason"] == "tool_calls" and "timings" in ev[-2]
    # and through the client's own stream reader
    args, finish = "", None
    for chunk in qwen.client.chat.completions.create(model="m", stream=True, messages=ASK_AUTO, tools=[WEATHER],
                                                     parallel_tool_calls=False, temperature=0, max_tokens=300,
                                                     logit_bias=auto_bias(qwen), frequency_penalty=50):
        for tc in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            args += tc.function.arguments or ""
        finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
    assert args == whole["function"]["arguments"] and finish == "tool_calls"


def test_a_call_cut_by_the_length_limit(qwen):
    """A tool call cut off by max_tokens: the same message streamed and not, nothing the model wrote
    lost (what does not parse as a call is content)."""
    body = {"messages": ASK, "tools": [WEATHER], "parallel_tool_calls": False, "temperature": 0, "max_tokens": 6,
            "logit_bias": call_bias(qwen), "frequency_penalty": 50}
    whole = chat(qwen, body)["choices"][0]
    assert whole["finish_reason"] == "length"
    ev = events(qwen, "/v1/chat/completions", dict(body, stream=True))
    deltas = [e["choices"][0]["delta"] for e in ev[1:-1] if e["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == (whole["message"].get("content") or "")
    args = "".join(c["function"].get("arguments", "") for d in deltas for c in d.get("tool_calls", ()))
    assert args == "".join(c["function"]["arguments"] for c in whole["message"].get("tool_calls", ()))
    assert ev[-2]["choices"][0]["finish_reason"] == "length"


def test_tool_choice_required_and_named(llama3):
    """Llama 3.2's JSON tool calls: `required` grammar-constrains the reply to a call (nothing can
    end it before one); a named function is the only one it may call."""
    c = llama3.client
    bias = {str(llama3.ids["{"]): 50, str(llama3.ids["<|eot_id|>"]): 100}
    r = c.chat.completions.create(model="m", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                  temperature=0, max_tokens=60, logit_bias=bias)
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name in ("get_weather", "get_time")
    for name, key in (("get_time", "zone"), ("get_weather", "city")):
        r = c.chat.completions.create(model="m", messages=ASK, tools=[WEATHER, TIME], temperature=0, max_tokens=60,
                                      tool_choice={"type": "function", "function": {"name": name}}, logit_bias=bias)
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == name and list(json.loads(call.function.arguments)) == [key]
    # none: prose only, the tools still described to the model as its template does
    r = chat(llama3, {"messages": ASK, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 5, "temperature": 0})
    assert "tool_calls" not in r["choices"][0]["message"] and r["choices"][0]["finish_reason"] == "length"
    # generation_settings tell the truth: the template's format, the grammar it made, the request's values
    slots = request(llama3, "GET", "/slots")[1]
    params = [s["params"] for s in slots if "params" in s][0]
    assert params["chat_format"] and "max_tokens" in params


def test_tool_errors(qwen):
    assert error_of(qwen, {"messages": ASK, "tools": [WEATHER], "grammar": "root ::= \"x\""}) == \
        "Cannot use custom grammar constraints with tools."
    assert "Invalid tool_choice" in error_of(qwen, {"messages": ASK, "tools": [WEATHER], "tool_choice": "sometimes"})
    assert "not in 'tools'" in error_of(qwen, {"messages": ASK, "tools": [WEATHER],
                                                "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert error_of(qwen, {"messages": ASK, "tools": {"a": 1}}) == "'tools' must be an array"
    assert error_of(qwen, {"messages": ASK, "tools": [WEATHER], "stream": True, "logprobs": True}) == \
        "logprobs is not supported with tools + stream"
    assert "tool" in error_of(qwen, {"messages": ASK, "tools": [{"type": "function"}]}).lower()


# ---------------------------------------------------------------- reasoning


def test_reasoning_content_with_a_budget(qwen):
    """Qwen3 thinks in <think> tags: with a budget of 3 tokens llama.cpp's reasoning-budget sampler
    forces </think> after three, and the parser puts the thinking in reasoning_content."""
    think = {str(qwen.ids["<think>"]): 50}
    body = {"messages": ASK, "temperature": 0, "max_tokens": 10, "logit_bias": think, "frequency_penalty": 50,
            "reasoning_budget_tokens": 3}
    msg = chat(qwen, body)["choices"][0]["message"]
    assert msg["reasoning_content"] and msg["content"] is not None and "<think>" not in msg["content"]
    raw = chat(qwen, dict(body, reasoning_format="none"))["choices"][0]["message"]
    assert "reasoning_content" not in raw
    assert raw["content"].startswith("<think>") and "</think>" in raw["content"]
    thought = raw["content"][len("<think>"):raw["content"].index("</think>")]
    assert thought.strip() == msg["reasoning_content"].strip()
    none = chat(qwen, dict(body, reasoning_format="none", reasoning_budget_tokens=0))["choices"][0]["message"]
    assert none["content"].startswith("<think></think>")          # a budget of 0: closed at once
    # streamed: reasoning_content deltas, then content
    ev = events(qwen, "/v1/chat/completions", dict(body, stream=True))
    deltas = [e["choices"][0]["delta"] for e in ev[1:-1]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == msg["reasoning_content"]
    assert "".join(d.get("content") or "" for d in deltas) == msg["content"]
    # enable_thinking false: the template closes an empty think block itself
    prompt = chat(qwen, {"messages": ASK, "chat_template_kwargs": {"enable_thinking": False}}, "/apply-template")["prompt"]
    assert prompt.endswith("<think>\n\n</think>\n\n")
    assert error_of(qwen, {"messages": ASK, "chat_template_kwargs": {"enable_thinking": "no"}}) == \
        'invalid type for "enable_thinking" (expected boolean, got string)'
    assert error_of(qwen, {"messages": ASK, "reasoning_format": "loud"}) == "Unknown reasoning format: loud"
    assert request(qwen, "GET", "/props")[1]["chat_template_caps"]["supports_tool_calls"] is True


# ---------------------------------------------------------------- prefill and templates


def test_prefill_continues_the_last_assistant_message(qwen):
    history = ASK + [{"role": "assistant", "content": "The weather in Paris is"}]
    prompt = chat(qwen, {"messages": history}, "/apply-template")["prompt"]
    assert prompt.endswith("The weather in Paris is") and not prompt.endswith("<|im_end|>\n")
    r = chat(qwen, {"messages": history, "max_tokens": 4, "temperature": 0})
    # as llama-server: the message holds the prefill and what follows it; a stream sends only what follows
    content = r["choices"][0]["message"]["content"]
    assert content.startswith("The weather in Paris is") and len(content) > len("The weather in Paris is")
    ev = events(qwen, "/v1/chat/completions", {"messages": history, "max_tokens": 4, "temperature": 0, "stream": True})
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in ev[1:-1])
    assert "The weather in Paris is" + streamed == content
    same = chat(qwen, {"messages": history, "continue_final_message": True, "add_generation_prompt": False},
                "/apply-template")["prompt"]
    assert same == prompt
    assert error_of(qwen, {"messages": history, "continue_final_message": True, "add_generation_prompt": True}) == \
        "Cannot set both add_generation_prompt and continue_final_message to true."
    assert error_of(qwen, {"messages": history + [{"role": "assistant", "content": "x"}]}) == \
        "Cannot have 2 or more assistant messages at the end of the list."
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}
    assert error_of(qwen, {"messages": ASK + [call], "continue_final_message": True, "add_generation_prompt": False}) == \
        "Cannot continue an assistant message that contains tool calls."


def test_json_schema_in_a_chat(qwen):
    """response_format in a chat: the template's grammar holds the reply to the schema after the
    generation prompt (llama.cpp's prefill of the grammar)."""
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
              "required": ["colour", "ok"], "additionalProperties": False}
    for fmt in ({"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
                {"type": "json_object", "schema": schema}):
        out = chat(qwen, {"messages": ASK, "max_tokens": 200, "temperature": 0, "response_format": fmt,
                          "logit_bias": {str(qwen.ids["<|im_end|>"]): 30}})
        assert out["choices"][0]["finish_reason"] == "stop", out
        value = json.loads(out["choices"][0]["message"]["content"])
        assert set(value) == {"colour", "ok"} and value["colour"] in ("red", "green", "blue")


def test_apply_template_and_input_tokens(qwen):
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    prompt = chat(qwen, body, "/apply-template")["prompt"]
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    n = len(request(qwen, "POST", "/tokenize", {"content": prompt, "add_special": True, "parse_special": True})[1]["tokens"])
    for path in ("/v1/chat/completions/input_tokens", "/chat/completions/input_tokens"):
        assert chat(qwen, body, path) == {"input_tokens": n, "object": "response.input_tokens"}
    r = chat(qwen, dict(body, max_tokens=2))
    assert r["usage"]["prompt_tokens"] == n


@pytest.mark.parametrize("body, message", [
    ({}, "'messages' is required"),
    ({"messages": "hi"}, "Expected 'messages' to be an array"),
    ({"messages": ["hi"]}, 'Expected \'message\' to be an object, got "hi"'),
    ({"messages": [{"role": "user"}]}, "All non-assistant messages must contain 'content'"),
    ({"messages": [{"role": "assistant"}]}, "Assistant message must contain either 'content' or 'tool_calls'!"),
    ({"messages": [{"role": "user", "content": 5}]}, "Expected 'content' to be a string or an array"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "image input is not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "sound"}]}]}, "unsupported content[].type"),
    ({"messages": [{"content": "x"}]}, "Missing 'role' in message"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"type": "function"}]}]}, "Missing tool call function"),
])
def test_malformed_messages(qwen, body, message):
    for path in ("/v1/chat/completions", "/apply-template", "/v1/chat/completions/input_tokens"):
        assert message in error_of(qwen, body, path)
    assert request(qwen, "GET", "/health")[0] == 200


def test_chat_template_from_a_boot_module(models, tmp_path):
    """chat_template=/file.jinja overrides the model's; a template that raises is a 400 with its
    reason; one llama.cpp cannot parse is logged at boot and the model's own serves."""
    good = tmp_path / "brief.jinja"
    good.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                    "{% if messages|length > 2 %}{{ raise_exception('at most two messages') }}{% endif %}"
                    "{% if add_generation_prompt %}[assistant] {% endif %}")
    port_guest = boot_with(models["llama3"], [good], "chat_template=/brief.jinja verbose=1")
    try:
        assert chat(port_guest, {"messages": ASK}, "/apply-template")["prompt"] == \
            "[user] What is the weather in Paris?\n[assistant] "
        assert request(port_guest, "GET", "/props")[1]["chat_template"] == good.read_text()
        assert "at most two messages" in error_of(port_guest, {"messages": ASK * 3})
        r = chat(port_guest, {"messages": ASK, "max_tokens": 2})
        assert r["choices"][0]["message"]["content"]
        assert r["__verbose"]["tokens_predicted"] == 2 and "generation_settings" in r["__verbose"]      # verbose=1
    finally:
        port_guest.close()
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m.content }")
    g = boot_with(models["llama3"], [bad], "chat_template=/bad.jinja", log=b"cannot use the given chat template")
    try:
        assert "<|start_header_id|>" in chat(g, {"messages": ASK}, "/apply-template")["prompt"]
    finally:
        g.close()


def boot_with(model, modules, append, log=None, mem="256M", smp=1):
    from qemu import free_port
    port = free_port()
    g = Guest(modules=[model] + [str(m) for m in modules], append="n_ctx=1024 parallel=1 " + append, mem=mem,
              timeout=600, hostfwd=[f"tcp:127.0.0.1:{port}-:80"], smp=smp)
    g.port = port
    if log:
        g.expect(log, timeout=300)
    g.expect(b"serving on port 80", timeout=300)
    g.wait_prompt()
    return g


# ---------------------------------------------------------------- settings that tell the truth


def test_return_progress_in_streams(qwen):
    """return_progress: the prompt's progress as llama-server streams it, in chat on a role delta;
    0 % first, the whole prompt last, then the reply."""
    body = {"messages": ASK, "max_tokens": 3, "temperature": 0, "stream": True, "return_progress": True}
    ev = events(qwen, "/v1/chat/completions", body)
    notes = [e for e in ev[:-1] if "prompt_progress" in e]
    first, last = notes[0]["prompt_progress"], notes[-1]["prompt_progress"]
    assert first["processed"] == first["cache"] and last["processed"] == last["total"] > 0
    assert all(e["choices"][0]["delta"] == {"role": "assistant", "content": None} for e in notes)
    assert ev.index(notes[-1]) < min(i for i, e in enumerate(ev[:-1]) if e["choices"] and
                                     e["choices"][0]["delta"].get("content"))
    assert not any("prompt_progress" in e for e in events(qwen, "/v1/chat/completions", dict(body, return_progress=False))[:-1])
    native = events(qwen, "/completion", {"prompt": "Hello there", "n_predict": 2, "stream": True, "return_progress": True})
    assert native[0]["prompt_progress"]["total"] == native[-1]["tokens_evaluated"] and native[0]["content"] == ""


def test_generation_settings_are_the_requests(qwen):
    body = {"prompt": "Hello", "n_predict": 3, "temperature": 0.25, "top_k": 7, "top_p": 0.5, "min_p": 0.01,
            "seed": 42, "repeat_penalty": 1.1, "stop": ["zz"]}
    out = chat(qwen, body, "/completion")
    gs = out["generation_settings"]
    assert (gs["temperature"], gs["top_k"], gs["top_p"], gs["min_p"], gs["seed"]) == (0.25, 7, 0.5, 0.01, 42)
    assert gs["n_predict"] == 3 and gs["stop"] == ["zz"] and gs["repeat_penalty"] == 1.1
    slot = [s for s in request(qwen, "GET", "/slots")[1] if s.get("id_task") is not None]
    assert any(s["params"]["top_k"] == 7 for s in slot)
    props = request(qwen, "GET", "/props")[1]
    assert props["default_generation_settings"]["params"]["top_k"] == 40          # the defaults stay the defaults


def test_cors_preflight_as_llama_server(qwen):
    status, headers = preflight(qwen, "/v1/chat/completions/input_tokens")
    assert status == 200 and headers["access-control-allow-methods"] == "GET, POST, DELETE, OPTIONS"
    assert headers["access-control-allow-headers"] == "*" and headers["access-control-allow-credentials"] == "true"
    assert repl(qwen, "1 + 1").strip() == b"2"


# ---------------------------------------------------------------- a real model


def test_smollm2_tool_call_end_to_end():
    """SmolLM2-135M-Instruct with a tool-calling template (Qwen2.5's, as a boot module: its own
    describes no tools) and tool_choice required, its turn begun with "<tool_call>\n": the grammar
    holds the rest to the schema, and the model itself picks the city the question names."""
    from test_llm import SMOLLM2
    assert os.path.exists(SMOLLM2), "SmolLM2 is not fetched: run the tests with `make test`"
    name = "Qwen-Qwen2.5-7B-Instruct.jinja"
    g = boot_with(SMOLLM2, [os.path.join(TEMPLATES, name)], "chat_template=/" + name, mem="512M", smp=2)
    try:
        history = ASK + [{"role": "assistant", "content": "<tool_call>\n"}]
        out = chat(g, {"messages": history, "tools": [WEATHER, TIME], "tool_choice": "required",
                       "parallel_tool_calls": False, "temperature": 0, "max_tokens": 40})
        (call,) = out["choices"][0]["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    finally:
        g.close()
