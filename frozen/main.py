# Runs at every boot and soft reboot, before the REPL.
import time

print("main.py: ready after {} ms".format(time.ticks_ms()))
