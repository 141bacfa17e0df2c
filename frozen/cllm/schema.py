"""A request's fields as llama-server reads them: each function takes the parsed body (and the model
where text becomes tokens) and returns the value to use, or raises the 400 that says what is wrong."""
import json

import llm

from cllm import strictjson
from cllm.http import bad_request

# llama-server's sampling fields as (name, type, default): llm.Sampler's numeric keywords, whose defaults
# are llama.cpp's own (common_params_sampling), each field of its default's type
SAMPLING = tuple((name, type(default), default) for name, default in llm.sampling_defaults().items())


def body_of(req):
    """The JSON object of a request body, checked strictly first (see strictjson)."""
    try:
        text = req.body.decode()
        strictjson.check(text)
        body = json.loads(text)
    except ValueError as e:                 # UnicodeError is a ValueError too
        raise bad_request("Invalid JSON in the request body: {}".format(e))
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def field(body, name, kind, default):
    value = body.get(name)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad_request("'{}' must be {}".format(name, {int: "an integer", float: "a number", str: "a string",
                                                           bool: "a boolean", list: "an array", dict: "an object"}[kind]))
    return value


def stop_list(body):
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise bad_request("'stop' must be a string or an array of strings")


def schema_grammar(body):
    """The grammar for a JSON schema, as llama-server takes one: `json_schema`, or OpenAI's
    response_format json_object (an optional `schema`; any object without) or json_schema
    ({"json_schema": {"schema": ...}}); converted by llama.cpp's own json_schema_to_grammar."""
    schema = body.get("json_schema")
    fmt = field(body, "response_format", dict, None)
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "json_object":
            schema = fmt.get("schema", schema if schema is not None else {})
        elif kind == "json_schema":
            wrapper = fmt.get("json_schema")
            schema = wrapper.get("schema", {}) if isinstance(wrapper, dict) else {}
        elif kind not in (None, "text"):
            raise bad_request('response_format type must be one of "text", "json_object" or "json_schema"')
    if schema is None:
        return None
    if field(body, "grammar", str, ""):
        raise bad_request("Cannot use both json_schema and grammar")
    if not isinstance(schema, dict):
        raise bad_request("a JSON schema must be an object")
    try:
        return llm.json_schema_to_grammar(json.dumps(schema or {"type": "object"}))
    except ValueError as e:
        raise bad_request(str(e))


def logit_bias(body, model, n_vocab):
    """llama-server's logit_bias: [[token id or text, bias], ...] or {"token id or text": bias}; a
    bias of false bans the token(s); text stands for each of its tokens. Ids outside the vocabulary
    are skipped as upstream does; entries of the wrong shape are a 400 here, not skipped. Returns
    {id: bias or False}, as llm.Sampler takes it (which raises, for Python callers, where this skips)."""
    value = body.get("logit_bias")
    if value is None:
        return None
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list) and all(isinstance(e, list) and len(e) == 2 for e in value):
        pairs = value
    else:
        raise bad_request("'logit_bias' must be an object or an array of [token, bias] pairs")
    bias = {}
    for key, b in pairs:
        if b is not False and (isinstance(b, bool) or not isinstance(b, (int, float))):
            raise bad_request("a 'logit_bias' value must be a number or false")
        if isinstance(key, str):
            try:
                key = int(key)
            except ValueError:
                pass
        if isinstance(key, int) and not isinstance(key, bool):
            tokens = [key] if 0 <= key < n_vocab else []
        elif isinstance(key, str):
            tokens = model.tokenize(key, False, False)
        else:
            raise bad_request("a 'logit_bias' token must be a token id or a string")
        for t in tokens:
            bias[t] = b if b is False else float(b)     # false: never (-inf in the sampler)
    return bias or None


def n_probs_of(body, chat=False):
    """How many top probabilities to report per token: n_probs (alias logprobs) natively; in chat,
    OpenAI's logprobs: true with top_logprobs (default 20), as llama-server maps them."""
    if field(body, "post_sampling_probs", bool, False):
        raise bad_request("'post_sampling_probs' is not supported; probabilities are before sampling")
    if chat:
        if field(body, "logprobs", bool, False):
            n = field(body, "top_logprobs", int, 20)
        elif body.get("top_logprobs") is not None:
            raise bad_request("top_logprobs requires logprobs to be set to true")
        else:
            n = 0
    else:
        n = field(body, "n_probs", int, None)
        if n is None:
            n = field(body, "logprobs", int, 0)
    if n < 0:
        raise bad_request("the number of probabilities must not be negative")
    return n


def prompt_tokens(prompt, model, n_vocab):
    """A prompt as llama-server takes it: a string, token ids, or a one-element array of either."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        tokens = model.tokenize(prompt, True, True)
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        tokens = prompt
        # llm checks ids only when it decodes, in one batch with other requests: a bad id is this one's 400
        for t in tokens:
            if not 0 <= t < n_vocab:
                raise bad_request("token id {} in the prompt is out of range (n_vocab {})".format(t, n_vocab))
    else:
        raise bad_request("'prompt' must be a string or an array of token ids")
    if not tokens:
        raise bad_request("the prompt is empty")
    return tokens


def n_predict_of(body, default, *names):
    for name in names:
        if body.get(name) is not None:
            return field(body, name, int, -1)
    return default


def chat_messages(body):
    """The messages of a chat request as the template takes them: role and text content."""
    messages = field(body, "messages", list, None)
    if not messages:
        raise bad_request("'messages' is required and must be a non-empty array")
    plain = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request("each message must be an object with a 'role'")
        content = m.get("content") or ""
        if isinstance(content, list):       # content parts: only text is understood here
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise bad_request("message 'content' must be a string or an array of text parts")
        plain.append({"role": m["role"], "content": content})
    return plain


def sampling(body, model, meta):
    """The sampler's settings: SAMPLING's fields, the grammar (or a JSON schema's), logit_bias, and
    with ignore_eos every end-of-generation token banned, as llama-server does."""
    kw = {}
    for name, kind, default in SAMPLING:
        kw[name] = field(body, name, kind, default)
    kw["grammar"] = schema_grammar(body) or field(body, "grammar", str, None)
    kw["logit_bias"] = logit_bias(body, model, meta["n_vocab"])
    if field(body, "ignore_eos", bool, False):
        kw["logit_bias"] = kw["logit_bias"] or {}
        for t in meta["eog"]:
            kw["logit_bias"][t] = False
    return kw
