"""A request's fields as llama-server reads them (each function takes the parsed body, and the model
where text becomes tokens, and returns the value to use or raises the 400 that says what is wrong),
and the small pieces its answers are made of: what cllm.api's routes and cllm.chat's share."""
import json
import random

import llm

from cllm.http import ApiError, StreamResponse, bad_request

# llama-server's sampling fields as (name, type, default): llm.Sampler's numeric keywords, whose defaults
# are llama.cpp's own (common_params_sampling), each field of its default's type
SAMPLING = tuple((name, type(default), default) for name, default in llm.sampling_defaults().items())

# llama-server's bounds of those fields: (low, high, hard). A value past soft bounds is taken as the
# bound, one past hard bounds is a 400; None: no bound that side.
BOUNDS = {"top_k": (0, None, False), "top_p": (0.0, 1.0, False), "min_p": (0.0, 1.0, False),
          "xtc_probability": (0.0, 1.0, False), "xtc_threshold": (0.0, 1.0, False), "temperature": (0.0, None, False),
          "mirostat": (0, 2, False), "repeat_last_n": (0, None, True), "dry_allowed_length": (0, None, True),
          "dry_penalty_last_n": (0, None, True), "min_keep": (0, None, True)}
# the chain's samplers by the names llama.cpp takes (common_sampler_types_from_names): each with "_"
# also with "-" and without, and three aliases
SAMPLER_NAMES = ("dry", "xtc", "temperature", "infill", "penalties", "nucleus", "temp", "typ") + tuple(
    n.replace("_", sep) for n in ("top_k", "top_p", "top_n_sigma", "typ_p", "min_p", "adaptive_p") for sep in ("_", "-", ""))

# Past these a request is refused (400) rather than served: each stop string is looked for after every
# token, each probability reported is a JSON object per token, and a grammar is checked at every token.
MAX_STOP, MAX_STOP_LEN = 64, 512
MAX_N_PROBS = 100
MAX_GRAMMAR = 64 * 1024


def body_of(req):
    """The JSON object of a request body. llama-server's own JSON reader checks it first (llm.json_check:
    MicroPython's json.loads takes a truncated document and reads commas as whitespace)."""
    try:
        text = req.body.decode()
        llm.json_check(req.body)
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
        stop = [stop]
    if not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise bad_request("'stop' must be a string or an array of strings")
    if len(stop) > MAX_STOP or any(len(s) > MAX_STOP_LEN for s in stop):
        raise bad_request("'stop' may hold at most {} strings of at most {} characters".format(MAX_STOP, MAX_STOP_LEN))
    return stop


def json_schema_of(body):
    """The JSON schema a request asks its output to follow, as llama-server takes one: `json_schema`,
    or OpenAI's response_format json_object (an optional `schema`; any object without) or json_schema
    ({"json_schema": {"schema": ...}}); None if none."""
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
    return schema or {"type": "object"}      # an empty schema means any object


def schema_grammar(body):
    """The grammar for the request's JSON schema (json_schema_of), converted by llama.cpp's own
    json_schema_to_grammar; None without one."""
    schema = json_schema_of(body)
    if schema is None:
        return None
    try:
        return llm.json_schema_to_grammar(json.dumps(schema))
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
    if n > MAX_N_PROBS:
        raise bad_request("at most {} probabilities per token may be asked for".format(MAX_N_PROBS))
    return n


def is_token_ids(value):
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def checked_ids(tokens, n_vocab, where):
    """Token ids of a request, each in the vocabulary: llm checks ids only when it decodes, in one
    batch with other requests, so a bad id is found here and is this request's 400."""
    for t in tokens:
        if not 0 <= t < n_vocab:
            raise bad_request("token id {} in the {} is out of range (n_vocab {})".format(t, where, n_vocab))
    return tokens


def prompt_tokens(prompt, model, n_vocab):
    """A prompt as llama-server takes it: a string, token ids, or a one-element array of either."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        tokens = model.tokenize(prompt, True, True)
    elif is_token_ids(prompt):
        tokens = checked_ids(prompt, n_vocab, "prompt")
    else:
        raise bad_request("'prompt' must be a string or an array of token ids")
    if not tokens:
        raise bad_request("the prompt is empty")
    return tokens


def prompts_of(prompt, model, n_vocab):
    """The prompts of a request as llama-server takes them: one (a string, token ids, or a one-element
    array of either), or an array of several (strings or arrays of token ids), each its own result."""
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        return [prompt_tokens(p, model, n_vocab) for p in prompt]
    return [prompt_tokens(prompt, model, n_vocab)]


def finish_reason(task):
    """OpenAI's finish_reason of a finished task."""
    return "stop" if task.stop_type in ("eos", "word") else "length"


def response_fields(body, out):
    """llama-server's response_fields: only the fields named, a "a/b" path taken out to the top."""
    paths = body.get("response_fields")
    if paths is None:
        return out
    if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
        raise bad_request("'response_fields' must be an array of strings")
    picked = {}
    for path in paths:
        value, found = out, True
        for key in path.split("/"):
            if found and isinstance(value, dict) and key in value:
                value = value[key]
            else:
                found = False
        if found:
            picked[path] = value
    return picked


def n_predict_of(body, default, *names):
    for name in names:
        if body.get(name) is not None:
            return field(body, name, int, -1)
    return default


def sampling(body, model, meta, chat=None):
    """The sampler's settings: SAMPLING's fields, the grammar (a JSON schema's, or in a chat the
    template's: see cllm.chat), logit_bias, and with ignore_eos every end-of-generation token banned,
    as llama-server does."""
    kw = {}
    for name, kind, default in SAMPLING:
        value = field(body, name, kind, default)
        low, high, hard = BOUNDS.get(name, (None, None, False))
        if low is not None and value < low or high is not None and value > high:
            if hard:
                raise bad_request("Field '{}': must be between {} and {}".format(name, low, "+inf" if high is None else high))
            value = low if low is not None and value < low else high
        kw[name] = value
    if kw["dry_base"] < 1.0:            # as llama-server: below 1, the default
        kw["dry_base"] = dict((n, d) for n, k, d in SAMPLING)["dry_base"]
    breakers = body.get("dry_sequence_breakers")
    if breakers is not None:
        if not (isinstance(breakers, list) and breakers and all(isinstance(b, str) for b in breakers)):
            raise bad_request("Error: dry_sequence_breakers must be a non-empty array of strings")
        kw["dry_sequence_breakers"] = breakers
    order = body.get("samplers")
    if order is not None:
        if not (isinstance(order, str) or isinstance(order, list) and all(isinstance(n, str) for n in order)):
            raise bad_request("'samplers' must be an array of sampler names or a string of their letters")
        if isinstance(order, list) and any(n.lower() not in SAMPLER_NAMES for n in order):
            raise bad_request("'samplers': unknown sampler in {} (known: {})".format(order, ", ".join(SAMPLER_NAMES)))
        kw["samplers"] = order
    if len(field(body, "grammar", str, "")) > MAX_GRAMMAR:
        raise bad_request("the grammar is longer than {} characters".format(MAX_GRAMMAR))
    if chat:
        kw.update(chat.sampling)
    else:
        schema = schema_grammar(body)
        kw["grammar"] = schema or field(body, "grammar", str, None)
        kw["grammar_type"] = "output_format" if schema else "user"
    if kw["grammar"] and len(kw["grammar"]) > MAX_GRAMMAR:
        raise bad_request("the JSON schema's grammar is longer than {} characters".format(MAX_GRAMMAR))
    kw["logit_bias"] = logit_bias(body, model, meta["n_vocab"])
    if field(body, "ignore_eos", bool, False):
        kw["logit_bias"] = kw["logit_bias"] or {}
        for t in meta["eog"]:
            kw["logit_bias"][t] = False
    return kw


# ---------------------------------------------------------------- answers

def completion_id(prefix):
    return prefix + "".join("%08x" % random.getrandbits(32) for _ in range(3))


def usage(task, *more):
    n_prompt, n_gen = len(task.prompt), sum(len(t.tokens) for t in (task,) + more)
    return {"completion_tokens": n_gen, "prompt_tokens": n_prompt, "total_tokens": n_prompt + n_gen,
            "prompt_tokens_details": {"cached_tokens": task.n_cached}}


def include_usage(body):
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


async def finished(task):
    try:
        return await task.result()
    except ApiError:
        raise                   # the answer already (the server was stopped)
    except Exception as e:
        raise ApiError(500, str(e), "server_error")


async def all_finished(tasks):
    """The texts of every task; if one fails, the others stop too."""
    texts = []
    try:
        for t in tasks:
            texts.append(await finished(t))     # (MicroPython has no await in a comprehension)
        return texts
    finally:
        for t in tasks:
            t.cancel()


def stream_of(body, tasks, chunks, last, progress=None):
    return StreamResponse(tasks, chunks, last, field(body, "timings_per_token", bool, False), progress)
