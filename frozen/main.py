# Runs at every boot and soft reboot from the friendly REPL, before the REPL. With a model (a *.gguf
# boot module or model= on the command line) and a NIC it starts the server (frozen/cllm), which
# keeps the REPL live on the console; server.stop() returns here, and the REPL goes on.
import time

from cllm.log import log

log("main.py: ready after {} ms".format(time.ticks_ms()))


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


settings = server_settings()
if settings:
    from cllm import server
    server.start(settings)
