"""The API's routes, in llama.cpp's tools/server shapes: its native routes (/completion, /tokenize,
/props, ...) and the OpenAI-compatible /v1 routes, errors as {"error": {code, message, type}}.
Api(app, engine, settings) puts them on a Server (cllm.http) for one engine; request fields are
read by cllm.schema."""
import math
import random
import time

import kernel
import llm

from cllm import chat_page
from cllm.engine import Busy, ContextExceeded, Task, decode_lossy, utf8_complete
from cllm.http import ApiError, StreamResponse, bad_request
from cllm.schema import (SAMPLING, body_of, chat_messages, field, n_predict_of, n_probs_of, prompt_tokens,
                         sampling, stop_list)

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
    """Turn an ApiError raised by a handler into its JSON error response."""
    async def wrapped(req, *args):
        try:
            return await handler(req, *args)
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


def stream_of(body, tasks, chunks, last):
    return StreamResponse(tasks, chunks, last, field(body, "timings_per_token", bool, False))


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

    def params_json(self):
        s = self.settings
        p = {name: default for name, kind, default in SAMPLING}
        p.update({"n_predict": s.n_predict, "max_tokens": s.n_predict, "stop": [], "stream": False, "grammar": "",
                  "n_probs": 0, "ignore_eos": False, "timings_per_token": False,
                  "cache_prompt": bool(s.cache_prompt)})
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

    def new_task(self, body, tokens, n_predict, n_probs=0):
        """Validate the sampling fields, build the sampler, queue the task."""
        engine = self.engine
        kw = sampling(body, engine.model, engine.meta)
        try:
            sampler = engine.sampler(**kw)
            task = Task(tokens, sampler, n_predict, stop_list(body), field(body, "return_tokens", bool, False),
                        n_probs, field(body, "cache_prompt", bool, bool(self.settings.cache_prompt)))
            return engine.submit(task)
        except ContextExceeded as e:
            raise ApiError(400, str(e), "exceed_context_size_error", n_prompt_tokens=e.n_prompt_tokens, n_ctx=e.n_ctx)
        except Busy:
            raise ApiError(503, "no slot available, try again later", "unavailable_error")
        except ValueError as e:                 # a bad grammar
            raise bad_request(str(e))

    def choice_tasks(self, body, tokens, n_predict, n_probs):
        """One task per requested choice (`n`, llama-server's n_cmpl: 1 to the number of slots)."""
        n = field(body, "n", int, 1)
        parallel = self.settings.parallel
        if not 1 <= n <= parallel:
            raise bad_request("'n' must be between 1 and {} (the server's parallel slots)".format(parallel))
        tasks = []
        try:
            for _ in range(n):
                tasks.append(self.new_task(body, tokens, n_predict, n_probs))
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
               "generation_settings": self.params_json(), "prompt": "", "has_new_line": "\n" in task.text,
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
        return {"default_generation_settings": {"params": self.params_json(), "n_ctx": engine.n_ctx_slot},
                "total_slots": s.parallel, "model_alias": s.alias, "model_path": s.model,
                "modalities": {"vision": False, "video": False, "audio": False},
                "endpoint_slots": True, "endpoint_props": False, "endpoint_metrics": True,
                "chat_template": meta["chat_template"] or "", "bos_token": self.token_text(meta["bos"]),
                "eos_token": self.token_text(meta["eos"]), "build_info": FINGERPRINT, "is_sleeping": False,
                "n_ctx": engine.n_ctx, "n_predict": s.n_predict, "queue": s.queue,
                "api_key_required": bool(s.api_key), "cpu_kernels": llm.cpu_kernels()}

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
            return stream_of(body, [task], chunk, lambda: [self.native_final(task, "", True)])
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
                text, i, None, self.oai_logprobs(tasks[i].new_probs())))], last)
        texts = await all_finished(tasks)
        choices = []
        for i, (t, text) in enumerate(zip(tasks, texts)):
            choices += choice(text, i, finish_reason(t), self.oai_logprobs(t.probs))
        return self.oai_object(cid, "text_completion", choices=choices, usage=usage(*tasks), timings=task.timings())

    async def oai_chat(self, req):
        body = body_of(req)
        try:
            prompt = self.engine.model.apply_chat_template(chat_messages(body))
        except ValueError as e:
            raise bad_request(str(e))
        tasks = self.choice_tasks(body, self.prompt_of(prompt),
                                  n_predict_of(body, self.settings.n_predict, "n_predict", "max_completion_tokens",
                                               "max_tokens"), n_probs_of(body, True))
        task = tasks[0]
        cid = completion_id("chatcmpl-")

        def chunk(delta, i, reason=None):
            return self.oai_object(cid, "chat.completion.chunk",
                                   choices=[{"finish_reason": reason, "index": i, "delta": delta}])
        if field(body, "stream", bool, False):
            opened = set()

            def opening(i):     # each choice's first delta carries the role
                if i in opened:
                    return []
                opened.add(i)
                return [chunk({"role": "assistant", "content": None}, i)]

            def chunks(text, i):
                out = chunk({"content": text}, i)
                probs = tasks[i].new_probs()
                if probs:
                    out["choices"][0]["logprobs"] = self.oai_logprobs(probs)
                return opening(i) + [out]

            def last():
                out = []
                for i, t in enumerate(tasks):
                    out += opening(i) + [chunk({}, i, finish_reason(t))]
                if include_usage(body):
                    out.append(self.oai_object(cid, "chat.completion.chunk", choices=[], usage=usage(*tasks)))
                out[-1]["timings"] = task.timings()
                return out + [b"[DONE]"]
            return stream_of(body, tasks, chunks, last)
        texts = await all_finished(tasks)
        choices = []
        for i, (t, text) in enumerate(zip(tasks, texts)):
            choices.append({"finish_reason": finish_reason(t), "index": i,
                            "message": {"role": "assistant", "content": text}})
            if t.probs:
                choices[-1]["logprobs"] = self.oai_logprobs(t.probs)
        return self.oai_object(cid, "chat.completion", usage=usage(*tasks), timings=task.timings(), choices=choices)

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
                             "n_prompt_tokens_cache": t.n_cached, "params": self.params_json(),
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
