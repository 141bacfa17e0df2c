"""The server: the wiring of settings, engine, HTTP server and API, and the serial REPL, as tasks of
one asyncio loop.

From the serial REPL while serving: server.stats(), server.engine.slots, server.settings.n_predict = 64,
or a handler for a route, new or in place of the API's: server.route("/hello")(lambda req: {"hi": 1})."""
import asyncio
import kernel
import time

from microdot.cors import CORS

from cllm import dashboard, repl
from cllm.api import Api, errors_as_json
from cllm.engine import Engine
from cllm.http import Server
from cllm.log import log

settings = None
engine = None
app = None


def stats():
    """What the server is doing: state, slots, queue, token counts, heap."""
    out = {"state": engine.state, "slots_busy": len(engine.busy_slots()), "slots": len(engine.slots),
           "waiting": len(engine.waiting), "heap_free": kernel.heap_free()}
    out.update(engine.stats)
    return out


def route(path, methods=("GET",)):
    """From the console: handler (a function of the request, plain or async, returning what a route
    returns: a dict is JSON) for path and methods, in place of the route there is or as a new one;
    the next request uses it. An ApiError it raises is answered as the API's errors are."""
    def register(handler):
        app.replace_route(path, methods, errors_as_json(handler))
        return handler
    return register


def load_model():
    t0 = time.ticks_ms()
    log("cllm: loading {} (n_ctx={}, parallel={}, flash_attn={})".format(
        settings.model, settings.n_ctx, settings.parallel, settings.flash_attn))
    engine.load()
    meta = engine.meta
    log("cllm: {} ({}, {} parameters) ready after {} ms; serving on port {}".format(
        settings.alias, meta["description"], meta["n_params"], time.ticks_diff(time.ticks_ms(), t0), settings.port))


async def console(namespace, wait_ms=10000):
    """The boot log's last step, then the REPL: the address clients reach, once DHCP's lease has
    come (a second or so after the NIC is up; at most wait_ms), so that the log line does not
    land in the middle of what an operator types."""
    import network
    t0 = time.ticks_ms()
    while not dashboard.address() and time.ticks_diff(time.ticks_ms(), t0) < wait_ms:
        await asyncio.sleep_ms(50)
    ip = dashboard.address()
    if ip:
        log("net: address {} ({}); http://{}:{}/".format(ip, network.LAN().config("address_source"), ip, settings.port))
    else:
        log("net: no address after {} ms (no DHCP answer?); network.LAN().ifconfig(...) sets one".format(wait_ms))
    await repl.run(namespace)


async def main(namespace):
    global engine, app
    engine = Engine(settings)
    app = Server(settings)
    # As llama-server: any origin, with credentials; preflights (OPTIONS) are answered before the API-key gate.
    CORS(app, allowed_origins="*", allow_credentials=True)
    Api(app, engine, settings)
    asyncio.create_task(app.serve(settings.port))
    await asyncio.sleep_ms(0)           # listening, and answering 503 until the model is there
    try:
        load_model()
    except Exception as e:
        log("cllm: cannot load {}: {}; not serving".format(settings.model, e))
        app.shutdown()
        await asyncio.sleep_ms(0)
        return
    namespace.update({"engine": engine, "app": app})
    asyncio.create_task(console(namespace))
    if settings.dashboard:
        asyncio.create_task(dashboard.Dashboard(engine, settings).run())
    await engine.run()


def run(the_settings, namespace):
    """Serve until Ctrl-C on the console, which leaves MicroPython's own REPL with namespace."""
    global settings
    settings = the_settings
    try:
        asyncio.run(main(namespace))
    finally:
        dashboard.release()             # the whole screen back to the console
