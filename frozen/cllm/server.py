"""The server: the wiring of settings, engine, HTTP server and API, and the serial console, as tasks of
one asyncio loop.

From the console while serving: server.stats(), server.engine.slots, server.settings.n_predict = 64,
a handler for a route, new or in place of the API's: server.route("/hello")(lambda req: {"hi": 1}),
server.stop() (back to the REPL alone) and server.start() (serving again)."""
import asyncio
import kernel
import repl
import serial
import time

from microdot.cors import CORS

from cllm import dashboard
from cllm.api import Api, errors_as_json
from cllm.engine import Engine
from cllm.http import ApiError, Server
from cllm.log import log

STOP_WAIT_MS = 2000     # how long stop() lets open connections finish before it cancels them

settings = None
engine = None
app = None
stopping = None         # an asyncio.Event while serving


def stats():
    """What the server is doing: state, slots, queue, token counts, heap, the saved slots' files
    (slot_save); with HTTPS, its connections open and refused (tls_conns) and mbedtls' memory."""
    out = {"state": engine.state if stopping else "stopped", "slots_busy": len(engine.busy_slots()),
           "slots": len(engine.slots), "waiting": len(engine.waiting), "heap_free": kernel.heap_free()}
    out.update(engine.stats)
    from cllm import slots
    if slots.files:
        out["slot_files"] = {"files": len(slots.files.files), "bytes": slots.files.used(), "limit": slots.files.limit}
    if app and app.tls == "on":
        import tlsport
        out["tls"] = {"open": app.tls_open, "refused": app.tls_refused, "memory": tlsport.memory()}
    return out


def route(path, methods=("GET",)):
    """From the console: handler (a function of the request, plain or async, returning what a route
    returns: a dict is JSON) for path and methods, in place of the route there is or as a new one;
    the next request uses it. An ApiError it raises is answered as the API's errors are."""
    def register(handler):
        app.replace_route(path, methods, errors_as_json(handler))
        return handler
    return register


def stop():
    """Stop serving, leaving the console's REPL: no new connection is taken, the requests in flight
    end with a 503, open connections get STOP_WAIT_MS to finish. The model stays loaded."""
    if not stopping:
        raise RuntimeError("not serving")
    stopping.set()


def start(the_settings=None):
    """Serve (with these settings, else the last ones, else the command line's) until stop() or a
    soft reboot; the console's REPL runs meanwhile. Typed at the REPL after stop(), this line
    returns when the server stops again. The model is loaded again only if a setting it depends
    on changed."""
    global settings, stopping
    if stopping:
        raise RuntimeError("already serving")
    if the_settings is None and settings is None:
        from cllm import config
        the_settings = config.load()
    if the_settings is not None:
        settings = the_settings
    import __main__
    asyncio.new_event_loop()            # no task of an earlier run left to resume
    try:
        asyncio.run(main(__main__.__dict__))
    finally:
        stopping = None                 # however the loop ended
        dashboard.release()             # the whole screen back to the console


def prepare_engine():
    """The engine for the settings: the one there is while the model it loaded still fits them."""
    global engine
    key = (settings.model, settings.n_ctx, settings.parallel, settings.flash_attn)
    if engine and engine.state == "ready" and engine.key == key:
        return
    if engine and engine.model:
        engine.model.close()            # its memory before the next model's
    engine = Engine(settings)
    engine.key = key


def load_model():
    t0 = time.ticks_ms()
    if engine.state != "ready":
        log("cllm: loading {} (n_ctx={}, parallel={}, flash_attn={})".format(
            settings.model, settings.n_ctx, settings.parallel, settings.flash_attn))
        engine.load()
    meta = engine.meta
    log("cllm: {} ({}, {} parameters) ready after {} ms; serving on {}".format(
        settings.alias, meta["description"], meta["n_params"], time.ticks_diff(time.ticks_ms(), t0),
        " and ".join("port {} ({})".format(port, scheme) for scheme, port in ports()) or "no port"))


def ports():
    """(scheme, port) for each port served: "https", "http", or "http, redirects" (to https)."""
    out = []
    if app.tls == "on":
        out.append(("https", settings.tls_port))
    if settings.http != "off":
        out.append(("http" if settings.http == "on" or app.tls != "on" else "http, redirects", settings.port))
    return out


# mbedtls' memory cap per TLS connection: one holds ~27 KB after a TLS 1.3 handshake and a few KB
# more during one (tlsport.memory()); the rest is room for larger keys and chains
TLS_BYTES_PER_CONN = 48 * 1024


def tls_context():
    """The TLS context for tls_cert and tls_key (boot modules), or None: not asked for, or it failed
    (the boot log says why). app.tls tells the API: None (no TLS asked for), "on", or "failed"."""
    app.tls = None
    if not (settings.tls_cert or settings.tls_key):
        return None
    app.tls = "failed"
    if not (settings.tls_cert and settings.tls_key):
        log("tls: cannot serve HTTPS: tls_cert and tls_key go together (only {} given)".format(
            "tls_cert" if settings.tls_cert else "tls_key"))
        return None
    import tls
    import tlsport
    try:
        data = []
        for what, path in (("certificate", settings.tls_cert), ("key", settings.tls_key)):
            try:
                with open(path, "rb") as f:
                    data.append(f.read())
            except OSError:
                raise ValueError("the {} {}: no such boot module".format(what, path))
        key = tlsport.check(*data)
        context = tls.SSLContext(tls.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*data)
    except (ValueError, OSError) as e:
        log("tls: cannot serve HTTPS with {} and {}: {}".format(settings.tls_cert, settings.tls_key, e))
        return None
    # the handshakes' and connections' memory, capped: a connection past it fails its handshake
    tlsport.set_limit(settings.tls_conns * TLS_BYTES_PER_CONN)
    app.tls = "on"
    log("tls: HTTPS on port {} ({}, key {}); random seed from {}".format(
        settings.tls_port, settings.tls_cert, key, tlsport.entropy()))
    return context


async def announce(wait_ms=10000):
    """The boot log's last line: the address clients reach, once DHCP's lease has come (a second
    or so after the NIC is up; at most wait_ms), so that it does not land in what an operator types."""
    import network
    t0 = time.ticks_ms()
    while not dashboard.address() and time.ticks_diff(time.ticks_ms(), t0) < wait_ms:
        await asyncio.sleep_ms(50)
    ip = dashboard.address()
    if ip:
        log("net: address {} ({}); {}".format(ip, network.LAN().config("address_source"), " ".join(
            "{}://{}:{}/".format(scheme.split(",")[0], ip, port) for scheme, port in ports())))
    else:
        log("net: no address after {} ms (no DHCP answer?); network.LAN().ifconfig(...) sets one".format(wait_ms))


async def console(namespace, first):
    """MicroPython's own REPL (the repl module) while serving: what arrives on the console goes to
    it when the loop gets to this task, and a statement typed there runs to its end before the
    server goes on (Ctrl-C interrupts it, and only it)."""
    if first:
        await announce()
        print("cllm: the REPL is live while serving; Ctrl-C interrupts only what it runs; server.stop() stops serving")
    fresh = dict(namespace)
    repl.greet()
    arrived = asyncio.StreamReader(serial.UART(1, timeout=0))
    nothing = bytearray(0)
    while True:
        await arrived.readinto(nothing)     # returns once a byte waits on the console; reads none
        done = repl.feed()
        if done == repl.RAW_SOFT_REBOOT:
            # what mpremote asks before each command, for a fresh interpreter: the console's names
            # are renewed, the server serves on (a soft reboot would end every request in flight)
            namespace.clear()
            namespace.update(fresh)
            repl.soft_reboot()
        elif done == repl.SOFT_REBOOT:
            raise SystemExit    # out of asyncio.run and main.py: the soft reboot runs main.py again


class LlamaCors(CORS):
    """CORS as llama-server answers with its defaults (any origin, credentials): every answer echoes
    the Origin; a preflight (OPTIONS, answered before the API-key gate) also allows the methods
    "GET, POST, DELETE, OPTIONS", the headers "*" and credentials."""

    def get_cors_headers(self, request):
        headers = {"Access-Control-Allow-Origin": request.headers.get("Origin", "")}
        if request.method == "OPTIONS":
            headers.update({"Access-Control-Allow-Credentials": "true",
                            "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                            "Access-Control-Allow-Headers": "*"})
        return headers


async def main(namespace):
    global app, stopping
    first = engine is None
    app = Server(settings)
    LlamaCors(app)
    prepare_engine()
    Api(app, engine, settings)
    context = tls_context()
    listeners = []
    if context:
        listeners.append(asyncio.create_task(app.serve_tls(settings.tls_port, context)))
    if settings.http != "off":
        listeners.append(asyncio.create_task(app.serve(settings.port)))
    elif not context:
        log("cllm: http=off and no HTTPS: not serving (the console stays)")
    await asyncio.sleep_ms(0)           # listening, and answering 503 until the model is there
    try:
        load_model()
    except Exception as e:
        log("cllm: cannot load {}: {}; not serving".format(settings.model, e))
        app.shutdown()
        await asyncio.sleep_ms(0)
        return
    stopping = asyncio.Event()
    namespace.update({"engine": engine, "app": app})
    tasks = [asyncio.create_task(engine.run()), asyncio.create_task(console(namespace, first))]
    if settings.dashboard:
        tasks.append(asyncio.create_task(dashboard.Dashboard(engine, settings).run()))
    await stopping.wait()
    stopping = None
    log("cllm: stopping: {} requests in flight end with a 503".format(len(engine.waiting) + len(engine.busy_slots())))
    app.shutdown()
    engine.reset(ApiError(503, "The server was stopped from its console", "unavailable_error"))
    t0 = time.ticks_ms()
    while app.connections and time.ticks_diff(time.ticks_ms(), t0) < STOP_WAIT_MS:
        await asyncio.sleep_ms(20)
    for task in tasks + list(app.connections) + listeners:
        task.cancel()
    await asyncio.sleep_ms(0)           # the cancelled tasks close their sockets
    log("cllm: stopped; server.start() serves again")
