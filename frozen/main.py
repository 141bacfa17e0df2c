# Runs at every boot and soft reboot from the friendly REPL, before the REPL. With a model (a *.gguf
# boot module or model= on the command line) and a NIC it starts the server (frozen/cllm), which
# keeps the REPL live on the console; server.stop() returns here, and the REPL goes on. With rpc=PORT
# it starts ggml's RPC server instead, in a thread of its own, and leaves the REPL to the console.
import time

from cllm.log import log

log("main.py: ready after {} ms".format(time.ticks_ms()))


def rpc_worker():
    from cllm import config
    import kernel
    import llm
    import network
    settings = config.load()
    if not settings.rpc:
        return False
    try:
        network.LAN()
        threads = settings.rpc_threads or kernel.cpus()
        llm.rpc_start(settings.rpc, threads)
        log("cllm: llama.cpp RPC worker on port {} ({} thread{}, {} MiB free); no model served here".format(
            settings.rpc, threads, "s" * (threads > 1), kernel.mem()["free"] >> 20))
    except (OSError, ValueError, RuntimeError) as e:   # RuntimeError: running since before a soft reboot
        log("cllm: cannot start the RPC worker on port {}: {}".format(settings.rpc, e))
    return True


def server_settings():
    from cllm import config
    import network
    settings = config.load()
    if not (settings.model and settings.serve):
        return None
    try:
        network.LAN()
    except OSError:                 # no NIC: nothing to serve on
        return None
    return settings


settings = None if rpc_worker() else server_settings()
if settings:
    from cllm import server
    server.start(settings)
