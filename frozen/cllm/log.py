"""The boot log's line format: seconds since boot, as the kernel's own lines ("[   1.234] net: ...")."""
import time


def log(text):
    t = time.ticks_ms()
    print("[{:4d}.{:03d}] {}".format(t // 1000, t % 1000, text))
