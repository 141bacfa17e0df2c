"""HTTP for the API: microdot's server with what one on a network needs before a request reaches a
route (a deadline for the whole request, bounded headers and body, a lingering close), responses
in one write, Server-Sent Events for streams, and llama-server's error shape."""
import asyncio
import json
import time
from asyncio import core

from microdot import Microdot, Request, Response
from microdot.microdot import NoCaseDict


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

    def __init__(self, stream, max_lines, max_body):
        self.stream = stream
        self.max_lines = max_lines
        self.max_body = max_body
        self.buf = b""
        self.seen = False       # any byte of the request came (over TLS: the handshake is over)

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
                    self.seen = True
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
        if content_length and content_length <= self.max_body:
            body = await self.readexactly(content_length)
        else:
            stream = self
        req = Request(app, writer.get_extra_info("peername"), method, url, version, NoCaseDict(headers),
                      body=body, stream=stream, sock=(self, writer))
        req.tls = "tls" in writer.e                 # came over HTTPS (Server.serve_tls)
        req.max_content_length = req.max_body_length = self.max_body     # microdot answers 413 past it
        return req

    async def readexactly(self, n):
        head, self.buf = self.buf[:n], self.buf[n:]
        return head + await self.stream.readexactly(n - len(head)) if len(head) < n else head

    async def read(self, n=-1):
        if not self.buf:
            return await self.stream.read(n)
        head = self.buf if n < 0 else self.buf[:n]
        self.buf = self.buf[len(head):]
        return head


def route_path(pattern):
    """A route's path as the text microdot's URLPattern regex is made of."""
    return "/" + pattern.url_pattern.lstrip("/")


class Server(Microdot):
    """microdot, with what a server on a network needs before a request reaches a route: the whole
    request within limits.timeout seconds, at most limits.max_headers header lines and a body of at
    most limits.max_body bytes, else 408, 431 or 413 in llama-server's error shape and the
    connection closed, instead of a slot held forever. The limits are read for each request, so a
    change from the REPL holds for the next one."""

    BACKLOG = 32
    WATCH_MS = 250
    SPECIAL = "<>.^$*+?{}[]\\|()"      # in a route's pattern: more than a fixed path (find_route)

    def __init__(self, limits):
        super().__init__()
        self.limits = limits
        self.reading = {}       # the tasks still reading their request -> their deadline (ticks_ms)
        self.expired = set()    # those the watchdog cancelled for it
        self.routes, self.routes_count = None, -1     # find_route's table, for url_map at that length
        self.connections = set()    # the tasks of the open connections (the server's stop waits for them)
        self.server = self.tls_server = None
        self.tls = None             # HTTPS: None (not asked for), "on", or "failed" (server.tls_context)
        self.tls_open = 0           # TLS connections open now (at most limits.tls_conns)
        self.tls_refused = 0        # closed at once for it

    async def serve(self, port):
        """microdot's start_server, with a listen backlog for bursts of connections: microdot takes
        asyncio's default of 5, and lwIP refuses (resets) the connections beyond it."""
        watchdog = asyncio.create_task(self.watch())
        try:
            self.server = await asyncio.start_server(self.handle_request, "0.0.0.0", port, self.BACKLOG)
            await self.server.wait_closed()
        finally:
            watchdog.cancel()

    async def serve_tls(self, port, context):
        """HTTPS on port: asyncio's start_server(ssl=context) loop (the handshake runs inside the
        request's first reads, under its deadline), with at most limits.tls_conns connections at
        once: one past it is closed as accepted, before mbedtls takes memory for it, and one that
        mbedtls cannot take (its memory cap) is closed without the traceback asyncio would print
        on the console."""
        import socket
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(socket.getaddrinfo("0.0.0.0", port)[0][-1])
        s.listen(self.BACKLOG)
        self.tls_server = asyncio.current_task()
        watchdog = asyncio.create_task(self.watch())    # as serve's (with http=off the only one)
        try:
            while True:
                yield core._io_queue.queue_read(s)      # as asyncio's own accept loop waits
                try:
                    conn, addr = s.accept()
                except OSError:
                    continue
                if self.tls_open >= self.limits.tls_conns:
                    self.tls_refused += 1
                    conn.close()
                    continue
                try:
                    tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                except (OSError, MemoryError):
                    self.tls_refused += 1
                    conn.close()
                    continue
                tls.setblocking(False)
                stream = asyncio.StreamWriter(tls, {"peername": addr, "tls": True})
                self.tls_open += 1
                asyncio.create_task(self.handle_tls(stream, conn))
        finally:
            watchdog.cancel()
            s.close()

    async def handle_tls(self, stream, raw):
        try:
            await self.handle_request(stream, stream)
        finally:
            self.tls_open -= 1
            # the TCP socket under it: when a handshake fails, the tls module lets go of it without
            # closing it (extmod/modtls_mbedtls.c), and the connection would stay open until a
            # garbage collection
            raw.close()

    def shutdown(self):
        """No new connection on either port (microdot's shutdown closes the plain one)."""
        if self.tls_server:
            self.tls_server.cancel()
            self.tls_server = None
        if self.server:
            super().shutdown()

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

    def replace_route(self, path, methods, handler):
        """handler for path and these methods in place of any route there is (the console's hot
        patch: the next request uses it)."""
        self.url_map[:] = [r for r in self.url_map if not (route_path(r[1]) == path and set(r[0]) & set(methods))]
        self.route(path, methods=list(methods))(handler)
        self.routes_count = -1

    def static_routes(self):
        """path -> the routes for it, in microdot's order; None if a pattern is more than a path."""
        routes = {}
        for methods, pattern, handler, prefix, subapp in self.url_map:
            path = route_path(pattern)
            if any(c in self.SPECIAL for c in path):
                return None
            routes.setdefault(path, []).append((methods, handler, prefix, subapp))
        return routes

    async def handle_request(self, reader, writer):
        me = asyncio.current_task()
        self.connections.add(me)
        try:
            await self.answer(reader, writer)
        except asyncio.CancelledError:      # the server is stopping: the connection is closed, not left
            writer.s.close()
            raise
        finally:
            self.connections.discard(me)

    async def answer(self, reader, writer):
        limits = self.limits
        incoming = RequestReader(reader, limits.max_headers + 2, limits.max_body)  # + request line, blank line
        me = asyncio.current_task()
        self.reading[me] = time.ticks_add(time.ticks_ms(), int(limits.timeout * 1000))
        req = error = None
        try:
            req = await incoming.request(self, writer)
        except asyncio.CancelledError:
            if me not in self.expired:      # not the deadline: the server is stopping
                raise
            if "tls" in writer.e and not incoming.seen:    # a TLS handshake that stalled: no one to answer
                return await close(writer)
            error = ApiError(408, "Request timed out", "invalid_request_error")
        except TooManyHeaders:
            error = ApiError(431, "More than {} header lines".format(limits.max_headers), "invalid_request_error")
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
            # a stream to an HTTP/1.1 client goes chunked, as llama-server's: a server (or a balancer's
            # box) that dies mid-stream is then an incomplete body, not a stream that just ended
            if isinstance(res, StreamResponse) and req is not None and req.http_version == "1.1":
                res.chunked = True
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
        head = OneHead(writer, getattr(res, "chunked", False))
        await res.write(head)
        if head.chunked and head.head is None:
            await writer.awrite(b"0\r\n\r\n")     # the last chunk: the stream is complete
        return
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
    pieces (Server-Sent Events) as they come. chunked: an HTTP/1.1 head with Transfer-Encoding: chunked,
    each piece a chunk (write_response sends the last, empty one)."""

    def __init__(self, writer, chunked=False):
        self.writer = writer
        self.head = b""
        self.chunked = chunked

    async def awrite(self, data):
        if self.head is not None:
            self.head += data
            if data != b"\r\n":
                return
            data, self.head = self.head, None
            if self.chunked:            # microdot's status line says HTTP/1.0
                data = b"HTTP/1.1" + data[8:-2] + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        elif self.chunked:
            data = ("%x\r\n" % len(data)).encode() + data + b"\r\n"
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


class EventStream:
    """A response body of Server-Sent Events for one or more tasks (the `n` choices of one request):
    chunks(text, i) for each piece of text of task i as it comes (a list of events, maybe none), then
    last() once all have finished. With timings (llama-server's timings_per_token) the last event of
    each piece carries its task's timings so far; with progress, each prompt_progress note of a task
    (its return_progress) is sent as progress(note, i) makes it."""

    def __init__(self, tasks, chunks, last, timings=False, progress=None):
        self.tasks = tasks
        self.progress = progress     # progress(p, i): the events of a prompt_progress note of task i
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
                if self.progress:
                    for p in t.new_progress():
                        self.out += self.progress(p, i)
                text = t.ready_text()
                if text:
                    events = self.chunks(text, i)
                    if self.timings and events:     # as llama-server: on the last event of the piece
                        events[-1]["timings"] = t.timings()
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

    def __init__(self, tasks, chunks, last, timings=False, progress=None):
        events = EventStream(tasks, chunks, last, timings, progress)
        Response.__init__(self, events, 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})

    async def write(self, stream):
        try:
            await Response.write(self, stream)
        finally:
            self.body.cancel()
