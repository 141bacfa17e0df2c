"""The API, in llama.cpp's tools/server shapes: its native routes (/completion, /tokenize, /props,
...) and the OpenAI-compatible /v1 ones (chat in cllm.chat), errors as {"error": {code, message,
type}}; a request's fields are read by cllm.fields. Api(app, engine, settings) puts them on a
Server (cllm.http) for one engine."""
import math
import time

import kernel
import llm

from cllm import chat, chat_page, embed, infill
from cllm.engine import Busy, ContextExceeded, Task, decode_lossy, utf8_complete
from cllm.fields import (SAMPLING, all_finished, body_of, completion_id, field, finish_reason, n_predict_of,
                         n_probs_of, prompt_tokens, prompts_of, response_fields, sampling, stop_list, stream_of, usage)
from cllm.http import ApiError, bad_request
from cllm.slots import SlotFiles

# ---------------------------------------------------------------- the routes

FINGERPRINT = "cllm-" + kernel.version
# llama.cpp's sampler chain, in its default order (common_params_sampling.samplers)
DEFAULT_SAMPLERS = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
PUBLIC = ("/health", "/v1/health")
METRICS = (         # llama-server's, with its descriptions; engine.stats' key for each
    ("counter", "prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens", "prompt_tokens"),
    ("counter", "prompt_tokens_cached_total", "Number of prompt tokens reused from the cache", "prompt_cached"),
    ("counter", "prompt_seconds_total", "Total time spent processing prompts", "prompt_ms"),
    ("counter", "tokens_predicted_total", "Number of generation tokens processed", "predicted_tokens"),
    ("counter", "tokens_predicted_seconds_total", "Total time spent generating tokens", "predicted_ms"),
    ("counter", "n_decode_total", "Total number of llama_decode() calls, excluding speculative decoding and "
     "multimodal decoding", "decodes"),
    ("counter", "n_tokens_max", "Largest observed sequence length (prompt + generation)", "n_tokens_max"),
    ("counter", "spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated", "draft_tokens"),
    ("counter", "spec_decode_num_accepted_tokens_total", "Speculative: Total draft tokens accepted by the target model",
     "draft_accepted"),
    ("counter", "spec_decode_num_drafts_total", "Speculative: Total speculative decoding verification steps", "drafts"),
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
        ("POST", ("/infill",), "infill"),
        ("POST", ("/embedding", "/embeddings"), "embeddings"),
        ("POST", ("/v1/embeddings",), "oai_embeddings"),
        ("POST", ("/rerank", "/reranking", "/v1/rerank", "/v1/reranking"), "rerank"),
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
        self.slot_files = SlotFiles(engine, settings.slot_save)
        for i in range(settings.parallel):      # fixed paths (as every route here), one per slot
            app.route("/slots/{}".format(i), methods=["POST"])(
                errors_as_json(lambda req, i=i: self.slot_files.action(self, req, i)))

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
        p.update({"n_predict": s.n_predict, "max_tokens": s.n_predict, "n_keep": 0, "n_discard": 0, "stop": [],
                  "stream": False, "grammar": "",
                  "n_probs": 0, "ignore_eos": False, "timings_per_token": False, "logit_bias": [],
                  "cache_prompt": bool(s.cache_prompt), "chat_format": "Content-only",
                  "reasoning_format": s.reasoning_format, "samplers": list(DEFAULT_SAMPLERS),
                  "dry_sequence_breakers": ["\n", ":", "\"", "*"],
                  "speculative.types": self.spec_types()})
        if task:
            p.update(task.params)
        return p

    def spec_types(self):
        """llama-server's speculative.types: the draft kind in use, or "none"."""
        spec = self.settings.spec
        return "none" if not spec else "ngram-simple" if spec == "ngram" else spec

    def task_params(self, body, kw, task, chat):
        """What params_json(task) shows: the request's own values, as the sampler got them."""
        p = {name: kw[name] for name, kind, default in SAMPLING}
        bias = kw.get("logit_bias") or {}
        p.update({"n_predict": task.n_predict, "max_tokens": task.n_predict, "stop": task.stop,
                  "stream": field(body, "stream", bool, False), "grammar": kw.get("grammar") or "",
                  "n_probs": task.n_probs, "ignore_eos": field(body, "ignore_eos", bool, False),
                  "timings_per_token": field(body, "timings_per_token", bool, False), "cache_prompt": task.cache_prompt,
                  "n_keep": field(body, "n_keep", int, 0), "n_discard": field(body, "n_discard", int, 0),
                  "logit_bias": [{"bias": None if b is False else b, "token": t} for t, b in bias.items()]})
        for name in ("samplers", "dry_sequence_breakers"):
            if name in kw:
                p[name] = kw[name]
        if chat:
            p.update(chat.settings)
        return p

    def prompt_text(self, tokens):
        """A prompt's text as /slots shows it, special tokens written out (as llama-server)."""
        try:
            return self.engine.model.detokenize(tokens, False, True)
        except ValueError:          # a token cut a UTF-8 character: its bytes, not the text
            return decode_lossy(b"".join(self.engine.model.token_to_piece(t) for t in tokens))

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
            task.t_max_predict_ms = field(body, "t_max_predict_ms", int, -1)
            task.n_keep = field(body, "n_keep", int, 0)
            task.n_discard = field(body, "n_discard", int, 0)
            if task.n_keep < -1 or task.n_discard < 0:
                raise bad_request("'n_keep' must be -1 (the whole prompt) or more, 'n_discard' 0 (half) or more")
            id_slot = field(body, "id_slot", int, -1)
            task.id_slot = id_slot % self.settings.parallel if id_slot >= 0 else -1     # wraps, as upstream
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
        return self.tasks_for(body, [tokens] * n, n_predict, n_probs, chat)

    def tasks_for(self, body, prompts, n_predict, n_probs, chat=None):
        """A task for each prompt, all or none: if one cannot be queued, the others are cancelled."""
        tasks = []
        try:
            for tokens in prompts:
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

    def native_final(self, task, content, streamed=False, index=0):
        out = {"index": index, "content": content, "tokens": task.tokens if task.return_tokens else [],
               "id_slot": task.slot, "stop": True, "model": self.settings.alias,
               "tokens_predicted": len(task.tokens), "tokens_evaluated": len(task.prompt),
               "generation_settings": self.params_json(task), "prompt": "", "has_new_line": "\n" in task.text,
               "truncated": task.truncated, "stop_type": task.stop_type, "stopping_word": task.stopping_word,
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
                 "bos_token": self.token_text(meta["bos"]), "eos_token": self.token_text(meta["eos"]),
                 "build_info": FINGERPRINT, "is_sleeping": False,
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
        """POST /completion: one result, or with several prompts (an array of them) or n_cmpl (alias
        n) above 1 an array of results, `index` prompt by prompt, n_cmpl each."""
        body = body_of(req)
        engine = self.engine
        return await self.complete(body, prompts_of(body.get("prompt", ""), engine.model, engine.meta["n_vocab"]))

    async def complete(self, body, prompts):
        """The native completion of the prompts' tokens (/completion's, /infill's)."""
        n = field(body, "n_cmpl", int, None) or field(body, "n", int, 1)
        if not 1 <= n <= self.settings.parallel:
            raise bad_request("'n_cmpl' must be between 1 and {} (the server's parallel slots)".format(self.settings.parallel))
        n_predict = n_predict_of(body, self.settings.n_predict, "n_predict", "max_tokens")
        tasks = self.tasks_for(body, [p for p in prompts for _ in range(n)], n_predict, n_probs_of(body))
        if field(body, "stream", bool, False):
            def chunk(text, i):
                t = tasks[i]
                out = {"index": i, "content": text, "tokens": [], "stop": False, "id_slot": t.slot,
                       "tokens_predicted": len(t.tokens), "tokens_evaluated": len(t.prompt)}
                probs = t.new_probs()
                if probs:
                    out["completion_probabilities"] = self.probs_json(probs)
                return [out]

            def progress(p, i):
                return [{"index": i, "content": "", "tokens": [], "stop": False, "id_slot": tasks[i].slot,
                         "tokens_predicted": 0, "tokens_evaluated": len(tasks[i].prompt), "prompt_progress": p}]

            def last():
                return [response_fields(body, self.native_final(t, "", True, i)) for i, t in enumerate(tasks)]
            return stream_of(body, tasks, chunk, last, progress)
        texts = await all_finished(tasks)
        out = [response_fields(body, self.native_final(t, text, False, i)) for i, (t, text) in enumerate(zip(tasks, texts))]
        return out if len(out) > 1 else out[0]

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

    async def infill(self, req):
        return await infill.infill(self, req)

    async def embeddings(self, req):
        return await embed.embeddings(self, req, False)

    async def oai_embeddings(self, req):
        return await embed.embeddings(self, req, True)

    async def rerank(self, req):
        return await embed.rerank(self, req)

    async def apply_template(self, req):
        return await chat.apply_template(self, req)

    async def input_tokens(self, req):
        return await chat.input_tokens(self, req)

    # ------------------------------------------------------------ slots and metrics

    async def slots(self, req):
        engine = self.engine
        if req.args.get("fail_on_no_slot") not in (None, "0", "false") and all(s.task for s in engine.slots):
            raise ApiError(503, "no slot available", "unavailable_error")
        out = []
        for s in engine.slots:
            info = {"id": s.id, "n_ctx": engine.n_ctx_slot, "speculative": engine.spec is not None,
                    "is_processing": s.task is not None}
            t = s.task or s.last
            if t:
                info.update({"id_task": t.id, "n_prompt_tokens": len(t.prompt),
                             "n_prompt_tokens_processed": len(t.prompt) - t.n_cached,
                             "n_prompt_tokens_cache": t.n_cached, "params": self.params_json(t),
                             "next_token": [{"has_next_token": not t.done, "has_new_line": "\n" in t.text,
                                             "n_remain": t.n_predict - len(t.tokens) if t.n_predict >= 0 else -1,
                                             "n_decoded": len(t.tokens)}],
                             "prompt": self.prompt_text(t.prompt), "generated": t.text})
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
