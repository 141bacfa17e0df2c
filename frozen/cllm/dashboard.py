"""The VGA screen while serving: a status panel on its top rows, redrawn every second, with the
console's log scrolling on below it (vga.reserve)."""
import asyncio
import kernel
import time

import vga

ROWS = 4
VERSION = "cllm " + kernel.version


def address():
    """This machine's IPv4 address, or None before DHCP has given one."""
    import network
    try:
        ip = network.LAN().ifconfig()[0]
    except OSError:
        return None
    return None if ip == "0.0.0.0" else ip


def uptime(ms):
    s = ms // 1000
    return "{}:{:02d}:{:02d}".format(s // 3600, s // 60 % 60, s % 60)


def rate(tokens, ms):
    return "{:.1f}".format(1000 * tokens / ms) if ms else "-"


class Dashboard:
    def __init__(self, engine, settings):
        self.engine = engine
        self.settings = settings
        self.last = (time.ticks_ms(), 0)        # (when, tokens generated) at the last redraw

    def lines(self):
        """The panel's text rows: who, where, what it is doing, how fast."""
        e, st = self.engine, self.engine.stats
        ip = address()
        where = "http://{}:{}/".format(ip, self.settings.port) if ip else "waiting for an address"
        now = time.ticks_ms()
        then, tokens = self.last
        self.last = (now, st["predicted_tokens"])
        busy = len(e.busy_slots())
        head = " {} | {} | {}".format(VERSION, self.settings.alias, where)
        up = "up {} ".format(uptime(now))
        return [
            head + " " * (vga.COLS - len(head) - len(up)) + up,
            " requests {} ({} rejected)  slots {}/{} busy, {} waiting  heap free {} KiB".format(
                st["requests"], st["rejected"], busy, len(e.slots), len(e.waiting), kernel.heap_free() // 1024),
            " prompt {} tok at {} tok/s   generated {} tok at {} tok/s   now {} tok/s".format(
                st["prompt_tokens"], rate(st["prompt_tokens"], st["prompt_ms"]), st["predicted_tokens"],
                rate(st["predicted_tokens"], st["predicted_ms"]),
                rate(st["predicted_tokens"] - tokens, time.ticks_diff(now, then)) if busy else "0.0"),
            "",
        ]

    def draw(self):
        colours = ((vga.WHITE, vga.BLUE), (vga.LIGHT_GREY, vga.BLACK), (vga.LIGHT_GREY, vga.BLACK),
                   (vga.DARK_GREY, vga.BLACK))
        for row, (text, (fg, bg)) in enumerate(zip(self.lines(), colours)):
            text = text or "-" * vga.COLS
            vga.print_at(row, 0, text + " " * (vga.COLS - len(text)), fg, bg)

    async def run(self):
        vga.reserve(ROWS)
        while True:
            self.draw()
            await asyncio.sleep_ms(1000)


def release():
    vga.reserve(0)
