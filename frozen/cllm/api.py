"""The HTTP API on microdot, in llama.cpp's tools/server shapes: its native routes (/completion,
/tokenize, /props, ...) and the OpenAI-compatible /v1 routes, errors as {"error": {code, message, type}}."""
import asyncio
import json
import math
import random
import time

import kernel
import llm
from microdot import Microdot, Request, Response
from microdot.microdot import NoCaseDict
from microdot.cors import CORS

from cllm import page, strictjson
from cllm.engine import Busy, ContextExceeded, Task, decode_lossy, utf8_complete

FINGERPRINT = "cllm-" + kernel.version
PUBLIC = ("/health", "/v1/health")
SAMPLING = (("temperature", float, 0.8), ("top_k", int, 40), ("top_p", float, 0.95), ("min_p", float, 0.05),
            ("seed", int, -1), ("repeat_penalty", float, 1.0), ("repeat_last_n", int, 64),
            ("frequency_penalty", float, 0.0), ("presence_penalty", float, 0.0))

class TooManyHeaders(Exception):
    pass


class RequestReader:
    """A client's request, read the way a server with little time per request wants it: asyncio's
    readline waits on the event loop once per line and microdot's Request.create works a line at a
    time; this reads what has come (a request's head is usually one segment) into a buffer, parses
    the request line and headers from it in one pass, and serves the body's start from the same
    buffer. As strict as microdot's own parser: at most max_lines lines (TooManyHeaders), none longer
    than Request.max_readline, a "name: value" per header and a Content-Length that is a number
    >= 0 (else ValueError, which the server answers with 400)."""

    CHUNK = 2048

    def __init__(self, stream, max_lines):
        self.stream = stream
        self.max_lines = max_lines
        self.buf = b""

    async def head(self):
        """The request line and the header lines, up to the blank line that ends them; None if the
        client closed before sending anything."""
        buf, start, lines = self.buf, 0, 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                if len(buf) - start > Request.max_readline:
                    raise ValueError("line too long")
                data = await self.stream.read(self.CHUNK)
                if data:
                    buf += data
                    continue
                self.buf = b""
                return buf.rstrip() or None     # the client closed: the head ends here
            lines += 1
            if lines > self.max_lines:
                raise TooManyHeaders()
            if end - start > Request.max_readline:
                raise ValueError("line too long")
            if not buf[start:end].strip():      # the blank line
                self.buf = buf[end + 1:]
                return buf[:start].rstrip()
            start = end + 1

    async def request(self, app, writer):
        """The next Request (microdot's, as Request.create makes it), or None."""
        head = await self.head()
        if head is None:
            return None
        lines = head.decode().split("\n")
        method, url, version = lines[0].strip().split()
        version = version.split("/", 1)[1]
        headers, first = {}, {}                 # a repeated name keeps the spelling it came with first
        content_length = 0
        for line in lines[1:]:
            name, value = line.strip().split(":", 1)
            lower = name.lower()
            name = first.setdefault(lower, name)
            headers[name] = value = value.strip()
            if lower == "content-length":
                content_length = int(value)
                if content_length < 0:
                    raise ValueError("negative Content-Length")
        body, stream = b"", None
        if content_length and content_length <= Request.max_body_length:
            body = await self.readexactly(content_length)
        else:
            stream = self
        return Request(app, writer.get_extra_info("peername"), method, url, version, NoCaseDict(headers),
                       body=body, stream=stream, sock=(self, writer))

    async def readexactly(self, n):
        head, self.buf = self.buf[:n], self.buf[n:]
        return head + await self.stream.readexactly(n - len(head)) if len(head) < n else head

    async def read(self, n=-1):
        if not self.buf:
            return await self.stream.read(n)
        head = self.buf if n < 0 else self.buf[:n]
        self.buf = self.buf[len(head):]
        return head


class Server(Microdot):
    """microdot, with what a server on a network needs before a request reaches a route: the whole
    request within `timeout` seconds and at most `max_headers` header lines, else 408 or 431 in
    llama-server's error shape and the connection closed, instead of a slot held forever."""

    BACKLOG = 32
    WATCH_MS = 250
    SPECIAL = "<>.^$*+?{}[]\\|()"      # in a route's pattern: more than a fixed path (find_route)

    def __init__(self):
        super().__init__()
        self.reading = {}       # the tasks still reading their request -> their deadline (ticks_ms)
        self.expired = set()    # those the watchdog cancelled for it
        self.routes, self.routes_count = None, -1     # find_route's table, for url_map at that length

    async def serve(self, port):
        """microdot's start_server, with a listen backlog for bursts of connections: microdot takes
        asyncio's default of 5, and lwIP refuses (resets) the connections beyond it."""
        watchdog = asyncio.create_task(self.watch())
        try:
            self.server = await asyncio.start_server(self.handle_request, "0.0.0.0", port, self.BACKLOG)
            await self.server.wait_closed()
        finally:
            watchdog.cancel()

    async def watch(self):
        """The request deadline: one task for all connections, every WATCH_MS, cancels those past it
        (asyncio's wait_for per request would cost two tasks and an exception each, even in time)."""
        while True:
            await asyncio.sleep_ms(self.WATCH_MS)
            now = time.ticks_ms()
            for task, end in list(self.reading.items()):
                if time.ticks_diff(now, end) >= 0:
                    del self.reading[task]
                    self.expired.add(task)
                    task.cancel()

    def find_route(self, req):
        """microdot's find_route, as one dict lookup while every route is a fixed path (as all of
        this API's are): microdot matches the path against each route's regular expression in turn,
        ~50 us a request under TCG. A route with <parts> (say, one added from the REPL) brings
        microdot's own loop back."""
        if self.routes_count != len(self.url_map):      # routes are added (at import, from the REPL)
            self.routes = self.static_routes()
            self.routes_count = len(self.url_map)
        if self.routes is None:
            return super().find_route(req)
        method = req.method.upper()
        if method == "OPTIONS" and self.options_handler:
            return self.options_handler(req), "", None
        if method == "HEAD":
            method = "GET"
        routes = self.routes.get(req.path)
        if routes is None:
            req.url_args = None
            return 404, "", None
        req.url_args = {}
        for methods, handler, prefix, subapp in routes:
            if method in methods:
                return handler, prefix, subapp
        return 405, prefix, subapp

    def static_routes(self):
        """path -> the routes for it, in microdot's order; None if a pattern is more than a path."""
        routes = {}
        for methods, pattern, handler, prefix, subapp in self.url_map:
            path = "/" + pattern.url_pattern.lstrip("/")     # the text microdot's regex is made of
            if any(c in self.SPECIAL for c in path):
                return None
            routes.setdefault(path, []).append((methods, handler, prefix, subapp))
        return routes

    async def handle_request(self, reader, writer):
        incoming = RequestReader(reader, settings.max_headers + 2)  # + request line, blank line
        me = asyncio.current_task()
        self.reading[me] = time.ticks_add(time.ticks_ms(), int(settings.timeout * 1000))
        req = error = None
        try:
            req = await incoming.request(self, writer)
        except asyncio.CancelledError:
            if me not in self.expired:      # not the deadline: the server is stopping
                raise
            error = ApiError(408, "Request timed out", "invalid_request_error")
        except TooManyHeaders:
            error = ApiError(431, "More than {} header lines".format(settings.max_headers), "invalid_request_error")
        except OSError:                     # the client is gone
            return await close(writer)
        except Exception:                   # a malformed request line or header (ValueError)
            pass                            # dispatch_request(None) answers 400
        finally:
            self.reading.pop(me, None)
            self.expired.discard(me)
        if error:
            body, code = error.response()
            res = Response(body, code, {"Connection": "close"})
        else:
            res = await self.dispatch_request(req)
        try:
            if res != Response.already_handled:
                await write_response(res, writer)
                if req is None or res.status_code == 413:      # the request was not read to its end
                    await linger(reader)
        except OSError:
            pass
        await close(writer)


async def write_response(res, writer):
    """res.write(writer), in one write when the body is bytes (every JSON answer, the page): microdot
    awaits a write per header line, and each became a TCP segment of its own through lwIP, the NIC and
    QEMU's network. Streams (SSE) keep microdot's loop, with the head in one write (OneHead)."""
    res.complete()
    if not isinstance(res.body, bytes):
        return await res.write(OneHead(writer))
    reason = res.reason if res.reason is not None else ("OK" if res.status_code == 200 else "N/A")
    parts = ["HTTP/1.0 {} {}\r\n".format(res.status_code, reason)]
    for header, value in res.headers.items():
        for v in value if isinstance(value, list) else (value,):
            parts.append("{}: {}\r\n".format(header, v))
    parts.append("\r\n")
    data = "".join(parts).encode()
    await writer.awrite(data if res.is_head else data + res.body)


class OneHead:
    """The writer microdot's Response.write gets for a stream: the status line and headers, which it
    writes a line at a time, go out as one write with the blank line that ends them; the body's
    pieces (Server-Sent Events) as they come."""

    def __init__(self, writer):
        self.writer = writer
        self.head = b""

    async def awrite(self, data):
        if self.head is not None:
            self.head += data
            if data != b"\r\n":
                return
            data, self.head = self.head, None
        await self.writer.awrite(data)


async def close(writer):
    try:
        await writer.aclose()
    except OSError:
        pass


async def linger(reader, ms=1000, most=1 << 20):
    """Read and drop what the client still sends (for up to ms, at most `most` bytes) before closing:
    closing a socket with unread input resets the connection, and the answer just written with it
    (RFC 9112 section 9.6, "tear-down")."""
    end = time.ticks_add(time.ticks_ms(), ms)
    got = 0
    try:
        while got < most:
            left = time.ticks_diff(end, time.ticks_ms())
            if left <= 0:
                return
            data = await asyncio.wait_for_ms(reader.read(4096), left)
            if not data:
                return
            got += len(data)
    except (asyncio.TimeoutError, OSError):
        pass


app = Server()
# As llama-server: any origin, with credentials; preflights (OPTIONS) are answered before the API-key gate.
CORS(app, allowed_origins="*", allow_credentials=True)
engine = None
settings = None


class ApiError(Exception):
    def __init__(self, code, message, type, **extra):
        super().__init__(message)
        self.body = {"code": code, "message": message, "type": type}
        self.body.update(extra)
        self.code = code

    def response(self):
        return {"error": self.body}, self.code


def bad_request(message):
    return ApiError(400, message, "invalid_request_error")


def setup(the_engine, the_settings):
    global engine, settings
    engine, settings = the_engine, the_settings
    Request.max_content_length = Request.max_body_length = the_settings.max_body


def api(handler):
    """Turn an ApiError raised by a handler into its JSON error response."""
    async def wrapped(req, *args):
        try:
            return await handler(req, *args)
        except ApiError as e:
            return e.response()
    return wrapped


@app.before_request
def gate(req):
    if req.path == "/":         # the chat page: without a key (its API calls carry one) and while loading
        return
    if settings.api_key and req.path not in PUBLIC:
        auth = req.headers.get("Authorization", "") or req.headers.get("X-Api-Key", "")
        if auth.startswith("Bearer "):
            auth = auth[7:]
        if auth != settings.api_key:
            return ApiError(401, "Invalid API Key", "authentication_error").response()
    if engine.state != "ready":
        return ApiError(503, "Loading model", "unavailable_error").response()


@app.errorhandler(400)
def error_400(req):
    return bad_request("Bad request").response()


@app.errorhandler(404)
def error_404(req):
    return ApiError(404, "File Not Found", "not_found_error").response()


@app.errorhandler(405)
def error_405(req):
    return ApiError(405, "Method Not Allowed", "invalid_request_error").response()


@app.errorhandler(413)
def error_413(req):
    return ApiError(413, "Request body larger than {} bytes".format(settings.max_body), "invalid_request_error").response()


@app.errorhandler(500)
def error_500(req):
    return ApiError(500, "Internal server error", "server_error").response()


# ---------------------------------------------------------------- request bodies

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


def logit_bias(body):
    """llama-server's logit_bias: [[token id or text, bias], ...] or {"token id or text": bias}; a
    bias of false bans the token(s); text stands for each of its tokens. Ids outside the vocabulary
    are skipped as upstream does; entries of the wrong shape are a 400 here, not skipped."""
    value = body.get("logit_bias")
    if value is None:
        return None
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list) and all(isinstance(e, list) and len(e) == 2 for e in value):
        pairs = value
    else:
        raise bad_request("'logit_bias' must be an object or an array of [token, bias] pairs")
    n_vocab = engine.meta["n_vocab"]
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
            tokens = engine.model.tokenize(key, False, False)
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


def logprob(p):
    return math.log(p) if p > 0 else -3.4028234663852886e38     # as llama-server: the lowest float, not -inf


def token_json(token, p):
    piece = engine.model.token_to_piece(token)
    text = decode_lossy(piece[:utf8_complete(piece)])
    return {"id": token, "token": text, "bytes": list(piece), "logprob": logprob(p)}


def probs_json(entries):
    """llama-server's completion_probabilities: each token with its logprob and the top ones."""
    out = []
    for token, p, top in entries:
        entry = token_json(token, p)
        entry["top_logprobs"] = [token_json(t, q) for t, q in top]
        out.append(entry)
    return out


def prompt_tokens(prompt):
    """A prompt as llama-server takes it: a string, token ids, or a one-element array of either."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        tokens = engine.model.tokenize(prompt, True, True)
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        tokens = prompt
        n_vocab = engine.meta["n_vocab"]
        for t in tokens:
            if not 0 <= t < n_vocab:
                raise bad_request("token id {} in the prompt is out of range (n_vocab {})".format(t, n_vocab))
    else:
        raise bad_request("'prompt' must be a string or an array of token ids")
    if not tokens:
        raise bad_request("the prompt is empty")
    return tokens


def new_task(body, tokens, n_predict, n_probs=0):
    """Validate the sampling fields, build the sampler, queue the task."""
    kw = {}
    for name, kind, default in SAMPLING:
        kw[name] = field(body, name, kind, default)
    kw["grammar"] = schema_grammar(body) or field(body, "grammar", str, None)
    kw["logit_bias"] = logit_bias(body)
    if field(body, "ignore_eos", bool, False):      # as llama-server: every end-of-generation token banned
        kw["logit_bias"] = kw["logit_bias"] or {}
        for t in engine.meta["eog"]:
            kw["logit_bias"][t] = False
    try:
        sampler = engine.sampler(**kw)
        task = Task(tokens, sampler, n_predict, stop_list(body), field(body, "return_tokens", bool, False), n_probs,
                    field(body, "cache_prompt", bool, bool(settings.cache_prompt)))
        return engine.submit(task)
    except ContextExceeded as e:
        raise ApiError(400, str(e), "exceed_context_size_error", n_prompt_tokens=e.n_prompt_tokens, n_ctx=e.n_ctx)
    except Busy:
        raise ApiError(503, "no slot available, try again later", "unavailable_error")
    except ValueError as e:                 # a bad grammar, a token id out of range
        raise bad_request(str(e))


async def finished(task):
    try:
        return await task.result()
    except Exception as e:
        raise ApiError(500, str(e), "server_error")


def params_json():
    p = {name: default for name, kind, default in SAMPLING}
    p.update({"n_predict": settings.n_predict, "max_tokens": settings.n_predict, "stop": [], "stream": False,
              "grammar": "", "n_probs": 0, "ignore_eos": False, "timings_per_token": False, "cache_prompt": bool(settings.cache_prompt)})
    return p


# ---------------------------------------------------------------- streaming

class EventStream:
    """A response body of Server-Sent Events for one or more tasks (the `n` choices of one request):
    chunks(text, i) for each piece of text of task i as it comes, then last() once all have finished.
    With timings (llama-server's timings_per_token) every chunk carries its task's timings so far."""

    def __init__(self, tasks, chunks, last, timings=False):
        self.tasks = tasks
        self.timings = timings
        for t in tasks[1:]:             # one event for all: whichever task has news wakes the stream
            t.changed = tasks[0].changed
        self.chunks = chunks
        self.last = last
        self.out = []
        self.ended = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self.out:
            if self.ended:
                raise StopAsyncIteration
            news = self.tasks[0].changed
            news.clear()                # before looking, so that nothing set meanwhile is missed
            for i, t in enumerate(self.tasks):
                text = t.ready_text()
                if text:
                    events = self.chunks(text, i)
                    if self.timings:
                        for e in events:
                            e["timings"] = t.timings()
                    self.out += events
            if not self.out:
                if all(t.done for t in self.tasks):
                    self.ended = True
                    self.out = self.last()
                else:
                    await news.wait()
        event = self.out.pop(0)
        return b"data: " + (event if isinstance(event, bytes) else json.dumps(event).encode()) + b"\n\n"

    def cancel(self):
        for t in self.tasks:
            t.cancel()

    async def aclose(self):
        self.cancel()


class StreamResponse(Response):
    """Cancels the generation however the stream ends: finished, client gone, or write error."""

    def __init__(self, body, tasks, chunks, last):
        events = EventStream(tasks, chunks, last, field(body, "timings_per_token", bool, False))
        Response.__init__(self, events, 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})

    async def write(self, stream):
        try:
            await Response.write(self, stream)
        finally:
            self.body.cancel()


# ---------------------------------------------------------------- chat page, health, models, props

@app.get("/")
async def chat_page(req):
    return page.PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}


@app.get("/health")
@app.get("/v1/health")
async def health(req):
    return {"status": "ok"}


def model_info():
    meta = engine.meta
    return {"id": settings.alias, "aliases": [settings.alias], "tags": [], "object": "model",
            "created": int(time.time()), "owned_by": "llamacpp",
            "meta": {"vocab_type": 1, "n_vocab": meta["n_vocab"], "n_ctx": engine.n_ctx_slot,
                     "n_ctx_train": meta["n_ctx_train"], "n_embd": meta["n_embd"], "n_params": meta["n_params"],
                     "size": meta["size"]}}


@app.get("/v1/models")
@app.get("/models")
async def models(req):
    return {"models": [{"name": settings.alias, "model": settings.alias, "modified_at": "", "size": "", "digest": "",
                        "type": "model", "description": "", "tags": [""], "capabilities": ["completion"],
                        "parameters": "", "details": {"parent_model": "", "format": "gguf", "family": "",
                                                      "families": [""], "parameter_size": "",
                                                      "quantization_level": ""}}],
            "object": "list", "data": [model_info()]}


def token_text(token):
    if token is None:
        return ""
    try:
        return engine.model.token_to_piece(token).decode()
    except ValueError:
        return ""


@app.get("/props")
async def props(req):
    meta = engine.meta
    return {"default_generation_settings": {"params": params_json(), "n_ctx": engine.n_ctx_slot},
            "total_slots": settings.parallel, "model_alias": settings.alias, "model_path": settings.model,
            "modalities": {"vision": False, "video": False, "audio": False},
            "endpoint_slots": True, "endpoint_props": False, "endpoint_metrics": True,
            "chat_template": meta["chat_template"] or "", "bos_token": token_text(meta["bos"]),
            "eos_token": token_text(meta["eos"]), "build_info": FINGERPRINT, "is_sleeping": False,
            "n_ctx": engine.n_ctx, "n_predict": settings.n_predict, "queue": settings.queue,
            "api_key_required": bool(settings.api_key), "cpu_kernels": llm.cpu_kernels()}


# ---------------------------------------------------------------- tokens

@app.post("/tokenize")
@api
async def tokenize(req):
    body = body_of(req)
    content = field(body, "content", str, "")
    tokens = engine.model.tokenize(content, field(body, "add_special", bool, False),
                                   field(body, "parse_special", bool, True))
    if not field(body, "with_pieces", bool, False):
        return {"tokens": tokens}
    pieces = []
    for t in tokens:
        piece = engine.model.token_to_piece(t)
        try:
            piece = piece.decode()
        except ValueError:
            piece = list(piece)
        pieces.append({"id": t, "piece": piece})
    return {"tokens": pieces}


@app.post("/detokenize")
@api
async def detokenize(req):
    tokens = field(body_of(req), "tokens", list, [])
    try:                        # as llama-server: the pieces joined, a leading space kept
        return {"content": decode_lossy(b"".join(engine.model.token_to_piece(t) for t in tokens))}
    except (ValueError, TypeError) as e:
        raise bad_request(str(e))


# ---------------------------------------------------------------- native completion

def native_final(task, content, streamed=False):
    out = {"index": 0, "content": content, "tokens": task.tokens if task.return_tokens else [],
            "id_slot": task.slot, "stop": True, "model": settings.alias, "tokens_predicted": len(task.tokens),
            "tokens_evaluated": len(task.prompt), "generation_settings": params_json(), "prompt": "",
            "has_new_line": "\n" in task.text, "truncated": False, "stop_type": task.stop_type,
            "stopping_word": task.stopping_word, "tokens_cached": tokens_cached(task), "timings": task.timings()}
    if task.probs and not streamed:        # a stream had them in its chunks
        out["completion_probabilities"] = probs_json(task.probs)
    return out


def tokens_cached(task):
    """Tokens of the slot's KV cache once finished: the prompt and all but the last token generated."""
    return len(task.prompt) + max(0, len(task.tokens) - 1)


def n_predict_of(body, *names):
    for name in names:
        if body.get(name) is not None:
            return field(body, name, int, -1)
    return settings.n_predict


@app.post("/completion")
@app.post("/completions")
@api
async def completion(req):
    body = body_of(req)
    task = new_task(body, prompt_tokens(body.get("prompt", "")), n_predict_of(body, "n_predict", "max_tokens"),
                    n_probs_of(body))
    if field(body, "stream", bool, False):
        def chunk(text, i):
            out = {"index": 0, "content": text, "tokens": [], "stop": False, "id_slot": task.slot,
                   "tokens_predicted": len(task.tokens), "tokens_evaluated": len(task.prompt)}
            probs = task.new_probs()
            if probs:
                out["completion_probabilities"] = probs_json(probs)
            return [out]
        return StreamResponse(body, [task], chunk, lambda: [native_final(task, "", True)])
    return native_final(task, await finished(task))


# ---------------------------------------------------------------- OpenAI-compatible

def completion_id(prefix):
    return prefix + "".join("%08x" % random.getrandbits(32) for _ in range(3))


def finish_reason(task):
    return "stop" if task.stop_type in ("eos", "word") else "length"


def usage(task, *more):
    n_prompt, n_gen = len(task.prompt), sum(len(t.tokens) for t in (task,) + more)
    return {"completion_tokens": n_gen, "prompt_tokens": n_prompt, "total_tokens": n_prompt + n_gen,
            "prompt_tokens_details": {"cached_tokens": task.n_cached}}


def oai_object(cid, kind, **fields):
    obj = {"created": int(time.time()), "model": settings.alias, "system_fingerprint": FINGERPRINT,
           "object": kind, "id": cid}
    obj.update(fields)
    return obj


def choice_tasks(body, tokens, n_predict, n_probs):
    """One task per requested choice (`n`, llama-server's n_cmpl: 1 to the number of slots)."""
    n = field(body, "n", int, 1)
    if not 1 <= n <= settings.parallel:
        raise bad_request("'n' must be between 1 and {} (the server's parallel slots)".format(settings.parallel))
    tasks = []
    try:
        for _ in range(n):
            tasks.append(new_task(body, tokens, n_predict, n_probs))
    except BaseException:
        for t in tasks:
            t.cancel()
        raise
    return tasks


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


def include_usage(body):
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


def oai_logprobs(entries):
    return {"content": probs_json(entries)} if entries else None


@app.post("/v1/completions")
@api
async def oai_completions(req):
    body = body_of(req)
    if field(body, "echo", bool, False):
        raise bad_request("Only no echo is supported")
    for name in ("best_of", "suffix"):
        if body.get(name) is not None:
            raise bad_request("Unsupported param: " + name)
    tasks = choice_tasks(body, prompt_tokens(body.get("prompt", "")), n_predict_of(body, "n_predict", "max_tokens"),
                         n_probs_of(body))
    task = tasks[0]
    cid = completion_id("cmpl-")

    def choice(text, i, reason, logprobs=None):
        return [{"text": text, "index": i, "logprobs": logprobs, "finish_reason": reason}]
    if field(body, "stream", bool, False):
        def last():
            out = [oai_object(cid, "text_completion", choices=choice("", i, finish_reason(t)))
                   for i, t in enumerate(tasks)]
            out[-1].update(usage=usage(*tasks), timings=task.timings())
            return out + [b"[DONE]"]
        return StreamResponse(body, tasks, lambda text, i: [oai_object(cid, "text_completion", choices=choice(
            text, i, None, oai_logprobs(tasks[i].new_probs())))], last)
    texts = await all_finished(tasks)
    choices = []
    for i, (t, text) in enumerate(zip(tasks, texts)):
        choices += choice(text, i, finish_reason(t), oai_logprobs(t.probs))
    return oai_object(cid, "text_completion", choices=choices, usage=usage(*tasks), timings=task.timings())


def chat_prompt(body):
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
    try:
        return engine.model.apply_chat_template(plain)
    except ValueError as e:
        raise bad_request(str(e))


@app.post("/v1/chat/completions")
@app.post("/chat/completions")
@api
async def oai_chat(req):
    body = body_of(req)
    prompt = chat_prompt(body)
    tasks = choice_tasks(body, prompt_tokens(prompt),
                         n_predict_of(body, "n_predict", "max_completion_tokens", "max_tokens"), n_probs_of(body, True))
    task = tasks[0]
    cid = completion_id("chatcmpl-")

    def chunk(delta, i, reason=None):
        return oai_object(cid, "chat.completion.chunk", choices=[{"finish_reason": reason, "index": i, "delta": delta}])
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
                out["choices"][0]["logprobs"] = oai_logprobs(probs)
            return opening(i) + [out]

        def last():
            out = []
            for i, t in enumerate(tasks):
                out += opening(i) + [chunk({}, i, finish_reason(t))]
            if include_usage(body):
                out.append(oai_object(cid, "chat.completion.chunk", choices=[], usage=usage(*tasks)))
            out[-1]["timings"] = task.timings()
            return out + [b"[DONE]"]
        return StreamResponse(body, tasks, chunks, last)
    texts = await all_finished(tasks)
    choices = []
    for i, (t, text) in enumerate(zip(tasks, texts)):
        choices.append({"finish_reason": finish_reason(t), "index": i, "message": {"role": "assistant", "content": text}})
        if t.probs:
            choices[-1]["logprobs"] = oai_logprobs(t.probs)
    return oai_object(cid, "chat.completion", usage=usage(*tasks), timings=task.timings(), choices=choices)


# ---------------------------------------------------------------- slots and metrics

@app.get("/slots")
async def slots(req):
    out = []
    for s in engine.slots:
        info = {"id": s.id, "n_ctx": engine.n_ctx_slot, "speculative": False, "is_processing": s.task is not None}
        t = s.task or s.last
        if t:
            info.update({"id_task": t.id, "n_prompt_tokens": len(t.prompt),
                         "n_prompt_tokens_processed": len(t.prompt) - t.n_cached,
                         "n_prompt_tokens_cache": t.n_cached, "params": params_json(),
                         "next_token": [{"has_next_token": not t.done, "has_new_line": "\n" in t.text,
                                         "n_remain": t.n_predict - len(t.tokens) if t.n_predict >= 0 else -1,
                                         "n_decoded": len(t.tokens)}],
                         "generated": t.text})
        out.append(info)
    return out


METRICS = (
    ("counter", "prompt_tokens_total", "Number of prompt tokens processed", "prompt_tokens"),
    ("counter", "prompt_seconds_total", "Total time spent processing prompts", "prompt_ms"),
    ("counter", "tokens_predicted_total", "Number of generation tokens processed", "predicted_tokens"),
    ("counter", "tokens_predicted_seconds_total", "Total time spent generating tokens", "predicted_ms"),
    ("counter", "n_decode_total", "Total number of llama_decode() calls", "decodes"),
    ("counter", "n_tokens_max", "Largest observed sequence length (prompt + generation)", "n_tokens_max"),
)


@app.get("/metrics")
async def metrics(req):
    st = engine.stats
    values = [(kind, name, help, st[key] / 1000 if key.endswith("_ms") else st[key]) for kind, name, help, key in METRICS]
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
