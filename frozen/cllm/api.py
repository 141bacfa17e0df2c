"""The API, in llama.cpp's tools/server shapes: a request's fields as llama-server reads them (each
function below takes the parsed body, and the model where text becomes tokens, and returns the value
to use or raises the 400 that says what is wrong), and the routes: its native ones (/completion,
/tokenize, /props, ...) and the OpenAI-compatible /v1 ones, errors as {"error": {code, message, type}}.
Api(app, engine, settings) puts them on a Server (cllm.http) for one engine."""
import json
import math
import random
import time

import kernel
import llm

from cllm import chat, chat_page
from cllm.engine import Busy, ContextExceeded, Task, decode_lossy, utf8_complete
from cllm.http import ApiError, StreamResponse, bad_request

# ---------------------------------------------------------------- a request's fields

# llama-server's sampling fields as (name, type, default): llm.Sampler's numeric keywords, whose defaults
# are llama.cpp's own (common_params_sampling), each field of its default's type
SAMPLING = tuple((name, type(default), default) for name, default in llm.sampling_defaults().items())

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


def sampling(body, model, meta, chat=None):
    """The sampler's settings: SAMPLING's fields, the grammar (a JSON schema's, or in a chat the
    template's: see cllm.chat), logit_bias, and with ignore_eos every end-of-generation token banned,
    as llama-server does."""
    kw = {}
    for name, kind, default in SAMPLING:
        kw[name] = field(body, name, kind, default)
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


# ---------------------------------------------------------------- the routes

FINGERPRINT = "cllm-" + kernel.version
PUBLIC = ("/health", "/v1/health")
METRICS = (
    ("counter", "prompt_tokens_total", "Number of prompt tokens processed", "prompt_tokens"),
    ("counter", "prompt_seconds_total", "Total time spent processing prompts", "prompt_ms"),
    ("counter", "tokens_predicted_total", "Number of generation tokens processed", "predicted_tokens"),
    ("counter", "tokens_predicted_seconds_total", "Total time spent generating tokens", "predicted_ms"),
    ("counter", "n_decode_total", "Total number of llama_decode() calls", "decodes"),
    ("counter", "n_tokens_max", "Largest observed sequence length (prompt + generation)", "n_tokens_max"),
)


def errors_as_json(handler):
    """Turn an ApiError raised by a handler (async, or a plain function typed at the console) into
    its JSON error response."""
    async def wrapped(req, *args):
        try:
            result = handler(req, *args)
            return await result if hasattr(result, "send") else result
        except ApiError as e:
            return e.response()
    return wrapped


def logprob(p):
    return math.log(p) if p > 0 else -3.4028234663852886e38     # as llama-server: the lowest float, not -inf


def tokens_cached(task):
    """Tokens of the slot's KV cache once finished: the prompt and all but the last token generated."""
    return len(task.prompt) + max(0, len(task.tokens) - 1)


def completion_id(prefix):
    return prefix + "".join("%08x" % random.getrandbits(32) for _ in range(3))


def finish_reason(task):
    return "stop" if task.stop_type in ("eos", "word") else "length"


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


class Api:
    """The routes on app, answered by engine with settings (both read at each request, so changes
    from the REPL hold for the next one)."""

    ROUTES = (      # method, paths, handler; handlers that read a body turn ApiErrors into answers
        ("GET", ("/",), "index"),
        ("GET", ("/health", "/v1/health"), "health"),
        ("GET", ("/v1/models", "/models"), "models"),
        ("GET", ("/props",), "props"),
        ("POST", ("/tokenize",), "tokenize"),
        ("POST", ("/detokenize",), "detokenize"),
        ("POST", ("/completion", "/completions"), "completion"),
        ("POST", ("/v1/completions",), "oai_completions"),
        ("POST", ("/v1/chat/completions", "/chat/completions"), "oai_chat"),
        ("POST", ("/apply-template",), "apply_template"),
        ("POST", ("/v1/chat/completions/input_tokens", "/chat/completions/input_tokens"), "input_tokens"),
        ("GET", ("/slots",), "slots"),
        ("GET", ("/metrics",), "metrics"),
    )

    def __init__(self, app, engine, settings):
        self.engine = engine
        self.settings = settings
        app.before_request(self.gate)
        for code, handler in ((400, self.error_400), (404, self.error_404), (405, self.error_405),
                              (413, self.error_413), (500, self.error_500)):
            app.errorhandler(code)(handler)
        for method, paths, name in self.ROUTES:
            handler = errors_as_json(getattr(self, name))
            for path in paths:
                app.route(path, methods=[method])(handler)

    # ------------------------------------------------------------ before and around every route

    def gate(self, req):
        if not req.tls and req.app.tls and req.path not in PUBLIC:
            refused = self.plain_http(req)
            if refused:
                return refused
        if req.path == "/":         # the chat page: without a key (its API calls carry one) and while loading
            return
        key = self.settings.api_key
        if key and req.path not in PUBLIC:
            auth = req.headers.get("Authorization", "") or req.headers.get("X-Api-Key", "")
            if auth.startswith("Bearer "):
                auth = auth[7:]
            if auth != key:
                return ApiError(401, "Invalid API Key", "authentication_error").response()
        if self.engine.state != "ready":
            return ApiError(503, "Loading model", "unavailable_error").response()

    def plain_http(self, req):
        """A plain-HTTP request while HTTPS was asked for (app.tls "on" or "failed"): with http=redirect
        (and HTTPS up) a 308 to the same URL over https; otherwise refused (401) if it carries a key or
        the server wants one (the chat page itself is served: its calls get the 401 and show it), so
        that a key is never taken in clear."""
        s = self.settings
        host = req.headers.get("Host", "") or "localhost"
        if host.startswith("[") and "]" in host:        # [IPv6]:port
            host = host[:host.index("]") + 1]
        elif ":" in host:
            host = host.split(":", 1)[0]
        port = s.https_port or s.tls_port
        url = "https://{}{}{}".format(host, "" if port == 443 else ":{}".format(port), req.url)
        if req.app.tls == "on" and s.http == "redirect":
            return "", 308, {"Location": url}
        if "Authorization" in req.headers or "X-Api-Key" in req.headers or s.api_key and req.path != "/":
            if req.app.tls == "on":
                message = "This server takes its API key over HTTPS only: use {}".format(url)
            else:
                message = "HTTPS did not start (see the boot log), and the API key is not taken over plain HTTP"
            return ApiError(401, message, "authentication_error").response()

    def error_400(self, req):
        return bad_request("Bad request").response()

    def error_404(self, req):
        return ApiError(404, "File Not Found", "not_found_error").response()

    def error_405(self, req):
        return ApiError(405, "Method Not Allowed", "invalid_request_error").response()

    def error_413(self, req):
        return ApiError(413, "Request body larger than {} bytes".format(self.settings.max_body),
                        "invalid_request_error").response()

    def error_500(self, req):
        return ApiError(500, "Internal server error", "server_error").response()

    # ------------------------------------------------------------ what answers are made of

    def token_json(self, token, p):
        piece = self.engine.model.token_to_piece(token)
        text = decode_lossy(piece[:utf8_complete(piece)])
        return {"id": token, "token": text, "bytes": list(piece), "logprob": logprob(p)}

    def probs_json(self, entries):
        """llama-server's completion_probabilities: each token with its logprob and the top ones."""
        out = []
        for token, p, top in entries:
            entry = self.token_json(token, p)
            entry["top_logprobs"] = [self.token_json(t, q) for t, q in top]
            out.append(entry)
        return out

    def oai_logprobs(self, entries):
        return {"content": self.probs_json(entries)} if entries else None

    def params_json(self, task=None):
        """generation_settings: the server's defaults, or with a task the settings it runs with."""
        s = self.settings
        p = {name: default for name, kind, default in SAMPLING}
        p.update({"n_predict": s.n_predict, "max_tokens": s.n_predict, "stop": [], "stream": False, "grammar": "",
                  "n_probs": 0, "ignore_eos": False, "timings_per_token": False, "logit_bias": [],
                  "cache_prompt": bool(s.cache_prompt), "chat_format": "Content-only",
                  "reasoning_format": s.reasoning_format})
        if task:
            p.update(task.params)
        return p

    def task_params(self, body, kw, task, chat):
        """What params_json(task) shows: the request's own values, as the sampler got them."""
        p = {name: kw[name] for name, kind, default in SAMPLING}
        bias = kw.get("logit_bias") or {}
        p.update({"n_predict": task.n_predict, "max_tokens": task.n_predict, "stop": task.stop,
                  "stream": field(body, "stream", bool, False), "grammar": kw.get("grammar") or "",
                  "n_probs": task.n_probs, "ignore_eos": field(body, "ignore_eos", bool, False),
                  "timings_per_token": field(body, "timings_per_token", bool, False), "cache_prompt": task.cache_prompt,
                  "logit_bias": [{"bias": "-inf" if b is False else b, "token": t} for t, b in bias.items()]})
        if chat:
            p.update(chat.settings)
        return p

    def token_text(self, token):
        if token is None:
            return ""
        try:
            return self.engine.model.token_to_piece(token).decode()
        except ValueError:
            return ""

    def prompt_of(self, prompt):
        return prompt_tokens(prompt, self.engine.model, self.engine.meta["n_vocab"])

    def new_task(self, body, tokens, n_predict, n_probs=0, chat=None):
        """Validate the sampling fields, build the sampler, queue the task (chat: a cllm.chat.ChatRequest)."""
        engine = self.engine
        kw = sampling(body, engine.model, engine.meta, chat)
        try:
            sampler = engine.sampler(**kw)
            task = Task(tokens, sampler, n_predict, chat.stop if chat else stop_list(body),
                        field(body, "return_tokens", bool, False), n_probs,
                        field(body, "cache_prompt", bool, bool(self.settings.cache_prompt)))
            if chat:
                task.preserved = chat.preserved
            task.return_progress = field(body, "return_progress", bool, False) and field(body, "stream", bool, False)
            task.params = self.task_params(body, kw, task, chat)
            return engine.submit(task)
        except ContextExceeded as e:
            raise ApiError(400, str(e), "exceed_context_size_error", n_prompt_tokens=e.n_prompt_tokens, n_ctx=e.n_ctx)
        except Busy:
            raise ApiError(503, "no slot available, try again later", "unavailable_error")
        except ValueError as e:                 # a bad grammar
            raise bad_request(str(e))

    def choice_tasks(self, body, tokens, n_predict, n_probs, chat=None):
        """One task per requested choice (`n`, llama-server's n_cmpl: 1 to the number of slots)."""
        n = field(body, "n", int, 1)
        parallel = self.settings.parallel
        if not 1 <= n <= parallel:
            raise bad_request("'n' must be between 1 and {} (the server's parallel slots)".format(parallel))
        tasks = []
        try:
            for _ in range(n):
                tasks.append(self.new_task(body, tokens, n_predict, n_probs, chat))
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        return tasks

    def oai_object(self, cid, kind, **fields):
        obj = {"created": int(time.time()), "model": self.settings.alias, "system_fingerprint": FINGERPRINT,
               "object": kind, "id": cid}
        obj.update(fields)
        return obj

    def native_final(self, task, content, streamed=False):
        out = {"index": 0, "content": content, "tokens": task.tokens if task.return_tokens else [],
               "id_slot": task.slot, "stop": True, "model": self.settings.alias,
               "tokens_predicted": len(task.tokens), "tokens_evaluated": len(task.prompt),
               "generation_settings": self.params_json(task), "prompt": "", "has_new_line": "\n" in task.text,
               "truncated": False, "stop_type": task.stop_type, "stopping_word": task.stopping_word,
               "tokens_cached": tokens_cached(task), "timings": task.timings()}
        if task.probs and not streamed:        # a stream had them in its chunks
            out["completion_probabilities"] = self.probs_json(task.probs)
        return out

    def model_info(self):
        meta, alias = self.engine.meta, self.settings.alias
        return {"id": alias, "aliases": [alias], "tags": [], "object": "model",
                "created": int(time.time()), "owned_by": "llamacpp",
                "meta": {"vocab_type": 1, "n_vocab": meta["n_vocab"], "n_ctx": self.engine.n_ctx_slot,
                         "n_ctx_train": meta["n_ctx_train"], "n_embd": meta["n_embd"], "n_params": meta["n_params"],
                         "size": meta["size"]}}

    # ------------------------------------------------------------ chat page, health, models, props

    async def index(self, req):
        return chat_page.PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}

    async def health(self, req):
        return {"status": "ok"}

    async def models(self, req):
        alias = self.settings.alias
        return {"models": [{"name": alias, "model": alias, "modified_at": "", "size": "", "digest": "",
                            "type": "model", "description": "", "tags": [""], "capabilities": ["completion"],
                            "parameters": "", "details": {"parent_model": "", "format": "gguf", "family": "",
                                                          "families": [""], "parameter_size": "",
                                                          "quantization_level": ""}}],
                "object": "list", "data": [self.model_info()]}

    async def props(self, req):
        engine, s = self.engine, self.settings
        meta = engine.meta
        props = {"default_generation_settings": {"params": self.params_json(), "n_ctx": engine.n_ctx_slot},
                "total_slots": s.parallel, "model_alias": s.alias, "model_path": s.model,
                "modalities": {"vision": False, "video": False, "audio": False},
                "endpoint_slots": True, "endpoint_props": False, "endpoint_metrics": True,
                "chat_template": engine.chat.source(), "chat_template_caps": engine.chat.caps(),
                "bos_token": self.token_text(meta["bos"]),
                "eos_token": self.token_text(meta["eos"]), "build_info": FINGERPRINT, "is_sleeping": False,
                "n_ctx": engine.n_ctx, "n_predict": s.n_predict, "queue": s.queue,
                "api_key_required": bool(s.api_key), "cpu_kernels": llm.cpu_kernels()}
        tool_use = engine.chat.source("tool_use")
        if tool_use:
            props["chat_template_tool_use"] = tool_use
        return props

    # ------------------------------------------------------------ tokens

    async def tokenize(self, req):
        body = body_of(req)
        model = self.engine.model
        content = field(body, "content", str, "")
        tokens = model.tokenize(content, field(body, "add_special", bool, False), field(body, "parse_special", bool, True))
        if not field(body, "with_pieces", bool, False):
            return {"tokens": tokens}
        pieces = []
        for t in tokens:
            piece = model.token_to_piece(t)
            try:
                piece = piece.decode()
            except ValueError:
                piece = list(piece)
            pieces.append({"id": t, "piece": piece})
        return {"tokens": pieces}

    async def detokenize(self, req):
        tokens = field(body_of(req), "tokens", list, [])
        try:                        # as llama-server: the pieces joined, a leading space kept
            return {"content": decode_lossy(b"".join(self.engine.model.token_to_piece(t) for t in tokens))}
        except (ValueError, TypeError) as e:
            raise bad_request(str(e))

    # ------------------------------------------------------------ native completion

    async def completion(self, req):
        body = body_of(req)
        task = self.new_task(body, self.prompt_of(body.get("prompt", "")),
                             n_predict_of(body, self.settings.n_predict, "n_predict", "max_tokens"), n_probs_of(body))
        if field(body, "stream", bool, False):
            def chunk(text, i):
                out = {"index": 0, "content": text, "tokens": [], "stop": False, "id_slot": task.slot,
                       "tokens_predicted": len(task.tokens), "tokens_evaluated": len(task.prompt)}
                probs = task.new_probs()
                if probs:
                    out["completion_probabilities"] = self.probs_json(probs)
                return [out]
            def progress(p, i):
                return [{"index": 0, "content": "", "tokens": [], "stop": False, "id_slot": task.slot,
                         "tokens_predicted": 0, "tokens_evaluated": len(task.prompt), "prompt_progress": p}]
            return stream_of(body, [task], chunk, lambda: [self.native_final(task, "", True)], progress)
        return self.native_final(task, await finished(task))

    # ------------------------------------------------------------ OpenAI-compatible

    async def oai_completions(self, req):
        body = body_of(req)
        if field(body, "echo", bool, False):
            raise bad_request("Only no echo is supported")
        for name in ("best_of", "suffix"):
            if body.get(name) is not None:
                raise bad_request("Unsupported param: " + name)
        tasks = self.choice_tasks(body, self.prompt_of(body.get("prompt", "")),
                                  n_predict_of(body, self.settings.n_predict, "n_predict", "max_tokens"),
                                  n_probs_of(body))
        task = tasks[0]
        cid = completion_id("cmpl-")

        def choice(text, i, reason, logprobs=None):
            return [{"text": text, "index": i, "logprobs": logprobs, "finish_reason": reason}]
        if field(body, "stream", bool, False):
            def last():
                out = [self.oai_object(cid, "text_completion", choices=choice("", i, finish_reason(t)))
                       for i, t in enumerate(tasks)]
                out[-1].update(usage=usage(*tasks), timings=task.timings())
                return out + [b"[DONE]"]
            return stream_of(body, tasks, lambda text, i: [self.oai_object(cid, "text_completion", choices=choice(
                text, i, None, self.oai_logprobs(tasks[i].new_probs())))], last,
                lambda p, i: [self.oai_object(cid, "text_completion", choices=choice("", i, None), prompt_progress=p)])
        texts = await all_finished(tasks)
        choices = []
        for i, (t, text) in enumerate(zip(tasks, texts)):
            choices += choice(text, i, finish_reason(t), self.oai_logprobs(t.probs))
        return self.oai_object(cid, "text_completion", choices=choices, usage=usage(*tasks), timings=task.timings())

    async def oai_chat(self, req):
        return await chat.oai_chat(self, req)

    async def apply_template(self, req):
        return await chat.apply_template(self, req)

    async def input_tokens(self, req):
        return await chat.input_tokens(self, req)

    # ------------------------------------------------------------ slots and metrics

    async def slots(self, req):
        engine = self.engine
        out = []
        for s in engine.slots:
            info = {"id": s.id, "n_ctx": engine.n_ctx_slot, "speculative": False, "is_processing": s.task is not None}
            t = s.task or s.last
            if t:
                info.update({"id_task": t.id, "n_prompt_tokens": len(t.prompt),
                             "n_prompt_tokens_processed": len(t.prompt) - t.n_cached,
                             "n_prompt_tokens_cache": t.n_cached, "params": self.params_json(t),
                             "next_token": [{"has_next_token": not t.done, "has_new_line": "\n" in t.text,
                                             "n_remain": t.n_predict - len(t.tokens) if t.n_predict >= 0 else -1,
                                             "n_decoded": len(t.tokens)}],
                             "generated": t.text})
            out.append(info)
        return out

    async def metrics(self, req):
        engine = self.engine
        st = engine.stats
        values = [(kind, name, help, st[key] / 1000 if key.endswith("_ms") else st[key])
                  for kind, name, help, key in METRICS]
        values += [
            ("gauge", "prompt_tokens_seconds", "Average prompt throughput in tokens/s",
             1000 * st["prompt_tokens"] / st["prompt_ms"] if st["prompt_ms"] else 0),
            ("gauge", "predicted_tokens_seconds", "Average generation throughput in tokens/s",
             1000 * st["predicted_tokens"] / st["predicted_ms"] if st["predicted_ms"] else 0),
            ("gauge", "requests_processing", "Number of requests processing", len(engine.busy_slots())),
            ("gauge", "requests_deferred", "Number of requests deferred", len(engine.waiting)),
            ("gauge", "n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
             st["busy_slots"] / max(st["decodes"], 1)),
        ]
        lines = []
        for kind, name, help, value in values:
            lines += ["# HELP llamacpp:{} {}".format(name, help), "# TYPE llamacpp:{} {}".format(name, kind),
                      "llamacpp:{} {}".format(name, value)]
        return "\n".join(lines) + "\n", 200, {"Content-Type": "text/plain; version=0.0.4"}
